"""A model with two positional inputs and a tuple of two outputs."""

import torch
from torch import nn


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(3, 4)
        self.right = nn.Linear(5, 4)
        self.mix = nn.Linear(4, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        h = self.left(a) + self.right(b)
        return self.mix(h), h


model = Pair
example_inputs = (torch.zeros(1, 3), torch.zeros(1, 5))
