"""The gradient graph of a traced module: its fx nodes as a networkx DAG.

:func:`op_graph` has one node per fx node plus :data:`~gpa.core.graph.LOSS`, with edges
in the forward (data) direction; an edge ``u -> v`` carries ``grad=True`` when gradient
flows back from ``v`` into ``u``, as the :mod:`gpa.frontends.fx.flow` pass decided.

Example:
    >>> import torch.nn as nn
    >>> from gpa.frontends.fx.tracer import trace
    >>> from gpa.frontends.fx.named_flow import flow_from_names
    >>> gm = trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> flow_from_names(gm)
    >>> sorted(op_graph(gm).edges(data="grad"))
    [('_0', '_1', True), ('_1', '<loss>', True), ('input_1', '_0', True)]
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Container, Iterable
from typing import Any

import networkx as nx
import torch.fx as fx

from gpa.core.graph import LOSS, OutputKey
from gpa.frontends.fx.flow import FLOW, PARTS
from gpa.frontends.fx.layers import added_operands
from gpa.frontends.outputs import Returned, fields_tuple, returned_values

__all__ = [
    "RETURNED",
    "name_outputs",
    "op_graph",
    "output_notes",
    "result_part",
    "returned_outputs",
    "select_outputs",
]

#: ``meta`` key of the output node named by :func:`name_outputs`: the
#: :class:`~gpa.frontends.outputs.Returned` of its structure (paths with all their
#: spellings, objects gpa cannot look into), its values left out.
RETURNED = "gpa_returned"

_TRACED = object()  # name_outputs: read the structure from the output node


def name_outputs(graph: fx.Graph, structure: Any = _TRACED) -> None:
    """Make the output node return ``{dotted path: node}`` (a single node when the model
    returns one value): every value in the returned structure, named as
    :func:`gpa.frontends.outputs.returned_values` names it.

    ``structure`` is the returned structure with fx nodes as its values (default: the
    output node's own argument, where a namedtuple or dataclass fx recorded as a
    constructor call is read by its fields). What else the walk found (the spellings of
    each path, objects gpa cannot look into) stays on the output node for
    :func:`returned_outputs`.

    Example:
        >>> import collections, torch.nn as nn
        >>> from gpa.frontends.fx.tracer import trace
        >>> Pair = collections.namedtuple("Pair", "a b")
        >>> class Two(nn.Module):
        ...     def forward(self, x):
        ...         return Pair(x.relu(), {"c": x.sigmoid()})
        >>> gm = trace(Two())
        >>> name_outputs(gm.graph)
        >>> [(str(p), n.name) for p, n in returned_outputs(gm).values]
        [('a', 'relu'), ('b.c', 'sigmoid')]
        >>> [(p, n.name) for p, n in select_outputs(gm, [1])]  # Pair's field 1, b
        [('b.c', 'sigmoid')]
    """
    output = _output_node(graph)
    if structure is _TRACED:
        structure = fx.node.map_aggregate(output.args[0], _constructed_fields)
    found = returned_values(structure, _is_node)
    named = {str(p): n for p, n in found.values}
    output.args = (named[""] if list(named) == [""] else named,)
    found.values = [(p, None) for p, _ in found.values]
    output.meta[RETURNED] = dataclasses.replace(found, plain=None)
    for node in reversed(graph.nodes):
        if not node.users and _constructed(node) is not None:
            graph.erase_node(node)


def returned_outputs(gm: fx.GraphModule) -> Returned:
    """The returned nodes with their paths in the returned structure (dotted indices, keys
    and field names: ``"0"``, ``"1.logits"``; ``""`` for a single returned tensor), and
    the objects gpa could not look into."""
    output = _output_node(gm.graph)
    found = output.meta.get(RETURNED)
    if found is None:  # a graph whose outputs were not named: walk its structure
        return returned_values(fx.node.map_aggregate(output.args[0], _constructed_fields), _is_node)
    named = output.args[0] if isinstance(output.args[0], dict) else {"": output.args[0]}
    paths = {str(p): p for p, _ in found.values}
    return dataclasses.replace(found, values=[(paths[k], n) for k, n in named.items()])


def select_outputs(
    gm: fx.GraphModule, outputs: Iterable[OutputKey] | None
) -> list[tuple[str, fx.Node]]:
    """The returned nodes that feed the loss: all, or those under the selected paths.

    Raises:
        GpaError: the model returns nothing, or a selected output is not among its
            values (see :meth:`Returned.select <gpa.frontends.outputs.Returned.select>`).
    """
    return returned_outputs(gm).select(outputs)


def output_notes(gm: fx.GraphModule, outputs: Iterable[OutputKey] | None) -> list[str]:
    """The notes about selected returned objects gpa cannot look into."""
    return returned_outputs(gm).notes(outputs)


def _is_node(value: Any) -> bool:
    return isinstance(value, fx.Node)


def _output_node(graph: fx.Graph) -> fx.Node:
    return next(n for n in graph.nodes if n.op == "output")


def _constructed(node: fx.Node) -> str | None:
    """What a node fx recorded for a namedtuple or dataclass built in ``forward`` builds
    (``"namedtuple"``, ``"dataclass"``), or None for any other node."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, type):
        return None
    if issubclass(target, tuple) and hasattr(target, "_fields"):
        return "namedtuple"
    return "dataclass" if dataclasses.is_dataclass(target) else None


