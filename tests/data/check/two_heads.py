"""A stem feeding a head through a block of two linears, and an auxiliary head in train
mode only: forward returns ``(head, aux)`` in train mode, ``head`` in eval mode.

By hand, in train mode: ``head`` and ``aux`` 1, ``block.1`` 2, ``block.0`` 3, ``stem``
shortest 2 (through ``aux``) and longest 4 (through the block). Parameters 80 (torch:
weights and biases), 64 (darknet: weights only). ``frozen=True`` freezes the stem.
"""

import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self, frozen: bool) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)
        self.aux = nn.Linear(4, 2)
        self.stem.requires_grad_(not frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        y = self.head(self.block(s))
        return (y, self.aux(s)) if self.training else y


def model(frozen: bool = False) -> nn.Module:
    return TwoHeads(frozen)


input_shape = (1, 4)
