"""``_alike_runs`` (all channels at once) against the rule read channel by channel from the
sets of input channels each channel reaches: same sets, or every run of channel c one step
after the matching run of channel c - 1, all runs as long as that step."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpa.channels.routing import Consumer
from gpa.channels.segments import _alike_runs, _Arrival


def runs(positions: list[int]) -> list[tuple[int, int]]:
    found: list[list[int]] = []
    for p in positions:
        if found and found[-1][1] == p:
            found[-1][1] = p + 1
        else:
            found.append([p, p + 1])
    return [tuple(r) for r in found]


def continues(before: list[int], after: list[int]) -> bool:
    b, a = runs(before), runs(after)
    lengths = {hi - lo for lo, hi in b + a}
    if len(b) != len(a) or len(lengths) != 1:
        return False
    step = lengths.pop()
    return all(x[0] + step == y[0] for x, y in zip(b, a, strict=True))


def arrival(reached: list[list[int]], width: int, dense: bool) -> _Arrival:
    count = np.array([len(r) for r in reached])
    first = np.array([min(r, default=width) for r in reached])
    last = np.array([max(r, default=-1) for r in reached])
    if dense:
        cells = np.zeros((len(reached), width), dtype=bool)
        for c, r in enumerate(reached):
            cells[c, r] = True
    else:
        cells = np.array([c * width + p for c, r in enumerate(reached) for p in r], np.int64)
    mixed = np.zeros(len(reached), dtype=bool)
    return _Arrival(Consumer("b"), width, mixed, count, first, last, cells)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda width: st.tuples(
            st.just(width),
            st.lists(st.sets(st.integers(0, width - 1), min_size=1), min_size=2, max_size=8),
            st.booleans(),
        )
    )
)
def test_alike_runs_equals_the_rule_channel_by_channel(case):
    width, sets, dense = case
    reached = [sorted(s) for s in sets]
    channels = np.arange(1, len(reached))
    same, following = _alike_runs(arrival(reached, width, dense), channels)
    assert same.tolist() == [reached[c - 1] == reached[c] for c in channels]
    assert following.tolist() == [continues(reached[c - 1], reached[c]) for c in channels]


def test_a_tensor_concatenated_twice_continues():
    # channel c of a 4-channel tensor at c and c + 4 of cat([x, x]): runs of one, step one
    reached = [[c, c + 4] for c in range(4)]
    for dense in (True, False):
        same, following = _alike_runs(arrival(reached, 8, dense), np.array([1, 2, 3]))
        assert same.tolist() == [False] * 3
        assert following.tolist() == [True] * 3


def test_only_the_channels_asked_for_are_read():
    # channel 0 reaches nothing and is not asked for; 2 repeats 1; 3 is two wide at a gap
    reached = [[], [0, 4], [0, 4], [2, 3, 6, 7]]
    for dense in (True, False):
        same, following = _alike_runs(arrival(reached, 8, dense), np.array([2, 3]))
        assert same.tolist() == [True, False]
        assert following.tolist() == [False, False]
