"""Same chain as tests/data/check/chain.py, reached through a relative target."""

from torch import nn


def build(depth: int = 3) -> nn.Module:
    return nn.Sequential(*(nn.Linear(4, 4) for _ in range(depth)))


input_shape = (1, 4)
