"""A sibling module of net.py."""

from torch import nn


def block(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU())
