"""Scaling analysis: how a family's gradient paths and parameters grow with its depth.

:func:`scaling` builds one entry of :mod:`gpa.models` (or any factory named by a TARGET) at
several values of a knob, analyses each model, and fits a growth class to ``max_shortest``, ``longest`` and the parameter count
as functions of **N = the number of layers** of the built model (the layer records of
:func:`gpa.analyze`; the paper's Table 1 states its orders in the number of layers).

The growth classes are O(1), O(log N), O(N), O(N log N) and O(N²), chosen by
:func:`fit_growth`:

1. data that do not vary are O(1);
2. otherwise every non-constant class f is fitted by least squares as ``y = a + b·f(N)``;
   classes whose slope ``b`` is not positive are discarded (they do not describe growth);
3. each fit is scored by its unexplained share of the variance, U = RSS/TSS = 1 − R²;
4. the simplest class whose U is at most :data:`TOLERANCE` (2) times the best class's U,
   plus 10⁻⁶ (so that exact fits tie despite rounding), wins: a more complex class must
   halve the residual to be preferred;
5. if no class is left after step 2, or the best has R² < :data:`MIN_R2` (0.5), the data
   vary but fit no class: ``"none"``.

Example:
    >>> import gpa
    >>> result = gpa.scaling("plainnet", "depth", [4, 8, 16, 32, 64])
    >>> result.growth["max_shortest"], result.growth["params"]
    ('O(N)', 'O(N)')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gpa.errors import GpaError
from gpa.options import AnalysisOptions

__all__ = [
    "CLASSES",
    "METRICS",
    "MIN_R2",
    "TOLERANCE",
    "GrowthFit",
    "ScalingPoint",
    "ScalingResult",
    "fit_growth",
    "scaling",
]

#: Growth classes, simplest first, with the function of N each one fits.
CLASSES: dict[str, Callable[[float], float]] = {
    "O(1)": lambda n: 0.0,
    "O(log N)": math.log,
    "O(N)": lambda n: n,
    "O(N log N)": lambda n: n * math.log(n),
    "O(N²)": lambda n: n * n,
}

#: The quantities :func:`scaling` fits.
METRICS: tuple[str, ...] = ("max_shortest", "longest", "params")

#: A simpler class wins when its unexplained variance is at most this many times the best's.
TOLERANCE = 2.0

#: The best fit must explain at least this share of the variance to be a growth class.
MIN_R2 = 0.5


@dataclass(frozen=True)
class GrowthFit:
    """The growth class chosen for one quantity, and the fit behind it.

    Attributes:
        growth: ``"O(1)"``, ``"O(log N)"``, ``"O(N)"``, ``"O(N log N)"``, ``"O(N²)"`` or
            ``"none"`` (varies, but fits no class).
        a, b: the fit ``y = a + b·f(N)`` of the chosen class (``b`` is 0 for O(1)).
        r2: R² of every class that was fitted (non-positive slopes left out).
    """

    growth: str
    a: float
    b: float
    r2: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "growth": self.growth,
            "a": round(self.a, 6),
            "b": round(self.b, 6),
            "r2": {k: round(v, 6) for k, v in self.r2.items()},
        }


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """``(a, b, rss)`` of the least-squares line ``y = a + b·x``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return my, 0.0, sum((y - my) ** 2 for y in ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    return a, b, sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))


