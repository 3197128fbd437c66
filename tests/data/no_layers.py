"""A model without any layer: nothing to analyse."""

from torch import nn

model = nn.Sequential(nn.ReLU(), nn.Tanh())
input_shape = (1, 4)
