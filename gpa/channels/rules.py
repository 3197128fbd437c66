"""What each operation does to channels: the op -> rule table, and the rules that
combine positions.

Every traced tensor gets a channel value (:class:`~gpa.channels.values.Channels`,
``docs/semantics.md`` §8). A *rule* (:data:`~gpa.channels.operations.Rule`) computes the
value of an operation's result from the values of its inputs; :data:`RULES` maps each
operation to its rule, as fvcore's ``_DEFAULT_SUPPORTED_OPS`` maps ops to FLOP handlers.
The routing pass (:mod:`gpa.channels.routing`) looks every node up there and knows no
operation itself; an operation not in the table goes to
:func:`~gpa.channels.operations.fallback`.

The rules, by what an operation does to channels:

* data movement (view, reshape, permute, slicing, ``chunk``/``split``, ``cat``/``stack``,
  padding, ``index_select`` with a constant index, pixel shuffle …): in
  :mod:`gpa.channels.movement` (a probe, or a direct rule giving the same answer);
* pointwise and broadcasting operations, and batch norm: :func:`pointwise`; pooling,
  resampling and instance norm, which keep channel positions but along the axes they
  window over: :func:`windowed`;
* operations combining positions along an axis (softmax, layer and group norm,
  reductions, products of activations, attention): the positions they combine depend on
  every channel involved (:func:`combine`, :func:`reduce`, :func:`matmul`, …);
* anything else: :func:`~gpa.channels.operations.fallback`, "every channel reaches every
  position", recorded.

Adding an operation is adding one row to :data:`RULES`: a function or method name (as
:func:`~gpa.channels.operations.op_name` spells it), an ``operator`` function, or a
module class (looked up along the called module's MRO), mapped to a rule. Where the
layer calls keep their channels: :func:`layer_channel_axis` and its kin.

Example:
    >>> RULES["flip"] is probe, RULES[nn.ReLU] is pointwise, RULES["softmax"] is combine
    (True, True, True)
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import torch.fx as fx
from torch import nn

from gpa.channels.movement import (
    aten_slice,
    concatenate,
    getitem,
    narrow,
    padded,
    permuted,
    probe,
    reshaped,
    rolled,
    selected,
    split,
    unbound,
)
from gpa.channels.operations import (
    RoutingContext,
    Rule,
    called_module,
    fallback,
    first_input,
    node_argument,
    op_name,
    shape_leaves,
    shaped_results,
)
from gpa.channels.values import Channels, collapse, combine_along, union, within_groups
from gpa.frontends.fx.flow import FLOW, Shape
from gpa.frontends.fx.layers import CONV_FUNCTIONS
from gpa.frontends.modules import POINTWISE_MODULES

__all__ = [
    "OpKey",
    "RULES",
    "attention",
    "combine",
    "field",
    "group_norm",
    "is_conv",
    "layer_axis",
    "layer_channel_axis",
    "layer_groups",
    "layer_input_axis",
    "layer_norm",
    "layer_output_axis",
    "matmul",
    "normalised_with_statistics",
    "normalize",
    "pointwise",
    "reduce",
    "windowed",
]

# ------------------------------------------------------------------ rules


def pointwise(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """Pointwise and broadcasting operations, and those that keep channel positions.

    ``+`` and ``*`` of tuples of tensors (``x.split(1)[1:] + x.split(1)[:1]``) move whole
    tensors: they are probed.
    """
    if not isinstance(shapes, Shape):
        if node.op == "call_function" and node.target in _TUPLE_OPERATORS:
            return probe(ctx, node, inputs, shapes)
        return fallback(ctx, node, inputs, shapes, op_name(node))
    return union([v for v in inputs.values() if isinstance(v, Channels)], tuple(shapes))


_TUPLE_OPERATORS = frozenset({operator.add, operator.iadd, operator.mul, operator.imul})


def windowed(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """Pooling, resampling and instance norm: channel positions stay on the axes these
    leave alone; along their spatial axes the positions of a window (of an instance's
    statistics) combine.

    The spatial axes are the last k, k read off the operation's name (``max_pool2d``,
    ``AdaptiveAvgPool1d``; none: every axis after the first two). A channel-bearing
    spatial axis collapses as a reduction's does (``F.avg_pool1d`` over a Linear's
    output pools its channels), except where an adaptive pool or a resampling keeps its
    size: the identity there. Of (values, indices) results, the indices carry no gradient.
    """
    first = node.args[0] if node.args else None
    ch = first_input(node, inputs)
    found = shape_leaves(shapes)
    if ch is None or not found:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    name = type(called_module(ctx, node)).__name__ if node.op == "call_module" else op_name(node)
    digits = [c for c in name if c.isdigit()]
    ndim, out = len(ch.shape), tuple(found[0])
    resampled = any(w in name.lower() for w in ("adaptive", "interpolate", "upsample"))
    for a in range(max(ndim - (int(digits[-1]) if digits else ndim - 2), 0), ndim):
        if a in ch.axes and not (resampled and len(out) == ndim and out[a] == ch.shape[a]):
            ch = collapse(ch, a, ch.shape[:a] + (1,) + ch.shape[a + 1 :], ctx.collapsed)
    others = [v for n, v in inputs.items() if n is not first and isinstance(v, Channels)]
    return shaped_results(union([ch, *others], out), shapes)


def normalised_with_statistics(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """ATen's batch norm returning its statistics beside the result (export's graph spells
    ``batch_norm`` so where the model writes in place): the result as ``batch_norm``'s —
    each channel stays where it is —, the statistics (per channel, for the running ones'
    update) no channel."""
    found = shape_leaves(shapes)
    if not found:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    return shaped_results(pointwise(ctx, node, inputs, found[0]), shapes)


def field(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``r.values``, ``r.max`` …: a named field of a structured result
    (``torch.max(x, 1).values``, ``torch.aminmax(x, dim=1).max``), routed as that element.

    A tensor's own attributes have rows of their own (``getattr.T``); any other one falls back.
    """
    value = inputs.get(node.args[0])
    found = None if isinstance(value, Channels) else getattr(value, node.args[1], None)
    if not isinstance(found, Channels):
        return fallback(ctx, node, inputs, shapes, op_name(node))
    return found


