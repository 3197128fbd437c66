"""``layer_graph_paths`` (graphs of layers only, e.g. the channel-level segment graph)
against a brute-force enumeration of every path to the loss."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpa.core.paths import bits, layer_graph_paths

LOSS = "<loss>"


@st.composite
def layer_dags(draw):
    """Nodes 0..n-1 in topological order; node i's successors (later nodes or the loss) in
    groups that may overlap, and groups shared (the same object) between nodes."""
    n = draw(st.integers(1, 9))
    successors, shared = {}, []
    for i in range(n):
        later = [*range(i + 1, n), LOSS]
        groups = []
        for _ in range(draw(st.integers(0, 3))):
            usable = [g for g in shared if all(x == LOSS or x > i for x in g)]
            if usable and draw(st.booleans()):
                groups.append(draw(st.sampled_from(usable)))
            else:
                group = tuple(draw(st.lists(st.sampled_from(later), unique=True, max_size=4)))
                shared.append(group)
                groups.append(group)
        successors[i] = groups
    return successors


def distinct(successors, node):
    return {x for group in successors[node] for x in group}


def all_paths(successors, node):
    """Every path from ``node`` to the loss, as its length in layers crossed (hops)."""
    if node == LOSS:
        return [0]
    return [1 + k for succ in distinct(successors, node) for k in all_paths(successors, succ)]


@pytest.mark.slow  # hypothesis
@settings(max_examples=400, deadline=None, derandomize=True)
@given(layer_dags())
def test_paths_match_enumeration(successors):
    found = layer_graph_paths(successors, loss=LOSS)
    for node in successors:
        lengths = all_paths(successors, node)
        paths = found[node].paths
        if not lengths:
            assert paths is None
            continue
        histogram = {k: lengths.count(k) for k in sorted(set(lengths))}
        assert paths.histogram == histogram
        assert paths.num_paths == len(lengths)
        assert set(paths.timestamps) == set(lengths)
        reaching = {s for s in distinct(successors, node) if s == LOSS or all_paths(successors, s)}
        assert set(found[node].sources) == reaching


def test_an_edge_back_is_refused():
    with pytest.raises(ValueError, match="topological"):
        layer_graph_paths({"a": [("b",)], "b": [("a",)]})


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sets(st.integers(0, 5000), max_size=300))
def test_bits_of_wide_ints(positions):
    """Set bits of ints of thousands of bits, few or hundreds set (a segment's successors),
    against reading every position."""
    stamps = sum(1 << p for p in positions)
    assert bits(stamps) == tuple(p for p in range(5001) if stamps >> p & 1)


@pytest.mark.parametrize("shared", [True, False])
def test_wide_layers_match_enumeration(shared):
    """Every one of 60 segments reaching all 60 segments of the next layer (a layer feeding
    a depthwise convolution): 3,600 edges, histograms worked out once per successor set."""
    width = 60
    group = tuple(f"b{j}" for j in range(width))
    successors = {}
    for i in range(width):  # a_i -> every b_j (one group object, or equal copies)
        successors[f"a{i}"] = [group if shared else tuple(group)]
    successors["c"] = [group[:7], ("b9", "b30")]  # overlapping groups: b9 counts once
    for j in range(width):  # b_j -> loss, and b_j -> d for even j
        successors[f"b{j}"] = [(LOSS,), ("d",)] if j % 2 == 0 else [(LOSS,)]
    successors["d"] = [(LOSS,)]
    found = layer_graph_paths(successors, loss=LOSS)
    for node in successors:
        lengths = all_paths(successors, node)
        histogram = {k: lengths.count(k) for k in sorted(set(lengths))}
        assert found[node].paths.histogram == histogram
        assert found[node].paths.num_paths == len(lengths)
    # by hand: a_i reaches 60 b's directly (length 2) and through the 30 even b's, d (3)
    assert found["a0"].paths.histogram == {2: 60, 3: 30}
    assert found["c"].paths.histogram == {2: 9, 3: 5}  # b0..b6, b9, b30; even: 0,2,4,6,30
