"""Channel segments of a layer and their gradient combinations (``docs/semantics.md`` §8).

A :class:`Segment` is a range of a layer's output channels with one gradient record; its
:class:`Source` entries say who sends it gradient, through which part of the sender, at
which rounds. A layer feeding a depthwise convolution has a segment per channel, each
receiving from the same senders, the part delivered moving on by one input channel (one
group) per channel: :class:`SegmentRun` holds such a run as its first segment and those
steps, and :class:`SegmentList` holds a layer's segments as runs and single segments,
making each segment only when it is read (Xception-41: 28,898 segments, nearly all in
runs). :func:`count_combinations` counts distinct gradient combinations (paper §4.1)
without making them.

Example:
    >>> first = Segment(0, 1, None, (Source("dw", (0, 1), 0b10, group=(0,)),))
    >>> run = SegmentRun(first, count=3, steps=((1, 1),))
    >>> [(s.start, s.sources[0].channels, s.sources[0].group) for s in SegmentList([run])]
    [(0, (0, 1), (0,)), (1, (1, 2), (1,)), (2, (2, 3), (2,))]
"""

from __future__ import annotations

import bisect
import functools
import operator
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from gpa.core.frozen import frozen_instance
from gpa.core.paths import GradientPaths

__all__ = [
    "Segment",
    "SegmentList",
    "SegmentRun",
    "Source",
    "combination",
    "count_combinations",
    "make_segment",
    "make_source",
    "source_key",
]


@dataclass(frozen=True)
class Source:
    """A sender of gradient to a channel segment and the part of its gradient delivered
    (``docs/semantics.md`` §8).

    ``sender`` is a layer (or ``<loss>``); ``channels`` the [start, stop) range of the
    sender's input channels (of the returned tensor, for the loss) that carry the
    segment's channels; ``group`` the sender's groups for a grouped convolution;
    ``output`` the returned value's path for the loss; ``argument`` the sender's tensor
    argument when it takes several; ``mixed`` whether every channel of the segment
    reaches every one of ``channels`` (through a softmax, a layer norm, an attention, a
    broadcast …) rather than one each. ``rounds`` is the bitset of rounds at which the
    segment receives gradient from this sender (round 1 from the loss; one round after
    the sender's own timestamps).
    """

    sender: str
    channels: tuple[int, int]
    rounds: int
    group: tuple[int, ...] | None = None
    output: str | None = None
    argument: int | None = None
    mixed: bool = False


@dataclass(frozen=True)
class Segment:
    """Output channels [start, stop) of a layer with one gradient record (§8)."""

    start: int
    stop: int
    paths: GradientPaths | None
    sources: tuple[Source, ...] = ()
    fallback: tuple[str, ...] = field(default=())


def make_source(
    sender: str,
    channels: tuple[int, int],
    rounds: int,
    group: tuple[int, ...] | None,
    output: str | None,
    argument: int | None,
    mixed: bool,
) -> Source:
    """``Source(sender, channels, rounds, group, output, argument, mixed)``, made as
    :func:`~gpa.core.frozen.frozen_instance` makes one (a channel analysis makes tens of
    thousands).

    Example:
        >>> make_source("b", (0, 2), 0b10, None, None, None, False) == Source("b", (0, 2), 0b10)
        True
    """
    return frozen_instance(
        Source,
        {
            "sender": sender,
            "channels": channels,
            "rounds": rounds,
            "group": group,
            "output": output,
            "argument": argument,
            "mixed": mixed,
        },
    )


def make_segment(
    start: int,
    stop: int,
    paths: GradientPaths | None,
    sources: tuple[Source, ...],
    fallback: tuple[str, ...],
) -> Segment:
    """``Segment(start, stop, paths, sources, fallback)``, made as :func:`make_source` makes
    a source (one per channel of a layer feeding a depthwise convolution).

    Example:
        >>> make_segment(0, 4, None, (), ()) == Segment(0, 4, None)
        True
    """
    return frozen_instance(
        Segment, dict(start=start, stop=stop, paths=paths, sources=sources, fallback=fallback)
    )


def source_key(x: Source) -> tuple:
    """What identifies a source (in a combination; among several calls' sources): all but
    its rounds."""
    return (x.sender, x.channels, x.group, x.output, x.argument, x.mixed)


def combination(segment: Segment) -> frozenset:
    """A segment's gradient combination: its set of (round, source) pairs (paper, §4.1).

    A source is identified by its sender and the part of the sender's gradient delivered
    (channels, group, output, argument, mixed). The set is held as one (source, rounds
    bitset) pair per source, which is the same set of (round, source) pairs, without a
    tuple per round.

    Example:
        >>> a = Segment(0, 2, None, (Source("b", (0, 2), rounds=0b110),))
        >>> b = Segment(2, 4, None, (Source("b", (0, 2), rounds=0b010), Source("b", (0, 2), 0b100)))
        >>> combination(a) == combination(b)
        True
    """
    rounds: dict[tuple, int] = {}
    for s in segment.sources:
        key = source_key(s)
        rounds[key] = rounds.get(key, 0) | s.rounds
    return frozenset(rounds.items())


