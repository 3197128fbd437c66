"""The gradient graph of a traced module: its fx nodes as a networkx DAG.

:func:`op_graph` has one node per fx node plus :data:`~gpa.core.graph.LOSS`, with edges
in the forward (data) direction; an edge ``u -> v`` carries ``grad=True`` when gradient
flows back from ``v`` into ``u``, as the :mod:`gpa.frontends.fx.flow` pass decided.

Example:
    >>> import torch.nn as nn
    >>> from gpa.frontends.fx.tracer import trace
    >>> from gpa.frontends.fx.flow import flow_from_names
    >>> gm = trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> flow_from_names(gm)
    >>> sorted(op_graph(gm).edges(data="grad"))
    [('_0', '_1', True), ('_1', '<loss>', True), ('input_1', '_0', True)]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import networkx as nx
import torch.fx as fx

from gpa.core.graph import LOSS, OutputKey, flatten_outputs, select_paths
from gpa.frontends.fx.flow import FLOW

__all__ = ["op_graph", "output_paths", "select_outputs"]


def output_paths(gm: fx.GraphModule) -> list[tuple[str, fx.Node]]:
    """Every node the model returns, with its path in the returned structure.

    Paths are dotted indices and keys (``"0"``, ``"1.logits"``); a model returning a
    single tensor has the path ``""``.
    """
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return [(p, n) for p, n in flatten_outputs(output.args[0]) if isinstance(n, fx.Node)]


def select_outputs(
    gm: fx.GraphModule, outputs: Iterable[OutputKey] | None
) -> list[tuple[str, fx.Node]]:
    """The returned nodes that feed the loss: all, or those under the selected paths."""
    return select_paths(output_paths(gm), outputs)


def op_graph(gm: fx.GraphModule, outputs: Iterable[OutputKey] | None = None) -> nx.DiGraph:
    """The operation-level graph of a traced module annotated by a flow pass.

    Nodes are fx node names (attributes ``op``, ``target``, ``value``), plus ``<loss>``.
    Every data dependency is an edge; ``grad`` tells whether gradient flows along it.
    The loss is fed by the selected outputs.
    """
    g = nx.DiGraph()
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        flow = node.meta[FLOW]
        g.add_node(
            node.name,
            op=node.op,
            target=node.target if isinstance(node.target, str) else _qualname(node.target),
            value=flow.value,
        )
        for source in node.all_input_nodes:
            g.add_edge(source.name, node.name, grad=source in flow.grad_from)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    g.add_node(LOSS, op="loss", target=LOSS, value=None)
    requires = output.meta[FLOW].grad_from
    for _, node in select_outputs(gm, outputs):
        g.add_edge(node.name, LOSS, grad=node in requires)
    return g


def _qualname(target: Any) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    return f"{module}.{name}" if module else name
