"""Channel routing: which channels of which layer every traced tensor carries.

An fx pass over a graph annotated by :func:`gpa.frontends.fx.flow.flow_from_values`. It
follows the forward data flow along gradient-carrying edges and gives each
tensor a :class:`Channels` value: its *channel-bearing axes* and, for each
layer output reaching it without crossing another layer, a :class:`Term`
mapping every position of those axes to the producer channel found there.

Operations are handled by what they do to channels:

* data movement (view, reshape, permute, slicing, ``chunk``/``split``,
  ``cat``/``stack``, padding, ``index_select`` with a constant index, pixel
  shuffle …) is run for real on a small integer *probe* tensor holding channel
  positions, so any permutation (e.g. ShuffleNet's shuffle) is tracked exactly;
* pointwise and broadcasting operations, and operations that keep the channel
  axis (normalisations with per-channel statistics, pooling, upsampling) keep
  positions;
* operations that combine positions of the channel axis (softmax, layer and
  group norm, reductions, products of activations, attention) make the
  positions they combine depend on every channel involved;
* anything else falls back to "every channel reaches every position", and the
  producers concerned are reported (:attr:`ChannelRouting.fallbacks`).

The result, :class:`ChannelRouting`, lists for each consumer (a layer call or a
returned tensor) which producer channels arrive at which of its input
channels.

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
    >>> [(d.consumer, d.positions.tolist()) for d in routing.inbound["a"]]
    [('b', [2, 3])]
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from gpa.core.graph import LayerCall
from gpa.frontends.fx.flow import FLOW, Shape
from gpa.frontends.fx.graph import select_outputs
from gpa.frontends.fx.layers import CONV_FUNCTIONS
from gpa.frontends.modules import POINTWISE_MODULES

__all__ = ["Term", "Channels", "Delivery", "ChannelRouting", "route_channels", "layer_axis"]

# Probes larger than this (elements) are not materialised: the operation falls back.
MAX_PROBE = 1 << 24


@dataclass(frozen=True)
class Term:
    """The channels of one producer found in a tensor.

    ``index`` (over the tensor's channel-bearing axes) holds the producer channel
    at each position, -1 where it has none. When ``index`` is None, the channels
    in ``everywhere`` (None: all of the producer's channels) reach every position.
    """

    producer: str
    index: np.ndarray | None
    everywhere: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Channels:
    """Channel provenance of one tensor: channel-bearing ``axes`` (ascending) and terms."""

    axes: tuple[int, ...]
    shape: tuple[int, ...]
    terms: tuple[Term, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.axes)


@dataclass(frozen=True)
class Delivery:
    """Channels of a producer arriving at the input channels of ``consumer``.

    ``positions[i]`` is the producer channel at consumer input channel ``i``
    (-1: none). When ``positions`` is None, the producer channels in ``mixed``
    (None: all of them) reach every input channel of the consumer.
    ``consumer`` is a layer call (``name#k`` for its k-th tensor argument when it
    takes several) or ``<loss>`` / ``<loss>:PATH`` for a returned tensor.
    """

    consumer: str
    positions: np.ndarray | None
    mixed: tuple[int, ...] | None = None


@dataclass
class ChannelRouting:
    """Where each layer call's output channels go.

    Attributes:
        inbound: producer call -> its deliveries to consumers.
        out_channels: layer call -> (number of output channels, groups of its input).
        in_channels: consumer -> number of its input channels (its channel axis).
        fallbacks: producer call -> the operations whose channel routing gpa
            could not follow exactly (it then assumed full mixing).
    """

    inbound: dict[str, list[Delivery]] = field(default_factory=lambda: defaultdict(list))
    out_channels: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    in_channels: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


# ------------------------------------------------------------------ helpers

_CONV_TYPES = (nn.modules.conv._ConvNd,)


def _is_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, _CONV_TYPES) or any(
            isinstance(m, _CONV_TYPES) for m in module.modules()
        )
    return node.op == "call_function" and node.target in CONV_FUNCTIONS


def layer_axis(conv: bool, ndim: int) -> int:
    """The channel axis of a layer's tensors: 1 for convolutions, the last axis otherwise."""
    return 1 if conv and ndim >= 2 else ndim - 1


def _groups(gm: fx.GraphModule, node: fx.Node) -> int:
    if node.op == "call_module":
        return int(getattr(gm.get_submodule(node.target), "groups", 1) or 1)
    if node.op == "call_function" and node.target in CONV_FUNCTIONS:
        if "groups" in node.kwargs:
            return int(node.kwargs["groups"])
        position = 7 if "transpose" in node.target.__name__ else 6
        if len(node.args) > position:
            return int(node.args[position])
    return 1


def _everywhere_of(term: Term) -> tuple[int, ...] | None:
    """The channels a term holds anywhere, for "reaches every position" (None: all)."""
    if term.index is None:
        return term.everywhere
    values = np.unique(term.index[term.index >= 0])
    return tuple(int(v) for v in values)


def _mix(ch: Channels, shape: tuple[int, ...]) -> Channels:
    """Every channel of every term reaches every position of a tensor of ``shape``."""
    terms = tuple(
        Term(t.producer, None, _everywhere_of(t))
        for t in ch.terms
        if t.index is None or (t.index >= 0).any()
    )
    return Channels((), shape, terms)


def _union(parts: list[Channels], shape: tuple[int, ...]) -> Channels:
    """Broadcast several tensors' channels onto ``shape`` (pointwise operations)."""
    tracked = [p for p in parts if p.terms]
    if not tracked:
        return Channels((), shape, ())
    ndim = len(shape)
    moved = []
    for p in tracked:
        shift = ndim - len(p.shape)
        moved.append((tuple(a + shift for a in p.axes), p))
    axes = tuple(sorted({a for axes_, _ in moved for a in axes_}))
    sizes = tuple(shape[a] for a in axes)
    if math.prod(sizes) > MAX_PROBE:
        return _mix(Channels((), shape, tuple(t for p in tracked for t in p.terms)), shape)
    terms = []
    for (axes_, p), shift in zip(moved, (ndim - len(p.shape) for p in tracked), strict=True):
        for t in p.terms:
            if t.index is None:
                terms.append(t)
                continue
            arr = t.index.reshape([p.shape[a - shift] if a in axes_ else 1 for a in axes])
            terms.append(Term(t.producer, np.broadcast_to(arr, sizes)))
    return Channels(axes, shape, tuple(terms))


def _probe(ch: Channels, base: int) -> torch.Tensor:
    """A tensor of the channels' shape holding ``base`` + the flat channel position.

    ``base`` is at least 1, so that the zeros an operation pads with mean "no
    channel". float64 holds these integers exactly and every movement op takes it.
    """
    sizes = ch.sizes
    values = torch.arange(base, base + math.prod(sizes), dtype=torch.float64)
    view = [1] * len(ch.shape)
    for a, n in zip(ch.axes, sizes, strict=True):
        view[a] = n
    return values.reshape(view).expand(ch.shape).contiguous()


def _decode(out: torch.Tensor) -> tuple[tuple[int, ...], np.ndarray]:
    """Channel-bearing axes of a probe result and its (integer) values over them."""
    axes = tuple(
        a for a in range(out.dim()) if out.shape[a] > 1 and bool((out != out.narrow(a, 0, 1)).any())
    )
    if out.numel() == 0:
        return (), np.zeros((), dtype=np.int64)
    index = tuple(slice(None) if a in axes else 0 for a in range(out.dim()))
    return axes, out[index].round().to(torch.int64).numpy()


def _remap(
    ch_terms: list[tuple[Term, int, int]],
    axes: tuple[int, ...],
    shape: tuple[int, ...],
    positions: np.ndarray,
) -> Channels:
    """Terms re-indexed by probe positions (``positions`` hold base + flat input position)."""
    terms = []
    for term, base, size in ch_terms:
        if term.index is None:
            terms.append(term)
            continue
        flat = term.index.reshape(-1)
        inside = (positions >= base) & (positions < base + size)
        index = np.full(positions.shape, -1, dtype=np.int64)
        index[inside] = flat[positions[inside] - base]
        if (index >= 0).any():
            terms.append(Term(term.producer, index))
    return Channels(axes, tuple(shape), tuple(terms))


def _collapse(ch: Channels, axis: int, keepdim_shape: tuple[int, ...] | None) -> Channels:
    """Positions along ``axis`` combine: each remaining position holds every channel along it.

    With ``keepdim_shape`` the axis stays (of the new size, broadcast); otherwise
    it is removed.
    """
    if axis not in ch.axes:
        if keepdim_shape is not None:
            return Channels(ch.axes, keepdim_shape, ch.terms)
        axes = tuple(a - (a > axis) for a in ch.axes)
        shape = ch.shape[:axis] + ch.shape[axis + 1 :]
        return Channels(axes, shape, ch.terms)
    k = ch.axes.index(axis)
    rest = ch.axes[:k] + ch.axes[k + 1 :]
    new_shape = (
        keepdim_shape if keepdim_shape is not None else ch.shape[:axis] + ch.shape[axis + 1 :]
    )
    if not rest:
        return _mix(ch, new_shape)
    terms = []
    for t in ch.terms:
        if t.index is None:
            terms.append(t)
            continue
        seen = set()
        for j in range(t.index.shape[k]):
            part = np.take(t.index, j, axis=k)
            key = part.tobytes()
            if key in seen or not (part >= 0).any():
                continue
            seen.add(key)
            if keepdim_shape is not None:
                part = np.expand_dims(part, k)
                part = np.broadcast_to(part, tuple(new_shape[a] for a in ch.axes))
            terms.append(Term(t.producer, part))
    if keepdim_shape is not None:
        return Channels(ch.axes, new_shape, tuple(terms))
    axes = tuple(a - (a > axis) for a in rest)
    return Channels(axes, new_shape, tuple(terms))


def _combine_along(ch: Channels, axes: list[int]) -> Channels:
    """Every position along ``axes`` depends on every position along them (softmax, norms)."""
    for a in axes:
        size = ch.shape[a]
        ch = _collapse(ch, a, ch.shape[:a] + (1,) + ch.shape[a + 1 :])
        shape = ch.shape[:a] + (size,) + ch.shape[a + 1 :]
        ch = _union([ch], shape) if ch.axes else Channels((), shape, ch.terms)
    return ch


# ----------------------------------------------------------- op catalogue

_POINTWISE = frozenset(
    "add sub rsub mul div true_divide floor_divide remainder fmod pow neg abs exp exp2 expm1 "
    "log log2 log10 log1p sqrt rsqrt sin cos tan sinh cosh tanh sigmoid relu relu6 gelu silu "
    "mish elu selu celu leaky_relu hardswish hardsigmoid hardtanh softplus softsign tanhshrink "
    "threshold clamp clip clamp_min clamp_max maximum minimum where lerp addcmul addcdiv erf "
    "erfc sign round floor ceil trunc reciprocal square logit dropout dropout1d dropout2d "
    "dropout3d alpha_dropout feature_alpha_dropout float double half bfloat16 to type type_as "
    "contiguous clone masked_fill nan_to_num prelu batch_norm instance_norm "
    "max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d "
    "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d "
    "adaptive_max_pool3d lp_pool1d lp_pool2d interpolate upsample upsample_nearest "
    "upsample_bilinear".split()
)
_OPERATORS = frozenset(
    {
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        operator.floordiv,
        operator.mod,
        operator.pow,
        operator.neg,
        operator.pos,
        operator.abs,
        operator.iadd,
        operator.isub,
        operator.imul,
        operator.itruediv,
    }
)
_MOVEMENT = frozenset(
    "view reshape permute transpose flatten unflatten squeeze unsqueeze narrow select "
    "index_select chunk split tensor_split unbind flip roll expand expand_as repeat movedim "
    "swapaxes swapdims t view_as reshape_as cat concat concatenate stack pad pixel_shuffle "
    "pixel_unshuffle channel_shuffle getitem hstack vstack".split()
)
_REDUCTIONS = frozenset(
    "sum mean amax amin prod std var norm logsumexp max min median nansum nanmean".split()
)
_COMBINING = frozenset("softmax log_softmax softmin normalize".split())
_MATMUL = frozenset({"matmul", "bmm", "mm", "__matmul__"})

# Modules whose effect on channels is pointwise or keeps the channel axis.
_KEEPING_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.Upsample,
    *POINTWISE_MODULES,
)
_MOVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.Flatten,
    nn.Unflatten,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
)


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return node.target.rstrip("_") if node.target.endswith("_") else node.target
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        if node.target is getattr:
            return f"getattr.{node.args[1]}"
        return getattr(node.target, "__name__", str(node.target))
    return node.op


