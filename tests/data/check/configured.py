"""A model given a plain object beside its tensor input (a configuration), whose repr
holds a memory address and the private module name gpa imports this file under."""

import torch
from torch import nn


class Cfg:
    scale = 2.0


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, cfg: Cfg) -> torch.Tensor:
        return self.fc(x) * cfg.scale


model = Scaled
example_inputs = (torch.zeros(1, 4), Cfg())
