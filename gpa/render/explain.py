"""Path witnesses: why a layer's gradient path is short or long (``gpa explain``).

For one layer, :func:`explanation` gives one shortest and one longest gradient path (as
:meth:`~gpa.core.report.LayerRecord.shortest_path` chooses them) and the layer that attains
the network's ``max_shortest`` — what a designer needs to act on ELAN's rule ("which
transition layers make my shortest path long?"). :func:`format_explanation` prints it.

Example:
    >>> import torch.nn as nn, gpa
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> data = explanation(gpa.analyze(net, input_shape=(1, 2)), "0")
    >>> [step["layer"] for step in data["shortest_path"]], data["max_shortest"]["layer"]
    (['0', '2'], '0')
"""

from __future__ import annotations

from typing import Any

from gpa.core.paths import bits
from gpa.core.report import LOSS, PathStep, Report, find_layer
from gpa.core.serialize import segment_dict
from gpa.render.text import format_sources, format_timestamps, note_lines, shown_file

__all__ = ["explanation", "format_explanation", "max_shortest_layer", "path_steps", "shown_step"]


def max_shortest_layer(report: Report) -> str | None:
    """The first layer, in forward order, whose shortest path is the network's
    ``max_shortest`` (None when no layer is reachable)."""
    target = report.network.max_shortest
    return next((n for n, r in report.layers.items() if r.shortest == target), None)


def path_steps(report: Report, path: tuple[PathStep, ...]) -> list[dict[str, Any]]:
    """``path`` as JSON-ready steps: ``{"layer", "type", "site", "call", "calls"}``, ``site``
    being ``{"file", "line"}`` (the file as :func:`~gpa.render.text.shown_file` shows it)
    or null, ``call`` which of the layer's ``calls`` the step is (1-based, forward order).

    Example:
        >>> import torch.nn as nn, gpa
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> report = gpa.analyze(net, input_shape=(1, 2))
        >>> [(s["layer"], s["call"], s["calls"]) for s in path_steps(report, report.layers["0"].shortest_path())]
        [('0', 1, 1), ('2', 1, 1)]
    """
    return [
        {
            "layer": s.layer,
            "type": s.type,
            "site": None if s.site is None else {"file": shown_file(s.site[0]), "line": s.site[1]},
            "call": s.call,
            "calls": report.layers[s.layer].calls,
        }
        for s in path
    ]


def shown_step(step: dict[str, Any]) -> str:
    """A step's layer as text: its name, and which call of it when it has several
    (``block (call 2 of 3)``)."""
    calls = step.get("calls", 1)
    return step["layer"] if calls <= 1 else f"{step['layer']} (call {step['call']} of {calls})"


def explanation(report: Report, layer: str) -> dict[str, Any]:
    """One shortest and one longest gradient path of ``layer``, as JSON-ready data.

    Keys: ``layer``, ``type``, ``calls``, ``shortest``, ``longest``, ``shortest_path`` and
    ``longest_path`` (lists of steps as :func:`path_steps` gives them; the loss is not
    listed), and ``max_shortest`` (``{"value", "layer"}``:
    the network's value and the first layer attaining it), ``tracer`` (the frontend that
    read the model) and ``notes`` (the report's). With channel segments, also
    ``channels``: ``{"timestamps", "whole_tensor_only", "segments"}``, the rounds some
    channel of the layer is reached at, those of the layer's own record no channel is (a
    route that a slice or pick drops: the paths above may take one), and the layer's
    segments as the JSON report has them (``docs/semantics.md`` §8).

    Raises:
        GpaError: ``layer`` is not a layer of the report (the closest names are suggested).
    """
    record = find_layer(report, layer)
    channels = None
    if record.segments is not None:
        reached = record.paths is not None
        channels = {
            "timestamps": list(bits(record.segments.stamps())) if reached else [],
            "whole_tensor_only": list(record.whole_tensor_only) if reached else [],
            "segments": [segment_dict(s) for s in record.segments],
        }
    data = {
        "layer": layer,
        "type": record.type,
        "calls": record.calls,
        "shortest": record.shortest,
        "longest": record.longest,
        "shortest_path": path_steps(report, record.shortest_path()),
        "longest_path": path_steps(report, record.longest_path()),
        "max_shortest": {
            "value": report.network.max_shortest,
            "layer": max_shortest_layer(report),
        },
        "tracer": report.tracer,
        "notes": list(report.notes),
    }
    if channels is not None:
        data["channels"] = channels
    return data


