"""Data-dependent control flow: torch.fx cannot trace this forward."""

import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent branch
            return self.a(x)
        return self.b(x)


model = Gate()
input_shape = (1, 4)
