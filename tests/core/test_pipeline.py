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


def test_cycles_an_analysis_drops_are_freed_by_a_young_pass() -> None:
    """What an analysis drops in reference cycles (fx graphs, autograd graphs) is left to
    the young generations, which free it: not to the oldest, whose passes are rare."""
    gc.collect()
    for _ in range(2):
        gpa.analyze(model(), input_shape=(1, 4), channels=True)
    gc.collect(1)  # the young and middle generations only
    assert gc.collect() < 200  # a full pass finds little left (about 1,500 when promoted)
