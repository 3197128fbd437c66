"""The pipeline pauses Python's cyclic garbage collector while it runs and leaves it as it
found it (enabled or paused by the program), errors included."""

from __future__ import annotations

import gc

import pytest
from torch import nn

import gpa


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


class Watching(nn.Module):
    """Notes whether the collector runs while its forward is traced."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.collector_on: list[bool] = []

    def forward(self, x):
        self.collector_on.append(gc.isenabled())
        return self.fc(x)


def test_paused_while_analysing_and_enabled_after() -> None:
    assert gc.isenabled()
    watching = Watching()
    report = gpa.analyze(watching, input_shape=(1, 4), channels=True)
    assert watching.collector_on and not any(watching.collector_on)
    assert gc.isenabled()
    assert report.network.max_shortest == 1  # hand-derived: one Linear layer


def test_a_programs_own_pause_is_kept() -> None:
    gc.disable()
    try:
        report = gpa.analyze(model(), input_shape=(1, 4))
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert report.network.max_shortest == 2  # hand-derived: two Linear layers in a chain


def test_an_error_enables_it_again() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.reshape(3, -1, 7))  # no such shape for 1x4

    with pytest.raises(gpa.GpaError):
        gpa.analyze(Broken(), input_shape=(1, 4))
    assert gc.isenabled()


def test_nothing_is_frozen() -> None:
    gpa.analyze(model(), input_shape=(1, 4), channels=True)
    assert gc.get_freeze_count() == 0


def test_what_an_analysis_leaves_alive_is_moved_to_the_oldest_generation() -> None:
    gc.collect()
    report = gpa.analyze(model(), input_shape=(1, 4), channels=True)
    young, middle, _ = gc.get_count()
    # thousands of objects made while paused; none left for the young passes to walk
    assert young < 50 and middle == 0
    assert gc.get_freeze_count() == 0
    assert report.network.max_shortest == 2  # hand-derived: two Linear layers in a chain


def test_a_programs_frozen_objects_stay_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        gpa.analyze(model(), input_shape=(1, 4))
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
