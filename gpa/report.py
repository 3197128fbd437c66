"""The result of an analysis: one record per layer and a network summary.

Reports are plain data: they hold the numbers defined in ``docs/semantics.md``
and know how to serialise themselves; rendering lives in :mod:`gpa.format`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import networkx as nx

from gpa import __version__
from gpa.paths import GradientPaths, bits
from gpa.segments import Segment, Source, combination

__all__ = ["LayerRecord", "NetworkSummary", "Report"]

LOSS = "<loss>"


@dataclass(frozen=True)
class LayerRecord:
    """Gradient paths of one layer (all calls of one module together).

    ``deliveries`` maps each source (a layer name or ``<loss>``), in forward
    order, to the bitset of rounds at which that source itself holds gradient;
    the source hands it on one round later.
    """

    name: str
    type: str
    calls: int
    paths: GradientPaths | None
    deliveries: Mapping[str, int] = field(default_factory=dict)
    params: int | None = None
    flops: int | None = None
    segments: tuple[Segment, ...] | None = None

    @property
    def reachable(self) -> bool:
        """Whether any gradient reaches this layer."""
        return self.paths is not None

    @property
    def shortest(self) -> int | None:
        return self.paths.shortest if self.paths else None

    @property
    def longest(self) -> int | None:
        return self.paths.longest if self.paths else None

    @property
    def timestamps(self) -> tuple[int, ...]:
        return self.paths.timestamps if self.paths else ()

    @property
    def num_paths(self) -> int:
        return self.paths.num_paths if self.paths else 0

    @property
    def path_histogram(self) -> dict[int, int]:
        return self.paths.histogram if self.paths else {}

    @property
    def sources(self) -> tuple[str, ...]:
        """Layers (or ``<loss>``) that send gradient to this layer directly, in forward order."""
        return tuple(self.deliveries)

    def sources_at(self, t: int) -> tuple[str, ...]:
        """The sources delivering gradient to this layer at round ``t``."""
        if t < 1:
            return ()
        return tuple(s for s, stamps in self.deliveries.items() if stamps >> (t - 1) & 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "calls": self.calls,
            "shortest": self.shortest,
            "longest": self.longest,
            "timestamps": list(self.timestamps),
            "num_paths": self.num_paths,
            "path_histogram": {str(k): v for k, v in self.path_histogram.items()},
            "sources": list(self.sources),
            "params": self.params,
            "flops": self.flops,
            **self._channel_dict(),
        }

    @property
    def gradient_combinations(self) -> int | None:
        """The number of distinct gradient combinations among this layer's segments."""
        if self.segments is None:
            return None
        return len({combination(s) for s in self.segments if s.paths is not None})

    @property
    def channel_fallbacks(self) -> tuple[str, ...]:
        """Operations whose channel routing gpa could not follow exactly for this layer."""
        return tuple(sorted({f for s in self.segments or () for f in s.fallback}))

    def _channel_dict(self) -> dict[str, Any]:
        if self.segments is None:
            return {}
        found = {
            "segments": [segment_dict(s) for s in self.segments],
            "gradient_combinations": self.gradient_combinations,
        }
        if self.channel_fallbacks:
            found["channel_fallback"] = list(self.channel_fallbacks)
        return found


def segment_dict(s: Segment) -> dict[str, Any]:
    """One segment as JSON (``docs/semantics.md``, channel segments)."""
    paths = s.paths
    return {
        "channels": [s.start, s.stop],
        "shortest": paths.shortest if paths else None,
        "longest": paths.longest if paths else None,
        "timestamps": list(paths.timestamps) if paths else [],
        "num_paths": paths.num_paths if paths else 0,
        "path_histogram": {str(k): v for k, v in paths.histogram.items()} if paths else {},
        "sources": [source_dict(x) for x in s.sources],
    }


