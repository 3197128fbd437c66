"""Text renderings of a :class:`gpa.Report`: a readable table and CSV.

Both are pure functions of the report, so the same model gives byte-identical
output on every run: the table is rendered at a fixed width, without colour
unless asked for, whatever the terminal.
"""

from __future__ import annotations

import csv
import io
import textwrap
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "CSV_COLUMNS",
    "format_count",
    "format_csv",
    "format_inputs",
    "format_si",
    "format_sources",
    "format_table",
    "format_timestamps",
]

#: Header of :func:`format_csv`.
CSV_COLUMNS: tuple[str, ...] = (
    "name",
    "type",
    "calls",
    "shortest",
    "longest",
    "timestamps",
    "num_paths",
    "sources",
    "params",
    "flops",
)

#: Default width of :func:`format_table`, in characters.
TABLE_WIDTH = 120

_BIG = 10**6


def format_timestamps(timestamps: Sequence[int], limit: int = 5) -> str:
    """Compact timestamps: ``"2,4,6,8"``, or ``"2,4,…,40 (20)"`` beyond ``limit`` values."""
    values = [str(t) for t in timestamps]
    if not values:
        return "-"
    if len(values) <= limit:
        return ",".join(values)
    return f"{values[0]},{values[1]},…,{values[-1]} ({len(values)})"


def format_count(count: int) -> str:
    """An exact count below one million, else three significant digits (``"1.27e+30"``)."""
    if count < _BIG:
        return str(count)
    mantissa, _, exponent = format(Decimal(count), ".2e").partition("e")
    return f"{mantissa}e+{int(exponent):02d}"  # Decimal handles counts beyond float range


def format_si(value: int | None) -> str:
    """A compact count with an SI suffix and 3 significant digits: ``1234567 -> "1.23M"``.

    ``None`` (not counted) is ``"-"``; values below 1000 are exact.

    Example:
        >>> format_si(864), format_si(41573216), format_si(18570000000), format_si(None)
        ('864', '41.6M', '18.6G', '-')
    """
    if value is None:
        return "-"
    scaled, suffix = float(value), ""
    for next_suffix in ("K", "M", "G", "T", "P"):
        if abs(scaled) < 999.5:
            break
        scaled, suffix = scaled / 1000, next_suffix
    return f"{scaled:.3g}{suffix}" if suffix else str(value)


def format_sources(sources: Sequence[str], limit: int = 3) -> str:
    """Sources joined by commas, abbreviated to the first ones beyond ``limit``."""
    if not sources:
        return "-"
    if len(sources) <= limit:
        return ", ".join(sources)
    shown = ", ".join(sources[: limit - 1])
    return f"{shown}, … (+{len(sources) - limit + 1})"


def format_inputs(inputs: Iterable[dict[str, Any]] | None) -> str:
    """``"float32[1, 3, 32, 32]"`` per input, or ``"none"``."""
    if not inputs:
        return "none"
    parts = []
    for spec in inputs:
        shape = ", ".join(str(d) for d in spec.get("shape", ()))
        parts.append(f"{spec.get('dtype', '?')}[{shape}]")
    return ", ".join(parts)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _summary_lines(report: Any) -> list[str]:
    network = report.network
    unreachable = tuple(network.unreachable)
    lines = [
        f"model: {report.model}",
        f"inputs: {format_inputs(report.inputs)}"
        + (f"   tracer: {report.tracer}" if getattr(report, "tracer", None) else ""),
        (
            f"layers: {network.layers}   max_shortest: {_value(network.max_shortest)}   "
            f"min_shortest: {_value(network.min_shortest)}   "
            f"mean_shortest: {_value(network.mean_shortest)}   "
            f"longest: {_value(network.longest)}   unreachable: {len(unreachable)}"
        ),
    ]
    convention = getattr(network, "count_convention", None)
    if convention is not None:
        lines.append(
            f"params: {format_si(network.params)}   flops: {format_si(network.flops)}   "
            f"({convention} convention; a multiply-add counts as 2 FLOPs)"
        )
    combinations = getattr(network, "gradient_combinations", None)
    if combinations is not None:
        lines.append(f"gradient_combinations: {combinations}   (channel segments)")
    if unreachable:
        lines.append(f"unreachable layers: {', '.join(unreachable)}")
    return lines


def _wrap(text: str, width: int, first: str, rest: str) -> str:
    """``text`` wrapped at ``width`` with a hanging indent (stable, unlike terminal wrapping)."""
    return textwrap.fill(
        text, width=width, initial_indent=first, subsequent_indent=rest, break_long_words=False
    )


def format_table(report: Any, *, width: int = TABLE_WIDTH, color: bool = False) -> str:
    """Render ``report`` as text: network summary, one row per layer, then the notes.

    Args:
        report: a :class:`gpa.Report`.
        width: line width in characters (at least 100; fixed, so output is stable).
        color: emit ANSI styles (only for a terminal).

    Returns:
        The text, ending with a newline.
    """
    width = max(100, width)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("layer", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("calls", justify="right")
    table.add_column("shortest", justify="right")
    table.add_column("longest", justify="right")
    table.add_column("timestamps", overflow="fold")
    table.add_column("paths", justify="right")
    table.add_column("params", justify="right")
    table.add_column("flops", justify="right")
    table.add_column("sources", overflow="fold")
    with_segments = any(getattr(r, "segments", None) is not None for r in report.layers.values())
    if with_segments:
        table.add_column("segments", justify="right")
        table.add_column("combos", justify="right")
    for record in report.layers.values():
        cells = [
            record.name,
            record.type,
            str(record.calls),
            _value(record.shortest),
            _value(record.longest),
            format_timestamps(record.timestamps),
            format_count(record.num_paths),
            format_si(record.params),
            format_si(record.flops),
            format_sources(record.sources),
        ]
        if with_segments:
            segments = getattr(record, "segments", None)
            cells += [
                _value(None if segments is None else len(segments)),
                _value(getattr(record, "gradient_combinations", None)),
            ]
        table.add_row(*(Text(cell) for cell in cells))

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        force_jupyter=False,
        force_interactive=False,
        color_system="standard" if color else None,
        no_color=not color,
        markup=False,
        highlight=False,
        emoji=False,
        legacy_windows=False,
        soft_wrap=False,
        _environ={},  # ignore COLUMNS, FORCE_COLOR, TERM...: output must not depend on them
    )
    for line in _summary_lines(report):
        console.print(
            Text(_wrap(line, width, "", "    "), style="bold" if line.startswith("model:") else "")
        )
    console.print()
    if report.layers:
        console.print(table)
    notes = list(getattr(report, "notes", ()) or ())
    if notes:
        console.print()
        console.print(Text("notes:", style="bold"))
        for note in notes:
            console.print(Text(_wrap(note, width, "  - ", "    ")))
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
    return text.rstrip("\n") + "\n"


def format_csv(report: Any) -> str:
    """Render ``report``'s layers as CSV (header :data:`CSV_COLUMNS`, ``\\n`` line ends).

    ``timestamps`` and ``sources`` are joined with ``;``; an unreachable
    layer has empty ``shortest`` and ``longest``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in report.layers.values():
        writer.writerow(
            [
                record.name,
                record.type,
                record.calls,
                "" if record.shortest is None else record.shortest,
                "" if record.longest is None else record.longest,
                ";".join(str(t) for t in record.timestamps),
                record.num_paths,
                ";".join(record.sources),
                "" if record.params is None else record.params,
                "" if record.flops is None else record.flops,
            ]
        )
    return buffer.getvalue()
