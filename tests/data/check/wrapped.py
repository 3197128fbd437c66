"""A layer fx cannot see: its weight goes to a ``torch.fx.wrap`` function that reads a
global switch (so fx does not trace into it by value). Under ``--tracer fx`` the report
says so in a note; ``auto`` moves on to the autograd tracer, and says that in its note."""

import torch
import torch.nn.functional as F
from torch import nn

SCALED = True  # read by project() each call: the caller may switch it


@torch.fx.wrap
def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    y = F.linear(x, weight)
    return y * 2 if SCALED else y


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.p = nn.Linear(4, 4)  # its weight is used inside project() only
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(project(self.a(x), self.p.weight))


model = Wrapped()
input_shape = (1, 4)
