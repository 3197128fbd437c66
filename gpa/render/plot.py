"""Pictures of gradient paths: the paper's Fig. 7 (timestamps), Fig. 8 (sources) and more.

Every function takes reports (or scaling results), draws on a new
:class:`matplotlib.figure.Figure` and returns it; nothing is shown or saved
(``fig.savefig("out.png")``; in Jupyter the figure displays itself). pyplot is
not used, so figures are freed like any object.

Large models stay legible: when a drawing would hold more than ``max_units``
layers (default 48), consecutive layers are *collapsed* by module depth — all
layers under the same first ``depth`` parts of their qualified name become one
unit (``depth=2``: ``stages.0.blocks.3.conv1`` is drawn in ``stages.0``) — and,
when no module depth gives a readable number of units, consecutive modules are
binned together. Pass ``depth=`` to choose the module depth yourself.

Artists carry ids (``Artist.get_gid()``) saying what they show, for tests and
for post-processing an SVG: ``unit:NAME`` (a layer or collapsed unit drawn as
one part), ``segment:NAME:START-STOP`` (one channel segment of a layer),
``source:NAME:PART:LABEL`` (the share of a part coloured by one source),
``edge:A->B`` (a data-flow edge), ``delivery:SOURCE->NAME`` (gradient handed
on at the chosen round), ``loss``, ``shortest:MODEL`` / ``longest:MODEL`` /
``band:MODEL`` (profile lines), ``bar:LENGTH`` (histogram bars) and
``fit:METRIC:MODEL`` / ``points:METRIC:MODEL`` (scaling).

Example:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import gpa, gpa.plot, torch.nn as nn
    >>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
    ...                      input_shape=(1, 4))
    >>> fig = gpa.plot.timestamps(report)
    >>> sorted(p.get_gid() for p in fig.axes[0].patches if p.get_gid().startswith("unit"))
    ['unit:0', 'unit:2']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from gpa.core.report import LOSS, LayerRecord, Report, find_layer
from gpa.errors import GpaError
from gpa.render.text import format_count, format_timestamps, module_prefix

__all__ = [
    "FORMATS",
    "KINDS",
    "Part",
    "Unit",
    "busiest_first_round",
    "draw",
    "check_request",
    "image_format",
    "histogram",
    "profile",
    "save",
    "scaling",
    "sources",
    "timestamps",
    "units",
]

#: Beyond this many layers a drawing collapses layers into units (see the module docstring).
MAX_UNITS = 48

_BOX_W = 0.72
_BOX_H = 3.0
_MIN_FONT = 6.5
_SOURCE_COLOURS = [colormaps["tab10"](i) for i in range(10)] + [
    colormaps["Dark2"](i) for i in range(8)
]


@dataclass(frozen=True)
class Part:
    """One drawn part of a unit: a whole layer, one channel segment, or a collapsed group."""

    label: str | None
    timestamps: tuple[int, ...]
    #: (key, label) of each source delivering at the chosen round, when asked for.
    sources: tuple[tuple[tuple, str], ...] = ()
    channels: tuple[int, int] | None = None
    #: for a collapsed group, the longest of its layers' shortest paths (its worst, as the
    #: text table's grouped view shows it); None for one layer or segment
    worst: int | None = None

    @property
    def shortest(self) -> int | None:
        """The shortest gradient path the part is coloured by: a layer's or segment's, or
        a group's worst (the union of its timestamps starts at its best layer's)."""
        if self.worst is not None:
            return self.worst
        return self.timestamps[0] if self.timestamps else None


@dataclass(frozen=True)
class Unit:
    """What one box of a drawing stands for: one layer, or several collapsed together."""

    name: str
    members: tuple[str, ...]
    parts: tuple[Part, ...] = field(default=())

    @property
    def timestamps(self) -> tuple[int, ...]:
        return tuple(sorted({t for p in self.parts for t in p.timestamps}))


# ------------------------------------------------------------------ grouping


def _group_names(names: Sequence[str], depth: int | None, limit: int) -> dict[str, str]:
    """Layer name -> the unit it is drawn in (itself, a module prefix, or a bin of prefixes)."""
    if depth is not None:
        if depth < 0:
            raise GpaError(f"depth must be 0 (every layer) or more, got {depth}")
        return {n: module_prefix(n, depth) if depth else n for n in names}
    if len(names) <= limit:
        return {n: n for n in names}
    deepest = max(n.count(".") + 1 for n in names)
    counts = {
        k: len(dict.fromkeys(module_prefix(n, k) for n in names)) for k in range(1, deepest + 1)
    }
    natural = [k for k, c in counts.items() if limit / 3 <= c <= limit]
    if natural:
        return _group_names(names, max(natural), limit)
    # No module depth gives a readable count: bin consecutive modules of the first
    # depth that is finer than the limit.
    finer = min((k for k, c in counts.items() if c > limit), default=deepest)
    prefixes = list(dict.fromkeys(module_prefix(n, finer) for n in names))
    size = math.ceil(len(prefixes) / limit)
    bins = {}
    for i in range(0, len(prefixes), size):
        chunk = prefixes[i : i + size]
        label = chunk[0] if len(chunk) == 1 else _range_label(chunk[0], chunk[-1])
        bins.update({p: label for p in chunk})
    return {n: bins[module_prefix(n, finer)] for n in names}


def _range_label(first: str, last: str) -> str:
    """``stages.0.blocks.1–2`` for consecutive modules of one parent, else ``first … last``."""
    head, _, a = first.rpartition(".")
    parent, _, b = last.rpartition(".")
    return f"{head}.{a}–{b}" if head and head == parent else f"{first} … {last}"


def _source_label(src: Any, group: dict[str, str] | None) -> tuple[tuple, str]:
    """(key, label) of a segment's source; with ``group``, only the sender's unit counts."""
    sender = src.sender
    if group is not None:
        unit = group.get(sender, sender)
        return (unit,), unit
    a, b = src.channels
    label = f"{sender} [{a}:{b}]"
    if src.output:
        label = f"{sender} {src.output} [{a}:{b}]"
    if src.group is not None:
        label += f" group {','.join(map(str, src.group))}"
    if src.argument is not None:
        label += f" arg {src.argument}"
    if src.mixed:
        label += " mixed"
    return (sender, src.channels, src.group, src.output, src.argument, src.mixed), label


def _record_parts(r: LayerRecord, t: int | None, group: dict[str, str] | None) -> list[Part]:
    """The parts of one record: one per segment when it has several, else the whole layer."""
    segments = r.segments if (r.segments is not None and group is None) else None
    if segments is not None and len(segments) > 1:
        parts = []
        for s in segments:
            found = tuple(
                dict.fromkeys(_source_label(x, None) for x in s.sources if t and x.rounds >> t & 1)
            )
            parts.append(
                Part(
                    # (as sources are labelled: a slice's half-open range, or one channel)
                    str(s.start) if s.stop - s.start == 1 else f"[{s.start}:{s.stop}]",
                    s.paths.timestamps if s.paths else (),
                    found,
                    (s.start, s.stop),
                )
            )
        return parts
    found: list[tuple[tuple, str]] = []
    if t:
        if r.segments is not None:
            found = [
                _source_label(x, group) for s in r.segments for x in s.sources if x.rounds >> t & 1
            ]
        else:
            found = [
                ((group.get(s, s),), group.get(s, s)) if group else ((s,), s)
                for s in r.sources_at(t)
            ]
    return [Part(None, r.timestamps, tuple(dict.fromkeys(found)))]


def units(
    report: Report, *, depth: int | None = None, t: int | None = None, max_units: int = MAX_UNITS
) -> list[Unit]:
    """The units a drawing of ``report`` shows, in forward order.

    Without collapsing, one unit per layer with one part per channel segment (or one
    part). Collapsed units (``depth=``, or automatically beyond ``max_units`` layers)
    have one part: the union of their layers' timestamps and, at round ``t``, of
    their sources (named by the unit they are drawn in).

    Example:
        >>> import gpa, torch.nn as nn
        >>> r = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
        >>> [(u.name, u.timestamps) for u in units(r)]
        [('0', (2,)), ('1', (1,))]
    """
    names = list(report.layers)
    group = _group_names(names, depth, max_units)
    collapsed = any(k != v for k, v in group.items())
    members: dict[str, list[str]] = {}
    for n in names:
        members.setdefault(group[n], []).append(n)
    found = []
    for unit, layer_names in members.items():
        records = [report.layers[n] for n in layer_names]
        if not collapsed:
            parts = tuple(_record_parts(records[0], t, None))
        else:
            stamps = tuple(sorted({s for r in records for s in r.timestamps}))
            srcs = tuple(
                dict.fromkeys(
                    x for r in records for p in _record_parts(r, t, group) for x in p.sources
                )
            )
            reached = [r.shortest for r in records if r.shortest is not None]
            parts = (Part(None, stamps, srcs, worst=max(reached, default=None)),)
        found.append(Unit(unit, tuple(layer_names), parts))
    return found


# ------------------------------------------------------------------ drawing helpers


def _font(n: int) -> float:
    return max(_MIN_FONT, min(10.0, 80.0 / max(n, 1) + 4))


def _figure(n: int, height: float = 5.2) -> tuple[Figure, Any]:
    width = min(40.0, max(6.5, (0.95 if n <= 12 else 0.5) * (n + 1) + 2.5))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(-0.8, n + 0.8)
    ax.set_ylim(-0.9, _BOX_H + 2.4)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _ink(colour: Any) -> str:
    r, g, b = to_rgb(colour)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _name_axis(ax: Any, drawn: Sequence[Unit], font: float) -> None:
    n = len(drawn)
    ax.set_xticks(range(n + 1))
    labels = [u.name if len(u.members) == 1 else f"{u.name} ({len(u.members)})" for u in drawn]
    rotation = 0 if n <= 4 else (35 if n <= 12 else 90)
    ax.set_xticklabels(
        [*labels, "loss"],
        rotation=rotation,
        ha="right" if 0 < rotation < 90 else "center",
        fontsize=font,
    )
    ax.tick_params(axis="x", length=0)


def _edges(report: Report, drawn: Sequence[Unit]) -> list[tuple[int, int]]:
    """Data-flow edges between drawn units (the loss is index ``len(drawn)``)."""
    where = {m: i for i, u in enumerate(drawn) for m in u.members}
    where[LOSS] = len(drawn)
    pairs = {
        (where[a], where[b])
        for a, b in report.graph.edges
        if a in where and b in where and where[a] != where[b]
    }
    return sorted(pairs)


def _draw_edges(ax: Any, report: Report, drawn: Sequence[Unit], colour: str = "0.35") -> None:
    pairs = _edges(report, drawn)
    alpha = 0.9 if len(pairs) < 40 else max(0.15, 40 / len(pairs))
    names = [u.name for u in drawn] + [LOSS]
    for a, b in pairs:
        lo, hi = min(a, b), max(a, b)
        if hi - lo == 1:
            start, end, style = (a + _BOX_W / 2, _BOX_H / 2), (b - _BOX_W / 2, _BOX_H / 2), "arc3"
            if a > b:
                start, end = (a - _BOX_W / 2, _BOX_H / 2), (b + _BOX_W / 2, _BOX_H / 2)
        else:
            start, end = (a, _BOX_H), (b, _BOX_H)
            # Arcs above the boxes, taller for longer jumps, capped inside the axes.
            bend = -min(0.6, 2.2 / (hi - lo))
            style = f"arc3,rad={bend if a < b else -bend}"
        arrow = FancyArrowPatch(
            start,
            end,
            connectionstyle=style,
            arrowstyle="-|>",
            mutation_scale=8,
            lw=0.8,
            color=colour,
            alpha=alpha,
            shrinkA=0,
            shrinkB=1,
            gid=f"edge:{names[a]}->{names[b]}",
        )
        ax.add_patch(arrow)


def _draw_loss(ax: Any, x: int, font: float) -> None:
    ax.add_patch(
        Rectangle(
            (x - _BOX_W / 2, 0),
            _BOX_W,
            _BOX_H,
            facecolor="0.85",
            edgecolor="black",
            lw=0.8,
            gid="loss",
        )
    )
    ax.text(x, _BOX_H / 2, "loss", ha="center", va="center", fontsize=font, rotation=90)


def _part_boxes(unit: Unit, x: int) -> list[tuple[Part, float, float]]:
    """(part, bottom, height) of each part of ``unit``: stacked, first channels at the bottom."""
    k = len(unit.parts)
    return [(p, i * _BOX_H / k, _BOX_H / k) for i, p in enumerate(unit.parts)]


def _part_gid(unit: Unit, part: Part) -> str:
    if part.channels is None:
        return f"unit:{unit.name}"
    return f"segment:{unit.name}:{_channels_id(part)}"


def _channels_id(part: Part) -> str:
    """A segment's channels in an element id (``0-8``), or empty for a whole layer."""
    return "" if part.channels is None else f"{part.channels[0]}-{part.channels[1]}"


