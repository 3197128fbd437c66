"""JSON forms of reports (``docs/semantics.md`` §7–§8): plain dicts, byte-stable text.

Example:
    >>> from gpa.core.paths import GradientPaths
    >>> paths_dict(GradientPaths(stamps=0b1100, num_paths=3, counts=lambda: {2: 1, 3: 2}))
    {'shortest': 2, 'longest': 3, 'timestamps': [2, 3], 'num_paths': 3, 'path_histogram': {'2': 1, '3': 2}}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gpa.core.paths import GradientPaths, bits

if TYPE_CHECKING:  # pragma: no cover
    from gpa.core.report import LayerRecord, NetworkSummary, Report, Segment, Source

__all__ = [
    "network_dict",
    "paths_dict",
    "record_dict",
    "report_dict",
    "segment_dict",
    "source_dict",
    "to_json",
]


def paths_dict(paths: GradientPaths | None) -> dict[str, Any]:
    """Shortest, longest, timestamps, number of paths and histogram (§4); empty when unreachable."""
    return {
        "shortest": paths.shortest if paths else None,
        "longest": paths.longest if paths else None,
        "timestamps": list(paths.timestamps) if paths else [],
        "num_paths": paths.num_paths if paths else 0,
        "path_histogram": {str(k): v for k, v in paths.histogram.items()} if paths else {},
    }


def source_dict(x: Source) -> dict[str, Any]:
    """A segment's source: the sender and the part of its gradient delivered (§8)."""
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


def segment_dict(s: Segment) -> dict[str, Any]:
    """One channel segment (§8)."""
    return {
        "channels": [s.start, s.stop],
        **paths_dict(s.paths),
        "sources": [source_dict(x) for x in s.sources],
    }


def record_dict(r: LayerRecord) -> dict[str, Any]:
    """One layer record (§7), with its segments when the analysis has them (§8)."""
    found = {
        "name": r.name,
        "type": r.type,
        "calls": r.calls,
        **paths_dict(r.paths),
        "sources": list(r.sources),
        "params": r.params,
        "flops": r.flops,
    }
    if r.segments is not None:
        found["segments"] = [segment_dict(s) for s in r.segments]
        found["gradient_combinations"] = r.gradient_combinations
        if r.channel_fallbacks:
            found["channel_fallback"] = list(r.channel_fallbacks)
    return found


def network_dict(n: NetworkSummary) -> dict[str, Any]:
    """The network summary (§4, §7); ``gradient_combinations`` only with channels."""
    found = {
        "layers": n.layers,
        "max_shortest": n.max_shortest,
        "min_shortest": n.min_shortest,
        "mean_shortest": n.mean_shortest,
        "longest": n.longest,
        "unreachable": list(n.unreachable),
        "params": n.params,
        "flops": n.flops,
        "count_convention": n.count_convention,
    }
    if n.gradient_combinations is not None:
        found["gradient_combinations"] = n.gradient_combinations
    return found


def report_dict(report: Report) -> dict[str, Any]:
    """The whole report (§7)."""
    from gpa import __version__

    return {
        "gpa_version": __version__,
        "model": report.model,
        "tracer": report.tracer,
        "inputs": report.inputs,
        "options": report.options,
        "network": network_dict(report.network),
        "layers": [record_dict(r) for r in report.layers.values()],
        "notes": list(report.notes),
    }


def to_json(data: Any, indent: int | None = 2) -> str:
    """``data`` as JSON text; the same data gives the same bytes."""
    return json.dumps(data, indent=indent)