def source_dict(x: Source) -> dict[str, Any]:
    """A segment's source as JSON: the sender and the part of its gradient delivered."""
    found: dict[str, Any] = {"from": x.sender, "channels": list(x.channels)}
    if x.output is not None:
        found["output"] = x.output
    if x.group is not None:
        found["group"] = list(x.group)
    if x.argument is not None:
        found["argument"] = x.argument
    if x.mixed:
        found["mixed"] = True
    found["rounds"] = list(bits(x.rounds))
    return found


@dataclass(frozen=True)
class NetworkSummary:
    """Network-level gradient-path metrics (``docs/semantics.md``, "Network")."""

    layers: int
    max_shortest: int | None
    min_shortest: int | None
    mean_shortest: float | None
    longest: int | None
    unreachable: tuple[str, ...]
    params: int | None = None
    flops: int | None = None
    count_convention: str | None = None
    gradient_combinations: int | None = None

    @staticmethod
    def of(records: Mapping[str, LayerRecord]) -> NetworkSummary:
        reached = [r for r in records.values() if r.reachable]
        shortest = [r.shortest for r in reached]
        with_segments = [r for r in records.values() if r.segments is not None]
        combinations = (
            len({combination(s) for r in with_segments for s in r.segments if s.paths})
            if with_segments
            else None
        )
        return NetworkSummary(
            gradient_combinations=combinations,
            layers=len(records),
            max_shortest=max(shortest, default=None),
            min_shortest=min(shortest, default=None),
            mean_shortest=round(sum(shortest) / len(shortest), 6) if shortest else None,
            longest=max((r.longest for r in reached), default=None),
            unreachable=tuple(r.name for r in records.values() if not r.reachable),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "max_shortest": self.max_shortest,
            "min_shortest": self.min_shortest,
            "mean_shortest": self.mean_shortest,
            "longest": self.longest,
            "unreachable": list(self.unreachable),
            "params": self.params,
            "flops": self.flops,
            "count_convention": self.count_convention,
            **(
                {"gradient_combinations": self.gradient_combinations}
                if self.gradient_combinations is not None
                else {}
            ),
        }


@dataclass
class Report:
    """Everything :func:`gpa.analyze` found about one model.

    Attributes:
        model: display name of the model.
        inputs: shapes and dtypes of the example inputs (None without inputs).
        layers: layer name -> :class:`LayerRecord`, in forward order.
        network: the network summary.
        notes: remarks on how the analysis was done (what was skipped, fallbacks).
    """

    model: str
    inputs: list[dict[str, Any]] | None
    layers: dict[str, LayerRecord]
    network: NetworkSummary
    notes: list[str] = field(default_factory=list)

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The layer-level ``networkx.DiGraph``: layers and ``<loss>``, an edge from each
        layer to each of its sources (forward direction), the record's numbers on the nodes.

        Built on first access: a residual network has quadratically many such edges.
        """
        return record_graph(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the layout is documented in ``docs/semantics.md``."""
        return {
            "gpa_version": __version__,
            "model": self.model,
            "inputs": self.inputs,
            "network": self.network.to_dict(),
            "layers": [r.to_dict() for r in self.layers.values()],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON; the same model gives the same bytes on every run."""
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        from gpa.format import format_table

        return format_table(self)

    def _repr_html_(self) -> str:
        """Jupyter display: the network summary, then one table row per layer."""
        from gpa.html_report import report_html

        return report_html(self)

    def __repr__(self) -> str:
        n = self.network
        return (
            f"<Report {self.model}: {n.layers} layers, max_shortest={n.max_shortest}, "
            f"longest={n.longest}>"
        )


def record_graph(records: Mapping[str, LayerRecord]) -> nx.DiGraph:
    """The layer-level graph of a set of records, with their numbers on the nodes."""
    g = nx.DiGraph()
    for r in records.values():
        g.add_node(
            r.name,
            type=r.type,
            calls=r.calls,
            shortest=r.shortest,
            longest=r.longest,
            timestamps=r.timestamps,
            num_paths=r.num_paths,
        )
    g.add_node(LOSS, type="loss", calls=0, shortest=0, longest=0, timestamps=(0,), num_paths=1)
    for r in records.values():
        g.add_edges_from((r.name, s) for s in r.deliveries)
    return g