def _stamp_text(part: Part, vertical: bool, limit: int | None = None, named: bool = True) -> str:
    # the exact shorthand of the table, packed: no spaces, at most four items a line
    limit = limit or (4 if vertical else 6)
    items = format_timestamps(part.timestamps, limit=limit).split(", ")
    size = len(items) if vertical else 4
    text = ",\n".join(",".join(items[i : i + size]) for i in range(0, len(items), size))
    if part.label is not None and named:
        text = f"ch {part.label}: {text}" if vertical else f"{text}\nch {part.label}"
    return text


def _stamp_texts(part: Part, vertical: bool) -> list[str]:
    """The labels a part may take, longest first: with its channels, without, and its
    timestamps more briefly (a thin segment of a stack holds little)."""
    return [
        _stamp_text(part, vertical),
        _stamp_text(part, vertical, named=False),
        _stamp_text(part, vertical, limit=2, named=False),
    ]


def _fit(ax: Any, stacks: list[list[tuple[Any, Rectangle, list[str]]]]) -> None:
    """Label the parts of each stack alike, with the longest of their labels that fits
    every part's box once the figure is laid out; a part fitting none is clipped to its
    box (never drawn over its neighbours)."""
    ax.figure.draw_without_rendering()  # (the layout decides the boxes' size on the page)

    def fits(text: Any, box: Rectangle, label: str) -> bool:
        text.set_text(label)
        inner, bounds = text.get_window_extent(), box.get_window_extent()
        return inner.height <= bounds.height and inner.width <= bounds.width * 1.15

    for stack in stacks:
        levels = len(stack[0][2])
        level = next(
            (i for i in range(levels) if all(fits(t, b, c[i]) for t, b, c in stack)), levels - 1
        )
        for text, box, choices in stack:
            if not fits(text, box, choices[level]):
                text.set_clip_path(box)


