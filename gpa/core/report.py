"""The result of an analysis: one record per layer and a network summary.

Reports are plain data: they hold the numbers defined in ``docs/semantics.md``; their
JSON form is :mod:`gpa.core.serialize`, their text, HTML and pictures live in
:mod:`gpa.render`. :func:`gpa.core.records.layer_records` builds the records, each with
all its fields at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import networkx as nx

from gpa.core.graph import LOSS
from gpa.core.paths import GradientPaths, bits
from gpa.core.segments import (
    Segment,
    SegmentList,
    Source,
    combination,
    count_combinations,
    make_segment,
    make_source,
)
from gpa.errors import GpaError

__all__ = [
    "LOSS",
    "LayerRecord",
    "NetworkSummary",
    "PathStep",
    "Report",
    "Segment",
    "SegmentList",
    "Source",
    "combination",
    "find_layer",
    "make_segment",
    "make_source",
    "record_graph",
]


class PathStep(NamedTuple):
    """One layer call on a gradient path: the layer's record name, its module type, the
    user's source line that made the call (``(file, line)``; None when the frontend cannot
    tell: functional layers under the autograd tracer, reports loaded from JSON), and which
    of the layer's calls it is (1-based, in forward order: a layer shared by several
    calls, ALBERT's, is on a path once per call it takes)."""

    layer: str
    type: str
    site: tuple[str, int] | None = None
    call: int = 1


