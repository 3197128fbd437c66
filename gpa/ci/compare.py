"""``gpa compare``: two models, or a model and a baseline, side by side.

:func:`compare` takes two reports or baseline snapshots and returns a
:class:`Comparison`: the network metrics of both, and for every layer name present
in both, its shortest and longest paths — and, when both sides were analysed at channel
level, its number of gradient combinations — where they differ. :func:`load_side` turns a
command-line argument (a TARGET, a model of ``[tool.gpa]``, a baseline file
``base.json`` / ``base.json:model`` or a ``gpa analyze --format json`` report) into a
snapshot. Channel-level analyses (``channels=True``, ``--channels``) add the number of
gradient combinations to the network metrics and, when both sides have them, to each
layer's comparison.

Example:
    >>> import torch.nn as nn, gpa
    >>> a = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
    >>> b = gpa.analyze(nn.Sequential(nn.Linear(4, 2)), input_shape=(1, 4))
    >>> c = compare(a, b)
    >>> c.network["max_shortest"], [d.name for d in c.changed], c.only_a
    ((2, 1), ['0'], ['1'])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpa.ci.baseline import Snapshot, read_baseline, setting_changes
from gpa.ci.check import analyze_spec
from gpa.ci.config import Config, ModelSettings, model_spec
from gpa.core.report import Report
from gpa.errors import GpaError

__all__ = [
    "CHANNEL_METRICS",
    "Comparison",
    "LayerDiff",
    "NETWORK_METRICS",
    "compare",
    "format_comparison",
    "load_side",
    "saved_side",
]

#: The network metrics compared, in display order (``unreachable`` as a count; parameters
#: and FLOPs in the count convention named last, ``docs/semantics.md`` §9).
NETWORK_METRICS = (
    "layers",
    "max_shortest",
    "min_shortest",
    "mean_shortest",
    "longest",
    "unreachable",
    "params",
    "flops",
    "count_convention",
)

#: Compared as well when either side was analysed with channels (``docs/semantics.md`` §8).
CHANNEL_METRICS = ("gradient_combinations",)


@dataclass(frozen=True)
class LayerDiff:
    """A layer present in both sides whose shortest or longest path differs, or its number
    of gradient combinations (``gradient_combinations``: ``(a, b)`` when both sides were
    analysed at channel level, else None: not compared)."""

    name: str
    shortest: tuple[int | None, int | None]
    longest: tuple[int | None, int | None]
    gradient_combinations: tuple[int | None, int | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "shortest": list(self.shortest),
            "longest": list(self.longest),
        }
        if self.gradient_combinations is not None:
            data["gradient_combinations"] = list(self.gradient_combinations)
        return data


@dataclass(frozen=True)
class Comparison:
    """Two sides compared; ``network`` maps each of :data:`NETWORK_METRICS` (and of
    :data:`CHANNEL_METRICS` when a side has them) to ``(a, b)``."""

    a: str
    b: str
    network: dict[str, tuple[Any, Any]]
    changed: list[LayerDiff] = field(default_factory=list)
    same: int = 0
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "network": {k: list(v) for k, v in self.network.items()},
            "layers": {
                "changed": [d.to_dict() for d in self.changed],
                "same": self.same,
                "only_a": self.only_a,
                "only_b": self.only_b,
            },
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _snapshot(side: Report | Snapshot) -> Snapshot:
    return Snapshot.of(side) if isinstance(side, Report) else side


def _metric(snapshot: Snapshot, key: str) -> Any:
    value = snapshot.network.get(key)
    return len(value) if key == "unreachable" and value is not None else value


def compare(
    a: Report | Snapshot,
    b: Report | Snapshot,
    *,
    names: tuple[str, str] = ("A", "B"),
    notes: list[str] | None = None,
) -> Comparison:
    """Compare ``a`` with ``b``: network metrics, and layers matched by name (``notes``:
    remarks for the output, such as options that did not apply to a saved side).

    Layers are listed in ``a``'s order (``b``'s where ``a`` comes from a baseline file,
    which holds them sorted by name); those of only one side by name. A layer's number of
    gradient combinations is compared when both sides were analysed at channel level. The
    comparison's notes also say how the sides were analysed otherwise (inputs, options,
    frontend), and give each side's own notes, prefixed ``A:``, ``B:`` or ``A and B:``.
    """
    sa, sb = _snapshot(a), _snapshot(b)
    channel = [k for k in CHANNEL_METRICS if k in sa.network or k in sb.network]
    network = {key: (_metric(sa, key), _metric(sb, key)) for key in (*NETWORK_METRICS, *channel)}
    both_channels = sa.combinations is not None and sb.combinations is not None
    changed, same = [], 0
    first = sb if sb.ordered and not sa.ordered else sa  # (a baseline's: sorted by name)
    for name in [n for n in first.layers if n in sa.layers and n in sb.layers]:
        (short_a, long_a), (short_b, long_b) = sa.layers[name], sb.layers[name]
        combinations = None
        if both_channels:
            combinations = (sa.combinations.get(name), sb.combinations.get(name))
        if (short_a, long_a) == (short_b, long_b) and (
            combinations is None or combinations[0] == combinations[1]
        ):
            same += 1
        else:
            changed.append(LayerDiff(name, (short_a, short_b), (long_a, long_b), combinations))
    return Comparison(
        names[0],
        names[1],
        network,
        changed,
        same,
        only_a=[n for n in sa.layers if n not in sb.layers],
        only_b=[n for n in sb.layers if n not in sa.layers],
        notes=[*(notes or ()), *_settings_notes(sa, sb), *_side_notes(sa, sb)],
    )


def _settings_notes(a: Snapshot, b: Snapshot) -> list[str]:
    """A note when the sides were analysed otherwise (numbers read with another mode or
    other outputs differ for that alone), and one naming a side that does not record how
    it was (a baseline or report written before gpa recorded it)."""
    notes = []
    changes = setting_changes(a, b)
    if changes:
        notes.append(f"A and B were analysed otherwise ({'; '.join(changes)})")
    unknown = [label for label, side in (("A", a), ("B", b)) if side.options is None]
    if unknown:
        one = len(unknown) == 1
        notes.append(
            f"{' and '.join(unknown)} {'does' if one else 'do'} not record how "
            f"{'it was' if one else 'they were'} analysed (written before gpa recorded "
            "it): other settings cannot be told from other numbers"
        )
    return notes


def _side_notes(a: Snapshot, b: Snapshot) -> list[str]:
    """Each side's own notes (fallbacks, layers a frontend could not see …), by side; a
    note both sides have, once."""
    both = [n for n in a.notes if n in b.notes]
    return [
        *(f"A and B: {note}" for note in both),
        *(f"A: {note}" for note in a.notes if note not in both),
        *(f"B: {note}" for note in b.notes if note not in both),
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _delta(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == b:
        return ""
    diff = b - a
    return f"{diff:+.2f}" if isinstance(diff, float) else f"{diff:+d}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


# Layers of one side listed by name in the text (a YOLOv9 against a YOLOv8: 197).
_LISTED = 12


def format_comparison(comparison: Comparison) -> str:
    """The comparison as aligned text: network metrics, then the differing layers."""
    c = comparison
    lines = [f"A: {c.a}", f"B: {c.b}", ""]
    rows = [["metric", "A", "B", "delta"]]
    rows += [[k, _cell(a), _cell(b), _delta(a, b)] for k, (a, b) in c.network.items()]
    lines += _table(rows)
    lines.append("")
    matched = len(c.changed) + c.same
    lines.append(f"layers in both: {matched}, differing: {len(c.changed)}")
    if c.changed:
        fields = {"shortest": lambda d: d.shortest, "longest": lambda d: d.longest}
        if c.changed[0].gradient_combinations is not None:
            fields["combinations"] = lambda d: d.gradient_combinations
        rows = [["layer"] + [h for f in fields for h in (f"{f} A", f"{f} B", "delta")]]
        for d in c.changed:
            row = [d.name]
            for pair in (get(d) for get in fields.values()):
                row += [_cell(pair[0]), _cell(pair[1]), _delta(*pair)]
            rows.append(row)
        lines += _table(rows)
    for label, only in (("only in A", c.only_a), ("only in B", c.only_b)):
        if only:
            shown = ", ".join(only[:_LISTED])
            more = f", … {len(only) - _LISTED} more (--format json lists all)"
            lines.append(f"{label} ({len(only)}): {shown}{more if len(only) > _LISTED else ''}")
    if c.notes:
        lines += ["", "notes:", *(f"  - {note}" for note in c.notes)]
    return "\n".join(lines) + "\n"


def _json_side(path: Path, model: str | None) -> Snapshot:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GpaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise GpaError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("layers"), list) and "network" in data:
        return Snapshot.from_report_dict(data)  # a gpa analyze --format json report
    snapshots = read_baseline(path)
    if model is None:
        if len(snapshots) != 1:
            raise GpaError(
                f"{path} holds {len(snapshots)} models; name one as {path}:MODEL "
                f"({', '.join(snapshots) or 'none'})"
            )
        return next(iter(snapshots.values()))
    if model not in snapshots:
        raise GpaError(f"{path} has no model {model!r} (it has: {', '.join(snapshots)})")
    return snapshots[model]


def saved_side(arg: str) -> tuple[Path, str | None] | None:
    """The JSON file and model a ``gpa compare`` argument names (``base.json``,
    ``base.json:MODEL`` — the model's name may hold colons, as TARGETs do), or None for a
    model to analyse.

    Example:
        >>> saved_side("base.json:ultralytics:yolov9t.yaml")
        (PosixPath('base.json'), 'ultralytics:yolov9t.yaml')
        >>> saved_side("nets.py:resnet") is None
        True
    """
    if arg.endswith(".json"):
        return Path(arg), None
    head, sep, tail = arg.partition(".json:")
    return (Path(head + ".json"), tail) if sep else None


def load_side(
    arg: str,
    settings: ModelSettings | None = None,
    config: Config | None = None,
    progress: Callable[[str], None] | None = None,
) -> Snapshot:
    """The snapshot named by a ``gpa compare`` argument.

    ``arg`` is a JSON file (``base.json``, ``base.json:MODEL`` for a baseline with several
    models, or a saved report), or a model analysed as :func:`~gpa.ci.config.model_spec`
    says (a model name of ``config``, or a TARGET with its defaults), with ``settings``
    over both (with the ``channels`` option the snapshot holds the gradient combinations).
    """
    saved = saved_side(arg)
    if saved is not None:
        return _json_side(*saved)
    return Snapshot.of(analyze_spec(model_spec(arg, config, settings), progress))