# ------------------------------------------------------------------ Fig. 7


def timestamps(
    report: Report, *, depth: int | None = None, max_units: int = MAX_UNITS, cmap: str = "viridis"
) -> Figure:
    """Fig. 7: layers in forward order, data flow as arcs, each layer's gradient timestamps.

    Each box is a layer (or a collapsed unit) coloured by its shortest gradient path
    (a unit's: the longest of its layers', its worst) and labelled with its timestamps; a layer with several channel segments
    (``gpa.analyze(..., channels=True)``) is a stack of parts, one per segment (first
    channels at the bottom), each with its own timestamps and colour. Arrows follow
    the forward data flow; shortcuts and concatenations arc over the layers they skip.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import gpa, gpa.models, gpa.plot
        >>> m = gpa.models.build("prn", blocks=1)
        >>> fig = gpa.plot.timestamps(gpa.analyze(m, input_shape=m.input_shape, channels=True))
        >>> sorted(p.get_gid() for p in fig.axes[0].patches if p.get_gid().startswith("segment"))
        ['segment:stem.conv:0-8', 'segment:stem.conv:8-16']
    """
    drawn = units(report, depth=depth, max_units=max_units)
    n = len(drawn)
    font = _font(n)
    fig, ax = _figure(n)
    shortest = [p.shortest for u in drawn for p in u.parts if p.shortest is not None]
    low, high = min(shortest, default=1), max(shortest, default=1)
    # One colour per path length: boundaries halfway between integers.
    norm = BoundaryNorm([v - 0.5 for v in range(low, high + 2)], ncolors=256)
    colours = colormaps[cmap]
    _draw_edges(ax, report, drawn)
    vertical = n > 10
    stacks: list[list[tuple[Any, Rectangle, list[str]]]] = []  # parts sharing a box
    for x, unit in enumerate(drawn):
        stack = []
        for part, bottom, height in _part_boxes(unit, x):
            face = "white" if part.shortest is None else colours(norm(part.shortest))
            box = Rectangle(
                (x - _BOX_W / 2, bottom),
                _BOX_W,
                height,
                facecolor=face,
                edgecolor="black",
                lw=0.8,
                gid=_part_gid(unit, part),
            )
            ax.add_patch(box)
            choices = _stamp_texts(part, vertical)
            text = ax.text(
                x,
                bottom + height / 2,
                choices[0],
                ha="center",
                va="center",
                fontsize=font,
                rotation=90 if vertical else 0,
                color=_ink(face),
                gid=f"stamps:{_part_gid(unit, part)}",
                clip_on=True,
            )
            stack.append((text, box, choices))
        if len(stack) > 1:
            stacks.append(stack)
    _draw_loss(ax, n, font)
    _name_axis(ax, drawn, font)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, shrink=0.8, pad=0.01)
    bar.set_label("shortest gradient path", fontsize=9)
    # path lengths are whole numbers: integer ticks only, however long the range
    if high - low <= 12:
        bar.set_ticks(range(low, high + 1))
    else:
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    if any(p.shortest is None for u in drawn for p in u.parts):  # a white box: say what
        unreached = Patch(facecolor="white", edgecolor="black", label="no gradient (unreachable)")
        ax.legend(handles=[unreached], loc="upper left", fontsize=8, frameon=False)
    collapsed = any(len(u.members) > 1 for u in drawn)
    note = (
        " (layers collapsed by module: count in parentheses, coloured by their longest "
        "shortest path)"
        if collapsed
        else ""
    )
    ax.set_title(f"{report.model}: gradient timestamps per layer{note}", fontsize=11)
    if stacks:
        _fit(ax, stacks)
    return fig


