"""Channel routing: which channels of which layer every traced tensor carries.

:class:`ChannelRouter` is an fx pass (an ``fx.Interpreter``, like torch's
``ShapeProp``) over a graph annotated by :class:`gpa.frontends.fx.flow.GradientFlow`. It
follows the forward data flow along gradient-carrying edges and annotates every node
with ``node.meta["gpa_channels"]`` (:data:`CHANNELS`): a
:class:`~gpa.channels.rules.Channels` value per tensor of its result, telling which
producer channels sit at which positions. A layer call starts fresh channels of its
own; any other operation is routed by its rule in :data:`gpa.channels.rules.RULES`
(this pass knows no operation itself).

The result, :class:`ChannelRouting`, lists for each producer call which of its channels
arrive at which input channels of each :class:`Consumer` (a layer call, or the loss
through a returned tensor).

Example:
    >>> import torch, torch.nn as nn
    >>> from gpa.frontends.fx import fx_gradient_graph
    >>> from gpa.options import AnalysisOptions
    >>> class Half(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 2, 1)
    ...     def forward(self, x):
    ...         return self.b(self.a(x)[:, 2:])
    >>> graph = fx_gradient_graph(Half(), AnalysisOptions(input_shape=(1, 3, 4, 4)))
    >>> routing = route_channels(graph.traced, graph.calls)
    >>> [(d.consumer.call, d.positions.tolist()) for d in routing.inbound["a"]]
    [('b', [2, 3])]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from gpa.channels.operations import Rule, fallback, op_name
from gpa.channels.rules import (
    RULES,
    is_conv,
    layer_axis,
    layer_groups,
    layer_input_axis,
    layer_output_axis,
    matmul,
)
from gpa.channels.values import (
    Channels,
    Term,
    by_identity,
    distinct_rows,
    everywhere_of,
    leaves,
    tracked,
    unbroadcast,
    union,
    unique_values,
    untracked,
)
from gpa.core.graph import LOSS, LayerCall
from gpa.frontends.fx.flow import FLOW, Shape
from gpa.frontends.fx.graph import select_outputs
from gpa.frontends.fx.layers import STANDS_FOR, added_operands, weight_nodes
from gpa.frontends.fx.modes import grad_modes
from gpa.frontends.fx.writes import written_into

__all__ = [
    "CHANNELS",
    "ChannelRouter",
    "ChannelRouting",
    "Channels",
    "Consumer",
    "Delivery",
    "Term",
    "layer_axis",
    "route_channels",
    "rule_for",
]

#: The ``node.meta`` key of this pass: the node's result with each tensor replaced by its
#: :class:`~gpa.channels.rules.Channels` (None for the ``output`` node and non-tensors).
CHANNELS = "gpa_channels"


@dataclass(frozen=True)
class Consumer:
    """Where channels are delivered: a tensor argument of a layer call, or the loss.

    ``call`` is the layer call's node name (None: the loss); ``argument`` the index of
    the tensor argument when the call takes several; ``output`` the returned value's
    path (``docs/semantics.md`` §1) when the model returns several tensors.

    Example:
        >>> Consumer("attn", argument=1).sender, Consumer(None, output="0").sender
        ('attn', '<loss>')
    """

    call: str | None
    argument: int | None = None
    output: str | None = None

    @property
    def sender(self) -> str:
        """Who sends the gradient back: the layer call, or :data:`~gpa.core.graph.LOSS`."""
        return LOSS if self.call is None else self.call


@dataclass(frozen=True)
class Delivery:
    """Channels of a producer arriving at the input channels of ``consumer``.

    ``positions[i]`` is the producer channel at consumer input channel ``i`` (-1: none).
    When ``positions`` is None, the producer channels in ``mixed`` (None: all of them)
    reach every input channel of the consumer. When ``held`` is given, ``positions`` is a
    mask: every producer channel in ``held`` arrives at each input channel where it is 0.

    Example:
        >>> Delivery(Consumer("b"), np.array([2, 3])).positions.tolist()
        [2, 3]
    """

    consumer: Consumer
    positions: np.ndarray | None
    mixed: tuple[int, ...] | None = None
    held: np.ndarray | None = None


@dataclass
class ChannelRouting:
    """Where each layer call's output channels go.

    Attributes:
        inbound: producer call -> its deliveries to consumers.
        out_channels: layer call -> number of its output channels.
        groups: layer call -> groups of its input channels (grouped convolutions; else 1).
        in_channels: consumer -> number of its input channels (its channel axis).
        fallbacks: producer call -> the operations whose channel routing gpa could not
            follow exactly (it then assumed full mixing).

    Example:
        >>> ChannelRouting().inbound["conv"]
        []
    """

    inbound: dict[str, list[Delivery]] = field(default_factory=lambda: defaultdict(list))
    out_channels: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    in_channels: dict[Consumer, int] = field(default_factory=dict)
    fallbacks: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def rule_for(node: fx.Node, module: nn.Module | None = None) -> Rule:
    """The rule in :data:`~gpa.channels.rules.RULES` routing ``node``, else the fallback.

    A ``call_module`` node (``module``: the module it calls) is looked up by the classes
    of its module's MRO, most specific first; a function by name
    (:func:`~gpa.channels.rules.op_name`: ``getattr.T`` for ``x.T``), then by itself
    (``operator`` functions; ``getattr`` for other attributes); a method by name.

    Example:
        >>> g = fx.Graph()
        >>> x = g.placeholder("x")
        >>> rule_for(g.call_method("flip", (x, 1))).__name__
        'probe'
        >>> rule_for(g.call_module("act", (x,)), nn.LeakyReLU()).__name__
        'pointwise'
        >>> rule_for(g.call_method("cumsum", (x, 1))).__name__
        'fallback'
    """
    target = node.target
    if node.op == "call_module":
        keys: tuple[Hashable, ...] = type(module).__mro__
    elif (
        node.op == "call_function" and isinstance(target, Hashable) and not isinstance(target, type)
    ):
        keys = (op_name(node), target)  # a class called as a function is no module call
    else:
        keys = (op_name(node),)
    return next((RULES[k] for k in keys if k in RULES), fallback)


class ChannelRouter(fx.Interpreter):
    """The routing pass: ``ChannelRouter(gm, calls, outputs).run()`` returns the
    :class:`ChannelRouting` and leaves each node's channels in ``node.meta[CHANNELS]``.

    Args:
        gm: a traced module annotated by :class:`~gpa.frontends.fx.flow.GradientFlow`
            (the routing reads its shapes).
        calls: its layer calls (node name -> :class:`~gpa.core.graph.LayerCall`).
        outputs: the selected outputs, as for :func:`gpa.frontends.fx.graph.select_outputs`.

    Raises:
        GpaError: a selected output is not among the model's outputs.

    Example:
        >>> import torch.nn as nn
        >>> from gpa.frontends.fx import fx_gradient_graph
        >>> from gpa.options import AnalysisOptions
        >>> g = fx_gradient_graph(nn.Sequential(nn.Linear(3, 2)), AnalysisOptions(input_shape=(1, 3)))
        >>> routing = ChannelRouter(g.traced, g.calls).run()
        >>> routing.out_channels, [d.consumer for d in routing.inbound["_0"]]
        ({'_0': 2}, [Consumer(call=None, argument=None, output=None)])
    """

    def __init__(
        self, gm: fx.GraphModule, calls: Mapping[str, LayerCall], outputs: Any = None
    ) -> None:
        # Values stay in node.meta: freeing them from the environment would save nothing.
        super().__init__(gm, garbage_collect_values=False)
        self.extra_traceback = False  # do not rewrite the messages of our errors
        self.calls = calls
        self.outputs = outputs
        self.routing = ChannelRouting()
        self.collapsed: dict = {}  # RoutingContext.collapsed
        self._modes = grad_modes(gm.graph)
        self._read: dict = {}  # see _deliver
        self._weights: set[fx.Node] | None = None  # see _is_weight

    def run(self) -> ChannelRouting:  # type: ignore[override]
        """Route every node; placeholders need no values (shapes come from the flow pass)."""
        super().run(enable_io_processing=False)
        return self.routing

    def run_node(self, n: fx.Node) -> Any:
        value = self._route(n)
        n.meta[CHANNELS] = value
        return value

    def note_fallback(self, producer: str, why: str) -> None:
        self.routing.fallbacks[producer].add(why)

    def channel_count(self, producer: str) -> int:
        return self.routing.out_channels.get(producer, 1)

    def _route(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "get_attr"):
            return untracked(n.meta[FLOW].shapes)
        if n.op == "output":
            self._deliver_outputs(n)
            return None
        if n.name in self.calls:
            return self._layer(n)
        inputs = self._inputs(n)
        shapes = n.meta[FLOW].shapes
        if not any(tracked(v) for v in inputs.values()):
            return untracked(shapes)
        kept = self._history_kept(n, inputs, shapes)
        if kept is not None:
            return kept
        return rule_for(n, self._module(n))(self, n, inputs, shapes)

    def _history_kept(self, n: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        """The channels of what ``n`` writes into in place under ``no_grad``, as they were:
        autograd records no write, so gradient reaching the tensor after it flows on as
        before (docs/semantics.md §1.2), whatever the write moved or filled; None for any
        other node."""
        if self._modes[n]:
            return None
        target = written_into(n, self.fetch_attr)
        value = inputs.get(target)
        if not isinstance(value, Channels) or not isinstance(shapes, Shape):
            return None
        return value if tuple(shapes) == value.shape else None

    def _module(self, n: fx.Node) -> nn.Module | None:
        """The module ``n`` calls (the one a fused call stands for), or None."""
        if n.op != "call_module":
            return None
        return n.meta.get(STANDS_FOR) or self.fetch_attr(n.target)

    def _inputs(self, n: fx.Node) -> dict[fx.Node, Any]:
        """Channels of each input node; inputs gradient does not flow through carry none."""
        flows = n.meta[FLOW].grad_from
        return {
            m: self.env[m] if m in flows else untracked(m.meta[FLOW].shapes)
            for m in n.all_input_nodes
        }

    def _layer(self, n: fx.Node) -> Any:
        """Deliver the channels of a layer call's tensor arguments; start its own."""
        module = self._module(n)
        rule = rule_for(n, module)
        inputs = self._inputs(n)
        # every tensor argument carrying channels, also those inside a tuple argument (an
        # LSTM's ``(h, c)``), numbered in order as the export frontend's flat arguments are;
        # what the call only adds to its product (a bias of data) is added to its result
        added = added_operands(n)
        tensor_args = [
            (m, ch)
            for m in n.all_input_nodes
            if added.get(m, True)
            for ch in leaves(inputs[m])
            if ch.terms
        ]
        for k, (m, ch) in enumerate(tensor_args):
            axis = layer_input_axis(rule, n, m, ch.shape, module)
            self._deliver(Consumer(n.name, None if len(tensor_args) == 1 else k), ch, axis)
        self.routing.groups[n.name] = layer_groups(module, n)
        # ``W @ x``: its output channels are W's rows
        weight_first = rule is matmul and bool(n.args) and self._is_weight(n.args[0])
        first = True

        def fresh(s: Any) -> Any:
            nonlocal first
            if not isinstance(s, Shape):
                return None
            if not first:  # other results (an RNN's hidden state…) mix every channel
                return Channels((), tuple(s), (Term(n.name, None, None),))
            first = False
            axis = layer_output_axis(module, n, tuple(s), weight_first)
            count = s[axis] if s else 1
            self.routing.out_channels[n.name] = count
            return Channels((axis,), tuple(s), (Term(n.name, np.arange(count, dtype=np.int64)),))

        result = tree_map(fresh, n.meta[FLOW].shapes)
        sums = [ch for m in added for ch in leaves(inputs[m]) if ch.terms]
        if sums and isinstance(result, Channels):
            if is_conv(module, n) and result.axes:  # its bias: along the channel axis
                trailing = (1,) * (len(result.shape) - result.axes[0] - 1)
                sums = [Channels(ch.axes, ch.shape + trailing, ch.terms) for ch in sums]
            return union([result, *sums], result.shape)
        return result

    def _is_weight(self, value: Any) -> bool:
        """Whether ``value`` (a node, or a constant) is a weight (§2: computed from
        parameters alone, or picked from them by data: ``W[experts]``); data without
        gradient (``x.detach()``, a one-hot encoding) is none."""
        if self._weights is None:  # (worked out once, for the first W @ x met)
            layers = {n for n in self.module.graph.nodes if n.name in self.calls}
            self._weights = weight_nodes(self.module, layers)
        return value in self._weights

    def _deliver(self, consumer: Consumer, ch: Channels, axis: int) -> None:
        """Record which producer channels arrive at each input channel of ``consumer``."""
        size = ch.shape[axis] if ch.shape else 1
        self.routing.in_channels[consumer] = size
        for t in ch.terms:
            inbound = self.routing.inbound[t.producer]
            if t.index is None:
                inbound.append(Delivery(consumer, None, t.everywhere))
            elif axis not in ch.axes:
                inbound.append(Delivery(consumer, None, everywhere_of(t)))
            else:
                k = ch.axes.index(axis)
                # a residual stream's terms reach every later layer unchanged: each is
                # read once
                rows = by_identity(
                    self._read, (t.index, t.held), (k, size), _rows_along, t, k, size
                )
                inbound.extend(Delivery(consumer, row, held=held) for row, held in rows)

    def _deliver_outputs(self, n: fx.Node) -> None:
        """Deliver the channels of every selected returned tensor to the loss."""
        flows = n.meta[FLOW].grad_from
        for path, source in select_outputs(self.module, self.outputs):
            if source not in flows:
                continue
            for sub, ch in _flatten_with_paths(self.env[source], path):
                if not ch.terms:
                    continue
                # a returned tensor's channels: its one channel axis, else its last axis
                axis = ch.axes[0] if len(ch.axes) == 1 else (len(ch.shape) - 1 if ch.shape else 0)
                self._deliver(Consumer(None, output=sub or None), ch, axis)