def fit_growth(ns: Sequence[float], ys: Sequence[float]) -> GrowthFit:
    """The growth class of ``ys`` as a function of ``ns`` (criterion in the module docstring).

    Example:
        >>> fit_growth([4, 8, 16, 32, 64], [3, 3, 3, 3, 3]).growth
        'O(1)'
        >>> fit_growth([4, 8, 16, 32, 64], [n * n + 1 for n in [4, 8, 16, 32, 64]]).growth
        'O(N²)'
    """
    if len(ns) != len(ys) or len(set(ns)) < 3:
        raise GpaError("a growth fit needs at least 3 distinct values of N, one y per N")
    if min(ns) < 1:
        raise GpaError(f"N must be at least 1, got {min(ns)}")
    mean = sum(ys) / len(ys)
    if all(y == ys[0] for y in ys):
        return GrowthFit("O(1)", float(mean), 0.0, {"O(1)": 1.0})
    tss = sum((y - mean) ** 2 for y in ys)
    fits: dict[str, tuple[float, float, float]] = {}
    for name, f in CLASSES.items():
        if name == "O(1)":
            continue
        a, b, rss = _least_squares([f(n) for n in ns], ys)
        if b > 0:
            fits[name] = (a, b, 1 - rss / tss)
    r2 = {name: fit[2] for name, fit in fits.items()}
    best = max(r2.values(), default=-math.inf)
    if best < MIN_R2:
        return GrowthFit("none", float(mean), 0.0, r2)
    least = 1 - best
    chosen = next(name for name in fits if 1 - r2[name] <= TOLERANCE * least + 1e-6)
    a, b, _ = fits[chosen]
    return GrowthFit(chosen, a, b, r2)


@dataclass(frozen=True)
class ScalingPoint:
    """One built model of a scaling study: the knob value and what the analysis found."""

    value: Any
    layers: int
    max_shortest: int | None
    longest: int | None
    params: int
    tracer: str | None = None  # the frontend that read it (``auto`` may choose by model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "layers": self.layers,
            "max_shortest": self.max_shortest,
            "longest": self.longest,
            "params": self.params,
            "tracer": self.tracer,
        }


