"""The constructors that make sources, segments and gradient paths without their dataclass
``__init__`` (a channel analysis makes tens of thousands) make the same objects."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from gpa.core.paths import GradientPaths, PathIndex
from gpa.core.report import Segment, Source, make_segment, make_source

SOURCES = [
    ("b", (0, 2), 0b110, None, None, None, False),
    ("<loss>", (3, 4), 0b10, None, "logits", None, False),
    ("attn", (0, 8), 0b1000, (1, 2), None, 1, True),
]


@pytest.mark.parametrize("values", SOURCES)
def test_make_source_is_source(values: tuple) -> None:
    made, built = make_source(*values), Source(*values)
    assert type(made) is Source
    assert vars(made) == vars(built)  # every field, none more (a new field fails here)
    assert [f.name for f in dataclasses.fields(Source)] == list(vars(made))
    assert made == built and hash(made) == hash(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.rounds = 0  # type: ignore[misc]


def test_make_segment_is_segment() -> None:
    sources = tuple(Source(*v) for v in SOURCES)
    paths = GradientPaths(0b110, 3, lambda: {1: 1, 2: 2})
    made, built = (
        make_segment(2, 5, paths, sources, ("cumsum",)),
        Segment(2, 5, paths, sources, ("cumsum",)),
    )
    assert type(made) is Segment
    assert vars(made) == vars(built)
    assert [f.name for f in dataclasses.fields(Segment)] == list(vars(made))
    assert made == built and hash(made) == hash(built)


def test_path_index_makes_gradient_paths() -> None:
    # a -> b -> loss and a -> loss: by hand, a has paths of lengths 1 and 2, b of length 1
    index = PathIndex(["a", "b", "<loss>"])
    index.stamps[:] = [0b110, 0b10, 0b1]
    index.num_paths[:] = [2, 1, 1]
    index.successors[:] = [0b110, 0b100, 0]
    made = index.paths(0)
    assert type(made) is GradientPaths
    assert [f.name for f in dataclasses.fields(GradientPaths)] == list(vars(made))
    assert made == GradientPaths(0b110, 2)
    assert (made.shortest, made.longest, made.histogram) == (1, 2, {1: 1, 2: 1})
    assert index.paths(1).histogram == {1: 1}


def test_copies_of_gradient_paths_share_their_histogram_function() -> None:
    """``deepcopy`` and ``asdict`` of a segment must not copy the whole path index its
    gradient paths read their histogram from (a channel report holds thousands)."""
    index = PathIndex(["a", "<loss>"])
    index.stamps[:], index.num_paths[:], index.successors[:] = [0b10, 0b1], [1, 1], [0b10, 0]
    made = index.paths(0)
    copied = copy.deepcopy(made)
    assert copied == made and copied.counts is made.counts
    assert copied.histogram == {1: 1}  # by hand: a -> loss
    assert dataclasses.asdict(make_segment(0, 1, made, (), ()))["paths"]["counts"] is made.counts
