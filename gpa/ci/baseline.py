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
    "Snapshot",
    "dump_baseline",
    "read_baseline",
    "regressions",
    "write_baseline",
]

#: Version of the baseline file layout.
BASELINE_FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    """The recorded numbers of one model.

    Attributes:
        network: the network summary (``docs/semantics.md``), ``unreachable`` a list.
        layers: layer name -> (shortest, longest); ``(None, None)`` when unreachable.
        combinations: layer name -> its number of gradient combinations
            (``docs/semantics.md`` §8), for a report analysed at channel level; else None.
            Baseline files do not hold it.
    """

    network: Mapping[str, Any]
    layers: Mapping[str, tuple[int | None, int | None]]
    combinations: Mapping[str, int | None] | None = None

    @staticmethod
    def of(report: Report) -> Snapshot:
        """The snapshot of a report."""
        records = report.layers.values()
        layers = {r.name: (r.shortest, r.longest) for r in records}
        combinations = None
        if report.network.gradient_combinations is not None:
            combinations = {r.name: r.gradient_combinations for r in records}
        return Snapshot(report.network.to_dict(), layers, combinations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": dict(self.network),
            "layers": {
                name: {"shortest": s, "longest": lg} for name, (s, lg) in self.layers.items()
            },
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
        return Snapshot(network, layers)

    @staticmethod
    def from_report_dict(data: Mapping[str, Any]) -> Snapshot:
        """The snapshot of a report saved with ``gpa analyze --format json``."""
        layers = {r["name"]: (r.get("shortest"), r.get("longest")) for r in data["layers"]}
        combinations = None
        if "gradient_combinations" in data["network"]:
            combinations = {r["name"]: r.get("gradient_combinations") for r in data["layers"]}
        return Snapshot(data["network"], layers, combinations)

    @property
    def unreachable(self) -> set[str]:
        return {name for name, (s, _) in self.layers.items() if s is None}


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
    listed as improvements. Without a snapshot the rule passes with a note.
    """
    if baseline is None:
        return RuleResult(
            "baseline", None, True, "baseline: ok (no entry for this model, not compared)"
        )
    current = Snapshot.of(report)
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
    return RuleResult("baseline", None, True, f"baseline: ok ({summary})", (), tuple(better))


def _neutral_changes(current: Snapshot, baseline: Snapshot) -> list[str]:
    """What changed since ``baseline`` that the rule does not judge: layers added (and
    reached) or gone, longest paths, parameters and FLOPs — so that "unchanged" means it."""
    added = [n for n, (s, _) in current.layers.items() if n not in baseline.layers and s]
    gone = [n for n in baseline.layers if n not in current.layers]
    longest = [
        n
        for n, (_, lg) in current.layers.items()
        if n in baseline.layers and baseline.layers[n][1] != lg
    ]
    changes = []
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
