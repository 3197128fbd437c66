"""Text renderings of a :class:`gpa.Report`: a readable table and CSV.

Both are pure functions of the report and of the width asked for: the same model at
the same width gives byte-identical output. The table fits the terminal (its width, or
``COLUMNS``) by dropping the least important columns first (sources, then FLOPs,
parameters …); a layer's qualified name is never broken; ``wide=True`` prints every
column unwrapped, for piping. Above :data:`COLLAPSE_ABOVE` layers the table groups layers
by module path (``depth``), as torchinfo's ``depth=`` does, and says how to see all.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import textwrap
from collections.abc import Collection, Iterable, Sequence
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gpa.columns import LAYER_COLUMNS
from gpa.names import installed_path

__all__ = [
    "CHANNEL_COLUMNS",
    "COLLAPSE_ABOVE",
    "COLUMNS",
    "columns_table",
    "fit_columns",
    "CSV_COLUMNS",
    "format_count",
    "format_csv",
    "CSV_CHANNEL_COLUMNS",
    "format_inputs",
    "format_si",
    "format_sources",
    "format_table",
    "format_timestamps",
    "module_prefix",
    "shown_file",
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

#: Added to :data:`CSV_COLUMNS` for a report analysed at channel level.
CSV_CHANNEL_COLUMNS: tuple[str, ...] = ("segments", "gradient_combinations")

#: The columns of :func:`format_table`, in display order.
COLUMNS: tuple[str, ...] = LAYER_COLUMNS
#: The columns only a channel-level analysis (``channels=True``) fills.
CHANNEL_COLUMNS: tuple[str, ...] = ("segments", "combos")

# Dropped first when the table is too wide for the terminal; the layer's name, shortest
# and longest always stay.
_DROP_ORDER = ("sources", "flops", "params", "combos", "segments", "type", "calls", "paths")

#: Tables of more layers than this are collapsed by module path unless ``depth=0``.
COLLAPSE_ABOVE = 60

_BIG = 10**6


def format_timestamps(timestamps: Sequence[int], limit: int | None = None) -> str:
    """Exact shorthand for a set of rounds.

    Consecutive runs of three or more become ranges (``6, 8–48, 50``); five or more values
    at an equal step become ``2–40 by 2``; other values are listed. Beyond ``limit`` items the first ones,
    ``…``, the last and the number of values are shown.

    Example:
        >>> format_timestamps([6, *range(8, 49), 50]), format_timestamps(range(2, 42, 2))
        ('6, 8–48, 50', '2–40 by 2')
        >>> format_timestamps([1, 3, 4, 7, 11, 12, 13, 20, 25], limit=4)
        '1, 3, 4, …, 25 (9 values)'
    """
    values = sorted(set(timestamps))
    if not values:
        return "-"
    items, i = [], 0
    while i < len(values):
        run = i
        while run + 1 < len(values) and values[run + 1] == values[run] + 1:
            run += 1
        if run - i >= 2:
            items.append(f"{values[i]}–{values[run]}")
            i = run + 1
            continue
        step, end = (values[i + 1] - values[i] if i + 1 < len(values) else 0), i
        while end + 1 < len(values) and values[end + 1] - values[end] == step:
            end += 1
        if step > 1 and end - i >= 4:
            items.append(f"{values[i]}–{values[end]} by {step}")
            i = end + 1
            continue
        items.append(str(values[i]))
        i += 1
    if limit is not None and len(items) > limit:
        return f"{', '.join(items[: limit - 1])}, …, {items[-1]} ({len(values)} values)"
    return ", ".join(items)


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
    """``"float32[1, 3, 32, 32]"`` per tensor input, its value per other input (``None``,
    a flag, a number), or ``"none"``."""
    if not inputs:
        return "none"
    parts = []
    for spec in inputs:
        if "value" in spec:
            parts.append(str(spec["value"]))
            continue
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


def note_lines(notes: Iterable[str], width: int | None) -> list[str]:
    """A report's notes as the text formats list them: one ``  - `` item each, wrapped at
    ``width`` (None: not wrapped).

    Example:
        >>> note_lines(["tracer auto used export"], 80)
        ['  - tracer auto used export']
    """
    return [f"  - {n}" if width is None else _wrap(n, width, "  - ", "    ") for n in notes]


def _wrap(text: str, width: int, first: str, rest: str) -> str:
    """``text`` wrapped at ``width`` with a hanging indent (stable, unlike terminal wrapping);
    a word longer than a line (a module's qualified name) folded after its dots
    (:func:`folded_name`) rather than cut anywhere.

    Example:
        >>> print(_wrap("worst: base_model.model.encoder.lora_A (5)", 24, "", "    "))
        worst:
            base_model.model.
              encoder.lora_A
            (5)
    """
    lines: list[str] = []
    for line in textwrap.wrap(
        text, width=width, initial_indent=first, subsequent_indent=rest, break_long_words=False
    ):
        if len(line) <= width:
            lines.append(line)
            continue
        # (textwrap puts a word longer than the line on a line of its own)
        indent = rest if lines else first
        head, *tail = folded_name(line[len(indent) :], width - max(len(first), len(rest))).split(
            "\n"
        )
        lines += [indent + head, *(rest + part for part in tail)]
    return "\n".join(lines)


def _console(buffer: io.StringIO, width: int, color: bool) -> Console:
    return Console(
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
        _environ={},  # COLUMNS, FORCE_COLOR…: the width is decided by the caller
    )


def _cells(record: Any, wide: bool = False) -> dict[str, str]:
    """A record's cells of the text table (``wide``: every source, none abbreviated)."""
    segments = getattr(record, "segments", None)
    return {
        "layer": record.name,
        "type": record.type,
        "calls": str(record.calls),
        "shortest": _value(record.shortest),
        "longest": _value(record.longest),
        "timestamps": format_timestamps(record.timestamps),
        "paths": format_count(record.num_paths),
        "params": format_si(record.params),
        "flops": format_si(record.flops),
        "sources": format_sources(record.sources, len(record.sources) if wide else 3),
        "segments": _value(None if segments is None else len(segments)),
        "combos": _value(getattr(record, "gradient_combinations", None)),
    }


_RIGHT = {"calls", "shortest", "longest", "paths", "params", "flops", "segments", "combos"}


def columns_table(
    rows: list[dict[str, str]],
    columns: Sequence[str],
    wide: bool = False,
    right: Collection[str] = _RIGHT,
) -> Table:
    """A table of ``rows`` (column -> cell) with ``columns`` (those in ``right`` right
    justified); only timestamps and sources may wrap, and only between items, so that
    names stay whole (a name folded by :func:`folded_name` keeps its lines)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for key in columns:
        wraps = key in ("timestamps", "sources") and not wide
        longest_item = max(
            (
                len(line)
                for row in rows
                for item in row[key].split(", ")
                for line in item.split("\n")
            ),
            default=len(key),
        )
        table.add_column(
            key,
            justify="right" if key in right else "left",
            no_wrap=not wraps,
            overflow="fold",
            min_width=max(longest_item, len(key)) + (1 if wraps else 0),
        )
    for row in rows:
        table.add_row(*(Text(row[key]) for key in columns))
    return table


def folded_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters, broken after its dots (a part
    longer than a line is cut), the lines after the first indented by two (below three
    characters, one character a line besides the indent).

    Example:
        >>> print(folded_name("base_model.model.encoder.layer.0.query.lora_A", 24))
        base_model.model.
          encoder.layer.0.query.
          lora_A
    """
    *heads, last = name.split(".")
    lines: list[str] = []
    line = ""
    for part in [*(head + "." for head in heads), last]:
        if line and len(line) + len(part) > _room(width, lines):
            lines.append(line)
            line = ""
        line += part
        while len(line) > _room(width, lines):
            cut = _room(width, lines)
            lines.append(line[:cut])
            line = line[cut:]
    if line or not lines:
        lines.append(line)
    return "\n".join([lines[0], *("  " + rest for rest in lines[1:])])


def _room(width: int, lines: list[str]) -> int:
    """The characters the next line of :func:`folded_name` holds (at least one)."""
    return max(width - (2 if lines else 0), 1)


def fit_columns(
    rows: list[dict[str, str]],
    columns: list[str],
    width: int,
    order: Sequence[str] | None = None,
    *,
    first: str = "layer",
    right: Collection[str] = _RIGHT,
) -> list[str]:
    """``columns`` minus the least important ones (in ``order``, default the layer table's)
    until a :func:`columns_table` of ``first`` and them fits ``width``.

    Example:
        >>> rows = [{"layer": "stages.0.conv", "a": "1", "b": "a long cell"}]
        >>> fit_columns(rows, ["a", "b"], 24, order=["b"])
        ['a']
    """
    kept = list(columns)
    for drop in (None, *(_DROP_ORDER if order is None else order)):
        if drop in kept:
            kept.remove(drop)
        table = columns_table(rows, [first, *kept], right=right)
        if _fits(table, width):
            break
    return kept


def _fold_to_fit(
    rows: list[dict[str, str]], keys: list[str], width: int, names: Sequence[str]
) -> list[dict[str, str]]:
    """``rows`` with the cells of the name columns ``names`` folded at their dots
    (:func:`folded_name`) where a table of ``keys`` does not fit ``width`` — names too long
    for even the columns never left out, whose numbers stay. The room left beside the
    other columns is shared between the name columns, a column needing less than its
    share leaving the rest to the others."""
    columns = [key for key in names if key in keys]
    least = _measure(columns_table(rows, keys)).minimum if rows else 0
    if not columns or least <= width:
        return rows
    longest = {k: max(max(len(row[k]) for row in rows), len(k)) for k in columns}
    room = width - (least - sum(longest.values()))
    folded: dict[str, int] = {}
    shortest_first = sorted(columns, key=longest.__getitem__)
    for i, key in enumerate(shortest_first):  # a column needing less leaves the rest more
        share = max(room // (len(columns) - i), 8)
        if longest[key] > share:
            folded[key] = share
        room -= min(longest[key], share)
    return [{**row, **{k: folded_name(row[k], w) for k, w in folded.items()}} for row in rows]


def _measure(table: Table) -> Any:
    """The table's width, minimum and maximum (a console's measures are capped at its
    width: this one's is unbounded)."""
    return _console(io.StringIO(), 10**6, False).measure(table)


# Columns of the grouped view, least important first (the worst layer is what it is for).
_GROUP_DROP_ORDER = ("unreachable", "layers", "longest")


def module_prefix(name: str, depth: int) -> str:
    """The first ``depth`` parts of a qualified name: the module group it belongs to.

    Example:
        >>> module_prefix("stages.0.blocks.3.conv1", 2)
        'stages.0'
    """
    return ".".join(name.split(".")[:depth])


def _collapsed_rows(report: Any, depth: int) -> list[dict[str, str]]:
    """One row per module-path group at ``depth``: its layers' shortest and longest ranges
    and its worst layer (the largest shortest path, ELAN's criterion)."""
    groups: dict[str, list[Any]] = {}
    for record in report.layers.values():
        groups.setdefault(module_prefix(record.name, depth), []).append(record)
    rows = []
    for name, records in groups.items():
        reached = [r for r in records if r.shortest is not None]

        def span(values: list[int]) -> str:
            return (
                "-"
                if not values
                else f"{min(values)}–{max(values)}"
                if min(values) != max(values)
                else str(values[0])
            )

        worst = max(reached, key=lambda r: r.shortest, default=None)
        rows.append(
            {
                "layer": name,
                "layers": str(len(records)),
                "shortest": span([r.shortest for r in reached]),
                "longest": span([r.longest for r in reached]),
                "unreachable": str(len(records) - len(reached)),
                "worst": "-" if worst is None else f"{worst.name} ({worst.shortest})",
            }
        )
    return rows


def format_table(
    report: Any,
    *,
    width: int | None = None,
    color: bool = False,
    columns: Sequence[str] | None = None,
    wide: bool = False,
    depth: int | None = None,
) -> str:
    """Render ``report`` as text: network summary, one row per layer, then the notes.

    Args:
        report: a :class:`gpa.Report`.
        width: line width in characters; default: the terminal's (``COLUMNS`` first,
            80 when there is no terminal).
        color: emit ANSI styles (only for a terminal).
        columns: the columns to show (of :data:`COLUMNS`), after the layer's name;
            default: all that apply, the least important dropped to fit ``width``.
        wide: every column, nothing wrapped (for piping to other tools).
        depth: group layers by their module path's first ``depth`` parts (one row per
            group: its layers' shortest and longest ranges and its worst layer); 0 shows
            every layer; default: 0 up to :data:`COLLAPSE_ABOVE` layers, else the
            smallest depth giving at most that many groups.

    Returns:
        The text, ending with a newline.

    Raises:
        ValueError: an unknown column, a channel column (:data:`CHANNEL_COLUMNS`) of a
            report analysed at layer level, or columns with a grouped view (``depth`` > 0).

    Example:
        >>> import gpa, torch.nn as nn
        >>> r = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
        >>> for line in format_table(r, columns=["shortest", "longest"]).splitlines()[-4:]:
        ...     print(line)
        layer   shortest   longest
        ──────────────────────────
        0              2         2
        1              1         1
    """
    width = width or shutil.get_terminal_size().columns
    with_segments = any(getattr(r, "segments", None) is not None for r in report.layers.values())
    available = [c for c in COLUMNS if with_segments or c not in CHANNEL_COLUMNS]
    unknown = [c for c in columns or () if c not in COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(COLUMNS)}"
        )
    if columns and depth:
        raise ValueError(
            "columns are those of the per-layer table: give depth=0 (or no depth) with them"
        )
    unfilled = [c for c in columns or () if c not in available]
    if unfilled:
        raise ValueError(
            f"column(s) {', '.join(unfilled)} come from the channel analysis: analyse with "
            "channels=True"
        )
    if depth is None:
        depth = 0 if wide or columns else _auto_depth(report)
    if depth:
        rows = _collapsed_rows(report, depth)
        every = ["layers", "shortest", "longest", "unreachable", "worst"]
        keys = ["layer", *(every if wide else fit_columns(rows, every, width, _GROUP_DROP_ORDER))]
        rows = rows if wide else _fold_to_fit(rows, keys, width, ("worst", "layer"))
        dropped = [c for c in every if c not in keys]
        note = (
            f"{len(report.layers)} layers in {len(rows)} groups of module path depth {depth}; "
            "--depth 0 (or --wide) shows every layer, --depth N another grouping"
            + (
                f"; columns left out to fit {width} characters: {', '.join(dropped)} "
                "(a wider terminal, COLUMNS=…, shows them)"
                if dropped
                else ""
            )
        )
    else:
        rows = [_cells(r, wide) for r in report.layers.values()]
        # the columns asked for, in the order asked (those the report has)
        chosen = (
            available if columns is None else [c for c in dict.fromkeys(columns) if c in available]
        )
        keys = ["layer", *(chosen if wide else fit_columns(rows, chosen, width))]
        if not wide:
            folded = _fold_to_fit(rows, keys, width, ("layer",))
            if "timestamps" in keys and not _fits(columns_table(folded, keys), width):
                # the last resort, rather than crop a cell (a timestamp lost in silence)
                keys.remove("timestamps")
                folded = _fold_to_fit(rows, keys, width, ("layer",))
            rows = folded
        dropped = [c for c in chosen if c not in keys]
        note = (
            f"columns left out to fit {width} characters: {', '.join(dropped)} (--wide shows all)"
            if dropped
            else None
        )
    table = columns_table(rows, keys, wide)
    buffer = io.StringIO()
    if wide:
        width = max(width, _measure(table).maximum)
    # rich crops a table wider than the console (a terminal narrower than names folded to
    # 8 and two numbers; a cell rich's layout squeezes by a character more than measured):
    # printed uncropped instead, its lines longer than the width, and said so
    needed = _rendered_width(table, width) if report.layers else 0
    if needed > width:
        note = (f"{note}; " if note else "") + (
            f"the table needs {needed} characters, more than {width}: its lines are longer "
            "than the width rather than cut"
        )
    console = _console(buffer, width, color)
    for line in _summary_lines(report):
        style = "bold" if line.startswith("model:") else ""
        console.print(Text(line if wide else _wrap(line, width, "", "    "), style=style))
    console.print()
    if report.layers:
        console.print(table, crop=False)
    notes = [*(getattr(report, "notes", ()) or ()), *([note] if note else [])]
    if notes:
        console.print()
        console.print(Text("notes:", style="bold"))
        for text in note_lines(notes, None if wide else width):
            console.print(Text(text))
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
    return text.rstrip("\n") + "\n"


def _fits(table: Table, width: int) -> bool:
    """Whether ``table`` prints within ``width`` uncropped (rich's layout may need a
    character more than it measures: the print decides)."""
    return _measure(table).minimum <= width and _rendered_width(table, width) <= width


def _rendered_width(table: Table, width: int) -> int:
    """The longest line of ``table`` printed uncropped on a console ``width`` wide."""
    buffer = io.StringIO()
    _console(buffer, width, False).print(table, crop=False)
    return max(map(len, buffer.getvalue().splitlines()), default=0)


def _auto_depth(report: Any) -> int:
    """0 for a small model; else the smallest module-path depth with at most
    :data:`COLLAPSE_ABOVE` groups."""
    names = list(report.layers)
    if len(names) <= COLLAPSE_ABOVE:
        return 0
    deepest = max(len(n.split(".")) for n in names)
    for depth in range(1, deepest + 1):
        if len({module_prefix(n, depth) for n in names}) > COLLAPSE_ABOVE:
            return max(depth - 1, 1)
    return deepest


def format_csv(report: Any) -> str:
    """Render ``report``'s layers as CSV (header :data:`CSV_COLUMNS`, ``\\n`` line ends;
    for a report analysed at channel level also :data:`CSV_CHANNEL_COLUMNS`: the number of
    channel segments and of gradient combinations, as the text table's ``segments`` and
    ``combos``).

    ``timestamps`` and ``sources`` are joined with ``;``; an unreachable
    layer has empty ``shortest`` and ``longest``.
    """
    channels = report.network.gradient_combinations is not None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((*CSV_COLUMNS, *(CSV_CHANNEL_COLUMNS if channels else ())))
    for record in report.layers.values():
        segments = record.segments
        combinations = record.gradient_combinations
        by_channel = (
            [
                "" if segments is None else len(segments),
                "" if combinations is None else combinations,
            ]
            if channels
            else []
        )
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
                *by_channel,
            ]
        )
    return buffer.getvalue()


def shown_file(file: str) -> str:
    """A file of an installed package from the package's own directory
    (``ultralytics/nn/modules/block.py``: the path a user finds it by, wherever the
    virtualenv is), else relative to the working directory when it lies below it, else as
    it is.

    Example:
        >>> shown_file("/venv/lib/python3.11/site-packages/ultralytics/nn/tasks.py")
        'ultralytics/nn/tasks.py'
    """
    installed = installed_path(file)
    if installed is not None:
        return installed
    relative = os.path.relpath(file)
    return file if relative.startswith("..") else relative
