"""The gradient graph every frontend builds and every analysis reads.

A :class:`GradientGraph` is an operation-level ``networkx.DiGraph`` whose edges point
forward (towards the loss) and carry ``grad=True`` when gradient flows back along
them, ending in the virtual loss node :data:`LOSS`; plus which of its nodes are layer
calls (:class:`LayerCall`). Frontends (:mod:`gpa.frontends`) build it; the path analysis
(:mod:`gpa.core.paths`), the records (:mod:`gpa.core.records`) and the channel analysis
(:mod:`gpa.channels`) read it. Nothing here knows torch.

Example:
    >>> select_paths([("0", "a"), ("1.x", "b"), ("1.y", "c")], [1])
    [('1.x', 'b'), ('1.y', 'c')]
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from gpa.errors import GpaError
from gpa.options import OutputKey

__all__ = [
    "LOSS",
    "GradientGraph",
    "LayerCall",
    "OutputKey",
    "flatten_outputs",
    "select_paths",
]

#: The virtual loss node, fed by the selected outputs (``docs/semantics.md`` §1.5).
LOSS = "<loss>"


@dataclass(frozen=True)
class LayerCall:
    """A call that is a layer: the record it is reported under and its module type."""

    record: str
    type: str


@dataclass
class GradientGraph:
    """What a frontend hands to the analyses, whichever frontend it is.

    Attributes:
        ops: operation-level DAG ending in :data:`LOSS`; every edge has a ``grad``
            attribute telling whether gradient flows along it; a layer call's node has
            a ``value`` (the result's shape and dtype) and its first operand as its first
            predecessor.
        calls: the nodes of ``ops`` that are layer calls -> their :class:`LayerCall`,
            in forward order.
        tracer: the frontend that built it (``"fx"`` or ``"autograd"``).
        uncalled: layer modules forward never uses, as (name, type).
        inputs: the example inputs used (meta tensors), or None.
        notes: remarks for the report (fallbacks, what was skipped).
        traced: the annotated fx module when the fx frontend built the graph (the
            channel analysis reads it), else None.
        opaque: functions fx kept opaque although they read parameters.
    """

    ops: nx.DiGraph
    calls: dict[Hashable, LayerCall]
    tracer: str
    uncalled: list[tuple[str, str]] = field(default_factory=list)
    inputs: tuple | None = None
    notes: list[str] = field(default_factory=list)
    traced: Any = None
    opaque: list[str] = field(default_factory=list)

    @property
    def carries_gradient(self) -> bool:
        """Whether any selected output carries gradient to the loss."""
        return any(grad for _, _, grad in self.ops.in_edges(LOSS, data="grad"))


def flatten_outputs(structure: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a returned structure with its dotted path (tuples, lists, dicts, nested).

    Example:
        >>> list(flatten_outputs((1, {"a": 2})))
        [('0', 1), ('1.a', 2)]
    """
    if isinstance(structure, (tuple, list)):
        for i, item in enumerate(structure):
            yield from flatten_outputs(item, f"{prefix}.{i}" if prefix else str(i))
    elif isinstance(structure, dict):
        for key, item in structure.items():
            yield from flatten_outputs(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, structure


def select_paths(
    paths: list[tuple[str, Any]], outputs: Iterable[OutputKey] | None
) -> list[tuple[str, Any]]:
    """The (path, value) pairs under the selected output paths (all when ``outputs`` is None).

    Raises:
        GpaError: a selected output is not among ``paths``.
    """
    if outputs is None:
        return paths
    chosen = []
    for key in outputs:
        wanted = str(key)
        hits = [(p, n) for p, n in paths if p == wanted or p.startswith(wanted + ".")]
        if not hits:
            available = ", ".join(repr(p) for p, _ in paths) or "none"
            raise GpaError(
                f"output {key!r} is not among the model's outputs; available: {available}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
