"""The gradient-path graph: the traced operations as a networkx DAG.

:func:`op_graph` has one node per traced fx node plus the virtual loss
``<loss>``, with edges in the forward (data) direction; an edge ``u -> v``
carries ``grad=True`` when gradient flows back from ``v`` into ``u`` (decided
by a :mod:`gpa.flow` pass).

Example:
    >>> import torch.nn as nn
    >>> from gpa.trace import trace
    >>> from gpa.flow import flow_from_names
    >>> gm = trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> flow_from_names(gm)
    >>> sorted(op_graph(gm).edges(data="grad"))
    [('_0', '_1', True), ('_1', '<loss>', True), ('input_1', '_0', True)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
import torch.fx as fx

from gpa.errors import GpaError
from gpa.flow import GRAD_FROM, VALUE
from gpa.layers import LayerCall

__all__ = [
    "LOSS",
    "GradientGraph",
    "op_graph",
    "output_paths",
    "select_outputs",
    "select_paths",
    "input_shapes",
]

LOSS = "<loss>"

OutputKey = int | str


@dataclass
class GradientGraph:
    """What a tracer hands to the path analysis, whichever tracer it is.

    Attributes:
        ops: operation-level DAG ending in ``<loss>``; every edge has a ``grad``
            attribute telling whether gradient flows along it.
        calls: the nodes of ``ops`` that are layer calls -> their record and type,
            in forward order.
        uncalled: layer modules forward never uses, as (name, type).
        inputs: the example inputs used (meta tensors), or None.
        notes: remarks for the report (fallbacks, what was skipped).
        traced: the annotated fx module when the fx tracer built the graph (the
            channel analysis reads it), else None.
        opaque: functions fx kept opaque although they read parameters.
    """

    ops: nx.DiGraph
    calls: dict[str, LayerCall]
    uncalled: list[tuple[str, str]] = field(default_factory=list)
    inputs: tuple | None = None
    notes: list[str] = field(default_factory=list)
    traced: fx.GraphModule | None = None
    opaque: list[str] = field(default_factory=list)


def flatten_outputs(structure: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a returned structure with its dotted path (tuples, lists, dicts, nested)."""
    return _flatten(structure, prefix)


def _flatten(structure: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(structure, (tuple, list)):
        for i, item in enumerate(structure):
            yield from _flatten(item, f"{prefix}.{i}" if prefix else str(i))
    elif isinstance(structure, dict):
        for key, item in structure.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, structure


def output_paths(gm: fx.GraphModule) -> list[tuple[str, fx.Node]]:
    """Every node the model returns, with its path in the returned structure.

    Paths are dotted indices and keys (``"0"``, ``"1.logits"``); a model
    returning a single tensor has the path ``""``.
    """
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return [(p, node) for p, node in _flatten(output.args[0], "") if isinstance(node, fx.Node)]


def select_outputs(
    gm: fx.GraphModule, outputs: Iterable[OutputKey] | None
) -> list[tuple[str, fx.Node]]:
    """The returned nodes that feed the loss: all, or those under the selected paths."""
    return select_paths(output_paths(gm), outputs)


def select_paths(
    paths: list[tuple[str, Any]], outputs: Iterable[OutputKey] | None
) -> list[tuple[str, Any]]:
    """The (path, value) pairs under the selected output paths (all when ``outputs`` is None).

    Example:
        >>> select_paths([("0", "a"), ("1.x", "b"), ("1.y", "c")], [1])
        [('1.x', 'b'), ('1.y', 'c')]
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


def input_shapes(input_shape: Any) -> list[tuple[int, ...]]:
    """One shape or a list of shapes, as a list of shapes; anything else is a GpaError.

    Example:
        >>> input_shapes((1, 3, 8, 8)), input_shapes([(1, 4), (1, 2)])
        ([(1, 3, 8, 8)], [(1, 4), (1, 2)])
    """

    def is_shape(s: Any) -> bool:
        return isinstance(s, (tuple, list, torch.Size)) and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s
        )

    if is_shape(input_shape) and len(input_shape) > 0:
        return [tuple(input_shape)]
    if isinstance(input_shape, (tuple, list)) and input_shape and all(map(is_shape, input_shape)):
        return [tuple(s) for s in input_shape]
    raise GpaError(
        f"input_shape must be a shape of positive sizes or a list of shapes, got {input_shape!r}"
    )


def op_graph(gm: fx.GraphModule, outputs: Iterable[OutputKey] | None = None) -> nx.DiGraph:
    """The operation-level graph of a traced module annotated by a :mod:`gpa.flow` pass.

    Nodes are fx node names (attributes ``op``, ``target``, ``value``), plus
    ``<loss>``. Every data dependency is an edge; ``grad`` tells whether
    gradient flows along it. The loss is fed by the selected outputs.
    """
    g = nx.DiGraph()
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        g.add_node(
            node.name,
            op=node.op,
            target=node.target if isinstance(node.target, str) else _qualname(node.target),
            value=node.meta.get(VALUE),
        )
        flows = node.meta.get(GRAD_FROM, frozenset())
        for source in node.all_input_nodes:
            g.add_edge(source.name, node.name, grad=source in flows)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    g.add_node(LOSS, op="loss", target=LOSS, value=None)
    requires = output.meta.get(GRAD_FROM, frozenset())
    for _, node in select_outputs(gm, outputs):
        g.add_edge(node.name, LOSS, grad=node in requires)
    return g


def _qualname(target: Any) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    return f"{module}.{name}" if module else name