def _constructed_fields(value: Any) -> Any:
    """A returned value with namedtuples and dataclasses fx recorded as constructor calls
    rebuilt around their fields (a dataclass as a namedtuple of its fields)."""
    if not isinstance(value, fx.Node):
        return value
    kind = _constructed(value)
    if kind == "namedtuple":
        return value.target(*fx.node.map_aggregate(value.args, _constructed_fields))
    if kind == "dataclass":
        fields = fields_tuple(value.target.__name__, tuple(value.kwargs))
        return fields(
            *(fx.node.map_aggregate(v, _constructed_fields) for v in value.kwargs.values())
        )
    return value


def op_graph(
    gm: fx.GraphModule,
    outputs: Iterable[OutputKey] | None = None,
    layers: Container[str] = (),
) -> nx.DiGraph:
    """The operation-level graph of a traced module annotated by a flow pass.

    Nodes are fx node names (attributes ``op``, ``target``, ``value``), plus ``<loss>``.
    Every data dependency is an edge; ``grad`` tells whether gradient flows along it.
    The loss is fed by the selected outputs (each edge's ``output``: the returned path).
    ``layers``: the names of the layer calls; each result of one comes from its call
    (``torch.embedding_bag(W, i, ...)[0]``), as a module's do, where one result of any
    other multi-result function comes from the inputs it reads (:func:`result_part`).
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
        parts = result_part(node)
        if parts is not None and parts[0].name in layers:
            parts = None  # a layer call's result: through the call
        if parts is not None:  # one result of a multi-result op: from the inputs it reads
            source, part = parts
            for s in source.all_input_nodes:
                g.add_edge(s.name, node.name, grad=s in part and source in flow.grad_from)
            continue
        for source in node.all_input_nodes:
            g.add_edge(source.name, node.name, grad=source in flow.grad_from)
        for source, mixed in added_operands(node).items():  # (see added_apart)
            g.edges[source.name, node.name].update(added=True, mixed=mixed)
    output = _output_node(gm.graph)
    g.add_node(LOSS, op="loss", target=LOSS, value=None)
    requires = output.meta[FLOW].grad_from
    for key, node in select_outputs(gm, outputs):
        if g.has_edge(node.name, LOSS):  # one tensor returned twice: its first path names it
            continue
        g.add_edge(node.name, LOSS, grad=node in requires, output=key)
    return g


def result_part(node: fx.Node) -> tuple[fx.Node, frozenset[fx.Node]] | None:
    """For ``getitem(op, i)`` of a function with several results (``broadcast_tensors``),
    the op and the inputs its i-th result depends on; else None. Module calls keep their
    node (an LSTM's results all come from its one layer call)."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    source, index = node.args[0], node.args[1]
    if not isinstance(source, fx.Node) or source.op not in ("call_function", "call_method"):
        return None
    parts = source.meta.get(PARTS)
    if parts is None or not isinstance(index, int) or not -len(parts) <= index < len(parts):
        return None
    return source, parts[index]


def _qualname(target: Any) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    return f"{module}.{name}" if module else name