@dataclass(frozen=True)
class LayerRecord:
    """Gradient paths of one layer (all calls of one module together), ``docs/semantics.md`` §4.

    ``deliveries`` maps each source (a layer name or ``<loss>``), in forward order, to the
    bitset of rounds at which that source itself holds gradient; the source hands it on
    one round later. ``params`` and ``flops`` follow §9 (None: not counted); ``segments``
    are the channel segments of §8 (None unless the analysis ran with ``channels``).
    """

    name: str
    type: str
    calls: int
    paths: GradientPaths | None
    deliveries: Mapping[str, int] = field(default_factory=dict)
    params: int | None = None
    flops: int | None = None
    segments: Sequence[Segment] | None = None
    site: tuple[str, int] | None = field(default=None, compare=False)
    route: Callable[[int], tuple[PathStep, ...]] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def reachable(self) -> bool:
        """Whether any gradient reaches this layer."""
        return self.paths is not None

    @property
    def shortest(self) -> int | None:
        """Length of the shortest gradient path from the loss to this layer, in layers
        counted with the layer itself (``docs/semantics.md`` §4); None when unreachable."""
        return self.paths.shortest if self.paths else None

    @property
    def longest(self) -> int | None:
        """Length of the longest gradient path, counted as :attr:`shortest`; None when
        unreachable."""
        return self.paths.longest if self.paths else None

    @property
    def timestamps(self) -> tuple[int, ...]:
        """The gradient timestamps: every round of the backward traversal at which
        gradient reaches this layer, ascending (the lengths of its gradient paths, §4)."""
        return self.paths.timestamps if self.paths else ()

    @property
    def num_paths(self) -> int:
        """How many distinct gradient paths reach this layer (0 when unreachable)."""
        return self.paths.num_paths if self.paths else 0

    @property
    def path_histogram(self) -> dict[int, int]:
        """Path length -> number of gradient paths of that length (§4)."""
        return self.paths.histogram if self.paths else {}

    @property
    def whole_tensor_only(self) -> tuple[int, ...]:
        """The rounds of this layer's record no channel segment of it is reached at: routes
        that carry none of its channels (a slice or pick drops them, ``docs/semantics.md``
        §8); empty without segments."""
        if self.paths is None or self.segments is None:
            return ()
        held = self.segments
        held = held if isinstance(held, SegmentList) else SegmentList(tuple(held))
        return bits(self.paths.stamps & ~held.stamps())

    @property
    def sources(self) -> tuple[str, ...]:
        """Layers (or ``<loss>``) that send gradient to this layer directly, in forward order."""
        return tuple(self.deliveries)

    def sources_at(self, t: int) -> tuple[str, ...]:
        """The sources delivering gradient to this layer at round ``t``."""
        if t < 1:
            return ()
        return tuple(s for s, stamps in self.deliveries.items() if stamps >> (t - 1) & 1)

    @property
    def gradient_combinations(self) -> int | None:
        """The number of distinct gradient combinations among this layer's segments."""
        if self.segments is None:
            return None
        if isinstance(self.segments, SegmentList):
            return self.segments.gradient_combinations()
        return count_combinations([self.segments])

    @property
    def channel_fallbacks(self) -> tuple[str, ...]:
        """Operations whose channel routing gpa could not follow exactly for this layer."""
        if isinstance(self.segments, SegmentList):
            return self.segments.fallbacks()
        return tuple(sorted({f for s in self.segments or () for f in s.fallback}))

    def shortest_path(self) -> tuple[PathStep, ...]:
        """One shortest gradient path: the layer calls from this layer to the loss (this
        layer first, the loss not included), ``docs/semantics.md`` §4.1 (witnesses).

        Among equal paths the choice is fixed: this layer's first call (forward order)
        that has one, then at each step the first next layer (in the graph's topological
        order) from which the rest of a path of that length continues. Empty when no
        gradient reaches the layer.

        Raises:
            GpaError: the record was loaded from JSON (paths are not stored there).

        Example:
            >>> import torch.nn as nn, gpa
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
            >>> [s.layer for s in gpa.analyze(net, input_shape=(1, 2)).layers["0"].shortest_path()]
            ['0', '2']
        """
        return self._path(self.shortest)

    def longest_path(self) -> tuple[PathStep, ...]:
        """One longest gradient path, chosen as :meth:`shortest_path` chooses (§4.1)."""
        return self._path(self.longest)

    def _path(self, length: int | None) -> tuple[PathStep, ...]:
        if length is None:
            return ()
        if self.route is None:
            from gpa.errors import GpaError

            raise GpaError(
                f"layer {self.name!r}: this record holds no gradient graph (a report loaded "
                "from JSON); analyse the model to see its paths"
            )
        return self.route(length)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON (``docs/semantics.md`` §7–§8)."""
        from gpa.core.serialize import record_dict

        return record_dict(self)


@dataclass(frozen=True)
class NetworkSummary:
    """Network-level gradient-path metrics (``docs/semantics.md`` §4, "Per network")."""

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
    def of(
        records: Mapping[str, LayerRecord],
        *,
        params: int | None = None,
        flops: int | None = None,
        count_convention: str | None = None,
    ) -> NetworkSummary:
        """The summary of ``records``, with the model's parameter and FLOP totals."""
        reached = [r for r in records.values() if r.reachable]
        shortest = [r.shortest for r in reached]
        with_segments = [r for r in records.values() if r.segments is not None]
        combinations = (
            count_combinations([r.segments for r in with_segments]) if with_segments else None
        )
        return NetworkSummary(
            layers=len(records),
            max_shortest=max(shortest, default=None),
            min_shortest=min(shortest, default=None),
            mean_shortest=round(sum(shortest) / len(shortest), 6) if shortest else None,
            longest=max((r.longest for r in reached), default=None),
            unreachable=tuple(r.name for r in records.values() if not r.reachable),
            params=params,
            flops=flops,
            count_convention=count_convention,
            gradient_combinations=combinations,
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON (``docs/semantics.md`` §7)."""
        from gpa.core.serialize import network_dict

        return network_dict(self)


@dataclass
class Report:
    """Everything :func:`gpa.analyze` found about one model.

    Attributes:
        model: display name of the model.
        inputs: shapes and dtypes of the example inputs (None without inputs).
        layers: layer name -> :class:`LayerRecord`, in forward order.
        network: the network summary.
        notes: remarks on how the analysis was done (what was skipped, fallbacks).
        tracer: the frontend that built the graph (``"fx"``, ``"export"`` or ``"autograd"``).
        options: the analysis options it was made with, as JSON
            (:meth:`gpa.options.AnalysisOptions.to_dict`; the inputs are ``inputs``).
    """

    model: str
    inputs: list[dict[str, Any]] | None
    layers: dict[str, LayerRecord]
    network: NetworkSummary
    notes: list[str] = field(default_factory=list)
    tracer: str | None = None
    options: dict[str, Any] | None = None

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The layer-level ``networkx.DiGraph``: layers and ``<loss>``, an edge from each
        layer to each of its sources (forward direction), the record's numbers on the nodes.

        Built on first access: a residual network has quadratically many such edges.
        """
        return record_graph(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the layout is documented in ``docs/semantics.md`` §7."""
        from gpa.core.serialize import report_dict

        return report_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON; the same model gives the same bytes on every run."""
        from gpa.core.serialize import to_json

        return to_json(self.to_dict(), indent)

    def __str__(self) -> str:
        from gpa.render.text import format_table

        return format_table(self)

    def _repr_html_(self) -> str:
        """Jupyter display: the styled report of ``--format html`` without its figures (a
        summary, a sortable and filterable layer table, each layer's paths on click)."""
        from gpa.render.html import report_html

        return report_html(self, figures=False)

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


def find_layer(report: Report, layer: str) -> LayerRecord:
    """``report``'s record of ``layer``, for the commands naming one (``gpa explain``,
    ``gpa plot --kind histogram``).

    Raises:
        GpaError: ``layer`` is no layer of the report; the message suggests the layers a
            block of that name holds (Ultralytics' ``Conv`` holds ``.conv``), else those
            whose qualified name ends in it (``q_proj``: every attention's), else the
            closest names.

    Example:
        >>> import gpa, torch.nn as nn
        >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
        >>> r = gpa.analyze(net, input_shape=(1, 2), name="net")
        >>> find_layer(r, "0")
        Traceback (most recent call last):
        ...
        gpa.errors.GpaError: net has no layer named '0' (did you mean 0.0?)
    """
    record = report.layers.get(layer)
    if record is not None:
        return record
    inside = [name for name in report.layers if name.startswith(f"{layer}.")][:3]
    ending = [name for name in report.layers if name.endswith(f".{layer}")][:3]
    close = (
        inside or ending or difflib.get_close_matches(layer, list(report.layers), n=3, cutoff=0.5)
    )
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise GpaError(f"{report.model} has no layer named {layer!r}{hint}")
