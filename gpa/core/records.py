"""Layer records from a gradient graph: the one place a :class:`LayerRecord` is built.

Each layer call's gradient paths come from :func:`gpa.core.paths.gradient_paths` over the
graph; the calls of one module merge into one record (``docs/semantics.md`` §2, "Records"),
and the record gets its parameter and FLOP counts (§9) and channel segments (§8), when
given, in the same step. A record's sources (with the rounds each delivers at) are read
from the path index when first asked for: on a residual stream they are quadratic in
number, and an analysis that does not print them does not hold them.

Example:
    >>> import networkx as nx
    >>> from gpa.core.graph import GradientGraph, LayerCall
    >>> ops = nx.DiGraph([("a", "b"), ("b", "<loss>"), ("a", "<loss>")])
    >>> nx.set_edge_attributes(ops, True, "grad")
    >>> graph = GradientGraph(ops, {"a": LayerCall("a", "Linear"), "b": LayerCall("b", "Linear")}, "fx")
    >>> records = layer_records(graph)
    >>> [(r.name, r.shortest, r.longest, r.sources) for r in records.values()]
    [('a', 1, 2, ('b', '<loss>')), ('b', 1, 1, ('<loss>',))]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping, Sequence

from gpa.core.graph import LOSS, GradientGraph, LayerCall
from gpa.core.paths import GradientPaths, LayerPaths, gradient_paths
from gpa.core.report import LayerRecord, PathStep
from gpa.core.segments import Segment, SegmentList

__all__ = ["layer_records"]


class _Deliveries(Mapping[str, int]):
    """A record's sources -> the rounds at which each holds gradient (read lazily).

    Sources are named by record and listed in forward order, ``<loss>`` last; a source's
    value is the bitset of its own timestamps over the calls that deliver to this record.
    """

    def __init__(
        self, members: list[LayerPaths], record_of: Mapping[Hashable, str], rank: Mapping[str, int]
    ) -> None:
        self._members, self._record_of, self._rank = members, record_of, rank
        self._found: dict[str, int] | None = None

    def _resolve(self) -> dict[str, int]:
        if self._found is None:
            delivered: dict[str, int] = defaultdict(int)
            for member in self._members:
                index = member.index
                for succ in member.sources:
                    stamps = index.stamps[index.position[succ]]
                    delivered[self._record_of.get(succ, succ)] |= stamps
            order = sorted(delivered, key=self._rank.__getitem__)
            self._found = {s: delivered[s] for s in order}
        return self._found

    def __getitem__(self, key: str) -> int:
        return self._resolve()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolve())

    def __len__(self) -> int:
        return len(self._resolve())

    def __repr__(self) -> str:
        return repr(self._resolve())


def layer_records(
    graph: GradientGraph,
    *,
    params: Mapping[str, int | None] | None = None,
    flops: Mapping[str, int | None] | None = None,
    segments: Mapping[str, Sequence[Segment]] | None = None,
) -> dict[str, LayerRecord]:
    """One record per layer of ``graph``, in forward order (never-called layers last).

    Args:
        graph: a gradient graph from any frontend.
        params, flops: record name -> its counts (:func:`gpa.frontends.counts.layer_counts`).
        segments: record name -> its channel segments (:func:`gpa.channels.channel_segments`);
            None when the analysis is at layer level only.
    """
    names = graph.calls
    found = gradient_paths(graph.ops, names, loss=LOSS)
    grouped: dict[str, list[Hashable]] = defaultdict(list)
    for node, call in names.items():
        grouped[call.record].append(node)
    rank = {record: i for i, record in enumerate(grouped)} | {LOSS: len(grouped)}
    record_of = {node: call.record for node, call in names.items()}
    # each call's place among its layer's calls (1-based), for path witnesses
    call_number = {m: i + 1 for members in grouped.values() for i, m in enumerate(members)}
    kinds = {call.record: call.type for call in names.values()}

    def record(name: str, kind: str, calls: int, members: list[Hashable]) -> LayerRecord:
        reached = [found[m].paths for m in members if found[m].paths]
        return LayerRecord(
            name=name,
            type=kind,
            calls=calls,
            paths=GradientPaths.union(reached) if reached else None,
            deliveries=_Deliveries([found[m] for m in members], record_of, rank),
            params=None if params is None else params.get(name),
            flops=None if flops is None else flops.get(name),
            segments=None if segments is None else _segment_sequence(segments.get(name, ())),
            site=names[members[0]].site if members else None,
            route=_Route([(m, found[m]) for m in members], names, call_number),
        )

    records = {name: record(name, kinds[name], len(m), m) for name, m in grouped.items()}
    for missing, kind in graph.uncalled:
        if missing not in records:
            records[missing] = record(missing, kind, 0, [])
    return records


class _Route:
    """A record's gradient path of a given length (:meth:`LayerRecord.path_of_length`):
    the first of its calls ``members`` with a path of that length, read off their path
    index; ``calls`` names each layer node, ``numbers`` tells which of its layer's calls
    it is. A class, not a closure, so that a report pickles (sent to another process, or
    cached)."""

    def __init__(
        self,
        members: list[tuple[Hashable, LayerPaths]],
        calls: Mapping[Hashable, LayerCall],
        numbers: Mapping[Hashable, int],
    ) -> None:
        self.members, self.calls, self.numbers = members, calls, numbers

    def __call__(self, length: int) -> tuple[PathStep, ...]:
        for node, found in self.members:
            if found.paths is not None and found.paths.stamps >> length & 1:
                index = found.index
                positions = index.path_of_length(index.position[node], length)
                return tuple(self._step(index.nodes[p]) for p in positions[:-1])
        return ()

    def _step(self, node: Hashable) -> PathStep:
        call = self.calls[node]
        return PathStep(call.record, call.type, call.site, self.numbers[node])


def _segment_sequence(segments: Sequence[Segment]) -> Sequence[Segment]:
    """A record's segments: a :class:`SegmentList` as it is (its segments are made when
    read), any other sequence as a tuple."""
    return segments if isinstance(segments, SegmentList) else tuple(segments)
