"""A :class:`~gpa.measure.measurement.Measurement` as a text table, CSV or HTML.

One row per layer: its structural shortest/longest path and gradient combination, then
the measured weight-gradient norm (mean ± std over steps), the received-gradient norm,
the ratio to the network median and the most similar layer with its CKA.

Example:
    >>> import torch, torch.nn as nn
    >>> from gpa.measure import measure
    >>> m = measure(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), torch.zeros(1, 2),
    ...             steps=1, batch_size=4)
    >>> format_csv(m).splitlines()[0]
    'name,type,shortest,longest,combination,weight_grad_norm,weight_grad_norm_std,output_grad_norm,relative_norm,frozen,most_similar,most_similar_cka'
"""

from __future__ import annotations

import csv
import html
import io
import shutil
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from gpa.columns import MEASURED_COLUMNS
from gpa.render.html import html_page
from gpa.render.text import columns_table, fit_columns

__all__ = ["COLUMNS", "format_csv", "format_html", "format_page", "format_table"]

#: The columns of the CSV (and of the table, under its own headers).
COLUMNS = ("name", *MEASURED_COLUMNS)


def _rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows from a measurement's JSON (``Measurement.to_dict``)."""
    rows = []
    for layer in data["layers"]:
        sim = layer.get("most_similar") or {}
        rows.append(
            {
                **{k: layer.get(k) for k in COLUMNS[:-2]},
                "most_similar": sim.get("layer"),
                "most_similar_cka": sim.get("cka"),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _summary(m: Any) -> list[str]:
    """The summary above the table, each line within 80 characters for a model name that
    fits (how it was measured apart from the model's name: a long name wraps alone)."""
    net = m.network_dict()
    d = net["duplication"]
    steps = f"{m.steps} step{'' if m.steps == 1 else 's'}"
    batch = "batches of varying size" if m.batch_size is None else f"batch {m.batch_size}"
    how = f"{steps}, {batch}, seed {m.seed}, {m.device}, {m.loss} loss"
    options = m.report.options if m.report is not None else None
    if options is not None:
        how += ", train mode" if options.get("train", True) else ", eval mode"
    return [
        f"model: {m.model}",
        f"measured: {how}",
        *_inputs_line(m),
        f"layers: {net['layers']}, frozen: {len(net['frozen'])}, "
        f"gradient combinations: {_cell(net['gradient_combinations'])}",
        f"duplication (CKA, {d['pairs']} pairs): mean {_cell(d['mean'])}, "
        f"median {_cell(d['median'])}, p90 {_cell(d['p90'])}, max {_cell(d['max'])}",
        f"CKA by chance (samples shuffled): {_cell(d['chance'])}; mean most-similar CKA: "
        f"{_cell(net['mean_most_similar'])}",
        f"rank correlation (shared combination vs CKA): {_cell(net['rank_correlation'])}",
    ]


def _inputs_line(m: Any) -> list[str]:
    """What each step's batch held, input by input: the structural analysis' inputs (the
    first batch's, for batches given) at the batch size measured; none where the batches
    differ in size."""
    inputs = m.report.to_dict().get("inputs") if m.report is not None else None
    if not inputs or m.batch_size is None:
        return []
    shown = [
        f"{i['dtype']}[{', '.join(map(str, [m.batch_size, *i['shape'][1:]]))}]"
        if "shape" in i and i["shape"]
        else i.get("value", "?")
        for i in inputs
    ]
    return [f"inputs per step: {'; '.join(shown)}"]


_HEADERS = (
    "layer",
    "type",
    "short",
    "long",
    "comb",
    "‖∂L/∂W‖",
    "± std",
    "‖∂L/∂y‖",
    "rel",
    "frozen",
    "most similar",
    "CKA",
)
_NUMERIC = {"short", "long", "comb", "‖∂L/∂W‖", "± std", "‖∂L/∂y‖", "rel", "CKA"}
# least important first: the norms, their ratio and the most similar layer stay longest
_DROP_ORDER = ("type", "frozen", "± std", "comb", "long", "‖∂L/∂y‖", "CKA", "most similar")


def format_table(
    m: Any,
    *,
    color: bool = False,
    width: int | None = None,
    columns: Sequence[str] | None = None,
) -> str:
    """The summary lines, then a table of the layers, then the notes; ``width`` defaults
    to the terminal's (``COLUMNS``); ``columns``: those of :data:`COLUMNS` to show (but
    the layer's name, always first), in their order (default: every one). As ``gpa
    analyze``'s table: names are never broken, the least important columns are left out
    (and a note says which) until it fits.

    Raises:
        ValueError: a column not in :data:`COLUMNS`.
    """
    width = width or shutil.get_terminal_size().columns
    headers = dict(zip(COLUMNS, _HEADERS, strict=True))
    rows = [{headers[c]: _cell(row[c]) for c in COLUMNS} for row in _rows(m.to_dict())]
    unknown = [c for c in columns or () if c not in headers]
    if unknown:
        raise ValueError(
            f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(COLUMNS)}"
        )
    chosen = COLUMNS[1:] if columns is None else [c for c in dict.fromkeys(columns) if c != "name"]
    rest = [headers[c] for c in chosen]
    kept = fit_columns(rows, rest, width, _DROP_ORDER, right=_NUMERIC)
    table = columns_table(rows, [_HEADERS[0], *kept], right=_NUMERIC)
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        color_system="standard" if color else None,
        force_jupyter=False,
        force_terminal=color,
    )
    for line in _summary(m):
        console.print(line, highlight=False, markup=False)
    console.print(table)
    dropped = [h for h in rest if h not in kept]
    notes = [*m.notes]
    if dropped:
        notes.append(
            f"columns left out to fit {width} characters: {', '.join(dropped)} (--wide shows all)"
        )
    for note in notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    return buffer.getvalue()


