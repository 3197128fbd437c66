"""Two outputs in a dict; the auxiliary head only exists in train mode."""

import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.main = nn.Linear(4, 2)
        self.aux = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        h = self.body(x).relu()
        if self.training:
            return {"main": self.main(h), "aux": self.aux(h)}
        return {"main": self.main(h)}


def get_model() -> nn.Module:
    return TwoHeads()


def example_inputs():
    return torch.randn(2, 4)
