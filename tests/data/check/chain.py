"""A chain of ``depth`` linear layers ``layers.0`` … ``layers.{depth-1}``.

Layer i (0-based) has shortest = longest = depth - i. With ``cut=c`` the output of
``layers.c`` is detached, so layers 0..c receive no gradient; with ``spare=True`` an
extra ``nn.Linear`` named ``spare`` is never called (unreachable, listed last).
"""

import torch
from torch import nn


class Chain(nn.Module):
    def __init__(self, depth: int, cut: int | None, spare: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(depth))
        self.cut = cut
        self.spare = nn.Linear(4, 4) if spare else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == self.cut:
                x = x.detach()
        return x


def model(depth: int = 3, cut: int | None = None, spare: bool = False) -> nn.Module:
    return Chain(depth, cut, spare)


input_shape = (1, 4)
