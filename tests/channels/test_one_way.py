"""``_one_way`` (segments keep one way of continuing throughout) against the rule run
channel by channel, as it reads: a segment takes the way of its first step, and a later
step that differs starts a new segment."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpa.channels.segments import _CUT, _GROUP, _one_way


def one_channel_at_a_time(cut: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    cut = cut.copy()
    way = None
    for c in range(1, len(cut)):
        if cut[c]:
            way = None
            continue
        step = tuple(kinds[:, c - 1])
        if way is None:
            way = step
        elif step != way:
            cut[c], way = True, None
    return cut


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.lists(
            st.lists(st.integers(_CUT, _GROUP), min_size=n - 1, max_size=n - 1),
            min_size=1,
            max_size=3,
        )
    )
)
def test_one_way_equals_the_rule_channel_by_channel(rows):
    kinds = np.array(rows, dtype=np.int8).reshape(len(rows), -1)
    cut = np.zeros(kinds.shape[1] + 1, dtype=bool)
    cut[0] = True
    cut[1:] = (kinds == _CUT).any(axis=0)
    assert (cut | _one_way(cut, kinds)).tolist() == one_channel_at_a_time(cut, kinds).tolist()
