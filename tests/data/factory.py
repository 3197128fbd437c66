"""A factory with knobs, an nn.Module subclass and an instance, for -k and :attr tests."""

from torch import nn


class Stack(nn.Module):
    def __init__(self, depth: int = 2, width: int = 4, act: str = "relu") -> None:
        super().__init__()
        self.act = act
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).relu() if self.act == "relu" else layer(x).tanh()
        return x


def build(depth: int = 2, width: int = 4, act: str = "relu") -> nn.Module:
    return Stack(depth=depth, width=width, act=act)


instance = Stack(depth=1)
not_a_model = 42


def returns_int():
    return 3


def example_inputs():
    import torch

    return torch.zeros(2, 4)