# ------------------------------------------------------------------ Fig. 8


def busiest_first_round(report: Report) -> int:
    """The default round of :func:`sources`: the first at which more than one layer
    receives gradient (round 1 when there is none such).

    Example:
        >>> import gpa, gpa.models
        >>> m = gpa.models.build("resnet", blocks=2)
        >>> busiest_first_round(gpa.analyze(m, input_shape=m.input_shape))
        2
    """
    longest = report.network.longest or 1
    for t in range(1, longest + 1):
        if sum(t in r.timestamps for r in report.layers.values()) > 1:
            return t
    return 1


def sources(
    report: Report,
    t: int | None = None,
    *,
    depth: int | None = None,
    max_units: int = MAX_UNITS,
) -> Figure:
    """Fig. 8: which layers (channel segments) receive gradient at round ``t``, from which source.

    A part receiving gradient at round ``t`` is filled with one colour per source — the
    sender *and* the part of its gradient delivered (its input channels), so layers
    fed through one add share a colour while the channel ranges of a concatenation
    get different ones. Parts receiving nothing at round ``t`` are hatched grey. The
    round-``t`` deliveries are drawn as coloured arrows below the layers.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import gpa, gpa.models, gpa.plot
        >>> m = gpa.models.build("densenet", blocks=1, layers=2)
        >>> fig = gpa.plot.sources(gpa.analyze(m, input_shape=m.input_shape, channels=True), t=2)
        >>> sorted(fig.axes[0].get_legend_handles_labels()[1])
        ['fc [0:16]', 'fc [16:24]', 'fc [24:32]']

    ``t`` defaults to :func:`busiest_first_round`.

    Raises:
        GpaError: ``t`` is not a round of the traversal (1 … the network's longest path).
    """
    longest = report.network.longest or 0
    t = busiest_first_round(report) if t is None else t
    if not 1 <= t <= longest:
        raise GpaError(
            f"round {t} is not a round of {report.model}'s backward traversal: gradient "
            f"reaches layers at rounds 1 to {longest} (its longest path)"
        )
    drawn = units(report, depth=depth, t=t, max_units=max_units)
    n = len(drawn)
    font = _font(n)
    fig, ax = _figure(n, height=5.8)
    ax.set_ylim(-3.2, _BOX_H + 2.4)
    _draw_edges(ax, report, drawn, colour="0.8")
    palette: dict[tuple, tuple[str, Any]] = {}
    for unit in drawn:
        for part in unit.parts:
            for key, label in part.sources:
                if key not in palette:
                    i = len(palette)
                    colour = (
                        _SOURCE_COLOURS[i]
                        if i < len(_SOURCE_COLOURS)
                        else colormaps["hsv"]((i * 0.618) % 1)
                    )
                    palette[key] = (label, colour)
    where = {m: i for i, u in enumerate(drawn) for m in u.members}
    where.update({u.name: i for i, u in enumerate(drawn)})
    where[LOSS] = n
    legend_done: set[tuple] = set()
    vertical = n > 10
    for x, unit in enumerate(drawn):
        for part, bottom, height in _part_boxes(unit, x):
            gid = _part_gid(unit, part)
            ax.add_patch(
                Rectangle(
                    (x - _BOX_W / 2, bottom),
                    _BOX_W,
                    height,
                    facecolor="0.93",
                    hatch="//" if not part.sources else None,
                    edgecolor="black",
                    lw=0.8,
                    gid=gid,
                )
            )
            k = len(part.sources)
            for i, (key, label) in enumerate(part.sources):
                colour = palette[key][1]
                ax.add_patch(
                    Rectangle(
                        (x - _BOX_W / 2 + i * _BOX_W / k, bottom),
                        _BOX_W / k,
                        height,
                        facecolor=colour,
                        edgecolor="none",
                        label=label if key not in legend_done else None,
                        gid=f"source:{unit.name}:{_channels_id(part)}:{label}",
                    )
                )
                legend_done.add(key)
                sender = where.get(key[0])
                if sender is not None and sender != x:
                    ax.add_patch(
                        FancyArrowPatch(
                            (sender, -0.15),
                            (x, -0.15),
                            connectionstyle=f"arc3,rad={math.copysign(min(0.6, 2.0 / abs(sender - x)), x - sender)}",
                            arrowstyle="-|>",
                            mutation_scale=8,
                            lw=1.0,
                            color=colour,
                            alpha=0.8,
                            gid=f"delivery:{key[0]}->{unit.name}",
                        )
                    )
            if part.label is not None:
                ax.text(
                    x,
                    bottom + height / 2,
                    f"ch {part.label}",
                    ha="center",
                    va="center",
                    fontsize=font,
                    rotation=90 if vertical else 0,
                    clip_on=True,
                )
    _draw_loss(ax, n, font)
    _name_axis(ax, drawn, font)
    if palette:
        handles, labels = ax.get_legend_handles_labels()
        limit = 18
        ax.legend(
            handles[:limit],
            labels[:limit],
            title=f"source at round {t}",
            fontsize=8,
            title_fontsize=9,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
        )
    count = sum(1 for u in drawn for p in u.parts if p.sources)
    ax.set_title(
        f"{report.model}: gradient sources at round {t} ({count} part(s) receive, "
        f"{len(palette)} source(s))",
        fontsize=11,
    )
    return fig


