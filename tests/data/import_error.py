"""Fails while being imported."""

from torch import nn

LIMITS = {"depth": 4}
MAX_DEPTH = LIMITS["detph"]  # typo: raises KeyError at import


def build_model():
    return nn.Linear(2, 2)