def _rows_along(t: Term, k: int, size: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """What a consumer reading ``t``'s ``k``-th axis (of ``size`` positions) receives, as
    the (positions, held) of one :class:`Delivery` each: the distinct rows of ``t``'s index
    along that axis; for a mask term, one mask: where any of its channels is."""
    # what broadcasting repeats (a term alike at every token) is read once: no copies
    index = unbroadcast(t.index, k)
    if t.held is not None:
        present = np.moveaxis(index >= 0, k, -1).reshape(-1, size).any(axis=0)
        return [(np.where(present, 0, -1), t.held)]
    if not size:  # an empty axis holds no channel
        return []
    if index.strides[k] == 0:  # broadcast along the consumer's axis
        first = np.take(index, 0, axis=k)
    else:
        rows = np.moveaxis(index, k, -1).reshape(-1, size)
        if not (rows == rows[:, :1]).all():
            return [(row, None) for row in distinct_rows(rows)]
        first = rows[:, 0]
    # each row one producer channel throughout (what a norm over the channels leaves, or
    # an MLP-Mixer's token mixing seen along the channels): all of them at every position,
    # one mask
    values = unique_values(first)
    values = values[values >= 0]
    return [(np.zeros(size, dtype=np.int64), values)] if len(values) else []


def _flatten_with_paths(value: Any, prefix: str) -> list[tuple[str, Channels]]:
    """The channels of each tensor of a returned value, with its dotted path."""
    found = tree_flatten(value)[0]
    if len(found) == 1:
        return [(prefix, found[0])] if isinstance(found[0], Channels) else []
    return [
        (f"{prefix}.{i}" if prefix else str(i), c)
        for i, c in enumerate(found)
        if isinstance(c, Channels)
    ]


def route_channels(
    gm: fx.GraphModule, calls: Mapping[str, LayerCall], outputs: Any = None
) -> ChannelRouting:
    """Follow every layer call's output channels to the layers and outputs they reach.

    Runs :class:`ChannelRouter` (see there for the arguments and the example in this
    module's docstring).
    """
    return ChannelRouter(gm, calls, outputs).run()
