"""Channel segments: gradient paths of parts of a layer's output channels.

A layer's output channels are cut into *segments*: maximal ranges of channels that
receive gradient from the same senders, through the same part of each sender (the same
input channels, shifted along with the channel, or the same group of a grouped
convolution). Every channel of a segment therefore has the same gradient record.

The cuts depend only on the channel routing. At channel level a gradient path is the
sequence of (layer call, segment) nodes it crosses, the loss one node more: the
*segment graph* has an edge from each segment to every segment of a sender it reaches,
and its paths are those :func:`gpa.core.paths.gradient_paths` computes for whole
layers. A network without partial channel operations has one segment per layer, equal
to the whole-layer record.

Example:
    >>> import torch, torch.nn as nn
    >>> from gpa.frontends.fx import fx_gradient_graph
    >>> from gpa.options import AnalysisOptions
    >>> from gpa.channels.routing import route_channels
    >>> class Masked(nn.Module):  # a masked residual: the identity feeds half the channels
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         y = self.a(x)
    ...         f = self.b(y)
    ...         return torch.cat([f[:, :2] + y[:, :2], f[:, 2:]], 1)
    >>> g = fx_gradient_graph(Masked(), AnalysisOptions(input_shape=(1, 4)))
    >>> segs = call_segments(route_channels(g.traced, g.calls), g.calls)
    >>> [(s.start, s.stop, s.paths.timestamps) for s in segs["a"]]
    [(0, 2, (1, 2)), (2, 4, (2,))]
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from gpa.channels.routing import ChannelRouting, Consumer
from gpa.channels.values import unique_values
from gpa.core.graph import LOSS, LayerCall
from gpa.core.paths import GradientPaths, layer_graph_index
from gpa.core.segments import (
    Segment,
    SegmentList,
    SegmentRun,
    Source,
    make_segment,
    make_source,
    source_key,
)

__all__ = ["SegmentNode", "call_segments", "merge_calls"]

#: A node of the segment graph: (layer call, index of its segment), or :data:`LOSS`.
SegmentNode = tuple[str, int] | str

# The nodes a delivery to the loss continues through. Rounds are one more than the stamps
# of the node delivering: the loss holds gradient at round 0 (stamps 1), so what it
# delivers arrives at round 1.
_TO_LOSS = (LOSS,)


def _listing_order(consumer: Consumer, order: Mapping[str, int]) -> tuple[bool, int, int, str]:
    """Sources are listed the loss first (by output), then by layer call in forward order
    (``order``: a call's position; the same whichever frontend named it) and argument."""
    return (
        consumer.call is not None,
        order.get(consumer.call, -1) if consumer.call is not None else -1,
        consumer.argument or 0,
        consumer.output or "",
    )


@dataclass
class _Arrival:
    """Where the channels of one producer arrive at one consumer, per producer channel.

    ``mixed[c]``: channel c reaches every input channel of the consumer. Otherwise it
    reaches ``count[c]`` input channels, the lowest ``first[c]``, the highest ``last[c]``;
    ``cells`` keeps them all: a (channel, input channel) boolean table, or the sorted
    ``channel * width + input channel`` pairs. The arrays are read only: arrivals alike
    share them. ``group_width``: input channels per group of a grouped-convolution
    consumer, else None.
    """

    consumer: Consumer
    width: int
    mixed: np.ndarray
    count: np.ndarray
    first: np.ndarray
    last: np.ndarray
    cells: np.ndarray
    group_width: int | None = None

    def positions(self, channel: int) -> np.ndarray:
        if self.cells.ndim == 2:
            return np.flatnonzero(self.cells[channel])
        lo, hi = np.searchsorted(self.cells, [channel * self.width, (channel + 1) * self.width])
        return self.cells[lo:hi] - channel * self.width

    def reached(self, start: int, stop: int) -> np.ndarray:
        """The input channels that channels [start, stop) reach, sorted, each once (the
        positions of each of them together)."""
        if self.cells.ndim == 2:
            return np.flatnonzero(self.cells[start:stop].any(axis=0))
        lo, hi = np.searchsorted(self.cells, [start * self.width, stop * self.width])
        return unique_values(self.cells[lo:hi] % self.width)


# Up to this many (channel, input channel) cells, arrivals are marked in a dense table
# (a norm over the channels sends every channel to every input channel: a table is far
# cheaper than sorting that many pairs); beyond it, as sorted pairs.
_DENSE_CELLS = 1 << 26
_FILLED = 32  # a table holds at most this many cells per marked one
_SMALL_TABLE = 1 << 16


def _arrivals(
    routing: ChannelRouting,
    call: str,
    count: int,
    alike: dict[tuple, tuple[np.ndarray, ...]],
    order: Mapping[str, int],
) -> list[_Arrival]:
    """The deliveries of ``call``'s channels, merged per consumer.

    Consumers often receive alike (every block of a transformer reads the residual stream
    through a norm, and every block's layers send alike): their placed channels are
    worked out once, kept in ``alike`` (shared by every call; read only), and arrivals
    of placed channels alone share their arrays (read only too)."""
    by_consumer: dict[Consumer, list] = defaultdict(list)
    for d in routing.inbound.get(call, ()):
        by_consumer[d.consumer].append(d)
    found = []
    for consumer in sorted(by_consumer, key=lambda c: _listing_order(c, order)):
        width = routing.in_channels.get(consumer, 0)
        deliveries = by_consumer[consumer]
        placed = [d for d in deliveries if d.positions is not None]
        key = (count, width, *((d.positions.tobytes(), _bytes(d.held)) for d in placed))
        if key not in alike:
            tally, first, last, cells = _placed(placed, count, width)
            # a channel placed at every input channel reaches all of them, as one found
            # everywhere (after a norm, a softmax) does: mixed, however it got there (§8)
            everywhere = (tally == width) & (width > 0)
            alike[key] = (everywhere, np.where(everywhere, 0, tally), first, last, cells)
        mixed, tally, first, last, cells = alike[key]
        if len(placed) < len(deliveries):  # channels reaching every input channel too
            mixed = mixed.copy()
            for d in deliveries:
                if d.positions is None:
                    chosen = [
                        c for c in (range(count) if d.mixed is None else d.mixed) if c < count
                    ]
                    mixed[chosen] = True
            tally = np.where(mixed, 0, tally)
        groups = routing.groups.get(consumer.call, 1) if consumer.call is not None else 1
        grouped = max(width // groups, 1) if groups > 1 else None
        found.append(_Arrival(consumer, width, mixed, tally, first, last, cells, grouped))
    return found


def _bytes(values: np.ndarray | None) -> bytes | None:
    return None if values is None else values.tobytes()


def _stacked(
    arrivals: list[_Arrival], fields: tuple[str, ...], at: np.ndarray, columns: int
) -> tuple[np.ndarray, ...]:
    """Each of ``fields`` of every arrival at channels ``at`` as one array, shape
    (arrivals, columns): a layer of a residual stream has dozens of arrivals, and one
    numpy call over all of them costs what one over each would."""
    if not arrivals:
        return tuple(np.zeros((0, columns), dtype=np.int64) for _ in fields)
    return tuple(np.array([getattr(a, field) for a in arrivals])[:, at] for field in fields)


def _placed(deliveries: list, count: int, width: int) -> tuple[np.ndarray, ...]:
    """(count, first, last, cells) of :class:`_Arrival` for the placed ``deliveries``."""
    marks = sum(
        int(np.count_nonzero(d.positions >= 0)) * (1 if d.held is None else len(d.held))
        for d in deliveries
    )
    # a table when it is small or well filled; a layer feeding a layer (one channel at one
    # input channel each: 4,096 marks in a 4,096 x 4,096 table) as sorted pairs
    if count * width <= min(_DENSE_CELLS, max(_FILLED * marks, _SMALL_TABLE)):
        cells = _table(deliveries, count, width)
        tally = cells.sum(axis=1)
        first = np.where(tally > 0, cells.argmax(axis=1), width)
        last = np.where(tally > 0, width - 1 - cells[:, ::-1].argmax(axis=1), -1)
        return tally, first, last, cells
    cells = _pairs(deliveries, width)
    chans, where = cells // max(width, 1), cells % max(width, 1)
    # sorted by channel, then input channel: each channel's first and last pair give its
    # lowest and highest input channel
    first = np.full(count, width, dtype=np.int64)
    last = np.full(count, -1, dtype=np.int64)
    if len(chans):
        starts = np.flatnonzero(np.r_[True, chans[1:] != chans[:-1]])
        ends = np.r_[starts[1:], len(chans)] - 1
        first[chans[starts]] = where[starts]
        last[chans[ends]] = where[ends]
    return np.bincount(chans, minlength=count)[:count], first, last, cells


def _table(deliveries: list, count: int, width: int) -> np.ndarray:
    """Which channel arrives at which input channel, as a (count, width) boolean table."""
    table = np.zeros((count, width), dtype=bool)
    for d in deliveries:
        if d.held is not None:  # every held channel at every marked input channel
            held = np.zeros(count, dtype=bool)
            held[d.held] = True
            table |= held[:, None] & (d.positions >= 0)
        else:
            where = np.flatnonzero(d.positions >= 0)
            table[d.positions[where], where] = True
    return table


def _pairs(deliveries: list, width: int) -> np.ndarray:
    """The sorted distinct ``channel * width + input channel`` pairs of the deliveries."""
    pairs = [np.empty(0, np.int64)]
    for d in deliveries:
        where = np.flatnonzero(d.positions >= 0)
        if d.held is not None:
            pairs.append((d.held[:, None] * width + where).ravel())
        else:
            pairs.append(d.positions[where].astype(np.int64) * width + where)
    return unique_values(np.concatenate(pairs))


# How one consumer sees two neighbouring channels (see _Segmenter.cuts).
_CUT, _SAME, _NEXT, _NEUTRAL, _GROUP = -1, 0, 1, 2, 3


def _one_way(cut: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """The further cuts that keep one way throughout a segment.

    ``kinds[:, c - 1]`` is how each consumer sees channels c - 1 and c (the step to c).
    Going up the channels, a segment takes the way of its first step; a later step
    that differs starts a new segment at its channel, whose way is then the step after
    it. So a step differing from the previous one cuts unless the previous channel
    started a segment, and in a row of such steps every other one cuts, from the first.

    Example:
        >>> cut = np.array([True, False, False, False, False])
        >>> kinds = np.array([[_SAME, _NEXT, _SAME, _SAME]])
        >>> _one_way(cut, kinds).tolist()  # steps 1: same, 2: next (cut), 3: way same
        [False, False, True, False, False]
    """
    count = len(cut)
    changes = np.zeros(count, dtype=bool)
    changes[2:] = (kinds[:, 1:] != kinds[:, :-1]).any(axis=0)
    eligible = changes & ~cut
    eligible[1:] &= ~cut[:-1]
    index = np.arange(count)
    first = eligible & ~np.r_[False, eligible[:-1]]
    run_start = np.maximum.accumulate(np.where(first, index, 0))
    return eligible & ((index - run_start) % 2 == 0)


def _alike_runs(
    a: _Arrival, channels: np.ndarray, group_width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each channel c of ``channels`` (each placed, as is c - 1): whether c reaches the
    same input channels as c - 1 (same), and whether c's runs of input channels each
    follow c - 1's, all runs of both as long as that step (continuing: c at c + k, or at
    c + k and c + k' after concatenating a tensor twice) — for a grouped consumer
    (``group_width`` input channels per group), each run in the one group of the run it
    follows.

    Every run of the channels involved is found at once (no loop over channels).

    Example:
        >>> consumer = Consumer("b")
        >>> cells = np.array([0, 4, 9, 13, 18, 22])  # channel * 8 + input channel
        >>> a = _Arrival(consumer, 8, np.zeros(3, bool), np.array([2, 2, 2]),
        ...              np.array([0, 1, 2]), np.array([4, 5, 6]), cells)
        >>> same, continuing = _alike_runs(a, np.array([1, 2]))  # 0 at {0, 4}, 1 at {1, 5} …
        >>> same.tolist(), continuing.tolist()
        ([False, False], [True, True])
    """
    count = len(a.count)
    wanted = np.zeros(count, dtype=bool)
    wanted[channels] = wanted[channels - 1] = True
    if a.cells.ndim == 2:
        rows = np.flatnonzero(wanted)
        row, where = np.nonzero(a.cells[rows])
        chan = rows[row]
    else:
        width = max(a.width, 1)
        chan = a.cells // width
        cells = a.cells[wanted[np.minimum(chan, count - 1)] & (chan < count)]
        chan, where = cells // width, cells % width
    # runs of consecutive input channels, per channel (pairs sorted by channel, then input)
    starts = np.flatnonzero(np.r_[True, (chan[1:] != chan[:-1]) | (where[1:] != where[:-1] + 1)])
    run_chan, run_start = chan[starts], where[starts]
    run_length = np.diff(np.r_[starts, len(chan)])
    runs = np.bincount(run_chan, minlength=count)
    first_run = np.searchsorted(run_chan, np.arange(count))
    length = run_length[np.minimum(first_run, len(run_length) - 1)]  # each channel's first
    even = np.bincount(run_chan, run_length != length[run_chan], minlength=count) == 0
    # the k-th run of channel c beside the k-th of c - 1, where both have as many runs
    paired = np.zeros(count, dtype=bool)
    paired[channels] = runs[channels] == runs[channels - 1]
    mine = np.flatnonzero(paired[run_chan])
    partner = mine - first_run[run_chan[mine]] + first_run[run_chan[mine] - 1]
    step = run_start[mine] - run_start[partner]
    moved = (step != 0) | (run_length[mine] != run_length[partner])
    apart = step != run_length[mine]
    owner = run_chan[mine]
    same = paired & (np.bincount(owner, moved, minlength=count) == 0)
    if group_width is not None:  # a run in another group, or across two, is not followed
        group = run_start // group_width
        split = (run_start + run_length - 1) // group_width != group
        apart |= split[mine] | split[partner] | (group[mine] != group[partner])
    following = (
        paired
        & even
        & np.r_[False, even[:-1]]
        & (length == np.r_[-1, length[:-1]])
        & (np.bincount(owner, apart, minlength=count) == 0)
    )
    return same[channels], following[channels]


def _unchanged(rows: np.ndarray) -> np.ndarray:
    """Per row, whether each entry but the first equals the one before it."""
    return rows[..., 1:] == rows[..., :-1]


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, stop) runs of consecutive positions."""
    cuts = np.flatnonzero(np.diff(positions) != 1) + 1
    return [(int(p[0]), int(p[-1]) + 1) for p in np.split(positions, cuts)]


class _Part(NamedTuple):
    """A part of one consumer's gradient that a segment receives (a future :class:`Source`).

    ``nodes`` are the segment-graph nodes the part continues through: the loss, or the
    segments of the sender whose channels overlap the part's group(s), reachable or not.
    """

    consumer: Consumer
    channels: tuple[int, int]
    mixed: bool
    group: tuple[int, ...] | None
    nodes: tuple[SegmentNode, ...]


class _Run(NamedTuple):
    """Segments ``head`` to ``head + count - 1`` of a call as a :class:`SegmentRun`; ``steps``:
    per part of the first segment, the shift of its input channels and groups per segment."""

    head: int
    count: int
    steps: tuple[tuple[int, int], ...]


class _Segmenter:
    """Cuts every call's channels into segments and finds what each segment receives."""

    def __init__(self, routing: ChannelRouting, calls: Iterable[str]) -> None:
        self.routing = routing
        self._nodes: dict[tuple[str, int, int], tuple[SegmentNode, ...]] = {}
        self._segment_of: dict[str, np.ndarray] = {}
        self._joined: dict[str, tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]] = {}
        self._heads: dict[str, np.ndarray] = {}  # per segment, the first of its run
        self._through: dict[str, Callable[[tuple[int, int] | None], tuple]] = {}
        alike: dict[tuple, tuple[np.ndarray, ...]] = {}
        calls = list(calls)
        order = {c: i for i, c in enumerate(calls)}
        self.arrivals = {
            c: _arrivals(routing, c, routing.out_channels.get(c, 0), alike, order) for c in calls
        }
        self.bounds: dict[str, list[tuple[int, int]]] = {}
        for call, arrivals in self.arrivals.items():
            count = routing.out_channels.get(call, 0)
            starts = self.cuts(arrivals, count).tolist() if count else []
            # each segment runs to the next start; a call without channels has none
            self.bounds[call] = list(zip(starts, [*starts[1:], count], strict=False))

    def cuts(self, arrivals: list[_Arrival], count: int) -> np.ndarray:
        """Channel indices where a new segment starts.

        Neighbouring channels stay together when, for every consumer, both arrive
        nowhere, both everywhere, both at the same input channels, or both at input
        channels that continue each other: the second channel's runs of input channels
        come right after the first's (channel c at c + k, or at c + k and c + k' after
        concatenating a tensor twice; a flattened channel at its block of positions) —
        for a grouped consumer each run within the group of the run it follows — and in
        one way (same or continuing) throughout a segment.
        """
        if count == 1:
            return np.zeros(1, dtype=np.int64)
        kinds = self.kinds(arrivals) if arrivals else None
        cut = np.zeros(count, dtype=bool)
        cut[0] = True
        if kinds is None:
            return np.flatnonzero(cut)
        cut[1:] = (kinds == _CUT).any(axis=0)
        if np.isin(kinds, (_SAME, _GROUP)).any():
            cut |= _one_way(cut, kinds)
        return np.flatnonzero(cut)

    def kinds(self, arrivals: list[_Arrival]) -> np.ndarray:
        """For each arrival (a row) and pair of neighbouring channels: how its consumer sees
        them. Every arrival at once: a layer of a residual stream has dozens."""
        count, first, last, mixed = (
            np.array([getattr(a, field) for a in arrivals])
            for field in ("count", "first", "last", "mixed")
        )
        present = mixed | (count > 0)
        placed = count > 0
        block = placed & (last - first + 1 == count)
        both = block[:, 1:] & block[:, :-1] & _unchanged(count)
        step = first[:, 1:] - first[:, :-1]
        tiled = both & (step == count[:, 1:])
        same = both & (step == 0)
        widths = [a.group_width for a in arrivals]
        rows = [k for k, width in enumerate(widths) if width is not None]
        inside = np.zeros_like(tiled)
        if rows:
            width = np.array([widths[k] for k in rows])[:, None]
            low, high = first[rows] // width, last[rows] // width
            one_group = placed[rows] & (low == high)
            inside[rows] = one_group[:, 1:] & one_group[:, :-1] & _unchanged(low)
            tiled[rows] &= inside[rows]
        # run by run; of a grouped consumer, each in its partner's group
        scattered = placed[:, 1:] & placed[:, :-1] & ~(block[:, 1:] & block[:, :-1])
        for k in np.flatnonzero(scattered.any(axis=1)).tolist():
            channels = np.flatnonzero(scattered[k]) + 1
            same[k, channels - 1], tiled[k, channels - 1] = _alike_runs(
                arrivals[k], channels, widths[k]
            )
        kinds = np.full(step.shape, _CUT, dtype=np.int8)
        kinds[tiled] = _NEXT
        kinds[same] = _SAME
        # every input channel of a group receives the same gradient (all the group's
        # output channels): channels anywhere in one group are alike, even after a
        # shuffle scattered them (docs/semantics.md §8)
        kinds[inside & ~mixed[:, 1:] & ~mixed[:, :-1]] = _GROUP
        neutral = (mixed[:, 1:] & mixed[:, :-1]) | (~present[:, 1:] & ~present[:, :-1])
        kinds[neutral] = _NEUTRAL
        return kinds

    def ranges(self, a: _Arrival, start: int, stop: int) -> list[tuple[tuple[int, int], bool]]:
        """The input-channel ranges of ``a``'s consumer that channels [start, stop) reach,
        each with whether every channel reaches all of it (mixed)."""
        if a.mixed[start]:
            return [((0, a.width), True)]
        block = a.last[start] - a.first[start] + 1 == a.count[start]
        if stop - start == 1 and block:  # one channel at one run of input channels
            return [((int(a.first[start]), int(a.last[start]) + 1), False)]
        width = a.group_width
        if width is not None and a.first[start] // width == a.last[stop - 1] // width:
            reached = a.reached(start, stop)
            runs = _runs(reached)
            if len(runs) == 1:
                return [(runs[0], False)]
            group = int(reached[0]) // width  # scattered in one group: the group's range
            return [((group * width, (group + 1) * width), False)]
        # channels alike (each at the same input channels) each reach all of them: mixed
        alike = stop - start > 1 and np.array_equal(a.positions(start), a.positions(start + 1))
        if block:
            return [((int(a.first[start]), int(a.last[stop - 1]) + 1), alike)]
        first, last = _runs(a.positions(start)), _runs(a.positions(stop - 1))
        return [((lo, hi), alike) for (lo, _), (_, hi) in zip(first, last, strict=True)]

    def segment_of(self, call: str) -> np.ndarray:
        """The index of the segment of each of ``call``'s channels."""
        of = self._segment_of.get(call)
        if of is None:
            bounds = self.bounds.get(call, ())
            of = np.repeat(np.arange(len(bounds)), [hi - lo for lo, hi in bounds])
            self._segment_of[call] = of
        return of

    def joined(self, call: str) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """Which segments of ``call`` continue the run (:class:`SegmentRun`) of the segment
        before them, and per arrival the shift of the input channels and of the groups from
        the segment before (0 for the first).

        Segment i joins segment i - 1 when both are one channel wide and every consumer
        sees them alike but for a shift: both nowhere, both everywhere (mixed), or each at
        one run of input channels of one length — in groups reaching the same sender
        segments, or sender segments moved by one shift within one run of the sender's
        (found already: the sender's runs are found first, see :func:`call_segments`;
        a run's segments have alike paths, so the moved ones deliver at the same rounds)
        — and, where segment i - 1 joined segment i - 2, by the same shifts as from i - 2
        to i - 1: a run moves by one shift throughout.
        """
        found = self._joined.get(call)
        if found is None:
            found = self._joined[call] = self._join(call)
            heads = np.where(found[0], 0, np.arange(len(found[0])))
            self._heads[call] = np.maximum.accumulate(heads) if len(heads) else heads
        return found

    def _join(self, call: str) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        bounds = self.bounds[call]
        count = len(bounds)
        starts = np.array([lo for lo, _ in bounds], dtype=np.int64)
        wide = np.diff(np.r_[starts, bounds[-1][1] if bounds else 0]) != 1
        joined = np.zeros(count, dtype=bool)
        joined[1:] = ~wide[1:] & ~wide[:-1]
        arrivals = self.arrivals[call]
        if not arrivals or not joined.any():  # no run (most calls): the shifts are not needed
            return joined, []
        # every arrival at once, a row each (a layer of a residual stream has dozens)
        first, last, mixed, placed = _stacked(
            arrivals, ("first", "last", "mixed", "count"), starts, count
        )
        present = mixed | (placed > 0)
        block = present & ~mixed & (last - first + 1 == placed)
        kind = np.where(block, 2, np.where(mixed, 1, np.where(present, 3, 0)))
        lo, top = np.where(block, first, 0), np.where(block, last, 0)
        joined[1:] &= ((kind[:, 1:] == kind[:, :-1]) & (kind[:, 1:] != 3)).all(axis=0)
        joined[1:] &= _unchanged(top - lo).all(axis=0)
        step, group_step = np.diff(lo, axis=1, prepend=lo[:, :1]), np.zeros_like(lo)
        moved = np.zeros(count, dtype=bool)  # shifts unlike those from i - 2 to i - 1
        grouped = [(k, w) for k, a in enumerate(arrivals) if (w := a.group_width)]
        if grouped:
            rows = [k for k, _ in grouped]
            width = np.array([w for _, w in grouped])[:, None]
            low, high = lo[rows] // width, top[rows] // width
            group_step[rows] = np.diff(low, axis=1, prepend=low[:, :1])
            ends, runs = self._sender_ends([arrivals[k].consumer for k in rows], low, high)
            node_step = np.diff(ends, axis=2)
            # the same sender segments, or ones moved alike within one run of the sender's
            alike = (node_step[0] == node_step[1]) & _unchanged(runs).all(axis=0)
            joined[1:] &= (_unchanged(high - low) & alike).all(axis=0)
            moved[2:] |= (np.diff(node_step[0], axis=1) != 0).any(axis=0)
        moved[2:] |= (np.diff(step, axis=1)[:, 1:] != 0).any(axis=0)
        moved[2:] |= (np.diff(group_step, axis=1)[:, 1:] != 0).any(axis=0)
        # a shift unlike the one before starts a new run, unless segment i - 1 started one
        # (in order: whether i - 1 started one depends on i - 2)
        started = set()
        for i in np.flatnonzero(joined[2:] & joined[1:-1] & moved[2:]).tolist():
            if i + 1 not in started:
                started.add(i + 2)
        joined[list(started)] = False
        return joined, list(zip(step, group_step, strict=True))

    def _sender_ends(
        self, consumers: list[Consumer], low: np.ndarray, high: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For grouped consumers (a row each) and their groups ``low`` to ``high`` per
        segment: the first and last sender segments :meth:`nodes` gives them (equal ends:
        the same nodes; 0 where every span reaches all of the sender, or nothing), shape
        (2, consumers, segments), and the run each of those is in (its first segment; a
        sender whose runs are not known yet: the segment itself, so only the same
        segments count as alike). Every consumer at once, their senders' segment indices
        end to end (a depthwise stack has thousands)."""
        of = [self.segment_of(c.call) for c in consumers]
        sizes = np.array([len(o) for o in of])
        groups = np.array([self.routing.groups.get(c.call, 1) for c in consumers])
        width = np.where(groups > 1, sizes // np.maximum(groups, 1), 0)[:, None]
        offset = (np.cumsum(sizes) - sizes)[:, None]
        last = np.maximum(sizes - 1, 0)[:, None]
        spans = (width > 0) & (sizes[:, None] > 0)
        where = np.stack([np.minimum(low * width, last), np.minimum((high + 1) * width - 1, last)])
        flat = np.concatenate([*of, np.zeros(1, dtype=np.int64)])
        ends = np.where(spans, flat[np.where(spans, where + offset, len(flat) - 1)], 0)
        # each sender's runs, where known (senders are joined before their consumers)
        heads = [self._heads.get(c.call) for c in consumers]
        known = np.array([h is not None and len(h) > 0 for h in heads])[:, None]
        flat_heads = np.concatenate(
            [*(h if h is not None else np.zeros(0, np.int64) for h in heads), np.zeros(1, np.int64)]
        )
        head_sizes = np.array([0 if h is None else len(h) for h in heads])
        head_offset = (np.cumsum(head_sizes) - head_sizes)[:, None]
        runs = np.where(
            known, flat_heads[np.where(known, ends + head_offset, len(flat_heads) - 1)], ends
        )
        return ends, runs

    def nodes(
        self, consumer: Consumer
    ) -> Callable[[tuple[int, int] | None], tuple[SegmentNode, ...]]:
        """The segment-graph nodes a delivery to ``consumer`` continues through, as a
        function of the consumer's groups ``span[0]`` to ``span[1]`` (of a grouped
        convolution; None: every group): the sender's segments overlapping them.

        Equal tuples are one object: the path search sums a shared tuple once, and many
        parts (every channel of a layer feeding one depthwise segment) reach the same nodes.
        """
        sender = consumer.call
        if sender is None:
            return lambda span: _TO_LOSS
        found = self._through.get(sender)
        if found is None:  # one per sender: a layer of a residual stream has dozens of readers
            found = self._through[sender] = self._sender_nodes(sender)
        return found

    def _sender_nodes(
        self, sender: str
    ) -> Callable[[tuple[int, int] | None], tuple[SegmentNode, ...]]:
        of = self.segment_of(sender).tolist()
        groups = self.routing.groups.get(sender, 1)
        width = len(of) // groups if groups > 1 else 0
        interned = self._nodes

        def through(span: tuple[int, int] | None) -> tuple[SegmentNode, ...]:
            lo, hi = (span[0] * width, (span[1] + 1) * width) if span and width else (0, len(of))
            if hi <= lo:
                return ()
            key = (sender, of[lo], of[hi - 1])
            found = interned.get(key)
            if found is None:
                found = interned[key] = tuple((sender, i) for i in range(key[1], key[2] + 1))
            return found

        return through

    def _parts(
        self,
        call: str,
        found: list[list[_Part]],
        rows: list[int],
        segments: list[int],
        easy: list[bool],
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        """Append to ``found`` the parts of arrival ``rows[k]`` (of ``call``) that segment
        ``segments[k]`` receives: input channels ``lo[k]`` to ``hi[k]`` where ``easy[k]``
        (one channel at one run), else :meth:`ranges`'."""
        arrivals = self.arrivals[call]
        bounds = self.bounds[call]
        # per arrival: its consumer's group width and nodes, and what every part of an
        # ungrouped consumer reaches
        widths = [a.group_width for a in arrivals]
        throughs = [self.nodes(a.consumer) for a in arrivals]
        wholes = [through(None) for through in throughs]
        # per arrival, a grouped consumer's groups from ``span[0]`` to ``span[1]``, and their nodes
        grouped: list[dict[tuple[int, int], tuple[tuple[int, ...], tuple[SegmentNode, ...]]]] = [
            {} for _ in arrivals
        ]
        for k, i, simple, start, stop in zip(
            rows, segments, easy, lo.tolist(), hi.tolist(), strict=True
        ):
            a, width, whole = arrivals[k], widths[k], wholes[k]
            if simple and width is None:  # the commonest part, made without more ado
                found[i].append(_Part(a.consumer, (start, stop), False, None, whole))
                continue
            for channels, mixed in (
                [((start, stop), False)] if simple else self.ranges(a, *bounds[i])
            ):
                group, nodes = None, whole
                if width is not None and not mixed:
                    span = (channels[0] // width, (channels[1] - 1) // width)
                    spans = grouped[k]
                    if span not in spans:
                        spans[span] = (tuple(range(span[0], span[1] + 1)), throughs[k](span))
                    group, nodes = spans[span]
                found[i].append(_Part(a.consumer, channels, mixed, group, nodes))

    def received(self, call: str) -> tuple[list[list[_Part]], list[_Run]]:
        """What each segment of ``call`` receives, per consumer and part (segments in
        channel order; in each, the consumers in listing order), and its runs of more than
        one segment. A run's segments hold its first segment's parts (the same list)."""
        bounds = self.bounds[call]
        found: list[list[_Part]] = [[] for _ in bounds]
        if not bounds:
            return found, []
        starts = np.array([start for start, _ in bounds])
        single = np.diff(np.r_[starts, bounds[-1][1]]) == 1
        joined, shifts = self.joined(call)
        arrivals = self.arrivals[call]
        heads = np.flatnonzero(~joined)
        # per arrival (a row) and head segment (a column): whether its channels reach the
        # consumer, and how
        first, last, mixed, count = _stacked(
            arrivals, ("first", "last", "mixed", "count"), starts[heads], len(heads)
        )
        present = mixed | (count > 0)
        # the parts by arrival, then segment: each segment lists its consumers in the
        # arrivals' order; one channel at one run of input channels has its range at hand
        rows, columns = np.nonzero(present)
        lo, hi = first[rows, columns], last[rows, columns] + 1
        easy = single[heads[columns]] & ~mixed[rows, columns] & (hi - lo == count[rows, columns])
        self._parts(call, found, rows.tolist(), heads[columns].tolist(), easy.tolist(), lo, hi)
        runs = []
        ends = np.r_[heads[1:], len(bounds)]
        for column in np.flatnonzero(ends - heads > 1).tolist():
            head, end = int(heads[column]), int(ends[column])
            # a run's parts: one per consumer its first segment reaches, each moved as its consumer
            steps = tuple(
                (int(step[head + 1]), int(group_step[head + 1]))
                for reaches, (step, group_step) in zip(present[:, column], shifts, strict=True)
                if reaches
            )
            runs.append(_Run(head, end - head, steps))
            found[head + 1 : end] = [found[head]] * (end - head - 1)
        return found, runs


def _segment_graph(
    received: Mapping[tuple[str, int], list[_Part]],
) -> dict[SegmentNode, list[tuple[SegmentNode, ...]]]:
    """The segment graph: each segment's successors, the nodes its gradient comes from, as
    its parts' node tuples (shared between parts reaching the same part of a sender; one
    list for the segments of a run); segments in forward order of their calls, a
    topological order."""
    groups: dict[int, list[tuple[SegmentNode, ...]]] = {}
    graph = {}
    for node, parts in received.items():
        found = groups.get(id(parts))
        if found is None:
            found = groups[id(parts)] = [p.nodes for p in parts]
        graph[node] = found
    return graph


def call_segments(
    routing: ChannelRouting, calls: Mapping[str, LayerCall]
) -> dict[str, list[Segment | SegmentRun]]:
    """Segments of every layer call's output channels, with their gradient paths.

    Args:
        routing: the result of :func:`gpa.channels.routing.route_channels`.
        calls: the layer calls in forward order (node name -> LayerCall).

    Returns:
        layer call -> its segments, in channel order, a run of segments alike but for a
        shift as one :class:`~gpa.core.segments.SegmentRun`; calls in forward order.
        Sources name their senders by layer record (:attr:`LayerCall.record`).
        (See this module's docstring for an example.)
    """
    segmenter = _Segmenter(routing, calls)
    for call in reversed(segmenter.bounds):  # a call's runs may follow its consumers' runs
        segmenter.joined(call)
    received: dict[tuple[str, int], list[_Part]] = {}
    runs: dict[str, dict[int, _Run]] = {}
    for call in segmenter.bounds:
        parts_of, found = segmenter.received(call)
        received.update(((call, i), parts) for i, parts in enumerate(parts_of))
        runs[call] = {run.head: run for run in found}
    index = layer_graph_index(_segment_graph(received), loss=LOSS)
    position, stamps = index.position, index.stamps  # the loss holds round 0: stamps 1
    # the rounds a part's nodes deliver at, once per distinct tuple of nodes (the
    # segmenter shares them: many parts reach the same part of a sender)
    delivered: dict[int, int] = {}
    senders: dict[int, str] = {}  # by id: every part of one arrival holds one Consumer
    # segments reaching the same nodes have the same paths: one object (every channel of
    # a layer feeding a depthwise convolution reaches the same segment of it)
    alike: dict[tuple[int, ...], GradientPaths | None] = {}
    result: dict[str, list[Segment | SegmentRun]] = {}
    for call, bounds in segmenter.bounds.items():
        fallback = tuple(sorted(routing.fallbacks.get(call, ())))
        result[call] = []
        i = 0
        while i < len(bounds):
            start, stop = bounds[i]
            parts = received[call, i]
            reach = tuple([id(p.nodes) for p in parts])
            if reach not in alike:
                alike[reach] = index.paths(position[call, i])
            sources = []
            steps = []  # of the sources kept, in a run
            run = runs[call].get(i)
            for part, step in zip(parts, run.steps if run else (None,) * len(parts), strict=True):
                consumer, channels, mixed, group, nodes = part
                rounds = delivered.get(id(nodes))
                if rounds is None:
                    rounds = 0
                    for node in nodes:
                        rounds |= stamps[position[node]] << 1
                    delivered[id(nodes)] = rounds
                if not rounds:  # it reaches none of its nodes
                    continue
                sender = senders.get(id(consumer))
                if sender is None:
                    sender = senders[id(consumer)] = (
                        consumer.sender if consumer.call is None else calls[consumer.call].record
                    )
                sources.append(
                    make_source(
                        sender, channels, rounds, group, consumer.output, consumer.argument, mixed
                    )
                )
                steps.append(step)
            segment = make_segment(start, stop, alike[reach], tuple(sources), fallback)
            if run is None:
                result[call].append(segment)
                i += 1
            else:  # its other segments have this one's paths: their nodes are the same
                result[call].append(SegmentRun(segment, run.count, tuple(steps)))
                i += run.count
    return result


def merge_calls(parts: list[list[Segment | SegmentRun]]) -> list[Segment | SegmentRun]:
    """Segments of a layer called several times: each channel range gets the paths of all
    calls (runs of a layer called once are kept as they are).

    Example:
        >>> from gpa.core.paths import GradientPaths
        >>> one = GradientPaths(stamps=0b10, num_paths=1, counts=lambda: {1: 1})
        >>> two = GradientPaths(stamps=0b100, num_paths=1, counts=lambda: {2: 1})
        >>> merged = merge_calls([[Segment(0, 4, one)], [Segment(0, 2, two), Segment(2, 4, None)]])
        >>> [(s.start, s.stop, s.paths.timestamps) for s in merged]
        [(0, 2, (1, 2)), (2, 4, (1,))]
    """
    if len(parts) == 1:
        return parts[0]
    parts = [list(SegmentList(p)) for p in parts]
    cuts = sorted({s.start for p in parts for s in p} | {s.stop for p in parts for s in p})
    merged = []
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        covering = [s for p in parts for s in p if s.start <= lo and hi <= s.stop]
        found = [s.paths for s in covering if s.paths is not None]
        merged.append(
            Segment(
                lo,
                hi,
                GradientPaths.union(found) if found else None,
                _joined_sources(_narrowed(src, s, lo, hi) for s in covering for src in s.sources),
                tuple(sorted({f for s in covering for f in s.fallback})),
            )
        )
    return merged


def _joined_sources(sources: Iterable[Source]) -> tuple[Source, ...]:
    """``sources`` with those delivering the same part of the same sender (several calls
    reaching it alike) as one, delivering at the rounds of them all; in order of first."""
    rounds: dict[tuple, tuple[Source, int]] = {}
    for x in sources:
        first, seen = rounds.get(source_key(x), (x, 0))
        rounds[source_key(x)] = first, seen | x.rounds
    return tuple(
        x if x.rounds == both else dataclasses.replace(x, rounds=both)
        for x, both in rounds.values()
    )


def _narrowed(source: Source, segment: Segment, lo: int, hi: int) -> Source:
    """``source`` of ``segment`` as the channels [lo, hi) of the segment receive it: one
    delivering a block of the sender's input channels per channel (neither mixed nor a
    group's: channel c reaches the block shifted along with c, ``docs/semantics.md`` §8)
    delivers the blocks of [lo, hi) alone; any other delivers the same to every channel.

    Example:
        >>> wide = Segment(0, 4, None, (Source("out", (0, 4), 0b10),))
        >>> _narrowed(wide.sources[0], wide, 2, 4).channels
        (2, 4)
    """
    width = segment.stop - segment.start
    block, rest = divmod(source.channels[1] - source.channels[0], width)
    if (
        source.mixed
        or source.group is not None
        or rest
        or (lo, hi) == (segment.start, segment.stop)
    ):
        return source
    first = source.channels[0]
    return make_source(
        source.sender,
        (first + (lo - segment.start) * block, first + (hi - segment.start) * block),
        source.rounds,
        source.group,
        source.output,
        source.argument,
        source.mixed,
    )
