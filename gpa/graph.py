"""The gradient-path graph: traced operations and layers as networkx DAGs.

Two graphs, both with edges in the forward (data) direction:

* :func:`op_graph` — one node per traced fx node plus the virtual loss
  ``<loss>``; an edge ``u -> v`` carries ``grad=True`` when gradient flows back
  from ``v`` into ``u`` (see :mod:`gpa.flow`).
* :func:`layer_graph` — one node per layer *call* plus ``<loss>``; an edge
  ``a -> b`` when gradient flows from ``b`` back to ``a`` along a route that
  crosses no other layer. Routes between the same two calls collapse into one
  edge, which is what makes a path "the sequence of layers it crosses".

Example:
    >>> g = nx.DiGraph([("conv", "relu"), ("relu", "fc"), ("fc", LOSS)])
    >>> nx.set_edge_attributes(g, True, "grad")
    >>> sorted(layer_graph(g, {"conv", "fc"}).edges)
    [('conv', 'fc'), ('fc', '<loss>')]
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any

import networkx as nx
import torch.fx as fx

from gpa.errors import GpaError
from gpa.flow import GRAD_FROM, VALUE

__all__ = ["LOSS", "op_graph", "layer_graph", "output_paths", "select_outputs"]

LOSS = "<loss>"

OutputKey = int | str


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
    paths = output_paths(gm)
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


def layer_graph(ops: nx.DiGraph, layers: Collection[str]) -> nx.DiGraph:
    """Collapse an operation graph onto its layer calls.

    Args:
        ops: a graph with a ``grad`` attribute on every edge and a ``<loss>`` node.
        layers: the nodes of ``ops`` that are layer calls.

    Returns:
        A DAG over ``layers`` and ``<loss>`` (in the order of ``ops``) with an
        edge ``a -> b`` whenever a gradient-carrying route from ``a`` reaches
        ``b`` without crossing another layer.
    """
    layer_set = set(layers)
    # next_layers[n]: the layers (or the loss) first met downstream of n.
    next_layers: dict[str, frozenset[str]] = {}
    for node in reversed(list(nx.topological_sort(ops))):
        found: set[str] = set()
        for succ, edge in ops.succ[node].items():
            if not edge["grad"]:
                continue
            if succ in layer_set or succ == LOSS:
                found.add(succ)
            else:
                found |= next_layers[succ]
        next_layers[node] = frozenset(found)
    g = nx.DiGraph()
    g.add_nodes_from(n for n in ops if n in layer_set)
    g.add_node(LOSS)
    for node in g:
        if node != LOSS:
            g.add_edges_from((node, succ) for succ in next_layers.get(node, ()))
    return g