# ------------------------------------------------------------------ profile


def profile(report: Report, *others: Report, names: Sequence[str] | None = None) -> Figure:
    """Shortest and longest gradient path of every layer along depth, for one or more models.

    The x axis is the layer's position in forward order; for each model the band
    between shortest and longest is shaded and every timestamp is a dot, so the
    spread of the rounds at which gradient arrives is visible (e.g. VoVNet against ELAN).

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import gpa, gpa.models, gpa.plot
        >>> m = gpa.models.build("plainnet", depth=3)
        >>> r = gpa.analyze(m, input_shape=m.input_shape, name="plain")
        >>> [line.get_ydata().tolist() for line in gpa.plot.profile(r).axes[0].lines
        ...  if line.get_gid() == "shortest:plain"]
        [[5, 4, 3, 2, 1]]
    """
    reports = [report, *others]
    labels = list(names) if names is not None else [r.model for r in reports]
    if len(labels) != len(reports):
        raise GpaError(f"{len(reports)} reports but {len(labels)} names")
    longest = max(len(r.layers) for r in reports)
    fig = Figure(figsize=(min(18.0, max(7.0, 0.08 * longest + 6)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    drawn: dict[str, tuple] = {}  # label -> its curves, to name the curves another hides
    for i, (r, label) in enumerate(zip(reports, labels, strict=True)):
        colour = _SOURCE_COLOURS[i % len(_SOURCE_COLOURS)]
        records = list(r.layers.values())
        xs = list(range(1, len(records) + 1))
        lo = [math.nan if x.shortest is None else x.shortest for x in records]
        hi = [math.nan if x.longest is None else x.longest for x in records]
        curves = (tuple(lo), tuple(hi))
        hidden = [other for other, seen in drawn.items() if seen == curves]
        drawn[label] = curves
        # drawn exactly over an earlier model's curves: say so in the legend
        shown = f"{label} (same curves as {', '.join(hidden)})" if hidden else label
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0, gid=f"band:{label}")
        dots = [(x, s) for x, rec in zip(xs, records, strict=True) for s in rec.timestamps]
        if 0 < len(dots) <= 20000:
            ax.scatter(
                [d[0] for d in dots],
                [d[1] for d in dots],
                s=4,
                color=colour,
                alpha=0.5,
                gid=f"stamps:{label}",
            )
        ax.plot(
            xs, lo, "-", color=colour, lw=1.6, label=f"{shown}: shortest", gid=f"shortest:{label}"
        )
        ax.plot(
            xs, hi, "--", color=colour, lw=1.2, label=f"{shown}: longest", gid=f"longest:{label}"
        )
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("gradient path length")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title("gradient paths along depth: " + " vs ".join(labels), fontsize=11)
    return fig


# ------------------------------------------------------------------ histogram


def histogram(report: Report, layer: str) -> Figure:
    """The number of gradient paths of each length reaching ``layer`` (bars; log scale if wide).

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import gpa, gpa.models, gpa.plot
        >>> m = gpa.models.build("resnet", blocks=2)
        >>> fig = gpa.plot.histogram(gpa.analyze(m, input_shape=m.input_shape), "stem.conv")
        >>> [(p.get_gid(), int(p.get_height())) for p in fig.axes[0].patches]
        [('bar:2', 1), ('bar:4', 2), ('bar:6', 1)]
    """
    record = find_layer(report, layer)
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    hist = record.path_histogram
    if not hist:
        ax.text(
            0.5,
            0.5,
            f"{layer} receives no gradient",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    heights = {k: float(v) if v < 10**300 else 1e300 for k, v in hist.items()}
    bars = ax.bar(list(heights), list(heights.values()), width=0.8, color=_SOURCE_COLOURS[0])
    for bar, k in zip(bars, heights, strict=True):
        bar.set_gid(f"bar:{k}")
    if hist and max(heights.values()) / min(heights.values()) > 1000:
        ax.set_yscale("log")
    else:  # counts are whole: no tick at 0.5
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(hist) <= 12:
        for k, v in hist.items():
            ax.annotate(
                format_count(v),
                (k, heights[k]),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xlabel("gradient path length")
    ax.set_ylabel("number of paths")
    ax.set_title(  # (two lines: a model named by its file's path is long)
        f"{report.model}\n{layer} — {format_count(record.num_paths)} path(s), "
        f"shortest {record.shortest}, longest {record.longest}",
        fontsize=10,
    )
    return fig


# ------------------------------------------------------------------ Table 1


def _as_dict(result: Any) -> dict[str, Any]:
    found = result.to_dict() if hasattr(result, "to_dict") else result
    if not isinstance(found, dict) or "points" not in found or "fits" not in found:
        raise GpaError("scaling() takes results of gpa.scaling (or their to_dict())")
    return found


_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def _fitted(growth: str, a: float, b: float, n: float) -> float:
    from gpa.growth import CLASSES

    return a + b * CLASSES[growth](n) if growth in CLASSES else math.nan


def scaling(
    results: Any | Iterable[Any], metrics: Sequence[str] = ("max_shortest", "longest")
) -> Figure:
    """``max_shortest`` and ``longest`` against the number of layers, per family (the paper's Table 1).

    ``results`` is one :class:`gpa.growth.ScalingResult` (or its ``to_dict()``) or
    several. Log–log axes; the measured points as markers and the fitted growth
    class as a dashed curve, named in the legend.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import gpa, gpa.plot
        >>> r = gpa.scaling("plainnet", "depth", [2, 4, 8], width=4)
        >>> [t.get_text() for t in gpa.plot.scaling(r).axes[0].get_legend().get_texts()]
        ['plainnet: O(N)']
    """
    if hasattr(results, "to_dict") or isinstance(results, dict):
        results = [results]
    found = [_as_dict(r) for r in results]
    fig = Figure(figsize=(5.2 * len(metrics), 4.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for i, result in enumerate(found):
            colour = _SOURCE_COLOURS[i % len(_SOURCE_COLOURS)]
            model = result["model"]
            pts = [p for p in result["points"] if p.get(metric) is not None]
            ns = [p["layers"] for p in pts]
            ys = [p[metric] for p in pts]
            fit = result["fits"].get(metric, {})
            growth = fit.get("growth", "none")
            ax.plot(
                ns,
                ys,
                "o",
                color=colour,
                label=f"{model}: {growth}",
                gid=f"points:{metric}:{model}",
            )
            if ns and growth != "none":
                lo, hi = min(ns), max(ns)
                grid = [lo * (hi / lo) ** (j / 50) for j in range(51)]
                ax.plot(
                    grid,
                    [_fitted(growth, fit["a"], fit["b"], x) for x in grid],
                    "--",
                    color=colour,
                    lw=1,
                    gid=f"fit:{metric}:{model}",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers (6, 10, 20), not 2×10¹
            axis.set_major_formatter(_PLAIN)
            axis.set_minor_formatter(_PLAIN)
        ax.set_xlabel("N (number of layers)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} against depth", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, frameon=False)
    return fig


#: The kinds ``gpa plot --kind`` draws, for the CLI; ``gradnorm`` and ``duplication`` draw
#: a :class:`gpa.measure.measurement.Measurement` (:mod:`gpa.measure.plot`).
KINDS = ("timestamps", "sources", "profile", "histogram", "gradnorm", "duplication")

#: The kinds drawn from measurements (``gpa.measure``) rather than reports.
MEASURED_KINDS = ("gradnorm", "duplication")


#: File types :func:`save` writes, by extension.
FORMATS = ("png", "svg", "pdf")


def draw(
    kind: str,
    reports: Sequence[Report],
    *,
    layer: str | None = None,
    t: int | None = None,
    depth: int | None = None,
) -> Figure:
    """The figure of one of :data:`KINDS` for ``reports`` (what ``gpa plot --kind`` draws).

    ``profile`` overlays every report; the other kinds take exactly one.
    ``histogram`` needs ``layer``; ``sources`` draws round ``t`` (default: the first
    round at which more than one layer receives gradient); ``depth``
    collapses layers by module depth in ``timestamps`` and ``sources``.
    """
    check_request(kind, len(reports))
    if kind in MEASURED_KINDS:
        from gpa.measure import plot as measured

        if not hasattr(reports[0], "similarity"):
            raise GpaError(f"--kind {kind} draws one measurement (gpa.measure), not a report")
        return getattr(measured, kind)(reports[0])
    if kind == "profile":
        return profile(*reports)
    (report,) = reports
    if kind == "timestamps":
        return timestamps(report, depth=depth)
    if kind == "sources":
        return sources(report, t, depth=depth)
    if layer is None:
        raise GpaError(
            f"--kind histogram needs --layer NAME (one of: {', '.join(list(report.layers)[:5])}, …)"
        )
    return histogram(report, layer)


def check_request(kind: str, models: int) -> None:
    """Refuse a figure :func:`draw` cannot make of ``models`` models, before any is
    analysed or measured (seconds each).

    Raises:
        GpaError: an unknown kind, or several models for a kind drawing one.

    Example:
        >>> check_request("profile", 3)
    """
    if kind not in KINDS:
        raise GpaError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "profile" and models != 1:
        what = "one measurement (gpa.measure)" if kind in MEASURED_KINDS else "one model"
        raise GpaError(
            f"--kind {kind} draws {what}, and {models} targets were given; only --kind "
            "profile overlays several"
        )


def image_format(path: Any) -> str:
    """``"png"``, ``"svg"`` or ``"pdf"``, from ``path``'s extension (a :class:`GpaError` otherwise).

    Example:
        >>> image_format("figures/resnet.SVG")
        'svg'
    """
    suffix = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else ""
    if suffix not in FORMATS:
        raise GpaError(
            f"cannot tell the image format of {path}: use a .png, .svg or .pdf file name"
        )
    return suffix


def save(fig: Figure, path: Any, dpi: int = 150) -> None:
    """Write ``fig`` to ``path`` as PNG, SVG or PDF, chosen by the file's extension."""
    fmt = image_format(path)
    try:
        fig.savefig(path, format=fmt, dpi=dpi)
    except OSError as exc:
        raise GpaError(f"cannot write {path}: {exc.strerror or exc}") from None
