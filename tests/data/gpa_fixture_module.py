"""Importable as a module (tests put tests/data on sys.path): gpa_fixture_module:build."""

from torch import nn


def build(width: int = 3) -> nn.Module:
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, 1))
    model.input_shape = (1, width)
    return model
