"""The pipeline leaves the garbage collector as it found it (it rests pre-existing
objects from full collections while it runs: gc.freeze / gc.unfreeze)."""

from __future__ import annotations

import gc

import pytest
from torch import nn

import gpa


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def test_nothing_stays_frozen() -> None:
    assert gc.get_freeze_count() == 0
    gpa.analyze(model(), input_shape=(1, 4), channels=True)
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_a_programs_own_freeze_is_kept() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        report = gpa.analyze(model(), input_shape=(1, 4))
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
    assert report.network.max_shortest == 2  # hand-derived: two Linear layers in a chain


def test_an_error_unfreezes_too() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.reshape(3, -1, 7))  # no such shape for 1x4

    with pytest.raises(gpa.GpaError):
        gpa.analyze(Broken(), input_shape=(1, 4))
    assert gc.get_freeze_count() == 0
