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

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import networkx as nx

from gpa.errors import GpaError
from gpa.options import OutputKey

__all__ = [
    "LOSS",
    "GradientGraph",
    "LayerCall",
    "OwnerCall",
    "OutputKey",
    "OutputPath",
    "AddedTo",
    "added_apart",
    "calls_of_each_owner",
    "select_paths",
]

#: The virtual loss node, fed by the selected outputs (``docs/semantics.md`` §1.5).
LOSS = "<loss>"


@dataclass(frozen=True)
class LayerCall:
    """A call that is a layer: the record it is reported under, its module type, and the
    source line that made the call (``(file, line)``, None when the frontend cannot tell;
    not compared: frontends agree on calls, not on how they find their lines)."""

    record: str
    type: str
    site: tuple[str, int] | None = field(default=None, compare=False)
    #: for a call computing with the weights of several records (fused projections,
    #: stacked heads: ``docs/semantics.md`` §2), each of them as (record, type, share of
    #: the weight's elements), this call's first; see :func:`calls_of_each_owner`
    owners: tuple[tuple[str, str, float], ...] = ()


@dataclass
class GradientGraph:
    """What a frontend hands to the analyses, whichever frontend it is.

    Attributes:
        ops: operation-level DAG ending in :data:`LOSS`; every edge has a ``grad``
            attribute telling whether gradient flows along it; a layer call's node has
            a ``value`` (the result's shape and dtype) and its first operand as its first
            predecessor. An edge into :data:`LOSS` may say (``read_inside``) whether the
            returned tensor it stands for is also read inside the model, where a node
            holds several tensors (the autograd frontend's layer calls and splits);
            elsewhere the node's other successors tell.
        calls: the nodes of ``ops`` that are layer calls -> their :class:`LayerCall`,
            in forward order.
        tracer: the frontend that built it (``"fx"``, ``"export"`` or ``"autograd"``).
        uncalled: layer modules forward never uses, as (name, type).
        inputs: the example inputs used (meta tensors), or None.
        notes: remarks for the report (fallbacks, what was skipped).
        traced: the annotated fx module when the fx frontend built the graph (the
            channel analysis reads it), else None.
        opaque: functions fx kept opaque although they read parameters.
        module_sites: qualified module name -> the source line of each of its calls, in
            forward order, as far as the frontend saw them (``(file, line)`` or None):
            where the wrapper of a layer was called (see
            :func:`gpa.frontends.sites.past_wrappers`).
    """

    ops: nx.DiGraph
    calls: dict[Hashable, LayerCall]
    tracer: str
    uncalled: list[tuple[str, str]] = field(default_factory=list)
    inputs: tuple | None = None
    notes: list[str] = field(default_factory=list)
    traced: Any = None
    opaque: list[str] = field(default_factory=list)
    module_sites: dict[str, list[tuple[str, int] | None]] = field(default_factory=dict)

    @property
    def carries_gradient(self) -> bool:
        """Whether any selected output carries gradient to the loss."""
        return any(grad for _, _, grad in self.ops.in_edges(LOSS, data="grad"))


@dataclass(frozen=True)
class OutputPath:
    """Where a returned value sits in the returned structure: one step per level.

    A step holds the spellings that name it, the canonical one first: a dict key, a
    list index, a field name, or a namedtuple field's name and its index (a namedtuple
    is a tuple: ``"policy"`` and ``"0"`` name its first field). ``str()`` is the
    canonical dotted path (``docs/semantics.md`` §1.5).

    Example:
        >>> path = OutputPath((("policy", "0"), ("logits",)))
        >>> str(path), path.under("0"), path.under("policy.logits"), path.under("1")
        ('policy.logits', True, True, False)
    """

    steps: tuple[tuple[str, ...], ...] = ()

    def __str__(self) -> str:
        return ".".join(step[0] for step in self.steps)

    @staticmethod
    def parse(text: str) -> OutputPath:
        """The path a canonical string spells, step by step (``"1.x"``: ``1``, ``x``; a
        key holding a dot is one step, ``[a.b]``)."""
        return OutputPath(tuple((step,) for step in re.findall(r"\[[^\]]*\]|[^.]+", text)))

    def child(self, *spellings: str) -> OutputPath:
        """The path one level down, at the step spelt ``spellings`` (canonical first)."""
        return OutputPath((*self.steps, spellings))

    def under(self, key: OutputKey) -> bool:
        """Whether ``key`` (an index, key or dotted path) names this path or one above it."""
        wanted = str(key)  # whole steps: "a" is not above a key "a.b" (spelt [a.b])
        return any(
            ".".join(steps[:i]) == wanted
            for steps in product(*self.steps)
            for i in range(1, len(steps) + 1)
        )


def select_paths(
    paths: list[tuple[OutputPath | str, Any]], outputs: Iterable[OutputKey] | None
) -> list[tuple[str, Any]]:
    """The (canonical path, value) pairs under the selected outputs (all when ``outputs``
    is None); a path given as a string has that one spelling.

    Raises:
        GpaError: a selected output is not among ``paths``.
    """
    named = [(p if isinstance(p, OutputPath) else OutputPath.parse(p), v) for p, v in paths]
    if outputs is None:
        return [(str(p), v) for p, v in named]
    chosen: dict[int, tuple[str, Any]] = {}  # by position in ``paths``: each pair once
    for key in outputs:
        hits = {i: (str(p), v) for i, (p, v) in enumerate(named) if p.under(key)}
        if not hits:
            available = ", ".join(repr(str(p)) for p, _ in named) or "none"
            if available == "''":
                available = "none (it returns a single value: leave outputs unset)"
            raise GpaError(
                f"outputs (--outputs): {key!r} is not among the model's outputs; "
                f"available: {available}"
            )
        chosen.update(hits)
    return list(chosen.values())


