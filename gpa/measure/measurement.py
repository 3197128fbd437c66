"""The result of :func:`gpa.measure`: measured gradients per layer, next to the structure.

A :class:`Measurement` holds, per layer (the structural report's record names, in forward
order), a :class:`LayerMeasurement`; the linear CKA between every pair of layers' received
gradients; the network's duplication figures; and the structural
:class:`~gpa.core.report.Report` it was measured against. Its JSON form
(:meth:`Measurement.to_dict`) puts each layer's measured figures next to its structural
``shortest``, ``longest``, ``timestamps`` and ``sources`` (``docs/semantics.md``, "Measured
gradients").

Example:
    >>> import numpy as np
    >>> a = LayerMeasurement("a", "Linear", 2.0, 0.0, 1.0, 1.0, False, ("b", 0.5))
    >>> b = LayerMeasurement("b", "Linear", 2.0, 0.0, 1.0, 1.0, False, ("a", 0.5))
    >>> m = Measurement("net", {"a": a, "b": b}, np.array([[1.0, 0.5], [0.5, 1.0]]))
    >>> m.cka("a", "b"), m.layers["a"].most_similar
    (0.5, ('b', 0.5))
    >>> m.to_dict()["layers"][0]["most_similar"]
    {'layer': 'b', 'cka': 0.5}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpa.core.report import LayerRecord, Report, combination
from gpa.errors import GpaError

__all__ = [
    "LayerMeasurement",
    "Measurement",
    "SegmentMeasurement",
    "combination_key",
    "duplication_summary",
]


@dataclass(frozen=True)
class SegmentMeasurement:
    """Measured gradients of output channels [start, stop) of a layer (``channels=True``).

    ``weight_grad_norm``: mean over steps of ‖∂L/∂W[start:stop]‖ (the parameters' slices
    along their output-channel axis; None for a frozen layer); ``output_grad_norm``: mean
    over steps of the norm of the received gradient's channels [start, stop).
    """

    start: int
    stop: int
    weight_grad_norm: float | None
    output_grad_norm: float


@dataclass(frozen=True)
class LayerMeasurement:
    """Measured gradients of one layer (all its calls merged), ``docs/semantics.md``.

    Attributes:
        name: the layer's record name (its module's qualified name).
        type: the module's class name.
        weight_grad_norm: mean over steps of ‖∂L/∂W‖_F over the layer's trainable
            parameters (weights and biases together); None when frozen.
        weight_grad_norm_std: their standard deviation over steps (population); None
            when frozen.
        output_grad_norm: mean over steps of ‖∂L/∂y‖_F, the gradient received at the
            layer's outputs over the whole batch.
        relative_norm: ``weight_grad_norm`` / the median of it over the network's trainable
            layers; None when frozen or when the median is 0.
        frozen: the layer has no parameter that requires gradient.
        most_similar: (layer, CKA) of the other layer whose received gradient is the most
            similar; None when no CKA with this layer is defined.
        segments: per channel segment (``channels=True``), else None.
    """

    name: str
    type: str
    weight_grad_norm: float | None
    weight_grad_norm_std: float | None
    output_grad_norm: float
    relative_norm: float | None
    frozen: bool
    most_similar: tuple[str, float] | None
    segments: tuple[SegmentMeasurement, ...] | None = None


def combination_key(record: LayerRecord) -> frozenset | None:
    """A layer's gradient combination, for "shares its gradient combination with m".

    With channel segments: the set of its segments' combinations (paper §4.1, as
    :func:`gpa.core.report.combination`); without: the set of (source, rounds) pairs of its
    deliveries. None when no gradient reaches the layer.
    """
    if not record.reachable:
        return None
    if record.segments is not None:
        return frozenset(combination(s) for s in record.segments if s.paths is not None)
    return frozenset(record.deliveries.items())


def duplication_summary(matrix: np.ndarray) -> dict[str, Any]:
    """Mean and distribution of the off-diagonal CKA values of ``matrix`` (NaN skipped).

    Example:
        >>> duplication_summary(np.array([[1.0, 0.2], [0.2, 1.0]]))["mean"]
        0.2
    """
    k = len(matrix)
    values = matrix[np.triu_indices(k, 1)] if k > 1 else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {
            "pairs": 0,
            "mean": None,
            "min": None,
            "p10": None,
            "median": None,
            "p90": None,
            "max": None,
        }
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {
        "pairs": int(values.size),
        "mean": _num(values.mean()),
        "min": _num(q[0]),
        "p10": _num(q[1]),
        "median": _num(q[2]),
        "p90": _num(q[3]),
        "max": _num(q[4]),
    }


def _num(x: Any) -> float | None:
    """A float rounded to 6 significant digits (stable JSON); None for None/NaN."""
    if x is None:
        return None
    x = float(x)
    return None if not math.isfinite(x) else float(f"{x:.6g}")


@dataclass
class Measurement:
    """Everything :func:`gpa.measure` measured about one model.

    Attributes:
        model: display name of the model.
        layers: layer name -> :class:`LayerMeasurement`, in forward order.
        similarity: (k, k) linear CKA between the layers' received gradients, in the
            order of ``layers`` (NaN where undefined: a layer no gradient reached).
        report: the structural report measured against (None when built by hand).
        steps, batch_size, seed, device: how it was measured (``batch_size``: the items of
            each step's batch, None when they differ between steps).
        loss: ``"virtual"`` (the random-direction loss) or ``"user"``.
        rank_correlation: Spearman's correlation, over layer pairs, between "shares its
            gradient combination" (1/0) and their CKA; None when undefined.
        cka_chance: the CKA unrelated gradients reach over these samples (median over
            layer pairs with one side's samples shuffled, :func:`~gpa.measure.cka.chance_cka`);
            None without a pair.
        notes: remarks on how the measurement was done.
    """

    model: str
    layers: dict[str, LayerMeasurement]
    similarity: np.ndarray
    report: Report | None = None
    steps: int = 0
    batch_size: int | None = 0
    seed: int = 0
    device: str = "cpu"
    loss: str = "virtual"
    rank_correlation: float | None = None
    notes: list[str] = field(default_factory=list)
    cka_chance: float | None = None

    def cka(self, a: str, b: str) -> float | None:
        """Linear CKA between the gradients received by layers ``a`` and ``b`` (None when
        undefined).

        Raises:
            GpaError: ``a`` or ``b`` is not a measured layer.
        """
        names = list(self.layers)
        for n in (a, b):
            if n not in self.layers:
                raise GpaError(f"no measured layer {n!r}; layers: {', '.join(names[:8])} …")
        value = float(self.similarity[names.index(a), names.index(b)])
        return value if math.isfinite(value) else None

    @property
    def duplication(self) -> dict[str, Any]:
        """The network's duplication: mean and distribution of CKA over layer pairs, and
        ``chance``: the CKA of unrelated gradients over the same samples."""
        return {**duplication_summary(self.similarity), "chance": _num(self.cka_chance)}

    @property
    def gradient_combinations(self) -> int | None:
        """Distinct gradient combinations among the layers (§8's count with channels)."""
        if self.report is None:
            return None
        if self.report.network.gradient_combinations is not None:
            return self.report.network.gradient_combinations
        keys = {combination_key(r) for r in self.report.layers.values()}
        return len(keys - {None})

    def network_dict(self) -> dict[str, Any]:
        """The network-level figures as JSON."""
        trained = [m.weight_grad_norm for m in self.layers.values() if not m.frozen]
        similar = [m.most_similar[1] for m in self.layers.values() if m.most_similar]
        return {
            "layers": len(self.layers),
            "frozen": [m.name for m in self.layers.values() if m.frozen],
            "median_weight_grad_norm": _num(np.median(trained)) if trained else None,
            "duplication": self.duplication,
            "mean_most_similar": _num(np.mean(similar)) if similar else None,
            "gradient_combinations": self.gradient_combinations,
            "rank_correlation": _num(self.rank_correlation),
        }

    def _layer_dict(self, m: LayerMeasurement) -> dict[str, Any]:
        record = self.report.layers.get(m.name) if self.report else None
        out: dict[str, Any] = {"name": m.name, "type": m.type}
        if record is not None:
            out.update(
                shortest=record.shortest,
                longest=record.longest,
                timestamps=list(record.timestamps),
                sources=list(record.sources),
                combination=self._combination_ids().get(m.name),
            )
        out.update(
            weight_grad_norm=_num(m.weight_grad_norm),
            weight_grad_norm_std=_num(m.weight_grad_norm_std),
            output_grad_norm=_num(m.output_grad_norm),
            relative_norm=_num(m.relative_norm),
            frozen=m.frozen,
            most_similar=(
                {"layer": m.most_similar[0], "cka": _num(m.most_similar[1])}
                if m.most_similar
                else None
            ),
        )
        if m.segments is not None:
            out["segments"] = [
                {
                    "start": s.start,
                    "stop": s.stop,
                    "weight_grad_norm": _num(s.weight_grad_norm),
                    "output_grad_norm": _num(s.output_grad_norm),
                }
                for s in m.segments
            ]
        return out

    def _combination_ids(self) -> dict[str, int | None]:
        """Layer -> number of its gradient combination (1, 2, … in forward order)."""
        ids: dict[frozenset, int] = {}
        out: dict[str, int | None] = {}
        for name, record in (self.report.layers if self.report else {}).items():
            key = combination_key(record)
            out[name] = None if key is None else ids.setdefault(key, len(ids) + 1)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (layout: ``docs/semantics.md``, "Measured gradients")."""
        from gpa import __version__

        return {
            "gpa_version": __version__,
            "model": self.model,
            "measurement": {
                "steps": self.steps,
                "batch_size": self.batch_size,
                "seed": self.seed,
                "device": self.device,
                "loss": self.loss,
            },
            # how the structural analysis read the model, as a report records it (§7):
            # a measurement in eval mode, or of other outputs, is told apart
            "inputs": self.report.inputs if self.report is not None else None,
            "options": self.report.options if self.report is not None else None,
            "tracer": self.report.tracer if self.report is not None else None,
            "network": self.network_dict(),
            "layers": [self._layer_dict(m) for m in self.layers.values()],
            "cka": {
                "layers": list(self.layers),
                "matrix": [[_num(v) for v in row] for row in self.similarity],
            },
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The measurement as JSON (the same seed on the CPU gives the same bytes)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def __str__(self) -> str:
        from gpa.measure.render import format_table

        return format_table(self)

    def _repr_html_(self) -> str:
        from gpa.measure.render import format_html

        return format_html(self)

    def __repr__(self) -> str:
        d = self.duplication
        return f"<Measurement {self.model}: {len(self.layers)} layers, mean CKA={d['mean']}>"
