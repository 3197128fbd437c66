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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpa import __version__
from gpa.ci.rules import RuleResult, Violation
from gpa.core.report import Report
from gpa.errors import GpaError

__all__ = [
    "BASELINE_FORMAT",
    "PATH_OPTIONS",
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
    """

    network: Mapping[str, Any]
    layers: Mapping[str, tuple[int | None, int | None]]
    combinations: Mapping[str, int | None] | None = None
    inputs: list[dict[str, Any]] | None = None
    options: Mapping[str, Any] | None = None
    tracer: str | None = None
    notes: tuple[str, ...] = ()

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
        return Snapshot(
            network, layers, None, data.get("inputs"), data.get("options"), data.get("tracer")
        )

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
            data.get("inputs"),
            data.get("options"),
            data.get("tracer"),
            tuple(data.get("notes") or ()),
        )

    @property
    def unreachable(self) -> set[str]:
        return {name for name, (s, _) in self.layers.items() if s is None}


#: The options that decide which gradient paths a model has (with the inputs): numbers
#: read under others are not compared with a baseline (``docs/ci.md``). The frontend, the
#: channel analysis and the count convention leave every path as it is (§1.6, §8, §9).
PATH_OPTIONS = ("outputs", "layer_types", "leaf_modules", "train")


def setting_changes(old: Snapshot, new: Snapshot, keys: tuple[str, ...] | None = None) -> list[str]:
    """How ``new`` was analysed otherwise than ``old``: ``"train true -> false"`` for each
    option of ``keys`` (default: all) recorded on both sides that differs, and
    ``"inputs …"`` when the inputs do; ``keys=None`` also names a change of frontend.

    Example:
        >>> a = Snapshot({}, {}, inputs=[{"shape": [1, 4], "dtype": "float32"}],
        ...              options={"train": True, "outputs": [1]}, tracer="fx")
        >>> b = Snapshot({}, {}, inputs=[{"shape": [2, 4], "dtype": "float32"}],
        ...              options={"train": False, "outputs": None}, tracer="fx")
        >>> setting_changes(a, b)
        ['inputs 1×4 float32 -> 2×4 float32', 'train true -> false', 'outputs 1 -> all']
    """
    changes = []
    if old.inputs != new.inputs and old.options is not None and new.options is not None:
        changes.append(f"inputs {_inputs_text(old.inputs)} -> {_inputs_text(new.inputs)}")
    for key in keys if keys is not None else tuple(old.options or ()):
        if old.options is None or new.options is None or key not in old.options:
            continue
        if key in new.options and old.options[key] != new.options[key]:
            changes.append(
                f"{key} {_option_text(key, old.options[key])} -> "
                f"{_option_text(key, new.options[key])}"
            )
    if keys is None and old.tracer and new.tracer and old.tracer != new.tracer:
        changes.append(f"frontend {old.tracer} -> {new.tracer}")
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
        return "none"
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
    with other inputs or another option of :data:`PATH_OPTIONS` than the snapshot records
    are not compared: the rule fails naming the difference (a mode, an output left out,
    change which layers get gradient at all).
    """
    if baseline is None:
        return RuleResult(
            "baseline", None, True, "baseline: ok (no entry for this model, not compared)"
        )
    current = Snapshot.of(report)
    other = setting_changes(baseline, current, PATH_OPTIONS)
    if other:
        return RuleResult(
            "baseline",
            None,
            False,
            f"baseline: not compared: analysed otherwise than the baseline records "
            f"({'; '.join(other)}); rewrite it with --write-baseline if that is intended",
            tuple(Violation(None, change) for change in other),
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
    if old_max is not None and new_max is not None and new_max != old_max:
        change = f"max_shortest {old_max} -> {new_max}"
        if new_max > old_max:
            worse.append(Violation(None, change))
        else:
            better.append(change)
    if worse:
        listed = ", ".join(v.value if v.layer is None else f"{v.layer} ({v.value})" for v in worse)
        word = "regression" if len(worse) == 1 else "regressions"
        return RuleResult(
            "baseline",
            None,
            False,
            f"baseline: {len(worse)} {word}: {listed}",
            tuple(worse),
            tuple(better),
        )
    found = [f"{len(better)} improvement{'s' if len(better) != 1 else ''}"] if better else []
    found += _neutral_changes(current, baseline)
    summary = "; ".join(found) if found else "unchanged"
    if baseline.options is None:
        summary += "; the baseline records no analysis settings to check: rewrite it"
    return RuleResult("baseline", None, True, f"baseline: ok ({summary})", (), tuple(better))


def _neutral_changes(current: Snapshot, baseline: Snapshot) -> list[str]:
    """What changed since ``baseline`` that the rule does not judge: how the model was
    analysed (frontend, channels, count convention), layers added (and reached) or gone,
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
        changes.append(f"{_count(added, 'new layer')}")
    if gone:
        changes.append(f"{_count(gone, 'layer')} gone")
    if longest:
        changes.append(f"longest path changed in {_count(longest, 'layer')}")
    for key in ("longest", "params", "flops"):
        old, new = baseline.network.get(key), current.network.get(key)
        if old is not None and new is not None and old != new:
            changes.append(f"{key} {old} -> {new}")
    return changes


def _count(names: list[str], noun: str) -> str:
    return f"{len(names)} {noun}{'s' if len(names) != 1 else ''}"
