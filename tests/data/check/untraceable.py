"""Data-dependent control flow: torch.fx cannot trace it (gpa must report an error)."""

import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return x


model = Branchy()
input_shape = (1, 4)
