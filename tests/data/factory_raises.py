"""A factory whose own code raises."""

from torch import nn


def _check(width: int) -> int:
    if width % 8:
        raise ValueError(f"width must be a multiple of 8, got {width}")
    return width


def build_model(width: int = 12) -> nn.Module:
    return nn.Linear(_check(width), 2)
