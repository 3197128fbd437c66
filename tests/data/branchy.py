"""A residual net whose forward has data-dependent Python: torch.fx cannot trace it.

stem -> two residual blocks (y = y + block(y), each guarded by a test on y's values)
-> global mean -> head. Hand-derived gradient paths (lengths count layers, the loss
excluded): head 1; blocks.1 2; blocks.0 2 and 3; stem 2, 3, 3 and 4 (four paths).
"""

import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(blocks))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        for block in self.blocks:
            if y.abs().sum() >= 0:  # data-dependent Python: always true, but fx cannot know
                y = y + block(y)
        return self.head(y.mean((2, 3)))


def build(blocks: int = 2) -> nn.Module:
    return Branchy(blocks)


input_shape = (1, 3, 8, 8)