@dataclass(frozen=True)
class SegmentRun:
    """``count`` segments of one width side by side, alike but for where their sources'
    parts lie: segment k covers ``first``'s channels moved up by k widths, and its i-th
    source delivers ``first``'s i-th source's channels moved up by ``k * steps[i][0]`` and
    its groups by ``k * steps[i][1]``. Paths, rounds and fallbacks are ``first``'s.

    Example:
        >>> first = Segment(4, 5, None, (Source("dw", (4, 5), 0b10, group=(4,)),
        ...                              Source("<loss>", (0, 8), 0b10, mixed=True)))
        >>> run = SegmentRun(first, count=2, steps=((1, 1), (0, 0)))
        >>> [x.channels for x in run.segment(1).sources]
        [(5, 6), (0, 8)]
    """

    first: Segment
    count: int
    steps: tuple[tuple[int, int], ...] = field(default=())

    def segment(self, k: int) -> Segment:
        """The run's k-th segment (0: ``first``)."""
        if k == 0:
            return self.first
        s, width = self.first, self.first.stop - self.first.start
        sources = tuple(
            make_source(
                x.sender,
                (x.channels[0] + k * step, x.channels[1] + k * step),
                x.rounds,
                None if x.group is None else tuple(g + k * moved for g in x.group),
                x.output,
                x.argument,
                x.mixed,
            )
            for x, (step, moved) in zip(s.sources, self.steps, strict=True)
        )
        return make_segment(s.start + k * width, s.stop + k * width, s.paths, sources, s.fallback)


class SegmentList(Sequence[Segment]):
    """A layer's channel segments, in channel order, held as :class:`Segment` and
    :class:`SegmentRun` items; a sequence of :class:`Segment` (equal to the tuple of
    them). Its length and :func:`count_combinations` need no segment made; reading the
    segments makes them (once).

    Example:
        >>> run = SegmentRun(Segment(0, 1, None), count=3)
        >>> segs = SegmentList([run, Segment(3, 8, None)])
        >>> len(segs), segs[3].start, segs == tuple(segs)
        (4, 3, True)
    """

    def __init__(self, items: Iterable[Segment | SegmentRun]) -> None:
        self.items: tuple[Segment | SegmentRun, ...] = tuple(items)
        self._ends = np.cumsum(
            [i.count if isinstance(i, SegmentRun) else 1 for i in self.items], dtype=np.int64
        ).tolist()
        self._made: tuple[Segment, ...] | None = None
        self._combinations: int | None = None

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> Segment: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Segment, ...]: ...
    def __getitem__(self, index: int | slice) -> Segment | tuple[Segment, ...]:
        if isinstance(index, slice) or self._made is not None:
            return self.segments()[index]
        index = operator.index(index)  # as a tuple takes it: no float, no str
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("segment index out of range")
        i = bisect.bisect_right(self._ends, index)
        item = self.items[i]
        if isinstance(item, Segment):
            return item
        return item.segment(index - (self._ends[i] - item.count))

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments())

    def segments(self) -> tuple[Segment, ...]:
        """Every segment, made on the first call."""
        if self._made is None:
            made: list[Segment] = []
            for item in self.items:
                if isinstance(item, Segment):
                    made.append(item)
                else:
                    made.extend(item.segment(k) for k in range(item.count))
            self._made = tuple(made)
        return self._made

    def reached(self) -> bool:
        """Whether any segment receives gradient (has paths; a run's are its first
        segment's), without making segments."""
        return any(
            (i.first if isinstance(i, SegmentRun) else i).paths is not None for i in self.items
        )

    def stamps(self) -> int:
        """The union of the segments' gradient timestamps as a bitset (bit ``t``: some
        channel is reached at round ``t``; a run's are its first segment's), without
        making segments."""
        firsts = (i.first if isinstance(i, SegmentRun) else i for i in self.items)
        return functools.reduce(operator.or_, (s.paths.stamps for s in firsts if s.paths), 0)

    def fallbacks(self) -> tuple[str, ...]:
        """The operations any segment's routing fell back on, sorted (a run's are its
        first segment's)."""
        firsts = (i.first if isinstance(i, SegmentRun) else i for i in self.items)
        return tuple(sorted({f for s in firsts for f in s.fallback}))

    def gradient_combinations(self) -> int:
        """:func:`count_combinations` of this layer alone (worked out once)."""
        if self._combinations is None:
            self._combinations = count_combinations([self])
        return self._combinations

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SegmentList):
            return self.segments() == other.segments()
        if isinstance(other, tuple | list):
            return self.segments() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.segments())

    def __repr__(self) -> str:
        return repr(self.segments())

    def __reduce__(self) -> tuple[Any, ...]:
        return SegmentList, (self.items,)


# --------------------------------------------------------------------------------------
# Counting gradient combinations


