"""Layer records from a gradient graph: the one place a :class:`LayerRecord` is built.

Each layer call's gradient paths come from :func:`gpa.core.paths.gradient_paths` over the
graph; the calls of one module merge into one record (``docs/semantics.md`` §2, "Records"),
and the record gets its parameter and FLOP counts (§9) and channel segments (§8), when
given, in the same step.

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
from collections.abc import Hashable, Mapping, Sequence

from gpa.core.graph import LOSS, GradientGraph
from gpa.core.paths import GradientPaths, gradient_paths
from gpa.core.report import LayerRecord, Segment

__all__ = ["layer_records"]


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
    stamps = {n: p.paths.stamps for n, p in found.items() if p.paths} | {LOSS: 1}
    grouped: dict[str, list[Hashable]] = defaultdict(list)
    for node, call in names.items():
        grouped[call.record].append(node)
    rank = {record: i for i, record in enumerate(grouped)} | {LOSS: len(grouped)}
    kinds = {call.record: call.type for call in names.values()}
    members_paths: dict[str, GradientPaths | None] = {}
    deliveries: dict[str, dict[str, int]] = {}
    for record, members in grouped.items():
        reached = [found[m].paths for m in members if found[m].paths]
        members_paths[record] = GradientPaths.union(reached) if reached else None
        delivered: dict[str, int] = defaultdict(int)
        for m in members:
            for succ in found[m].sources:
                delivered[names[succ].record if succ in names else succ] |= stamps[succ]
        deliveries[record] = {s: delivered[s] for s in sorted(delivered, key=rank.__getitem__)}
    calls = {record: len(members) for record, members in grouped.items()}
    for missing, kind in graph.uncalled:
        if missing not in calls:
            calls[missing], kinds[missing] = 0, kind
            members_paths[missing], deliveries[missing] = None, {}
    return {
        name: LayerRecord(
            name=name,
            type=kinds[name],
            calls=count,
            paths=members_paths[name],
            deliveries=deliveries[name],
            params=None if params is None else params.get(name),
            flops=None if flops is None else flops.get(name),
            segments=None if segments is None else tuple(segments.get(name, ())),
        )
        for name, count in calls.items()
    }