# ---------------------------------------------------------------- the pass


def _untracked(shapes: Any) -> Any:
    return tree_map(lambda s: Channels((), tuple(s), ()) if isinstance(s, Shape) else None, shapes)


def _leaves(value: Any) -> list[Channels]:
    return [c for c in tree_flatten(value)[0] if isinstance(c, Channels)]


def _tracked(value: Any) -> bool:
    return any(c.terms for c in _leaves(value))


class _Router:
    """State of one routing pass (see :func:`route_channels`)."""

    def __init__(self, gm: fx.GraphModule, calls: Mapping[str, LayerCall]) -> None:
        self.gm = gm
        self.calls = calls
        self.routing = ChannelRouting()
        self.env: dict[fx.Node, Any] = {}

    # inputs --------------------------------------------------------------
    def inputs(self, node: fx.Node) -> dict[fx.Node, Any]:
        """Channels of each input node; inputs gradient does not flow through carry none."""
        flows = node.meta[FLOW].grad_from
        return {
            n: self.env[n] if n in flows else _untracked(n.meta[FLOW].shapes)
            for n in node.all_input_nodes
        }

    def fallback(self, node: fx.Node, inputs: Mapping[fx.Node, Any], why: str) -> Any:
        shapes = node.meta[FLOW].shapes
        terms = tuple(t for v in inputs.values() for c in _leaves(v) for t in c.terms)
        for t in terms:
            self.routing.fallbacks[t.producer].add(why)
        mixed = Channels((), (), terms)
        return tree_map(lambda s: _mix(mixed, tuple(s)) if isinstance(s, Shape) else None, shapes)

    # layers ----------------------------------------------------------------
    def layer(self, node: fx.Node) -> Any:
        conv = _is_conv(self.gm, node)
        inputs = self.inputs(node)
        tensor_args = [
            n for n in node.all_input_nodes if isinstance(inputs[n], Channels) and inputs[n].terms
        ]
        for k, n in enumerate(tensor_args):
            ch = inputs[n]
            axis = self._input_axis(node, n, ch, conv)
            consumer = node.name if len(tensor_args) == 1 else f"{node.name}#{k}"
            self.deliver(consumer, node.name, ch, axis)
        self.routing.groups[node.name] = _groups(self.gm, node)
        shapes = node.meta[FLOW].shapes
        first = True

        def fresh(s: Any) -> Any:
            nonlocal first
            if not isinstance(s, Shape):
                return None
            if not first:  # other results (an RNN's hidden state…) mix every channel
                return Channels((), tuple(s), (Term(node.name, None, None),))
            first = False
            axis = layer_axis(conv, len(s))
            count = s[axis] if s else 1
            self.routing.out_channels[node.name] = count
            index = np.arange(count, dtype=np.int64)
            return Channels((axis,), tuple(s), (Term(node.name, index),))

        return tree_map(fresh, shapes)

    def _input_axis(self, node: fx.Node, arg: fx.Node, ch: Channels, conv: bool) -> int:
        ndim = len(ch.shape)
        if (
            node.op in ("call_function", "call_method")
            and _op_name(node) in _MATMUL
            and node.args
            and node.args[0] is not arg
        ):
            return max(ndim - 2, 0)  # W @ x contracts x's second-to-last axis
        return layer_axis(conv, ndim)

    def deliver(self, consumer: str, producer_call: str | None, ch: Channels, axis: int) -> None:
        """Record which producer channels arrive at each input channel of ``consumer``."""
        del producer_call
        size = ch.shape[axis] if ch.shape else 1
        self.routing.in_channels[consumer] = size
        for t in ch.terms:
            inbound = self.routing.inbound[t.producer]
            if t.index is None:
                inbound.append(Delivery(consumer, None, t.everywhere))
            elif axis not in ch.axes:
                inbound.append(Delivery(consumer, None, _everywhere_of(t)))
            else:
                k = ch.axes.index(axis)
                rows = np.moveaxis(t.index, k, -1).reshape(-1, size)
                # distinct rows; keyed by bytes: np.unique(axis=0) builds a structured
                # dtype with one field per column, slow for wide layers
                distinct = {row.tobytes(): row for row in rows if (row >= 0).any()}
                inbound.extend(Delivery(consumer, row.copy()) for row in distinct.values())

    # outputs ---------------------------------------------------------------
    def output(self, node: fx.Node, outputs: Any) -> None:
        flows = node.meta[FLOW].grad_from
        for path, source in select_outputs(self.gm, outputs):
            if source not in flows:
                continue
            for sub, ch in _flatten_with_paths(self.env[source], path):
                if not ch.terms:
                    continue
                axis = ch.axes[0] if len(ch.axes) == 1 else (len(ch.shape) - 1 if ch.shape else 0)
                self.deliver(f"<loss>:{sub}" if sub else "<loss>", None, ch, axis)

    # everything else -------------------------------------------------------
    def transfer(self, node: fx.Node) -> Any:
        inputs = self.inputs(node)
        shapes = node.meta[FLOW].shapes
        if not any(_tracked(v) for v in inputs.values()):
            return _untracked(shapes)
        name = _op_name(node)
        if name == "getitem" and not isinstance(inputs.get(node.args[0]), Channels):
            return inputs[node.args[0]][node.args[1]]  # an element of a tuple result
        if node.op == "call_module":
            return self.module(node, inputs, shapes)
        if name in _MOVEMENT or name in ("getattr.T", "getattr.mT"):
            moved = _slices_and_joins(node, name, inputs, shapes)
            return moved if moved is not None else self.probe(node, inputs, shapes)
        if node.op in ("call_function", "call_method") and (
            name in _POINTWISE or node.target in _OPERATORS
        ):
            return self.pointwise(inputs, shapes)
        if name in _COMBINING:
            return self.combine(node, inputs, shapes)
        if name in _REDUCTIONS:
            return self.reduce(node, inputs, shapes)
        if name in _MATMUL:
            return self.matmul(node, inputs, shapes)
        if name == "scaled_dot_product_attention":
            return self.attention(node, inputs, shapes)
        if name in ("layer_norm", "rms_norm"):
            return self.layer_norm(node, inputs, shapes, node.args[1])
        if name == "group_norm":
            return self.group_norm(node, inputs, shapes, node.args[1])
        return self.fallback(node, inputs, name)

    def module(self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        module = self.gm.get_submodule(node.target)
        if isinstance(module, _KEEPING_MODULES):
            return self.pointwise(inputs, shapes)
        if isinstance(module, _MOVING_MODULES):
            return self.probe(node, inputs, shapes)
        if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return self.combine(node, inputs, shapes, dim=module.dim)
        if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
            return self.layer_norm(node, inputs, shapes, module.normalized_shape)
        if isinstance(module, nn.GroupNorm):
            return self.group_norm(node, inputs, shapes, module.num_groups)
        return self.fallback(node, inputs, type(module).__name__)

    def pointwise(self, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        if not isinstance(shapes, Shape):
            return None
        parts = [v for v in inputs.values() if isinstance(v, Channels)]
        return _union(parts, tuple(shapes))

    def _single(self, node: fx.Node, inputs: Mapping[fx.Node, Any]) -> Channels | None:
        first = node.args[0] if node.args else None
        value = inputs.get(first) if isinstance(first, fx.Node) else None
        return value if isinstance(value, Channels) else None

    def combine(
        self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any, dim: int | None = None
    ) -> Any:
        ch = self._single(node, inputs)
        if dim is None:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if ch is None or not isinstance(dim, int):
            return self.fallback(node, inputs, _op_name(node))
        return _combine_along(ch, [dim % len(ch.shape)])

    def layer_norm(
        self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any, normalized: Any
    ) -> Any:
        ch = self._single(node, inputs)
        count = 1 if isinstance(normalized, int) else len(tuple(normalized))
        if ch is None:
            return self.fallback(node, inputs, _op_name(node))
        ndim = len(ch.shape)
        return _combine_along(ch, list(range(ndim - count, ndim)))

    def group_norm(
        self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any, groups: int
    ) -> Any:
        ch = self._single(node, inputs)
        if ch is None or len(ch.shape) < 2:
            return self.fallback(node, inputs, "group_norm")
        width = ch.shape[1]
        if groups == width or 1 not in ch.axes:
            return ch
        if groups == 1:
            return _combine_along(ch, [1])
        return _within_groups(ch, 1, groups)

    def reduce(self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        ch = self._single(node, inputs)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        if ch is None or not (dim is None or isinstance(dim, (int, tuple, list))):
            return self.fallback(node, inputs, _op_name(node))
        first = _first_shape(shapes)
        if first is None:
            return self.fallback(node, inputs, _op_name(node))
        ndim = len(ch.shape)
        dims = range(ndim) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        result = ch
        for d in sorted({d % ndim for d in dims}, reverse=True):
            kept = result.shape[:d] + (1,) + result.shape[d + 1 :] if keep else None
            result = _collapse(result, d, kept)
        result = Channels(result.axes, tuple(first), result.terms)
        if isinstance(shapes, Shape):
            return result
        return tree_map(
            lambda s, i=[0]: _pick(result, s, i), shapes
        )  # (values, indices): indices are integers and carry no gradient

    def matmul(self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        a_node, b_node = node.args[0], node.args[1]
        a, b = inputs.get(a_node), inputs.get(b_node)
        if not (isinstance(a, Channels) and isinstance(b, Channels) and isinstance(shapes, Shape)):
            return self.fallback(node, inputs, _op_name(node))
        if len(a.shape) < 2 or len(b.shape) < 2:
            return self.fallback(node, inputs, _op_name(node))
        out = tuple(shapes)
        # a (..., n, k) @ b (..., k, m): k is combined; a's n and b's m move to the result.
        a_part = _collapse(a, len(a.shape) - 1, a.shape[:-1] + (1,))
        b_part = _collapse(b, len(b.shape) - 2, b.shape[:-2] + (1,) + b.shape[-1:])
        return _union([a_part, b_part], out)

    def attention(self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        q, k, v = (inputs.get(a) for a in node.args[:3])
        if not all(isinstance(x, Channels) for x in (q, k, v)) or not isinstance(shapes, Shape):
            return self.fallback(node, inputs, "scaled_dot_product_attention")
        out = tuple(shapes)
        # The attention weights combine every channel of q and k, and every position of v.
        weights = _mix(Channels((), (), q.terms + k.terms), out)
        v_part = _collapse(v, len(v.shape) - 2, v.shape[:-2] + (1,) + v.shape[-1:])
        return _union([weights, v_part], out)

    def probe(self, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        base = 1
        ch_terms: list[tuple[Term, int, int]] = []
        probes: dict[fx.Node, Any] = {}
        for n, value in inputs.items():
            if isinstance(value, Channels):
                size = math.prod(value.sizes)
                if math.prod(value.shape) > MAX_PROBE:
                    return self.fallback(node, inputs, f"{_op_name(node)} (too large to probe)")
                if value.terms:
                    probes[n] = _probe(value, base)
                    ch_terms += [(t, base, size) for t in value.terms]
                    base += size
                else:
                    constant = self._constant(n)
                    if constant is None and not self._floating(n):
                        return self.fallback(node, inputs, f"{_op_name(node)} (computed index)")
                    probes[n] = (
                        constant
                        if constant is not None
                        else torch.zeros(value.shape, dtype=torch.float64)
                    )
            elif n.meta[FLOW].is_constant:
                probes[n] = n.meta[FLOW].constant  # a size computed in forward
            else:
                return self.fallback(node, inputs, _op_name(node))
        args = fx.node.map_arg(node.args, probes.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, probes.__getitem__)
        try:
            if node.op == "call_module":
                result = self.gm.get_submodule(node.target)(*args, **kwargs)
            elif node.op == "call_method":
                result = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                result = node.target(*args, **kwargs)
        except Exception:  # an op that refuses the probe's dtype: no exact routing
            return self.fallback(node, inputs, _op_name(node))
        everywhere = [t for t, _, _ in ch_terms if t.index is None]

        def decode(out: Any) -> Any:
            if not isinstance(out, torch.Tensor):
                return None
            axes, positions = _decode(out)
            channels = _remap(ch_terms, axes, tuple(out.shape), positions)
            return Channels(channels.axes, channels.shape, channels.terms + tuple(everywhere))

        return tree_map(decode, result)

    def _constant(self, node: fx.Node) -> torch.Tensor | None:
        """The real value of a constant (parameter, buffer) argument, if it has one."""
        if node.op != "get_attr":
            return None
        owner_path, _, attr = node.target.rpartition(".")
        owner = self.gm.get_submodule(owner_path) if owner_path else self.gm
        value = getattr(owner, attr, None)
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            return value.detach()
        return None

    def _floating(self, node: fx.Node) -> bool:
        info = node.meta[FLOW].value
        return info is not None and info.dtype is not None and "float" in info.dtype


def _arg(node: fx.Node, position: int, keyword: str, default: Any = None) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def _slices_and_joins(node: fx.Node, name: str, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``cat``, ``split``/``chunk``, ``narrow`` and basic slicing of one-axis channels, directly.

    The same answer as the probe for these common cases, without materialising a
    probe as large as the activation. None when the case is not one of them.
    """
    if name in ("cat", "concat", "concatenate") and node.op == "call_function":
        parts = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(parts, (list, tuple)) or not isinstance(shapes, Shape):
            return None
        values = [inputs.get(p) if isinstance(p, fx.Node) else None for p in parts]
        if not all(isinstance(v, Channels) for v in values):
            return None
        ndim = len(shapes)
        dim %= ndim
        if any(v.axes not in ((), (dim,)) or len(v.shape) != ndim for v in values):
            return None
        if any(v.axes == () and any(t.index is not None for t in v.terms) for v in values):
            return None
        terms, offset = [], 0
        for v in values:
            size = v.shape[dim]
            for t in v.terms:
                if t.index is None:
                    terms.append(t)
                    continue
                index = np.full(shapes[dim], -1, dtype=np.int64)
                index[offset : offset + size] = t.index
                terms.append(Term(t.producer, index))
            offset += size
        axes = (dim,) if any(t.index is not None for t in terms) else ()
        return Channels(axes, tuple(shapes), tuple(terms))
    source = inputs.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    if not isinstance(source, Channels) or len(source.axes) > 1:
        return None
    ndim = len(source.shape)
    if name in ("split", "chunk", "narrow"):
        dim = _arg(node, 1, "dim", 0) if name == "narrow" else _arg(node, 2, "dim", 0)
        leaves = [s for s in tree_flatten(shapes)[0] if isinstance(s, Shape)]
        if not leaves or not isinstance(dim, int) or any(len(s) != ndim for s in leaves):
            return None
        dim %= ndim
        if name == "narrow":
            start = _arg(node, 2, "start")
            if not isinstance(start, int):
                return None
            bounds = [(start % source.shape[dim], start % source.shape[dim] + leaves[0][dim])]
        else:
            offsets = np.cumsum([0] + [s[dim] for s in leaves]).tolist()
            bounds = list(zip(offsets[:-1], offsets[1:], strict=True))
        pieces = iter(
            [
                _cut(source, dim, lo, hi, tuple(s))
                for (lo, hi), s in zip(bounds, leaves, strict=True)
            ]
        )
        return tree_map(lambda s: next(pieces) if isinstance(s, Shape) else None, shapes)
    if name == "getitem" and isinstance(shapes, Shape):
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(i, slice) or i is Ellipsis for i in index):
            return None
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1 :]
        if len(index) > ndim or any(
            not all(isinstance(b, (int, type(None))) for b in (i.start, i.stop, i.step))
            for i in index
        ):
            return None
        result = source
        for d, i in enumerate(index):
            if d in source.axes:
                lo, hi, step = i.indices(source.shape[d])
                if step != 1:
                    return None
                result = _cut(result, d, lo, hi, tuple(shapes))
        return Channels(result.axes, tuple(shapes), result.terms)
    return None


def _cut(ch: Channels, dim: int, lo: int, hi: int, shape: tuple[int, ...]) -> Channels:
    """Positions [lo, hi) along ``dim`` (a channel axis or not) of ``ch``, as a tensor of ``shape``."""
    if dim not in ch.axes:
        return Channels(ch.axes, shape, ch.terms)
    k = ch.axes.index(dim)
    terms = []
    for t in ch.terms:
        if t.index is None:
            terms.append(t)
            continue
        part = np.take(t.index, np.arange(lo, hi), axis=k)
        if (part >= 0).any():
            terms.append(Term(t.producer, part))
    return Channels(ch.axes, shape, tuple(terms))


def _first_shape(shapes: Any) -> Shape | None:
    leaves = [s for s in tree_flatten(shapes)[0] if isinstance(s, Shape)]
    return leaves[0] if leaves else None


def _pick(result: Channels, s: Any, counter: list[int]) -> Any:
    """The reduced channels for the first tensor of a (values, indices) result."""
    if not isinstance(s, Shape):
        return None
    counter[0] += 1
    return result if counter[0] == 1 else Channels((), tuple(s), ())


def _within_groups(ch: Channels, axis: int, groups: int) -> Channels:
    """Positions along ``axis`` combine within each of ``groups`` equal groups (group norm)."""
    k = ch.axes.index(axis)
    size = ch.shape[axis]
    width = size // groups
    terms = []
    for t in ch.terms:
        if t.index is None:
            terms.append(t)
            continue
        moved = np.moveaxis(t.index, k, -1)
        grouped = moved.reshape(moved.shape[:-1] + (groups, width))
        for r in range(width):
            member = np.repeat(grouped[..., r : r + 1], width, axis=-1).reshape(moved.shape)
            terms.append(Term(t.producer, np.moveaxis(member, -1, k)))
    return Channels(ch.axes, ch.shape, tuple(terms))


def _flatten_with_paths(value: Any, prefix: str) -> list[tuple[str, Channels]]:
    leaves, spec = tree_flatten(value)
    if len(leaves) == 1:
        return [(prefix, leaves[0])] if isinstance(leaves[0], Channels) else []
    del spec
    return [
        (f"{prefix}.{i}" if prefix else str(i), c)
        for i, c in enumerate(leaves)
        if isinstance(c, Channels)
    ]


def route_channels(
    gm: fx.GraphModule, calls: Mapping[str, LayerCall], outputs: Any = None
) -> ChannelRouting:
    """Follow every layer call's output channels to the layers and outputs they reach.

    Args:
        gm: a traced module annotated by :func:`gpa.frontends.fx.flow.flow_from_values`.
        calls: its layer calls (node name -> :class:`~gpa.core.graph.LayerCall`).
        outputs: the selected outputs, as for :func:`gpa.frontends.fx.graph.select_outputs`.
    """
    router = _Router(gm, calls)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            router.env[node] = _untracked(node.meta[FLOW].shapes)
        elif node.op == "output":
            router.output(node, outputs)
        elif node.name in calls:
            router.env[node] = router.layer(node)
        else:
            router.env[node] = router.transfer(node)
    return router.routing