def _coarse_key(key: tuple, rounds: int) -> tuple:
    """An entry of a :func:`combination` without where its part lies (what a run's
    segments share), in an order that sorts."""
    sender, channels, group, output, argument, mixed = key
    size = -1 if group is None else len(group)
    where = (output is not None, output or "", argument is not None, argument or 0)
    return (sender, *where, mixed, rounds, channels[1] - channels[0], size)


def _coarse(x: Source) -> tuple:
    return _coarse_key(source_key(x), x.rounds)


def _unrounded(key: tuple) -> tuple:
    """A :func:`_coarse_key` without the rounds: sources :func:`combination` may merge."""
    return key[:6] + key[7:]


def _moves(run: SegmentRun) -> bool:
    """Whether the run's segments differ in where some part lies (else they are alike)."""
    return any(
        step or (moved and x.group)
        for x, (step, moved) in zip(run.first.sources, run.steps, strict=True)
    )


def _where(key: tuple) -> list[int]:
    """Where the part of a source (given by :func:`_key`) lies: its channels and groups."""
    return [*key[1], *(key[2] or ())]


def count_combinations(layers: Iterable[Sequence[Segment]]) -> int:
    """The number of distinct gradient combinations (:func:`combination`) among the
    reached segments (``paths`` not None) of ``layers`` (each layer's segments: a
    :class:`SegmentList` or any sequence of :class:`Segment`).

    Combinations that could be equal share their sources but for where the parts lie
    (the same senders, rounds, widths); only those are compared, by where the parts lie,
    with numpy; a run whose parts move is as many distinct combinations as segments.

    Example:
        >>> run = SegmentRun(Segment(0, 1, None, (Source("dw", (0, 1), 0b10),)), 3, ((1, 0),))
        >>> other = Segment(8, 9, None, (Source("dw", (2, 3), 0b10),))  # as the run's third
        >>> count_combinations([SegmentList([run]), [other]])  # paths None: none counted
        0
        >>> p = GradientPaths(stamps=0b10, num_paths=1)
        >>> run = SegmentRun(Segment(0, 1, p, run.first.sources), 3, ((1, 0),))
        >>> count_combinations([SegmentList([run]), [Segment(8, 9, p, other.sources)]])
        3
    """
    # combinations that could be equal -> (segments, or runs with their where-rows)
    alike: dict[tuple, list[Segment | SegmentRun]] = defaultdict(list)
    for segments in layers:
        items = segments.items if isinstance(segments, SegmentList) else segments
        for item in items:
            if isinstance(item, SegmentRun):
                if item.first.paths is None:
                    continue
                # sources alike but for their rounds (a layer called twice) may merge in
                # some segment of the run: those runs are read segment by segment
                keys = [_coarse(x) for x in item.first.sources]
                if len({_unrounded(k) for k in keys}) == len(keys):
                    alike[tuple(sorted(keys))].append(item)
                    continue
                items_of_run: Iterable[Segment] = (item.segment(k) for k in range(item.count))
            else:
                items_of_run = (item,)
            for s in items_of_run:
                if s.paths is not None:
                    merged = combination(s)
                    alike[tuple(sorted(_coarse_key(k, r) for k, r in merged))].append(s)
    total = 0
    for members in alike.values():
        if len(members) == 1 and isinstance(members[0], SegmentRun):
            run = members[0]
            total += run.count if _moves(run) else 1
        elif len(members) == 1:
            total += 1
        else:
            rows = np.concatenate(_distinct_progressions(members))
            total += len(np.unique(rows, axis=0)) if rows.shape[1] else 1
    return total


def _distinct_progressions(members: list[Segment | SegmentRun]) -> list[np.ndarray]:
    """The :func:`_rows` of ``members``, each set of rows once: a run's rows step alike
    from its first, so runs with the same first row, step and count are one (a block's
    parallel branches, every one reaching the same consumers: sorting them all was most
    of a MobileOne's combination count)."""
    found: dict[tuple[bytes, bytes, int], np.ndarray] = {}
    for member in members:
        rows = _rows(member)
        step = (rows[1] - rows[0]).tobytes() if len(rows) > 1 else b""
        found.setdefault((rows[0].tobytes(), step, len(rows)), rows)
    return list(found.values())


def _rows(item: Segment | SegmentRun) -> np.ndarray:
    """Where the parts of each combination of ``item`` lie, one row per segment, the
    parts in the order of their coarse keys (then of where they lie)."""
    if isinstance(item, Segment):
        merged = combination(item)
        parts = sorted((_coarse_key(k, r), _where(k)) for k, r in merged)
        return np.array([[v for _, where in parts for v in where]], dtype=np.int64)
    order = sorted(range(len(item.steps)), key=lambda i: _coarse(item.first.sources[i]))
    base, moves = [], []
    for i in order:
        x, (step, moved) = item.first.sources[i], item.steps[i]
        base += _where(source_key(x))
        moves += [step, step] + [moved] * len(x.group or ())
    k = np.arange(item.count, dtype=np.int64)[:, None]
    return np.asarray(base, dtype=np.int64) + k * np.asarray(moves, dtype=np.int64)
