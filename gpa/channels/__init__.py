"""Channel segments (``docs/semantics.md`` §8): gradient paths of parts of a layer's channels.

:mod:`~gpa.channels.routing` follows every layer call's output channels through the fx
graph, each operation by its rule in :mod:`~gpa.channels.rules` (a table from operation
to rule; the rules are built on the channel values of :mod:`~gpa.channels.values`, read
their node through :mod:`~gpa.channels.operations`, and those of data movement are in
:mod:`~gpa.channels.movement`); :mod:`~gpa.channels.segments` cuts them into segments with their own gradient
paths. :func:`channel_segments` gives, per layer record, its segments with every call
merged and senders named by record.

Example:
    >>> import torch, torch.nn as nn
    >>> from gpa.frontends.fx import fx_gradient_graph
    >>> from gpa.options import AnalysisOptions
    >>> class Split(nn.Module):  # CSP-style: half the channels skip the block
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(2, 2), nn.Linear(4, 1)
    ...     def forward(self, x):
    ...         y = self.a(x)
    ...         return self.c(torch.cat([y[:, :2], self.b(y[:, 2:])], 1))
    >>> found = channel_segments(fx_gradient_graph(Split(), AnalysisOptions(input_shape=(1, 4))))
    >>> [(s.start, s.stop, s.paths.shortest) for s in found["a"]]
    [(0, 2, 2), (2, 4, 3)]
"""

from __future__ import annotations

from collections import defaultdict

from gpa.channels.routing import route_channels
from gpa.channels.segments import call_segments, merge_calls
from gpa.core.graph import GradientGraph, OutputKey, OwnerCall
from gpa.core.segments import Segment, SegmentList, SegmentRun
from gpa.errors import GpaError

__all__ = ["channel_segments"]


def channel_segments(
    graph: GradientGraph, outputs: tuple[OutputKey, ...] | None = None
) -> dict[str, SegmentList]:
    """Record name -> its channel segments, for every layer called in ``graph``.

    Raises:
        GpaError: ``graph`` has no annotated fx module with shapes (the autograd tracer,
            or no example inputs).
    """
    if graph.traced is None or graph.inputs is None:
        raise GpaError(
            "the channel analysis needs example inputs (--input-shape / example_inputs) and "
            "fx's graph: it follows channels through the shapes of every traced tensor"
        )
    found = call_segments(route_channels(graph.traced, graph.calls, outputs), graph.calls)
    # a call of several records' weights (§2): each has the call's segments, its fx node's
    found.update({key: found[key.call] for key in graph.calls if isinstance(key, OwnerCall)})
    rename = {call: c.record for call, c in graph.calls.items()}
    grouped: dict[str, list[list[Segment | SegmentRun]]] = defaultdict(list)
    # latest call first: a layer called several times lists its last call's sources first
    for call, segments in reversed(found.items()):
        grouped[rename[call]].append(segments)
    return {record: SegmentList(merge_calls(parts)) for record, parts in grouped.items()}