def format_csv(m: Any) -> str:
    """One row per layer, the columns of :data:`COLUMNS` (empty cells for None)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in _rows(m.to_dict()):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


# scoped to the measurement's element: a notebook page keeps its own styles
_STYLE = (
    ".gpa-measurement{font:13px/1.45 system-ui,sans-serif}"
    ".gpa-measurement table{border-collapse:collapse;margin:.4em 0 1em}"
    ".gpa-measurement th,.gpa-measurement td{padding:2px 8px;text-align:left;"
    "border-bottom:1px solid rgba(128,128,128,.28)}"
    ".gpa-measurement td.gpa-num{text-align:right;font-variant-numeric:tabular-nums}"
    ".gpa-measurement summary{cursor:pointer;font-weight:600}"
    ".gpa-measurement .gpa-cka td{text-align:right;font-variant-numeric:tabular-nums;"
    "background:rgba(66,133,244,var(--v,0))}"
)


def format_html(m: Any) -> str:
    """A self-contained HTML fragment (Jupyter shows it): the summary, the layer table,
    the CKA matrix between every two measured layers (folded, shaded by value; "—" where
    undefined) and the notes, every name escaped."""
    numeric = {*COLUMNS[2:9], "most_similar_cka"}  # (not frozen: yes or empty)

    def cell(value: Any, column: str) -> str:
        kind = " class='gpa-num'" if column in numeric else ""
        return f"<td{kind}>{html.escape(_cell(value))}</td>"

    lines = "".join(f"<p>{html.escape(line)}</p>" for line in _summary(m))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    data = m.to_dict()  # (the table and the matrix show what the JSON holds)
    body = "".join("<tr>" + "".join(cell(r[c], c) for c in COLUMNS) + "</tr>" for r in _rows(data))
    notes = "".join(f"<p><em>note: {html.escape(n)}</em></p>" for n in m.notes)
    return (
        f'<div class="gpa-measurement"><style>{_STYLE}</style>{lines}'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"{_cka_matrix(data['cka'])}{notes}</div>"
    )


def _cka_matrix(cka: dict[str, Any]) -> str:
    """The CKA matrix the JSON holds (``cka``) as a folded table, rows and columns the
    layers in forward order: columns numbered (the layer's name on hover), each cell
    shaded by its value through one CSS variable (the page grows as the square of the
    layers: a cell holds little else)."""
    names = [html.escape(n) for n in cka["layers"]]
    rows = []
    for i, (name, values) in enumerate(zip(names, cka["matrix"], strict=True), 1):
        cells = "".join(
            "<td>—</td>"
            if v is None
            else f"<td style='--v:{min(max(v, 0.0), 1.0):.2f}'>{v:.3g}</td>"
            for v in values
        )
        rows.append(f"<tr><th>{i} {name}</th>{cells}</tr>")
    head = "".join(f"<th title='{n}'>{i}</th>" for i, n in enumerate(names, 1))
    return (
        f"<details><summary>CKA between the layers' received gradients ({len(names)} × "
        f"{len(names)})</summary><table class='gpa-cka'><thead><tr><th></th>{head}</tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></details>"
    )


def format_page(m: Any) -> str:
    """The measurement as one complete HTML document (``gpa measure --format html``), as
    ``gpa analyze --format html`` writes a report: :func:`format_html` in a page."""
    return html_page(f"gpa measure: {m.model}", f"Measured gradients of {m.model}", format_html(m))