@dataclass(frozen=True)
class ScalingResult:
    """The result of :func:`scaling`.

    Attributes:
        model: the zoo entry name.
        knob: the knob that was varied; ``fixed``: the other knobs given.
        count_convention: how parameters were counted (``"torch"`` or ``"darknet"``).
        points: one :class:`ScalingPoint` per value, in the order given.
        notes: the analyses' notes, each once, in the order first given (the frontend
            ``auto`` chose, the inputs chosen, frozen layers …).
        fits: metric (``max_shortest``, ``longest``, ``params``) -> :class:`GrowthFit`,
            with N = ``layers``.
    """

    model: str
    knob: str
    fixed: Mapping[str, Any]
    count_convention: str
    points: tuple[ScalingPoint, ...]
    fits: Mapping[str, GrowthFit]
    notes: tuple[str, ...] = ()

    @property
    def growth(self) -> dict[str, str]:
        """Metric -> its growth class, e.g. ``{"max_shortest": "O(1)", ...}``."""
        return {metric: fit.growth for metric, fit in self.fits.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "model": self.model,
            "knob": self.knob,
            "fixed": dict(self.fixed),
            "n": "layers",
            "count_convention": self.count_convention,
            "points": [p.to_dict() for p in self.points],
            "fits": {metric: fit.to_dict() for metric, fit in self.fits.items()},
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        fixed = "".join(f", {k}={v!r}" for k, v in self.fixed.items())
        lines = [f"{self.model}: {self.knob} varied{fixed} (N = number of layers)"]
        header = (self.knob, "N", "max_shortest", "longest", "params")
        rows = [
            tuple(
                "-" if v is None else str(v)
                for v in (p.value, p.layers, p.max_shortest, p.longest, p.params)
            )
            for p in self.points
        ]
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            lines.append(
                "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        lines.append(
            "growth: " + "   ".join(f"{metric} {fit.growth}" for metric, fit in self.fits.items())
        )
        lines += ["notes:", *(f"  - {note}" for note in self.notes)] if self.notes else []
        return "\n".join(lines) + "\n"


def scaling(
    name: str,
    knob: str,
    values: Iterable[Any],
    *,
    options: AnalysisOptions | None = None,
    progress: Callable[[str], None] | None = None,
    **fixed: Any,
) -> ScalingResult:
    """Build ``name`` at each of ``values`` of ``knob`` and fit how it grows.

    ``name`` is a zoo entry (:mod:`gpa.models`; built on the meta device) or a TARGET
    naming a factory (``nets/mine.py:build``, ``package.module:factory``; see
    :mod:`gpa.target`) whose keyword parameter ``knob`` is varied. ``fixed`` holds the
    other knobs. Each model is analysed with ``options`` (default:
    :class:`~gpa.options.AnalysisOptions` defaults) at the inputs it defines
    (``model.input_shape`` for the zoo) unless ``options`` gives inputs.
    ``max_shortest``, ``longest`` and the parameter count (``options.count_convention``)
    are fitted against N = the number of layers with :func:`fit_growth`; at least three
    values giving distinct layer counts are needed.

    Raises:
        GpaError: an unknown entry or knob, the knob also fixed, fewer than three distinct
            layer counts, an undefined metric, or a model gpa cannot analyse.

    Example:
        >>> r = scaling("resnet", "blocks", [2, 4, 8, 16, 32], width=4)
        >>> r.growth
        {'max_shortest': 'O(1)', 'longest': 'O(N)', 'params': 'O(N)'}
        >>> [p.layers for p in r.points]
        [6, 10, 18, 34, 66]
    """
    from gpa.pipeline import analyze_model

    options = options or AnalysisOptions()
    if knob in fixed:
        raise GpaError(f"knob {knob!r} is the one being varied; do not also fix it")
    build = _builder(name, knob, fixed, options.train)
    values = list(values)
    points = []
    notes: dict[str, None] = {}  # (each once: a study repeats them per model)
    for value in values:
        model, inputs = build(value)
        chosen = options if options.has_inputs else options.replace(**inputs)
        label = f"{name}({knob}={value!r})"
        step = progress and (lambda phase, label=label: progress(f"{label}: {phase}"))
        report = analyze_model(model, chosen, name=label, progress=step)
        net = report.network
        point = (value, net.layers, net.max_shortest, net.longest, net.params, report.tracer)
        points.append(ScalingPoint(*point))
        notes.update(dict.fromkeys(report.notes))
    ns = [p.layers for p in points]
    if len(set(ns)) < 3:
        raise GpaError(
            f"{name}: the values {values!r} of {knob!r} give {len(set(ns))} distinct layer "
            "count(s); a growth fit needs at least 3"
        )
    fits = {}
    for metric in METRICS:
        ys = [getattr(p, metric) for p in points]
        if any(y is None for y in ys):
            raise GpaError(f"{name}: {metric} is undefined for some value of {knob!r}")
        fits[metric] = fit_growth(ns, ys)
    convention = options.count_convention.value
    return ScalingResult(name, knob, dict(fixed), convention, tuple(points), fits, tuple(notes))


def _builder(
    name: str, knob: str, fixed: Mapping[str, Any], train: bool
) -> Callable[[Any], tuple[Any, dict[str, Any]]]:
    """A function building the model at a knob value, with the inputs it defines."""
    import gpa.models

    if all(part.isidentifier() for part in name.split(".")) and "." not in name:
        info = gpa.models.describe(name)  # a zoo entry: unknown names get suggestions
        if knob not in info.knobs:
            raise gpa.models.ZooError(
                f"model {name!r} has no knob {knob!r}; its knobs are: {', '.join(info.knobs)}"
            )

        def build_entry(value: Any) -> tuple[Any, dict[str, Any]]:
            with torch.device("meta"):
                model = gpa.models.build(name, **fixed, **{knob: value})
            return model, {"input_shape": model.input_shape}

        return build_entry

    from gpa.target import load_target

    def build_target(value: Any) -> tuple[Any, dict[str, Any]]:
        loaded = load_target(name, {**fixed, knob: value}, train=train)
        return loaded.model, {
            "example_inputs": loaded.example_inputs,
            "input_shape": loaded.input_shape,
        }

    return build_target
