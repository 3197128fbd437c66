"""What a channel rule is given and reads (``docs/semantics.md`` §8): the routing pass
(:class:`RoutingContext`), the name an operation is known by (:func:`op_name`), a node's
arguments and its inputs' channel values; and :func:`fallback`, the rule of last resort
("every channel reaches every position", recorded).

Example:
    >>> g = fx.Graph()
    >>> x = g.placeholder("x")
    >>> op_name(g.call_method("add_", (x, 1))), node_argument(g.call_method("add_", (x, 1)), 1, "other")
    ('add', 1)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from gpa.channels.values import Channels, leaves, mix
from gpa.frontends.fx.flow import FLOW, Shape

__all__ = [
    "Rule",
    "RoutingContext",
    "called_module",
    "fallback",
    "first_input",
    "known_value",
    "node_argument",
    "one_axis_first_input",
    "op_name",
    "shape_leaves",
    "shaped_results",
]


class RoutingContext(Protocol):
    """What a rule may ask of the pass running it (:class:`~gpa.channels.routing.ChannelRouter`)."""

    def fetch_attr(self, target: str) -> Any:
        """The traced module's attribute (submodule, parameter, buffer) at ``target``."""

    def note_fallback(self, producer: str, why: str) -> None:
        """Record that ``producer``'s channels went through ``why``, routed by :func:`fallback`."""

    def channel_count(self, producer: str) -> int:
        """The number of output channels of the layer call ``producer``."""

    @property
    def collapsed(self) -> dict:
        """A memo of :func:`collapse` for this pass (see there)."""


#: ``rule(ctx, node, inputs, shapes)``: the channel value of ``node``'s result, given the
#: values of its input nodes (``inputs``; untracked where no gradient flows) and the
#: result's structure of :class:`~gpa.frontends.fx.flow.Shape` leaves (``shapes``).
Rule = Callable[[RoutingContext, fx.Node, Mapping[fx.Node, Any], Any], Any]


def op_name(node: fx.Node) -> str:
    """The name :data:`RULES` knows a function or method call by.

    Methods and functions lose a trailing ``_`` (in-place variants); ``x[i]`` is ``getitem`` and
    ``x.T`` is ``getattr.T``. An ATen operation (the export frontend's graph) is known by
    its operator's name, so ``aten.add_.Tensor`` is ``add`` and ``aten.slice.Tensor`` is
    ``slice``.

    Example:
        >>> g = fx.Graph()
        >>> x = g.placeholder("x")
        >>> op_name(g.call_method("relu_", (x,))), op_name(g.call_function(getattr, (x, "T")))
        ('relu', 'getattr.T')
    """
    if node.op == "call_method":
        return node.target.rstrip("_") if node.target.endswith("_") else node.target
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        if node.target is getattr:
            return f"getattr.{node.args[1]}"
        packet = getattr(node.target, "overloadpacket", None)  # an ATen OpOverload
        name = packet.__name__ if packet is not None else getattr(node.target, "__name__", "")
        if not name:
            return str(node.target)
        # an in-place variant (``torch.relu_``, ``aten.add_``) routes as its operation
        return name[:-1] if name.endswith("_") and not name.startswith("_") else name
    return node.op


def node_argument(node: fx.Node, position: int, keyword: str, default: Any = None) -> Any:
    """An argument of ``node`` given by keyword or at ``position``.

    The keyword wins: in ``normalize(x, 2.0, dim=1)`` the second argument is ``p``.
    """
    if keyword in node.kwargs:
        return known_value(node.kwargs[keyword])
    return known_value(node.args[position]) if len(node.args) > position else default


def known_value(value: Any) -> Any:
    """``value`` with every node whose result the flow pass knows as a plain number or
    sizes (``x.shape[1:]``, ``x.dim() - 1``: computed in ``forward``) replaced by that
    result; tensor nodes are left as they are."""

    def known(v: Any) -> Any:
        flow = v.meta.get(FLOW) if isinstance(v, fx.Node) else None
        return flow.constant if flow is not None and flow.is_constant else v

    return tree_map(known, value)


def first_input(node: fx.Node, inputs: Mapping[fx.Node, Any]) -> Channels | None:
    """The channels of the first argument, if it is a tensor."""
    first = node.args[0] if node.args else None
    value = inputs.get(first) if isinstance(first, fx.Node) else None
    return value if isinstance(value, Channels) else None


def one_axis_first_input(node: fx.Node, inputs: Mapping[fx.Node, Any]) -> Channels | None:
    """The first argument's channels when they lie on at most one axis (the direct rules' case)."""
    source = first_input(node, inputs)
    return source if source is not None and len(source.axes) <= 1 else None


def shape_leaves(shapes: Any) -> list[Shape]:
    return [s for s in tree_flatten(shapes)[0] if isinstance(s, Shape)]


def called_module(ctx: RoutingContext, node: fx.Node) -> nn.Module:
    return ctx.fetch_attr(node.target)


def fallback(
    ctx: RoutingContext,
    node: fx.Node,
    inputs: Mapping[fx.Node, Any],
    shapes: Any,
    why: str | None = None,
) -> Any:
    """The rule of operations gpa cannot follow: every channel reaches every position.

    This over-approximates, never drops, a route. Each producer concerned is noted with
    ``why`` (default: the module class, or :func:`op_name`), reported as ``channel_fallback``.
    """
    if why is None:
        why = type(called_module(ctx, node)).__name__ if node.op == "call_module" else op_name(node)
    terms = tuple(t for v in inputs.values() for c in leaves(v) for t in c.terms)
    for t in terms:
        ctx.note_fallback(t.producer, why)
    mixed = Channels((), (), terms)
    return tree_map(
        lambda s: mix(mixed, tuple(s)) if isinstance(s, Shape) else None,
        node.meta[FLOW].shapes,
    )


def shaped_results(value: Channels, shapes: Any, every: bool = False) -> Any:
    """``value`` for an operation's result ``shapes``: one tensor, or (values, indices) —
    the indices are integers and carry no gradient — or, with ``every``, several values."""
    if isinstance(shapes, Shape):
        return value
    first = True

    def each(s: Any) -> Any:
        nonlocal first
        if not isinstance(s, Shape):
            return None
        found, first = value if first or every else Channels((), tuple(s), ()), False
        return found

    return tree_map(each, shapes)