def _parameter(ctx: RoutingContext, node: fx.Node, position: int, name: str) -> Any:
    """An operation's parameter ``name``: the called module's attribute of that name, or
    the function's argument (None: not given)."""
    if node.op == "call_module":
        return getattr(called_module(ctx, node), name, None)
    return node_argument(node, position, name)


def combine(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``softmax``, ``normalize``, ``nn.Softmax`` …: positions along ``dim`` combine."""
    ch = first_input(node, inputs)
    dim = _parameter(ctx, node, 1, "dim")
    if ch is None or not isinstance(dim, int):
        return fallback(ctx, node, inputs, shapes, op_name(node))
    if not ch.shape:  # a number: nothing along dim 0 (or -1) to combine
        return ch
    return combine_along(ch, [dim % len(ch.shape)], ctx.collapsed)


def normalize(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``F.normalize(x, p=2.0, dim=1)``: positions along ``dim`` (default 1) combine."""
    ch = first_input(node, inputs)
    dim = node_argument(node, 2, "dim", 1)
    if ch is None or not isinstance(dim, int):
        return fallback(ctx, node, inputs, shapes, op_name(node))
    if not ch.shape:  # a number: nothing along dim 0 (or -1) to combine
        return ch
    return combine_along(ch, [dim % len(ch.shape)], ctx.collapsed)


def layer_norm(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``layer_norm``, ``rms_norm``, ``nn.LayerNorm`` …: positions along the normalised
    (last) axes combine."""
    ch = first_input(node, inputs)
    normalized = _parameter(ctx, node, 1, "normalized_shape")
    if ch is None or normalized is None:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    count = 1 if isinstance(normalized, int) else len(tuple(normalized))
    ndim = len(ch.shape)
    return combine_along(ch, list(range(ndim - count, ndim)), ctx.collapsed)


def group_norm(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``group_norm``, ``nn.GroupNorm``: channels (axis 1) combine within each group."""
    ch = first_input(node, inputs)
    groups = _parameter(ctx, node, 1, "num_groups")
    if ch is None or len(ch.shape) < 2:
        return fallback(ctx, node, inputs, shapes, "group_norm")
    if groups == ch.shape[1] or 1 not in ch.axes:
        return ch
    if groups == 1:
        return combine_along(ch, [1], ctx.collapsed)
    if not isinstance(groups, int):  # a group count computed in forward
        return fallback(ctx, node, inputs, shapes, "group_norm")
    return within_groups(ch, 1, groups)


class _Signature(NamedTuple):
    """Where a reduction takes its ``dim`` and what it returns (see :data:`_REDUCTIONS`)."""

    dim_at: int = 1  # position of ``dim`` (``norm(x, p, dim)``: 2)
    default: tuple[int, ...] | None = None  # dims reduced when none is given (None: all)
    values: bool = False  # every result is a reduced value, not (values, indices)


#: Reductions whose ``dim`` is not the second argument, whose default is not every dim,
#: or which return several reduced values; the others are ``op(x, dim, keepdim)``.
_REDUCTIONS: dict[str, _Signature] = {
    "norm": _Signature(dim_at=2),
    "linalg_norm": _Signature(dim_at=2),
    "linalg_vector_norm": _Signature(dim_at=2),
    "linalg_matrix_norm": _Signature(dim_at=2, default=(-2, -1)),
    "kthvalue": _Signature(dim_at=2, default=(-1,)),
    "mode": _Signature(default=(-1,)),
    "var_mean": _Signature(values=True),
    "std_mean": _Signature(values=True),
    "aminmax": _Signature(values=True),
}


def reduce(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``sum``, ``mean``, ``amax``, ``norm``, ``var_mean`` …: positions along the reduced
    dims combine.

    The dims are read where each reduction takes them (:data:`_REDUCTIONS`); ``keepdim``
    is read off the result, which has the input's rank exactly when the dims were kept,
    whatever the overload (``x.std(1, True, True)``: the middle argument is ``unbiased``).
    ``torch.max(a, b)`` and ``torch.min(a, b)`` of two tensors are elementwise.
    """
    name = op_name(node)
    signature = _REDUCTIONS.get(name, _Signature())
    ch = first_input(node, inputs)
    dim = _parameter(ctx, node, signature.dim_at, "dim")
    if name in ("max", "min") and isinstance(inputs.get(node_argument(node, 1, "other")), Channels):
        return pointwise(ctx, node, inputs, shapes)  # max(a, b) of two tensors
    if isinstance(dim, bool):  # std(x, unbiased) / var(x, unbiased): every dim
        dim = None
    found = shape_leaves(shapes)
    if ch is None or not found or not (dim is None or isinstance(dim, (int, tuple, list))):
        return fallback(ctx, node, inputs, shapes, name)
    ndim = len(ch.shape)
    dims = signature.default if dim is None else ([dim] if isinstance(dim, int) else list(dim))
    if dims is None or (not dims and tuple(found[0]) != ch.shape):
        dims = range(ndim)  # every dim (also amax(x, dim=()), which reduces them all)
    if not ndim:
        dims = ()  # a number's dim 0 (or -1): nothing to reduce
    keep = len(found[0]) == ndim
    result = ch
    for d in sorted({d % ndim for d in dims}, reverse=True):
        kept = result.shape[:d] + (1,) + result.shape[d + 1 :] if keep else None
        result = collapse(result, d, kept)
    result = Channels(result.axes, tuple(found[0]), result.terms)
    return shaped_results(result, shapes, every=signature.values)


def matmul(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``a @ b`` of two activations: the contracted axis combines."""
    a, b = inputs.get(node.args[0]), inputs.get(node.args[1])
    if not (isinstance(a, Channels) and isinstance(b, Channels) and isinstance(shapes, Shape)):
        return fallback(ctx, node, inputs, shapes, op_name(node))
    if len(a.shape) < 2 or len(b.shape) < 2:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    # a (..., n, k) @ b (..., k, m): k is combined; a's n and b's m move to the result.
    a_part = collapse(a, len(a.shape) - 1, a.shape[:-1] + (1,))
    b_part = collapse(b, len(b.shape) - 2, b.shape[:-2] + (1,) + b.shape[-1:])
    return union([a_part, b_part], tuple(shapes))


def attention(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``scaled_dot_product_attention(q, k, v, attn_mask)``, ``softmax(q @ kᵀ + mask) @ v``
    over the last two axes, the leading ones (batch, heads) kept apart: an output position
    depends on every channel of q at its query position, on every channel and position of
    k and v, and on the mask's row of that query position — of its own batch and head (a
    head's outputs send no gradient to another head's q). Keys and values shared by groups
    of query heads (``enable_gqa``) fall back."""

    def given(position: int, keyword: str) -> Any:
        value = node_argument(node, position, keyword)
        return inputs.get(value) if isinstance(value, fx.Node) else None

    q, k, v = given(0, "query"), given(1, "key"), given(2, "value")
    mask = given(3, "attn_mask")
    if not all(isinstance(x, Channels) for x in (q, k, v)) or not isinstance(shapes, Shape):
        return fallback(ctx, node, inputs, shapes, "scaled_dot_product_attention")
    if min(len(q.shape), len(k.shape), len(v.shape)) < 2 or (
        node_argument(node, 7, "enable_gqa", False)
        and len(q.shape) > 2
        and q.shape[-3] != k.shape[-3]
    ):
        return fallback(ctx, node, inputs, shapes, "scaled_dot_product_attention")
    # q (…, L, E) · k (…, S, E): E combines, then the softmax and v's product combine S
    parts = [
        collapse(q, len(q.shape) - 1, q.shape[:-1] + (1,)),
        collapse(
            collapse(k, len(k.shape) - 1, k.shape[:-1] + (1,)),
            len(k.shape) - 2,
            k.shape[:-2] + (1, 1),
        ),
        collapse(v, len(v.shape) - 2, v.shape[:-2] + (1,) + v.shape[-1:]),
    ]
    if isinstance(mask, Channels) and mask.terms and mask.shape:  # (…, L, S), added to q·kᵀ
        parts.append(collapse(mask, len(mask.shape) - 1, mask.shape[:-1] + (1,)))
    return union(parts, tuple(shapes))


# ------------------------------------------------------------------ table

#: An operation as :data:`RULES` knows it: a function or method name (:func:`op_name`),
#: an ``operator`` function, or a module class.
OpKey = Hashable


def _each(names: str | Iterable[Hashable], rule: Rule) -> dict[Hashable, Rule]:
    """Rows mapping each of ``names`` (a space-separated string or keys) to ``rule``."""
    return dict.fromkeys(names.split() if isinstance(names, str) else names, rule)


#: Operation -> the rule routing its channels. Module classes are looked up along the
#: called module's MRO; anything missing goes to :func:`fallback`.
RULES: dict[OpKey, Rule] = {
    # pointwise and broadcasting, and ops that keep channel positions
    **_each(
        "add sub rsub mul div true_divide floor_divide remainder fmod pow neg abs exp exp2 "
        "expm1 log log2 log10 log1p sqrt rsqrt sin cos tan sinh cosh tanh sigmoid relu relu6 "
        "gelu silu mish elu selu celu leaky_relu hardswish hardsigmoid hardtanh softplus "
        "softsign tanhshrink threshold clamp clip clamp_min clamp_max maximum minimum where "
        "lerp addcmul addcdiv erf erfc sign round floor ceil trunc reciprocal square logit "
        "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout float "
        "double half bfloat16 to type type_as contiguous clone masked_fill nan_to_num prelu "
        "batch_norm alias _to_copy",
        pointwise,
    ),
    # pooling and resampling: pointwise but for the axes they window over
    **_each(
        "instance_norm max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d "
        "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d "
        "adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d lp_pool3d "
        "max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices "
        "interpolate upsample upsample_nearest upsample_bilinear upsample_nearest1d "
        "upsample_nearest2d upsample_nearest3d upsample_bilinear2d upsample_bicubic2d "
        "upsample_linear1d upsample_trilinear3d",
        windowed,
    ),
    **_each(
        (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv)
        + (operator.mod, operator.pow, operator.neg, operator.pos, operator.abs)
        + (operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv)
        + (operator.imod, operator.ipow),
        pointwise,
    ),
    # data movement
    **_each(
        "index_select tensor_split flip expand expand_as repeat "
        "stack pixel_shuffle pixel_unshuffle channel_shuffle "
        "hstack vstack gather take_along_dim "
        "take repeat_interleave tile unfold im2col diagonal diag_embed index "
        # a write into part of a tensor, as export's graph spells it (``y[:, 2::3] = …``)
        "slice_scatter select_scatter diagonal_scatter index_put copy fill zero setitem",
        probe,
    ),
    **_each(
        "permute transpose movedim moveaxis swapaxes swapdims t getattr.T getattr.mT mT numpy_T",
        permuted,
    ),
    **_each(
        "view reshape flatten unflatten squeeze unsqueeze view_as reshape_as _unsafe_view",
        reshaped,
    ),
    **_each("cat concat concatenate", concatenate),
    **_each("split chunk split_with_sizes", split),
    "narrow": narrow,
    "slice": aten_slice,
    "getitem": getitem,
    "roll": rolled,
    "unbind": unbound,
    "select": selected,
    **_each("pad constant_pad_nd", padded),
    getattr: field,
    # positions combined along an axis
    **_each("softmax log_softmax softmin", combine),
    "normalize": normalize,
    **_each(
        "sum mean amax amin prod std var norm logsumexp max min median nansum nanmean "
        "nanmedian mode kthvalue var_mean std_mean aminmax linalg_norm linalg_vector_norm "
        "linalg_matrix_norm",
        reduce,
    ),
    **_each("matmul bmm mm __matmul__", matmul),
    "scaled_dot_product_attention": attention,
    **_each("layer_norm rms_norm", layer_norm),
    "group_norm": group_norm,
    **_each(
        "native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training "
        "_native_batch_norm_legit_functional _batch_norm_with_update "
        "_batch_norm_with_update_functional _batch_norm_no_update",
        normalised_with_statistics,
    ),
    # modules
    **_each(
        (
            nn.modules.batchnorm._NormBase,
            *POINTWISE_MODULES,
        ),
        pointwise,
    ),
    **_each(
        (
            nn.modules.instancenorm._InstanceNorm,
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
            nn.modules.pooling._LPPoolNd,
            nn.Upsample,
        ),
        windowed,
    ),
    **_each(
        (
            nn.Flatten,
            nn.Unflatten,
            nn.PixelShuffle,
            nn.PixelUnshuffle,
            nn.ChannelShuffle,
            nn.modules.padding._ConstantPadNd,
            nn.modules.padding._ReflectionPadNd,
            nn.modules.padding._ReplicationPadNd,
        ),
        probe,
    ),
    **_each((nn.Softmax, nn.LogSoftmax, nn.Softmin), combine),
    **_each((nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm)), layer_norm),
    nn.GroupNorm: group_norm,
}


# ----------------------------------------------------------- layer calls

_CONV_TYPES = (nn.modules.conv._ConvNd,)


def is_conv(module: nn.Module | None, node: fx.Node | None) -> bool:
    """Whether a layer call is a convolution (channels on axis 1): a conv module, a module
    containing one (a leaf module), or a functional ``conv*``. ``module``: the called module."""
    if module is not None:
        return isinstance(module, _CONV_TYPES) or any(
            isinstance(m, _CONV_TYPES) for m in module.modules()
        )
    return node is not None and node.op == "call_function" and node.target in CONV_FUNCTIONS


def layer_groups(module: nn.Module | None, node: fx.Node) -> int:
    """The groups of a grouped convolution — a conv module's ``groups`` (its forward taken
    to apply its convolution once, as torch's does: timm's ``Conv2dSame`` pads first) or a
    functional ``conv*``'s — else 1. A leaf module holding convolutions is one layer mixing
    its channels, whatever it keeps under the name ``groups`` (a shuffle's, heads)."""
    if module is not None:
        return int(module.groups) if isinstance(module, _CONV_TYPES) else 1
    if node.op == "call_function" and node.target in CONV_FUNCTIONS:
        # conv*d(input, weight, bias, stride, padding, dilation, groups) and
        # conv_transpose*d(input, weight, bias, stride, padding, output_padding, groups, ...)
        groups = node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
        if isinstance(groups, fx.Node):  # computed in forward (CondConv: groups × batch)
            flow = groups.meta.get(FLOW)
            groups = flow.constant if flow is not None and flow.is_constant else 1
        return int(groups)
    return 1


def _width(module: nn.Module, output: bool) -> int:
    """The output (``output``) or input channels of a module containing a convolution: its
    last (first) convolution's, in registration order."""
    convs = [m for m in module.modules() if isinstance(m, _CONV_TYPES)]
    return convs[-1].out_channels if output else convs[0].in_channels


def layer_channel_axis(
    module: nn.Module | None, node: fx.Node | None, shape: tuple[int, ...], output: bool
) -> int:
    """The axis of a layer call's result (``output``) or argument of ``shape`` holding its
    output or input channels (§8): 1 for convolutions, the last axis otherwise — but the
    last axis for a module containing a convolution that gives or takes tokens, a tensor
    ``(B, N, C)`` whose last axis alone has the module's width (:func:`_width`): a ViT's
    patch embedding declared a leaf.

    Example:
        >>> embed = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Flatten(2))  # (B, 8, 16) -> tokens
        >>> layer_channel_axis(embed, None, (1, 8, 16), True), layer_channel_axis(embed, None, (1, 16, 8), True)
        (1, 2)
    """
    conv = is_conv(module, node)
    if conv and len(shape) == _conv_spatial(module, node) + 1:
        return 0  # an unbatched input (C, L...): torch's convolutions take one too
    axis = layer_axis(conv, len(shape))
    if not conv or module is None or len(shape) != 3:
        return axis
    width = _width(module, output)
    return 2 if shape[1] != width and shape[2] == width else axis


def _conv_spatial(module: nn.Module | None, node: fx.Node | None) -> int:
    """How many spatial axes a convolution call convolves (a conv module's kernel, a
    functional call's); -1 where it cannot tell — a leaf module holding convolutions may
    give tokens of as many axes (a patch embedding)."""
    if module is not None:
        return len(module.kernel_size) if isinstance(module, _CONV_TYPES) else -1
    weight = node.args[1] if node is not None and len(node.args) > 1 else None
    flow = weight.meta.get(FLOW) if isinstance(weight, fx.Node) else None
    shape = getattr(flow, "shapes", None) if flow is not None else None
    return len(shape) - 2 if isinstance(shape, tuple) and len(shape) > 2 else -1


def layer_axis(conv: bool, ndim: int) -> int:
    """The channel axis of a layer's tensors: 1 for convolutions, the last axis otherwise.

    Example:
        >>> layer_axis(True, 4), layer_axis(False, 3)
        (1, 2)
    """
    return 1 if conv and ndim >= 2 else ndim - 1


def layer_output_axis(
    module: nn.Module | None, node: fx.Node, shape: tuple[int, ...], weight_first: bool
) -> int:
    """The axis of a layer call's result (of ``shape``) holding its output channels (§8):
    for ``W @ x`` with the weight first (``weight_first``: Hugging Face's ``batched_mm``
    expert bank, ``bmm(W[experts], x.unsqueeze(-1))``) the weight's rows, the result's
    second-to-last axis; otherwise :func:`layer_channel_axis`.

    Example:
        >>> layer_output_axis(None, None, (6, 8, 1), True), layer_output_axis(None, None, (6, 8), False)
        (1, 1)
    """
    if weight_first and len(shape) >= 2:
        return len(shape) - 2
    return layer_channel_axis(module, node, shape, output=True)


def layer_input_axis(
    rule: Rule, node: fx.Node, arg: fx.Node, shape: tuple[int, ...], module: nn.Module | None
) -> int:
    """The axis of a layer call's argument ``arg`` (of ``shape``) holding its input channels.

    ``rule`` is the call's rule: for ``W @ x`` with the weight first (a :func:`matmul`
    with ``arg`` second) the contracted axis of ``x`` is its second-to-last; otherwise
    :func:`layer_channel_axis`. ``module``: the called module, if any.
    """
    if rule is matmul and node.args and node.args[0] is not arg:
        return max(len(shape) - 2, 0)
    return layer_channel_axis(module, node, shape, output=False)
