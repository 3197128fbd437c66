"""Baselines: recorded gradient-path metrics to compare later runs against.

A baseline file maps model names to :class:`Snapshot` values: the network summary and
each layer's shortest and longest path. :func:`regressions` compares a fresh report
with a snapshot: a layer whose shortest path grew, a layer that newly receives no
gradient, or a larger ``max_shortest`` is a regression; the opposite changes are
improvements, reported but never failing.

The file is JSON with sorted keys, two-space indents and a final newline, so it is
byte-identical for the same models and reads well in a diff.

Example:
    >>> import torch.nn as nn, gpa
    >>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
    >>> Snapshot.of(report).layers
    {'0': (2, 2), '1': (1, 1)}
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpa import __version__
from gpa.ci.rules import RuleResult, Violation
from gpa.core.report import Report
from gpa.errors import GpaError

__all__ = [
    "BASELINE_FORMAT",
    "PATH_SETTINGS",
    "Snapshot",
    "dump_baseline",
    "read_baseline",
    "regressions",
    "setting_changes",
    "write_baseline",
]

#: Version of the baseline file layout.
BASELINE_FORMAT = 2  # 2: each model's inputs, options and frontend


@dataclass(frozen=True)
class Snapshot:
    """The recorded numbers of one model, and how it was analysed.

    Attributes:
        network: the network summary (``docs/semantics.md``), ``unreachable`` a list.
        layers: layer name -> (shortest, longest); ``(None, None)`` when unreachable.
        combinations: layer name -> its number of gradient combinations
            (``docs/semantics.md`` §8), for a report analysed at channel level; else None.
            Baseline files do not hold it.
        inputs: the shapes and dtypes of the inputs (a report's ``inputs``).
        options: the analysis options (:meth:`gpa.options.AnalysisOptions.to_dict`); None
            when not recorded (a baseline of format 1).
        tracer: the frontend that built the graph.
        notes: the report's notes (baseline files do not hold them: they may name paths
            of the machine that wrote them).
        ordered: whether ``layers`` are in forward order (a baseline file holds them
            sorted by name).
    """

    network: Mapping[str, Any]
    layers: Mapping[str, tuple[int | None, int | None]]
    combinations: Mapping[str, int | None] | None = None
    inputs: list[dict[str, Any]] | None = None
    options: Mapping[str, Any] | None = None
    tracer: str | None = None
    notes: tuple[str, ...] = ()
    ordered: bool = field(default=True, compare=False)

    @staticmethod
    def of(report: Report) -> Snapshot:
        """The snapshot of a report."""
        records = report.layers.values()
        layers = {r.name: (r.shortest, r.longest) for r in records}
        combinations = None
        if report.network.gradient_combinations is not None:
            combinations = {r.name: r.gradient_combinations for r in records}
        return Snapshot(
            report.network.to_dict(),
            layers,
            combinations,
            report.inputs,
            report.options,
            report.tracer,
            tuple(report.notes),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": dict(self.network),
            "layers": {
                name: {"shortest": s, "longest": lg} for name, (s, lg) in self.layers.items()
            },
            "inputs": self.inputs,
            "options": None if self.options is None else dict(self.options),
            "tracer": self.tracer,
        }

    @staticmethod
    def from_dict(data: Any, where: str) -> Snapshot:
        """Read a snapshot written by :meth:`to_dict`; ``where`` names it in errors."""
        if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
            raise GpaError(f"{where}: not a baseline entry (expected 'network' and 'layers')")
        network = data.get("network")
        if not isinstance(network, dict):
            raise GpaError(f"{where}: 'network' is missing or not an object")
        layers = {}
        for name, entry in data["layers"].items():
            if not isinstance(entry, dict):
                raise GpaError(f"{where}: layer {name!r} is not an object")
            layers[name] = (entry.get("shortest"), entry.get("longest"))
        return Snapshot(network, layers, None, *_how_analysed(data, where), ordered=False)

    @staticmethod
    def from_report_dict(data: Mapping[str, Any]) -> Snapshot:
        """The snapshot of a report as JSON (``gpa analyze --format json``, §7)."""
        layers = {r["name"]: (r.get("shortest"), r.get("longest")) for r in data["layers"]}
        combinations = None
        if "gradient_combinations" in data["network"]:
            combinations = {r["name"]: r.get("gradient_combinations") for r in data["layers"]}
        return Snapshot(
            data["network"],
            layers,
            combinations,
            *_how_analysed(data, "the report"),
            tuple(data.get("notes") or ()),
        )

    @property
    def unreachable(self) -> set[str]:
        return {name for name, (s, _) in self.layers.items() if s is None}


def _how_analysed(data: Mapping[str, Any], where: str) -> tuple[Any, Any, Any]:
    """The ``inputs``, ``options`` and ``tracer`` a snapshot's JSON records (None where
    absent), checked: a malformed file is an error, never a difference of settings.

    Raises:
        GpaError: a value of the wrong kind, naming ``where``.
    """
    inputs, options, tracer = data.get("inputs"), data.get("options"), data.get("tracer")
    if not (
        (inputs is None or isinstance(inputs, list) and all(isinstance(i, dict) for i in inputs))
        and (options is None or isinstance(options, dict))
        and (tracer is None or isinstance(tracer, str))
    ):
        raise GpaError(
            f"{where}: 'inputs' must be a list of objects, 'options' an object and "
            "'tracer' a string (or each absent)"
        )
    return inputs, options, tracer


#: The settings that decide which gradient paths a model has: the inputs, these options
#: and the frontend that ran (the frontends agree but where one cannot see a layer, and
#: says so in a note: semantics §1.6). Numbers read under others are not compared with a
#: baseline (``docs/ci.md``); the channel analysis and the count convention change no
#: path (§8, §9). The frontend asked for (``tracer``) is not a setting of its own: what
#: ran is.
PATH_SETTINGS = ("inputs", "outputs", "layer_types", "leaf_modules", "train", "frontend")

_UNKNOWN = object()  # a setting a snapshot does not record


def _setting(snapshot: Snapshot, key: str) -> Any:
    if snapshot.options is None:  # recorded since baseline format 2, with the rest
        return _UNKNOWN
    if key == "inputs":
        return snapshot.inputs
    if key == "frontend":
        return snapshot.tracer or _UNKNOWN
    return snapshot.options.get(key, _UNKNOWN)


def setting_changes(old: Snapshot, new: Snapshot, keys: tuple[str, ...] | None = None) -> list[str]:
    """How ``new`` was analysed otherwise than ``old``: ``"train true -> false"`` for each
    setting of ``keys`` both record that differs (default: every one — the inputs, each
    option but the frontend asked for, the frontend that ran).

    Example:
        >>> a = Snapshot({}, {}, inputs=[{"shape": [1, 4], "dtype": "float32"}],
        ...              options={"train": True, "outputs": ["1"]}, tracer="fx")
        >>> b = Snapshot({}, {}, inputs=[{"shape": [2, 4], "dtype": "float32"}],
        ...              options={"train": False, "outputs": None}, tracer="export")
        >>> setting_changes(a, b)
        ['inputs 1×4 float32 -> 2×4 float32', 'train true -> false', 'outputs 1 -> all', 'frontend fx -> export']
    """
    if keys is None:
        options = [k for k in (*(old.options or ()), *(new.options or ())) if k != "tracer"]
        keys = ("inputs", *dict.fromkeys(options), "frontend")
    changes = []
    for key in keys:
        before, now = _setting(old, key), _setting(new, key)
        if _UNKNOWN not in (before, now) and before != now:
            text = _inputs_text if key == "inputs" else functools.partial(_option_text, key)
            changes.append(f"{key} {text(before)} -> {text(now)}")
    return changes


# what an unset option means, in words
_UNSET = {"outputs": "all", "layer_types": "default", "leaf_modules": "none"}


def _option_text(key: str, value: Any) -> str:
    if value is None:
        return _UNSET.get(key, "none")
    if isinstance(value, bool):
        return "true" if value else "false"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _inputs_text(inputs: list[dict[str, Any]] | None) -> str:
    if not inputs:
        return "none"  # (None: no example inputs)
    return ", ".join(
        f"{'×'.join(map(str, i['shape']))} {i['dtype']}" if "shape" in i else str(i.get("value"))
        for i in inputs
    )


def dump_baseline(snapshots: Mapping[str, Snapshot]) -> str:
    """The baseline file text for ``snapshots`` (model name -> snapshot)."""
    data = {
        "gpa_baseline": BASELINE_FORMAT,
        "gpa_version": __version__,
        "models": {name: snap.to_dict() for name, snap in snapshots.items()},
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_baseline(path: str | Path, snapshots: Mapping[str, Snapshot]) -> None:
    """Write :func:`dump_baseline` to ``path``."""
    try:
        Path(path).write_text(dump_baseline(snapshots), encoding="utf-8")
    except OSError as exc:
        raise GpaError(f"cannot write baseline {path}: {exc.strerror or exc}") from None


def read_baseline(path: str | Path) -> dict[str, Snapshot]:
    """Read a baseline file: model name -> snapshot.

    Raises:
        GpaError: the file is missing, not JSON, or not a gpa baseline.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GpaError(
            f"baseline {path} not found; create it with gpa check --write-baseline {path}"
        ) from None
    except (OSError, ValueError) as exc:
        raise GpaError(f"cannot read baseline {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise GpaError(f"{path} is not a gpa baseline (no 'models' object)")
    written = data.get("gpa_baseline")
    if isinstance(written, int) and written > BASELINE_FORMAT:
        raise GpaError(
            f"baseline {path} has format {written}, newer than this gpa reads "
            f"({BASELINE_FORMAT}): upgrade gpa, or write the baseline again"
        )
    return {
        name: Snapshot.from_dict(entry, f"baseline {path}, model {name!r}")
        for name, entry in data["models"].items()
    }


def regressions(report: Report, baseline: Snapshot | None) -> RuleResult:
    """The ``baseline`` rule: how ``report`` compares with its recorded snapshot.

    Fails on a regression: a layer's shortest path grew, a layer receives no gradient
    that did (or is new and receives none), or the network's ``max_shortest`` grew.
    Shorter shortest paths, layers reached again and a smaller ``max_shortest`` are
    listed as improvements. Without a snapshot the rule passes with a note. Numbers read
    with another setting of :data:`PATH_SETTINGS` than the snapshot records are not
    compared: the rule fails naming the difference (a mode, an output left out, change
    which layers get gradient at all). A snapshot that records no settings (baseline
    format 1) is compared, and the rule's line says to rewrite it.
    """
    if baseline is None:
        return RuleResult(
            "baseline", None, True, "baseline: ok (no entry for this model, not compared)"
        )
    current = Snapshot.of(report)
    other = setting_changes(baseline, current, PATH_SETTINGS)
    if other:
        return RuleResult(
            "baseline",
            None,
            False,
            f"baseline: not compared: analysed otherwise than the baseline records "
            f"({'; '.join(other)}); write the baseline again (--write-baseline) if that "
            "is intended",
            tuple(Violation(None, change) for change in other),
        )
    unrecorded = (
        "; the baseline records no analysis settings to check: write it again"
        if baseline.options is None
        else ""
    )
    worse: list[Violation] = []
    better: list[str] = []
    was_unreachable = baseline.unreachable
    for name, (shortest, _) in current.layers.items():
        old = baseline.layers.get(name)
        if shortest is None:
            if old is None or name not in was_unreachable:
                worse.append(Violation(name, "unreachable"))
        elif old is not None and old[0] is None:
            better.append(f"{name} receives gradient again (shortest {shortest})")
        elif old is not None and shortest != old[0]:
            change = f"shortest {old[0]} -> {shortest}"
            if shortest > old[0]:
                worse.append(Violation(name, change))
            else:
                better.append(f"{name} {change}")
    old_max = baseline.network.get("max_shortest")
    new_max = report.network.max_shortest
    neutral = _neutral_changes(current, baseline)
    if old_max is not None and new_max is not None and new_max != old_max:
        change = f"max_shortest {old_max} -> {new_max}"
        if new_max > old_max:
            worse.append(Violation(None, change))
        elif any(v.value == "unreachable" for v in worse):
            # the maximum over fewer layers: the layers cut off took the long paths
            neutral.insert(0, f"{change} (over the layers still reached)")
        else:
            better.append(change)
    if worse:
        listed = ", ".join(v.value if v.layer is None else f"{v.layer} ({v.value})" for v in worse)
        word = "regression" if len(worse) == 1 else "regressions"
        also = f"; also {'; '.join(neutral)}" if neutral else ""
        return RuleResult(
            "baseline",
            None,
            False,
            f"baseline: {len(worse)} {word}: {listed}{also}{unrecorded}",
            tuple(worse),
            tuple(better),
        )
    found = [f"{len(better)} improvement{'s' if len(better) != 1 else ''}"] if better else []
    found += neutral
    summary = ("; ".join(found) if found else "unchanged") + unrecorded
    return RuleResult("baseline", None, True, f"baseline: ok ({summary})", (), tuple(better))


def _neutral_changes(current: Snapshot, baseline: Snapshot) -> list[str]:
    """What changed since ``baseline`` that the rule does not judge: how the model was
    analysed (channels, count convention), layers added (and reached) or gone,
    longest paths, parameters and FLOPs — so that "unchanged" means it."""
    added = [n for n, (s, _) in current.layers.items() if n not in baseline.layers and s]
    gone = [n for n in baseline.layers if n not in current.layers]
    longest = [
        n
        for n, (_, lg) in current.layers.items()
        if n in baseline.layers and baseline.layers[n][1] != lg
    ]
    changes = setting_changes(baseline, current)
    if added:
        changes.append(f"{_count(added, 'new layer')} ({_named(added)})")
    if gone:
        changes.append(f"{_count(gone, 'layer')} gone ({_named(gone)})")
    if longest:
        changes.append(f"longest path changed in {_count(longest, 'layer')}")
    for key in ("longest", "params", "flops"):
        old, new = baseline.network.get(key), current.network.get(key)
        if old is not None and new is not None and old != new:
            changes.append(f"{key} {old} -> {new}")
    return changes


def _count(names: list[str], noun: str) -> str:
    return f"{len(names)} {noun}{'s' if len(names) != 1 else ''}"


def _named(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names``, and how many more."""
    more = f", … (+{len(names) - shown})" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