_SEGMENTS_SHOWN = 16  # (the JSON lists every one)


def _segment_lines(segments: list[dict[str, Any]]) -> list[str]:
    """The layer's channel segments (§8) as aligned rows: the channels, their shortest and
    longest path, their rounds and where their gradient comes from (each sender with the
    channels of its gradient delivered)."""
    rows = []
    for s in segments[:_SEGMENTS_SHOWN]:
        senders: dict[str, list[str]] = {}
        for x in s["sources"]:
            senders.setdefault(x["from"], []).append("[{}, {})".format(*x["channels"]))
        paths = f"{s['shortest']}–{s['longest']}" if s["shortest"] is not None else "unreachable"
        rows.append(
            (
                "[{}, {})".format(*s["channels"]),
                paths,
                format_timestamps(s["timestamps"], limit=6),
                format_sources([f"{n} {' '.join(c)}" for n, c in senders.items()], limit=4),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    count = len(segments)
    lines = [f"channel segments ({count}): channels, path lengths, timestamps, sources"]
    lines += [
        "  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths, strict=False)) + "  " + r[3]
        for r in rows
    ]
    if count > _SEGMENTS_SHOWN:
        lines.append(f"  … {count - _SEGMENTS_SHOWN} more (--format json lists every one)")
    return lines


def format_explanation(data: dict[str, Any]) -> str:
    """The text of ``gpa explain``: both paths as aligned rows, then the network's
    ``max_shortest`` and the layer attaining it."""
    lines = [f"layer: {data['layer']} ({data['type']})"]
    if data.get("calls") == 0:
        lines.append(
            "forward never calls this layer (calls 0), so no gradient reaches it: it has no "
            "paths (a layer used only in the other mode? see --eval / --train)"
        )
    elif data["shortest"] is None:
        lines.append("no gradient reaches this layer (it is unreachable): it has no paths")
    for kind in ("shortest", "longest"):
        path = data[f"{kind}_path"]
        if not path:
            continue
        count = f"{len(path)} layer{'s' if len(path) != 1 else ''}"
        lines += ["", f"{kind} gradient path ({count}):"]
        width = max(len(shown_step(s)) for s in path)
        kinds = max(len(s["type"]) for s in path)
        for s in path:
            where = f"{s['site']['file']}:{s['site']['line']}" if s["site"] else ""
            lines.append(f"  {shown_step(s):<{width}}  {s['type']:<{kinds}}  {where}".rstrip())
        lines.append(f"  {LOSS}")
    channels = data.get("channels")
    if channels and channels.get("segments"):
        lines += ["", *_segment_lines(channels["segments"])]
    if channels and channels["whole_tensor_only"]:
        only = ", ".join(map(str, channels["whole_tensor_only"]))
        lines += [
            "",
            f"with channels: no channel of {data['layer']} is reached at {only} (the routes "
            "of those lengths carry none of its channels: a slice or pick drops them); its "
            f"channels are reached at {', '.join(map(str, channels['timestamps'])) or 'none'}",
        ]
    top = data["max_shortest"]
    if top["layer"] is not None:
        lines += ["", f"network max_shortest {top['value']}: first attained by {top['layer']}"]
    if data.get("notes"):  # (what the analysis said: the frontend auto chose, the inputs …)
        lines += ["", "notes:", *note_lines(data["notes"], _NOTE_WIDTH)]
    return "\n".join(lines)


_NOTE_WIDTH = 100  # (as the analysis's text is wrapped where no terminal says otherwise)
