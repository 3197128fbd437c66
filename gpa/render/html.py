"""HTML rendering of a :class:`gpa.Report`, for Jupyter (``Report._repr_html_``).

(Not named ``html.py``: that would shadow the standard library when gpa/ is on the path.)

The network summary comes first, as a small table, then one row per layer with
the columns of the text table, then the notes. Every name is HTML-escaped.

Example:
    >>> import gpa, torch.nn as nn
    >>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
    >>> html = report_html(report)
    >>> html.count("<tr class='gpa-layer'>"), "max_shortest" in html
    (2, True)
"""

from __future__ import annotations

from html import escape
from typing import Any

from gpa.render.text import (
    format_count,
    format_inputs,
    format_si,
    format_sources,
    format_timestamps,
)

__all__ = ["report_html"]

_LAYER_COLUMNS = tuple(
    "layer type calls shortest longest timestamps paths params flops sources".split()
)


def _cell(value: Any, tag: str = "td") -> str:
    text = "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
    return f"<{tag}>{escape(text)}</{tag}>"


def _summary(report: Any) -> str:
    net = report.network
    rows = [
        ("model", report.model),
        ("inputs", format_inputs(report.inputs)),
        ("layers", net.layers),
        ("max_shortest", net.max_shortest),
        ("min_shortest", net.min_shortest),
        ("mean_shortest", net.mean_shortest),
        ("longest", net.longest),
        ("unreachable", ", ".join(net.unreachable) or "none"),
    ]
    if getattr(net, "count_convention", None) is not None:
        rows += [("params", format_si(net.params)), ("flops", format_si(net.flops))]
    if getattr(net, "gradient_combinations", None) is not None:
        rows.append(("gradient_combinations", net.gradient_combinations))
    body = "".join(f"<tr>{_cell(k, 'th')}{_cell(v)}</tr>" for k, v in rows)
    return f"<table class='gpa-summary'>{body}</table>"


def report_html(report: Any) -> str:
    """The report as an HTML fragment: summary table, layer table, notes.

    Args:
        report: a :class:`gpa.Report`.

    Returns:
        HTML (no ``<html>`` wrapper), with every name and note escaped.
    """
    head = "".join(_cell(c, "th") for c in _LAYER_COLUMNS)
    rows = []
    for r in report.layers.values():
        cells = (
            r.name,
            r.type,
            r.calls,
            r.shortest,
            r.longest,
            format_timestamps(r.timestamps),
            format_count(r.num_paths),
            format_si(r.params),
            format_si(r.flops),
            format_sources(r.sources),
        )
        rows.append("<tr class='gpa-layer'>" + "".join(_cell(c) for c in cells) + "</tr>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    return (
        "<div class='gpa-report'>"
        + _summary(report)
        + f"<table class='gpa-layers'><thead><tr>{head}</tr></thead>"
        + f"<tbody>{''.join(rows)}</tbody></table>"
        + (f"<p>notes:</p><ul class='gpa-notes'>{notes}</ul>" if notes else "")
        + "</div>"
    )
