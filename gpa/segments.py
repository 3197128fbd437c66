"""Channel segments: gradient paths of parts of a layer's output channels.

A layer's output channels are cut into *segments*: maximal ranges of channels
that receive gradient from the same senders, through the same part of each
sender (the same input channels, shifted along with the channel, or the same
group of a grouped convolution). Every channel of a segment therefore has the
same gradient record.

At channel level a gradient path is the sequence of (layer call, segment) it
crosses; the loss counts as one node. One pass over the layer calls in reverse
forward order computes each segment's paths from the segments of its senders,
exactly as :mod:`gpa.paths` does for whole layers. A network without partial
channel operations has one segment per layer, equal to the whole-layer record.

Example:
    >>> import torch, torch.nn as nn
    >>> from gpa.api import fx_gradient_graph
    >>> from gpa.channels import route_channels
    >>> class Masked(nn.Module):  # a masked residual: the identity feeds half the channels
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         y = self.a(x)
    ...         f = self.b(y)
    ...         return torch.cat([f[:, :2] + y[:, :2], f[:, 2:]], 1)
    >>> g = fx_gradient_graph(Masked(), input_shape=(1, 4))
    >>> segs = channel_segments(route_channels(g.traced, g.calls), g.calls)
    >>> [(s.start, s.stop, s.paths.timestamps) for s in segs["a"]]
    [(0, 2, (1, 2)), (2, 4, (2,))]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from gpa.channels import ChannelRouting
from gpa.layers import LayerCall
from gpa.paths import GradientPaths, bits

__all__ = ["Source", "Segment", "channel_segments", "combination", "merge_calls", "LOSS"]

LOSS = "<loss>"
_LOSS_PATHS = GradientPaths(stamps=1, num_paths=1, offset=0, counts=(1,))


@dataclass(frozen=True)
class Source:
    """A sender of gradient to a segment and the part of its gradient delivered.

    ``sender`` is a layer call or ``<loss>``; ``channels`` the [start, stop) range
    of the sender's input channels (of the returned tensor, for the loss) that
    carry the segment's channels; ``group`` the sender's group for a grouped
    convolution; ``output`` the returned value's path for the loss; ``argument``
    the sender's tensor argument when it takes several; ``mixed`` whether every
    channel of the segment reaches every input channel of the sender (through a
    softmax, a layer norm, an attention …) rather than one each. ``rounds`` is the
    bitset of rounds at which the segment receives gradient from this sender
    (round 1 from the loss; one round after the sender's own timestamps).
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
    """Output channels [start, stop) of one layer call with one gradient record."""

    start: int
    stop: int
    paths: GradientPaths | None
    sources: tuple[Source, ...] = ()
    fallback: tuple[str, ...] = field(default=())


def _split_label(label: str) -> tuple[str, int | None, str | None]:
    """(sender, argument index, output path) of a delivery's consumer label."""
    if label.startswith(LOSS):
        return LOSS, None, label[len(LOSS) + 1 :] or None
    name, _, arg = label.partition("#")
    return name, (int(arg) if arg else None), None


def _per_channel(routing: ChannelRouting, call: str, count: int) -> list[dict[str, object]]:
    """For each output channel of ``call``: consumer label -> sorted positions, or ``"*"``."""
    channels: list[dict[str, object]] = [defaultdict(set) for _ in range(count)]
    for d in routing.inbound.get(call, ()):
        if d.positions is None:
            for c in range(count) if d.mixed is None else d.mixed:
                if c < count:
                    channels[c][d.consumer] = "*"
            continue
        where = np.flatnonzero(d.positions >= 0)
        chans = d.positions[where]
        order = np.argsort(chans, kind="stable")
        chans, where = chans[order], where[order]
        cuts = np.flatnonzero(np.diff(chans)) + 1
        for cs, ps in zip(np.split(chans, cuts), np.split(where, cuts), strict=True):
            entry = channels[int(cs[0])]
            if entry.get(d.consumer) != "*":
                entry[d.consumer].update(ps.tolist())
    return [
        {k: (v if v == "*" else tuple(sorted(v))) for k, v in sorted(ch.items())} for ch in channels
    ]


def _group_of(positions: tuple[int, ...], width: int, groups: int) -> tuple[int, ...] | None:
    if groups <= 1:
        return None
    return tuple(sorted({p // max(width // groups, 1) for p in positions}))


class _Segmenter:
    def __init__(self, routing: ChannelRouting, calls: Mapping[str, LayerCall]) -> None:
        self.routing = routing
        self.calls = calls
        self.result: dict[str, list[Segment]] = {}

    def groups(self, sender: str) -> int:
        return self.routing.groups.get(sender, 1)

    def signature(self, entries: dict[str, object]) -> tuple:
        sig = []
        for label, pos in entries.items():
            sender, _, _ = _split_label(label)
            if pos == "*":
                sig.append((label, "*"))
                continue
            width = self.routing.in_channels.get(label, 0)
            group = None if sender == LOSS else _group_of(pos, width, self.groups(sender))
            sig.append((label, group, tuple(p - pos[0] for p in pos)))
        return tuple(sig)

    @staticmethod
    def base(entries: dict[str, object]) -> tuple[int, ...]:
        return tuple(0 if pos == "*" else pos[0] for pos in entries.values())

    def reached(self, label: str, group: tuple[int, ...] | None) -> list[tuple[str, int]]:
        """Path nodes (sender call, segment index) a delivery to ``label`` continues through."""
        sender, _, _ = _split_label(label)
        if sender == LOSS:
            return [(LOSS, 0)]
        segments = self.result.get(sender, [])
        count = self.routing.out_channels.get(sender, 0)
        groups = self.groups(sender)
        if group is None or groups <= 1:
            ranges = [(0, count)]
        else:
            width = count // groups
            ranges = [(g * width, (g + 1) * width) for g in group]
        return [
            (sender, i)
            for i, s in enumerate(segments)
            if s.paths is not None and any(s.start < hi and lo < s.stop for lo, hi in ranges)
        ]

    def paths_of(self, node: tuple[str, int]) -> GradientPaths:
        return _LOSS_PATHS if node[0] == LOSS else self.result[node[0]][node[1]].paths

    def segment(
        self, call: str, start: int, stop: int, entries: list[dict[str, object]]
    ) -> Segment:
        first, last = entries[0], entries[-1]
        nodes: set[tuple[str, int]] = set()
        sources = []
        for label, pos in first.items():
            sender, argument, output = _split_label(label)
            width = self.routing.in_channels.get(label, 0)
            if pos == "*":
                group = None
                lo, hi = 0, width
            else:
                group = None if sender == LOSS else _group_of(pos, width, self.groups(sender))
                lo = min(min(e[label]) for e in (first, last))
                hi = max(max(e[label]) for e in (first, last)) + 1
            reached = self.reached(label, group)
            if not reached:
                continue
            nodes.update(reached)
            rounds = 0
            for node in reached:
                rounds |= self.paths_of(node).stamps << 1
            sources.append(Source(sender, (lo, hi), rounds, group, output, argument, pos == "*"))
        paths = (
            GradientPaths.union([self.paths_of(n) for n in sorted(nodes)]).shifted()
            if nodes
            else None
        )
        fallback = tuple(sorted(self.routing.fallbacks.get(call, ())))
        return Segment(start, stop, paths, tuple(sources), fallback)

    def run(self, call: str) -> list[Segment]:
        count = self.routing.out_channels.get(call, 0)
        per_channel = _per_channel(self.routing, call, count)
        segments: list[Segment] = []
        start = 0
        stride: tuple[int, ...] | None = None
        for c in range(1, count + 1):
            if c < count:
                same = self.signature(per_channel[c]) == self.signature(per_channel[c - 1])
                step = (
                    tuple(
                        b - a
                        for a, b in zip(
                            self.base(per_channel[c - 1]), self.base(per_channel[c]), strict=True
                        )
                    )
                    if same
                    else None
                )
                if same and (stride is None or step == stride):
                    stride = step
                    continue
            segments.append(self.segment(call, start, c, per_channel[start:c]))
            start, stride = c, None
        return segments


def channel_segments(
    routing: ChannelRouting, calls: Mapping[str, LayerCall]
) -> dict[str, list[Segment]]:
    """Segments of every layer call's output channels, with their gradient paths.

    Args:
        routing: the result of :func:`gpa.channels.route_channels`.
        calls: the layer calls in forward order (node name -> LayerCall).

    Returns:
        layer call -> its segments, in channel order.
    """
    segmenter = _Segmenter(routing, calls)
    for call in reversed(list(calls)):
        segmenter.result[call] = segmenter.run(call)
    return segmenter.result


def combination(segment: Segment) -> frozenset:
    """A segment's gradient combination: its set of (round, source) pairs (paper, Section 4.1).

    A source is identified by its sender and the part of the sender's gradient
    delivered (channels, group, output, argument, mixed).
    """
    return frozenset(
        (t, s.sender, s.channels, s.group, s.output, s.argument, s.mixed)
        for s in segment.sources
        for t in bits(s.rounds)
    )


def merge_calls(parts: list[list[Segment]]) -> list[Segment]:
    """Segments of a layer called several times: each channel range gets the paths of all calls."""
    if len(parts) == 1:
        return parts[0]
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
                tuple(src for s in covering for src in s.sources),
                tuple(sorted({f for s in covering for f in s.fallback})),
            )
        )
    return merged
