"""``gpa check``: analyse models and hold them to their rules and baseline.

:func:`check_models` runs every :class:`~gpa.ci.config.ModelSpec`: it analyses the model,
evaluates its :class:`~gpa.ci.rules.Rules` and, given baseline snapshots, looks for
regressions. A model that cannot be loaded, traced or analysed is recorded as an
error, never as a pass. :class:`CheckRun` gives the exit code: 2 when any model is in
error, else 1 when any rule failed, else 0. Rendering lives in :mod:`gpa.ci.formats`.

Example:
    >>> from gpa.ci.config import ModelSettings, ModelSpec
    >>> from gpa.ci.rules import Rules
    >>> settings = ModelSettings(rules=Rules(max_shortest=9))
    >>> spec = ModelSpec("plain", "gpa.models:plainnet", settings)
    >>> run = check_models([spec])
    >>> run.exit_code, run.models[0].results[0].message
    (0, 'max-shortest 9: ok (max_shortest 8)')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpa.api import analyze_target
from gpa.ci.baseline import Snapshot, regressions
from gpa.ci.config import Config, Location, ModelSettings, ModelSpec, model_spec
from gpa.ci.rules import RuleResult, evaluate
from gpa.core.report import Report
from gpa.errors import GpaError
from gpa.names import installed_path

__all__ = ["CheckRun", "ModelCheck", "analyze_spec", "check_models", "plan_models"]

# rule name (before any ``[pattern]``) -> the configuration key that sets it
_RULE_KEYS = {
    "max-shortest": "max_shortest",
    "max-longest": "max_longest",
    "no-unreachable": "no_unreachable",
    "max-mean-shortest": "max_mean_shortest",
    "layers": "layers",
    "baseline": "baseline",
}


@dataclass
class ModelCheck:
    """The outcome for one model: its report and rule results, or the error that stopped it."""

    name: str
    target: str
    report: Report | None = None
    #: the target as the configuration writes it (:attr:`ModelSpec.shown`), if it differs
    shown: str | None = None
    results: list[RuleResult] = field(default_factory=list)
    error: str | None = None
    locations: Mapping[str, Location] = field(default_factory=dict)
    #: the rules not checked because of the error (all the model's)
    unchecked: int = 0

    @property
    def passed(self) -> bool:
        return self.error is None and all(r.passed for r in self.results)

    def location(self, rule: str | None = None) -> Location | None:
        """Where ``rule`` is configured for this model (``None``: the model's table), if
        it comes from a configuration file."""
        key = "" if rule is None else _RULE_KEYS.get(rule.partition("[")[0], "")
        return self.locations.get(key) or self.locations.get("")

    def target_location(self) -> Location | None:
        """The first line of the model's file, if the target is a file in the checkout
        (relative to the working directory); else None."""
        path, _, _ = self.target.partition(".py:")
        path = path + ".py" if not path.endswith(".py") else path
        relative = os.path.relpath(path)
        if relative.startswith("..") or not os.path.isfile(relative):
            return None
        return Location(relative, 1)

    def layer_location(self, layer: str) -> Location | None:
        """The source line that calls ``layer`` in the model's code, relative to the working
        directory (the checkout), if the frontend knew it and it lies there; None otherwise
        (a line inside an installed library cannot be annotated on a pull request)."""
        record = self.report.layers.get(layer) if self.report is not None else None
        site = getattr(record, "site", None)
        if site is None:
            return None
        file, line = site
        relative = os.path.relpath(file)  # as CI tools expect: from the checkout's root
        # a library's own code (site-packages, also a virtualenv inside the checkout, as
        # `.venv`): no line of a diff
        if relative.startswith("..") or installed_path(relative) is not None:
            return None
        return Location(relative, line)

    @property
    def tracer(self) -> str | None:
        """The frontend that analysed the model (``auto`` names the one it used)."""
        return self.report.tracer if self.report is not None else None

    @property
    def notes(self) -> list[str]:
        """The report's notes: how the model was analysed, where that bears on the numbers
        the rules read (layers a frontend could not see, layers whose FLOPs were not
        counted, which frontend ``auto`` used and why)."""
        return list(self.report.notes) if self.report is not None else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.shown or self.target,
            "error": self.error,
            "passed": self.passed,
            "tracer": self.tracer,
            "notes": self.notes,
            "network": self.report.network.to_dict() if self.report else None,
            "rules": [r.to_dict() for r in self.results],
        }


@dataclass
class CheckRun:
    """All models of one ``gpa check`` run, in the order they were given."""

    models: list[ModelCheck]

    @property
    def errors(self) -> int:
        return sum(m.error is not None for m in self.models)

    @property
    def failures(self) -> int:
        """The number of failed rules."""
        return sum(not r.passed for m in self.models for r in m.results)

    @property
    def rules(self) -> int:
        """The number of rules, over every model: checked, or not for an error."""
        return sum(len(m.results) + m.unchecked for m in self.models)

    @property
    def unchecked(self) -> int:
        """The number of rules of models in error."""
        return sum(m.unchecked for m in self.models)

    @property
    def exit_code(self) -> int:
        """2 if a model is in error, else 1 if a rule failed, else 0."""
        if self.errors:
            return 2
        return 1 if self.failures else 0

    def summary(self) -> str:
        """One line: ``"2 models, 5 rules: 4 passed, 1 failed, 0 errors"``."""
        n = len(self.models)
        unchecked = f"{self.unchecked} not checked, " if self.unchecked else ""
        return (
            f"{n} model{'s' if n != 1 else ''}, {self.rules} rule{'s' if self.rules != 1 else ''}"
            f": {self.passed} passed, {self.failures} failed, {unchecked}"
            f"{self.errors} error{'s' if self.errors != 1 else ''}"
        )

    @property
    def passed(self) -> int:
        """The number of rules checked that hold."""
        return self.rules - self.failures - self.unchecked

    def snapshots(self) -> dict[str, Snapshot]:
        """The baseline snapshots of the models that were analysed."""
        return {m.name: Snapshot.of(m.report) for m in self.models if m.report is not None}

    def to_dict(self) -> dict[str, Any]:
        from gpa import __version__

        return {
            "gpa_version": __version__,
            "exit_code": self.exit_code,
            "summary": {
                "models": len(self.models),
                "rules": self.rules,
                "passed": self.passed,
                "failed": self.failures,
                "unchecked": self.unchecked,
                "errors": self.errors,
            },
            "models": [m.to_dict() for m in self.models],
        }


def analyze_spec(spec: ModelSpec, progress: Callable[[str], None] | None = None) -> Report:
    """Load and analyse the model of ``spec`` with its settings (``progress``: see
    :func:`gpa.analyze`)."""
    settings = spec.settings
    report = analyze_target(
        spec.target, dict(settings.kwargs), settings.analysis_options(), progress=progress
    )
    report.model = spec.named(report.model)
    return report


def check_models(
    specs: Iterable[ModelSpec],
    baseline: Mapping[str, Snapshot] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckRun:
    """Analyse each model of ``specs`` and evaluate its rules (and ``baseline``, if given).

    Every model is checked even when an earlier one fails or is in error.
    """
    checks = []
    for spec in specs:
        check = ModelCheck(spec.name, spec.target, locations=spec.locations, shown=spec.shown)
        try:
            check.report = analyze_spec(
                spec, progress and (lambda phase, n=spec.name: progress(f"{n}: {phase}"))
            )
        except GpaError as exc:
            check.error = str(exc)
            check.unchecked = spec.settings.rules.count + (baseline is not None)
            checks.append(check)
            continue
        check.results = evaluate(check.report, spec.settings.rules)
        if baseline is not None:
            check.results.append(regressions(check.report, baseline.get(spec.name)))
        checks.append(check)
    return CheckRun(checks)


def plan_models(
    targets: Sequence[str], config: Config | None, overrides: ModelSettings | None = None
) -> list[ModelSpec]:
    """The models a ``gpa check`` run checks.

    Without ``targets``: every model of ``config``. Otherwise one model per target; a
    target that names a configured model uses its table, any other is a TARGET string
    with the configuration's defaults. ``overrides`` (the command-line settings) win.

    Raises:
        GpaError: no target and no configured model.
    """
    overrides = overrides or ModelSettings()
    if not targets:
        if config is None or not config.models:
            where = f"in {config.path}" if config and config.path else "in any pyproject.toml"
            raise GpaError(
                f"nothing to check: give a TARGET, or configure models {where} under "
                "[tool.gpa.models.<name>] (see docs/ci.md)"
            )
        targets = list(config.models)
    return [model_spec(t, config, overrides) for t in targets]
