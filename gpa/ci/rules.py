"""Gradient-path rules a model must satisfy (``gpa check``, :mod:`gpa.testing`).

A :class:`Rules` value holds limits; :func:`evaluate` checks one report against them
and returns one :class:`RuleResult` per rule that is set, in a fixed order, each naming
every layer that breaks it. Nothing here loads models or prints.

Example:
    >>> import torch.nn as nn, gpa
    >>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
    >>> [r.message for r in evaluate(report, Rules(max_shortest=1))]
    ['max-shortest 1: 1 layer exceeds it: 0 (2)']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gpa.core.report import Report

__all__ = ["LayerLimit", "RuleResult", "Rules", "Violation", "evaluate"]


@dataclass(frozen=True)
class LayerLimit:
    """Limits for the layers whose names match the glob ``pattern`` (``fnmatch`` syntax);
    ``allow_unreachable``: they may receive no gradient, ``no_unreachable`` holds without
    them (a layer only inference calls: a YOLO head's DFL in train mode)."""

    pattern: str
    max_shortest: int | None = None
    max_longest: int | None = None
    allow_unreachable: bool | None = None


@dataclass(frozen=True)
class Rules:
    """Limits on a report; ``None`` (or ``False``) leaves a rule out.

    Attributes:
        max_shortest: no layer's shortest gradient path may be longer.
        max_longest: no layer's longest gradient path may be longer.
        no_unreachable: every layer must receive gradient.
        max_mean_shortest: the network's ``mean_shortest`` may not be larger.
        layers: per-pattern limits, checked on the matching layers only.
    """

    max_shortest: int | None = None
    max_longest: int | None = None
    no_unreachable: bool | None = None
    max_mean_shortest: float | None = None
    layers: tuple[LayerLimit, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether no rule is set (a check with these rules checks nothing)."""
        return self.count == 0

    @property
    def count(self) -> int:
        """How many results :func:`evaluate` gives for these rules (a pattern's limits
        one each)."""
        flags = (self.max_shortest, self.max_longest, self.no_unreachable, self.max_mean_shortest)
        patterns = sum(
            (limit.max_shortest is not None) + (limit.max_longest is not None)
            for limit in self.layers
        )
        return sum(v is not None and v is not False for v in flags) + patterns

    def overridden_by(self, other: Rules) -> Rules:
        """These rules with every limit that ``other`` sets replaced (patterns by pattern)."""
        changes: dict[str, Any] = {
            name: getattr(other, name)
            for name in ("max_shortest", "max_longest", "no_unreachable", "max_mean_shortest")
            if getattr(other, name) is not None
        }
        patterns = {limit.pattern: limit for limit in self.layers}
        patterns.update({limit.pattern: limit for limit in other.layers})
        return replace(self, **changes, layers=tuple(patterns.values()))


@dataclass(frozen=True)
class Violation:
    """One layer (or the network, ``layer=None``) breaking a rule, with its value."""

    layer: str | None
    value: Any

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "value": self.value}


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule on one model.

    Attributes:
        rule: the rule's name (``max-shortest``, ``layers[stem.*].max-longest``, ``baseline``).
        limit: the limit checked (``None`` for flags).
        passed: whether the rule holds.
        message: one line saying what was checked and what was found.
        violations: every offending layer with its value (empty when passed).
        improvements: what got better (baseline only; never a failure).
    """

    rule: str
    limit: Any
    passed: bool
    message: str
    violations: tuple[Violation, ...] = ()
    improvements: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "limit": self.limit,
            "passed": self.passed,
            "message": self.message,
            "violations": [v.to_dict() for v in self.violations],
            "improvements": list(self.improvements),
        }


def _layers_word(n: int) -> str:
    return f"{n} layer{'s' if n != 1 else ''}"


def _limit_result(rule: str, limit: int, values: Mapping[str, int], what: str) -> RuleResult:
    """``rule``: every value of ``values`` (layer -> number) at most ``limit``."""
    over = tuple(Violation(name, v) for name, v in values.items() if v > limit)
    if not over:
        worst = max(values.values(), default=None)
        found = f"{what} {worst}" if worst is not None else "no reachable layer"
        return RuleResult(rule, limit, True, f"{rule} {limit}: ok ({found})")
    verb = "exceeds" if len(over) == 1 else "exceed"
    listed = ", ".join(f"{v.layer} ({v.value})" for v in over)
    message = f"{rule} {limit}: {_layers_word(len(over))} {verb} it: {listed}"
    return RuleResult(rule, limit, False, message, over)


def _pattern_results(report: Report, limit: LayerLimit) -> list[RuleResult]:
    matched = [r for r in report.layers.values() if fnmatch.fnmatchcase(r.name, limit.pattern)]
    results = []
    for key, value in (("max-shortest", limit.max_shortest), ("max-longest", limit.max_longest)):
        if value is None:
            continue
        rule = f"layers[{limit.pattern}].{key}"
        if not matched:
            message = f"{rule} {value}: the pattern matches no layer"
            results.append(RuleResult(rule, value, False, message))
            continue
        attr = key.removeprefix("max-")
        values = {r.name: getattr(r, attr) for r in matched if r.reachable}
        results.append(_limit_result(rule, value, values, attr))
    return results


def evaluate(report: Report, rules: Rules) -> list[RuleResult]:
    """Check ``report`` against ``rules``: one result per rule set, in a fixed order.

    Order: ``max-shortest``, ``max-longest``, ``no-unreachable``, ``max-mean-shortest``,
    then the layer patterns in the order given. Unreachable layers have no shortest or
    longest path and so never break a limit on them; ``no_unreachable`` catches them.
    """
    reached = [r for r in report.layers.values() if r.reachable]
    results = []
    if rules.max_shortest is not None:
        values = {r.name: r.shortest for r in reached}
        results.append(_limit_result("max-shortest", rules.max_shortest, values, "max_shortest"))
    if rules.max_longest is not None:
        values = {r.name: r.longest for r in reached}
        results.append(_limit_result("max-longest", rules.max_longest, values, "longest"))
    if rules.no_unreachable:
        allowed = [limit.pattern for limit in rules.layers if limit.allow_unreachable]
        missing = tuple(
            name
            for name in report.network.unreachable
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed)
        )
        if missing:
            listed = ", ".join(missing)
            message = f"no-unreachable: {_layers_word(len(missing))} receive no gradient: {listed}"
            if len(missing) == 1:
                message = message.replace("receive ", "receives ")
            violations = tuple(Violation(name, None) for name in missing)
            results.append(RuleResult("no-unreachable", None, False, message, violations))
        else:
            spared = len(report.network.unreachable)
            # (not "every layer receives gradient ... but 3 layers allowed none": a contradiction)
            message = (
                f"no-unreachable: ok ({_layers_word(spared)} receive no gradient, allowed)"
                if spared
                else "no-unreachable: ok (every layer receives gradient)"
            )
            if spared == 1:
                message = message.replace("receive ", "receives ")
            results.append(RuleResult("no-unreachable", None, True, message))
    if rules.max_mean_shortest is not None:
        limit, mean = rules.max_mean_shortest, report.network.mean_shortest
        if mean is not None and mean > limit:
            message = f"max-mean-shortest {limit}: mean_shortest {mean} exceeds it"
            results.append(
                RuleResult("max-mean-shortest", limit, False, message, (Violation(None, mean),))
            )
        else:
            message = f"max-mean-shortest {limit}: ok (mean_shortest {mean})"
            results.append(RuleResult("max-mean-shortest", limit, True, message))
    for limit in rules.layers:
        results.extend(_pattern_results(report, limit))
    return results