@dataclass(frozen=True)
class AddedTo:
    """The node adding to the result of layer call ``call`` (its node) what the call only
    adds to its product (:func:`added_apart`). A type of its own: frontends' keys may be
    tuples."""

    call: Hashable


def added_apart(graph: GradientGraph) -> None:
    """Route what each layer call of ``graph`` adds to its product around the call, in
    place: an in-edge marked ``added`` (a bias computed from data, ``addmm``'s ``input``:
    ``F.linear(h, w, g(z))``, ``addmm(shortcut, h, w)``) leaves the call for a node of its
    own, :class:`AddedTo`, which takes the call's result and every edge out of it — as
    ``h @ w.T + g(z)`` written apart is read (``docs/semantics.md`` §2). An edge marked
    ``mixed`` too (``addmm(h, h, w)``: ``h`` both added and mixed) stays as well.

    Example:
        >>> ops = nx.DiGraph([("h", "fc"), ("g", "fc"), ("fc", LOSS)])
        >>> nx.set_edge_attributes(ops, True, "grad")
        >>> ops.edges["g", "fc"].update(added=True, mixed=False)
        >>> graph = GradientGraph(ops, {"fc": LayerCall("fc", "Linear")}, "fx")
        >>> added_apart(graph)
        >>> sorted(graph.ops.predecessors(AddedTo("fc"))), list(graph.ops.predecessors("fc"))
        (['fc', 'g'], ['h'])
    """
    ops = graph.ops
    for node in graph.calls:
        added = [(u, d) for u, _, d in ops.in_edges(node, data=True) if d.get("added")]
        if not added:
            continue
        total = AddedTo(node)
        ops.add_node(total, op="add", target="add", value=ops.nodes[node].get("value"))
        out = list(ops.out_edges(node, data=True))
        ops.remove_edges_from([(u, v) for u, v, _ in out])
        ops.add_edges_from((total, v, d) for _, v, d in out)
        ops.add_edge(node, total, grad=True)
        for u, d in added:
            if not d.get("mixed", True):
                ops.remove_edge(u, node)
            ops.add_edge(u, total, grad=d["grad"])


@dataclass(frozen=True)
class OwnerCall:
    """The node of a call computing with several records' weights that stands for it as a
    call of ``record``, one of them but the first (:func:`calls_of_each_owner`); ``call``
    is the call's own node. A type of its own: frontends' keys may be tuples."""

    call: Hashable
    record: str


def calls_of_each_owner(graph: GradientGraph) -> None:
    """Make each call of ``graph`` that computes with the weights of several records
    (:attr:`LayerCall.owners`) a call of each of them, in place: the call's node stands
    for the first; each other gets a node of its own, :class:`OwnerCall`, with the call's
    attributes and every edge in and out — as if each record were applied apart and the
    results combined, so a layer before it has one path through each (``docs/semantics.md``
    §2). Each node's ``share`` attribute is its record's share of the weight's elements,
    and ``counted_as`` the records by share, largest first: the call's FLOPs are counted
    as a call of the first that can be (whose weight has the fused weight's shape: a
    re-parameterised block's 3x3 kernel), each record its share of them.

    Example:
        >>> ops = nx.DiGraph([("x", "qkv"), ("qkv", LOSS)])
        >>> nx.set_edge_attributes(ops, True, "grad")
        >>> owners = (("q", "Linear", 0.5), ("k", "Linear", 0.5))
        >>> graph = GradientGraph(ops, {"qkv": LayerCall("q", "Linear", owners=owners)}, "fx")
        >>> calls_of_each_owner(graph)
        >>> [call.record for call in graph.calls.values()], list(graph.calls)[1]
        (['q', 'k'], OwnerCall(call='qkv', record='k'))
        >>> sorted(graph.ops.predecessors(LOSS), key=str)
        [OwnerCall(call='qkv', record='k'), 'qkv']
    """
    if not any(call.owners for call in graph.calls.values()):
        return
    ops, calls = graph.ops, {}
    for node, call in graph.calls.items():
        if not call.owners:
            calls[node] = call
            continue
        by_share = sorted(call.owners, key=lambda owner: -owner[2])
        ops.nodes[node]["counted_as"] = tuple(record for record, _, _ in by_share)
        for i, (record, kind, share) in enumerate(call.owners):
            twin = node if i == 0 else OwnerCall(node, record)
            if i:
                ops.add_node(twin, **ops.nodes[node])
                ops.add_edges_from((u, twin, d) for u, _, d in ops.in_edges(node, data=True))
                ops.add_edges_from((twin, v, d) for _, v, d in ops.out_edges(node, data=True))
            ops.nodes[twin]["share"] = share
            calls[twin] = LayerCall(record, kind, call.site)
    graph.calls = calls
