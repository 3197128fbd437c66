"""Result shapes of the commonest operations, by rule instead of a meta run.

The gradient-flow pass (:mod:`gpa.frontends.fx.flow`) learns each node's result shape by
running it on the meta device. For a few operations that make up most of a CNN or a
transformer, torch's meta kernels are slow Python (an elementwise ``add`` decomposes
through ``torch._refs``, ``cat`` checks every input in Python): a rule here gives the
same result — shape, strides, dtype — in a few microseconds. Each rule covers the plain
case only (contiguous operands of one floating dtype, valid shapes) and returns None for
anything else, which then runs on the meta device as before, so an invalid call still
fails with torch's own error. Gradient reaches every operand that carries it: these
operations are differentiable in each tensor operand.

:data:`FUNCTION_RULES` maps a ``call_function``/``call_method`` target to its rule,
:data:`MODULE_RULES` a module type; a rule takes the node's meta arguments and returns
the result (a meta tensor, ``requires_grad`` not yet set) or None.

Example:
    >>> import operator, torch
    >>> x = torch.empty(2, 3, 4, device="meta")
    >>> FUNCTION_RULES[operator.add]((x, torch.empty(4, device="meta")), {}).shape
    torch.Size([2, 3, 4])
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FUNCTION_RULES",
    "MODULE_RULES",
    "SETTINGS_ONLY",
    "Rule",
    "normalisation_fits",
    "normalisation_refused",
]

#: A rule: the node's (meta) positional and keyword arguments -> its result, or None.
Rule = Callable[[tuple, dict], "torch.Tensor | None"]


def _plain(t: Any) -> bool:
    """A meta tensor of a floating dtype in contiguous layout: the case every rule covers."""
    return isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point() and t.is_contiguous()


def _floating(t: Any) -> bool:
    """A meta tensor of a floating dtype, in any layout."""
    return isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point()


def _empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _elementwise(divides: bool) -> Rule:
    """``a op b`` with broadcasting, for tensors and Python numbers (no keyword arguments).
    ``divides``: true division, whose result is floating for any operands."""

    def rule(args: tuple, kwargs: dict) -> torch.Tensor | None:
        if kwargs or len(args) != 2:
            return None
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        others = [a for a in args if not isinstance(a, torch.Tensor)]
        if not tensors or not all(_plain(t) for t in tensors):
            return None
        if any(type(a) not in (int, float) for a in others):
            return None
        if len(tensors) == 2 and tensors[0].dtype != tensors[1].dtype:
            return None  # type promotion between tensors: left to torch
        dtype = torch.result_type(*args)
        if not dtype.is_floating_point or (divides and dtype != tensors[0].dtype):
            return None
        try:
            shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        except RuntimeError:
            return None
        return _empty(shape, dtype)

    return rule


def _cat(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``torch.cat(tensors, dim)``: shapes agree but along ``dim``, which adds up."""
    if len(args) > 2 or set(kwargs) - {"dim"}:
        return None
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(tensors, (tuple, list)) or not tensors or type(dim) is not int:
        return None
    first = tensors[0]
    if not all(_plain(t) and t.dtype == first.dtype and t.dim() == first.dim() for t in tensors):
        return None
    rank = first.dim()
    if rank == 0 or not -rank <= dim < rank or any(t.numel() == 0 for t in tensors):
        return None
    dim %= rank
    rest = [s for i, s in enumerate(first.shape) if i != dim]
    if any([s for i, s in enumerate(t.shape) if i != dim] != rest for t in tensors):
        return None
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return _empty(shape, first.dtype)


def _conv(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``nn.Conv1d/2d/3d`` with zero padding: each spatial size L becomes
    ``(L + 2p - d (k - 1) - 1) // s + 1`` (torch.nn.Conv2d's documented formula)."""
    if kwargs or len(args) != 1 or module.padding_mode != "zeros":
        return None
    x, weight = args[0], module.weight
    spatial = len(module.kernel_size)
    if not (_plain(x) and _plain(weight)) or x.dtype != weight.dtype:
        return None
    if x.dim() not in (spatial + 1, spatial + 2) or x.shape[-spatial - 1] != module.in_channels:
        return None
    padding = module.padding
    if padding == "valid":
        padding = (0,) * spatial
    elif isinstance(padding, str):  # "same": torch pads unevenly where needed
        return None
    sizes = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(
            x.shape[-spatial:],
            padding,
            module.dilation,
            module.kernel_size,
            module.stride,
            strict=True,
        )
    ]
    if any(size <= 0 for size in sizes):
        return None
    return _empty((*x.shape[: -spatial - 1], module.out_channels, *sizes), x.dtype)


def _recurrent(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    """``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` on a tensor (no packed sequence), batched or not,
    given an initial state or not (torch.nn.LSTM's documented shapes): the output
    ``(L, N, D * H_out)`` — ``(N, L, D * H_out)`` with ``batch_first``, a transposed view
    —, the last state ``(D * num_layers, N, H_out)`` and an LSTM's last cell
    ``(D * num_layers, N, hidden_size)``; ``H_out`` is ``proj_size`` where given. torch's
    meta kernel runs the cell step by step in Python (about a second for 64 steps)."""
    if kwargs or not 1 <= len(args) <= 2:
        return None
    x, lstm = args[0], isinstance(module, nn.LSTM)
    weights = [w for w in module._flat_weights if w is not None]
    if not _floating(x) or x.dim() not in (2, 3) or x.shape[-1] != module.input_size:
        return None  # (any layout: the results are made anew)
    if not all(w.is_floating_point() and w.dtype == x.dtype for w in weights):
        return None
    directions = 2 if module.bidirectional else 1
    size = module.proj_size if lstm and module.proj_size > 0 else module.hidden_size
    batch = () if x.dim() == 2 else (x.shape[0 if module.batch_first else 1],)
    length = x.shape[1 if module.batch_first and batch else 0]
    layers = directions * module.num_layers
    states = [(layers, *batch, size), *([(layers, *batch, module.hidden_size)] if lstm else [])]
    given = args[1] if len(args) == 2 else None
    if given is not None:
        given = given if isinstance(given, tuple) else (given,)
        if len(given) != len(states):
            return None
        for h, shape in zip(given, states, strict=True):
            if not _floating(h) or h.dtype != x.dtype or tuple(h.shape) != shape:
                return None
    output = _empty((length, *batch, directions * size), x.dtype)
    if module.batch_first and batch:
        output = output.transpose(0, 1)
    last = tuple(_empty(s, x.dtype) for s in states)
    return output, (last if lstm else last[0])


def _linear(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``nn.Linear``: its functional call on the module's weight and bias."""
    if kwargs or len(args) != 1:
        return None
    return _functional_linear((args[0], module.weight, module.bias), {})


def _functional_linear(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)``: the last size ``in_features`` becomes the weight's
    first (a 2-D weight; a bias of that size or none)."""
    if len(args) > 3:
        return None
    bound = dict(zip(("input", "weight", "bias"), args, strict=False)) | kwargs
    x, weight, bias = bound.get("input"), bound.get("weight"), bound.get("bias")
    if set(bound) - {"input", "weight", "bias"} or not (_plain(x) and _plain(weight)):
        return None
    if weight.dim() != 2 or x.dim() == 0 or x.dtype != weight.dtype:
        return None
    if x.shape[-1] != weight.shape[1]:
        return None
    if bias is not None and not (
        _plain(bias) and bias.dtype == x.dtype and tuple(bias.shape) == (weight.shape[0],)
    ):
        return None
    return _empty((*x.shape[:-1], weight.shape[0]), x.dtype)


def _matmul(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``a @ b`` of two tensors of at least two dimensions: ``(..., n, k) @ (..., k, m)``
    gives ``(..., n, m)``, the leading sizes broadcast."""
    if kwargs or len(args) != 2:
        return None
    a, b = args
    if not (_plain(a) and _plain(b)) or a.dtype != b.dtype or min(a.dim(), b.dim()) < 2:
        return None
    if a.shape[-1] != b.shape[-2]:
        return None
    try:
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        return None
    return _empty((*lead, a.shape[-2], b.shape[-1]), a.dtype)


def _adaptive_pool(spatial: int) -> Rule:
    """``adaptive_avg_pool{1,2,3}d(x, output_size)``: the last ``spatial`` sizes become
    ``output_size`` (None keeps a size)."""

    def rule(args: tuple, kwargs: dict) -> torch.Tensor | None:
        if len(args) > 2:
            return None
        bound = dict(zip(("input", "output_size"), args, strict=False)) | kwargs
        x, size = bound.get("input"), bound.get("output_size")
        if len(bound) != 2 or not _plain(x) or x.dim() not in (spatial + 1, spatial + 2):
            return None
        sizes = (size,) * spatial if type(size) is int else size
        if not isinstance(sizes, (tuple, list)) or len(sizes) != spatial:
            return None
        if any(x.shape[i] == 0 for i in range(-spatial - 1, 0)):
            return None
        out = [x.shape[-spatial + i] if s is None else s for i, s in enumerate(sizes)]
        if not all(type(s) is int and s > 0 for s in out):
            return None
        return _empty((*x.shape[:-spatial], *out), x.dtype)

    return rule


def _pool_module(pool: Rule) -> Callable[[nn.Module, tuple, dict], torch.Tensor | None]:
    """A rule for an adaptive pooling module, from its functional rule."""

    def rule(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if kwargs or len(args) != 1:
            return None
        return pool((args[0], module.output_size), {})

    return rule


def normalisation_fits(bound: Mapping[str, Any], per_channel: bool) -> bool:
    """Whether the affine weights (and running statistics) of a functional normalisation
    fit its input: sized by channel (dim 1) for ``per_channel`` (batch, instance and
    group norm; the channels divide into ``num_groups``), else the trailing
    ``normalized_shape`` (layer norm). ``bound`` holds the call's arguments by name.

    Example:
        >>> x = torch.empty(2, 4, 3, device="meta")
        >>> normalisation_fits({"input": x, "weight": torch.empty(4)}, per_channel=True)
        True
        >>> normalisation_fits({"input": x, "normalized_shape": (4,)}, per_channel=False)
        False
    """
    x = bound["input"]
    named = ("weight", "bias", "running_mean", "running_var") if per_channel else ("weight", "bias")
    tensors = [t for t in (bound.get(k) for k in named) if isinstance(t, torch.Tensor)]
    if per_channel:
        groups = bound.get("num_groups", 1)
        return (
            x.dim() >= 2
            and all(t.numel() == x.shape[1] for t in tensors)
            and isinstance(groups, int)
            and groups > 0
            and x.shape[1] % groups == 0
        )
    shape = tuple(bound["normalized_shape"])
    return (
        bool(shape)
        and tuple(x.shape[-len(shape) :]) == shape
        and all(tuple(t.shape) == shape for t in tensors)
    )


def normalisation_refused(
    op: Callable[..., Any], x: torch.Tensor, bound: Mapping[str, Any]
) -> bool:
    """Whether torch refuses the functional normalisation call ``op`` (``bound``: its
    arguments by name) on input ``x``, whatever the values: one value per channel (batch
    norm in training, group norm) or one spatial element (instance norm from the input's
    own statistics); running statistics missing where they are read (batch norm in
    evaluation, instance norm without the input's statistics) or given one without the
    other; a negative epsilon (zero too, in training). The flow pass then runs the real ``op``, so that torch's error is
    the one reported.

    Example:
        >>> x = torch.empty(1, 4, device="meta")
        >>> normalisation_refused(F.batch_norm, x, {"input": x, "training": True})
        True
    """
    spatial = math.prod(x.shape[2:])
    stats = [bound.get("running_mean"), bound.get("running_var")]
    eps = bound.get("eps", 1e-5)
    if op in (F.batch_norm, F.instance_norm) and (stats[0] is None) != (stats[1] is None):
        return True  # both or neither (torch's rule for batch norm; the real op decides)
    if op is F.batch_norm:
        if bound.get("training", False):
            return x.shape[0] * spatial == 1 or eps <= 0
        return eps < 0 or any(t is None for t in stats)
    if op is F.instance_norm:
        if bound.get("use_input_stats", True):
            return spatial == 1
        return any(t is None for t in stats)
    if op is F.group_norm:
        return x.shape[0] * x.shape[1] // bound["num_groups"] * spatial == 1
    return False


def _normalisation(op: Callable[..., Any], per_channel: bool) -> Rule:
    """A functional normalisation (``F.batch_norm``, ``instance_norm``, ``group_norm``,
    ``layer_norm``): the result has the input's shape and dtype, and gradient reaches the
    input and the affine weights (not running statistics: none carries gradient here). Weights that do not fit (:func:`normalisation_fits`),
    other dtypes, and calls torch refuses (:func:`normalisation_refused`) are left to
    torch."""
    signature = inspect.signature(op)

    def rule(args: tuple, kwargs: dict) -> torch.Tensor | None:
        try:
            bound = signature.bind(*args, **kwargs).arguments
        except TypeError:
            return None
        x = bound.get("input")
        tensors = [t for t in bound.values() if isinstance(t, torch.Tensor)]
        if not _plain(x) or not all(_plain(t) and t.dtype == x.dtype for t in tensors):
            return None
        if per_channel and x.dim() >= 2 and x.shape[1] == 0:
            return None  # no channels: left to torch (as any odd case)
        if not normalisation_fits(bound, per_channel) or normalisation_refused(op, x, bound):
            return None
        stats = (bound.get("running_mean"), bound.get("running_var"))
        if any(isinstance(t, torch.Tensor) and t.requires_grad for t in stats):
            return None  # torch does not differentiate through them: the stand-in's case
        return _empty(x.shape, x.dtype)

    return rule


_ADAPTIVE_AVG_POOL = {n: _adaptive_pool(n) for n in (1, 2, 3)}


def _rearranging(op: Callable[..., Any]) -> Rule:
    """An operation that moves, repeats or picks the elements of one floating tensor (a
    view, a permutation, an index): run on the meta device without autograd, which costs
    the op alone (its meta kernels are torch's own, not Python decompositions). Indices
    may be integer tensors; any other tensor operand, or a result of another dtype
    (``x.view(torch.int32)``), is left to the meta run."""

    def rule(args: tuple, kwargs: dict) -> torch.Tensor | None:
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.is_meta and x.is_floating_point()):
            return None
        others = [*args[1:], *kwargs.values()]
        if any(_float_tensor_in(a) for a in others):
            return None
        try:
            with torch.no_grad():
                result = op(*args, **kwargs)
        except Exception:  # the meta run reports torch's own error
            return None
        if not isinstance(result, torch.Tensor) or result.dtype != x.dtype:
            return None
        return result.detach()  # not a view of ``x`` for autograd: its own requires_grad

    return rule


_ROLL = inspect.signature(lambda input, shifts, dims=(): None)


def _roll(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``torch.roll(input, shifts, dims)``: the input's shape, contiguous — what the meta
    device gives (a Python decomposition there, a millisecond a call: Swin rolls twice per
    shifted block). Empty inputs and invalid calls are left to the meta run."""
    try:
        bound = _ROLL.bind(*args, **kwargs).arguments
    except TypeError:
        return None
    x = bound["input"]
    shifts, dims = (
        v if isinstance(v, (tuple, list)) else (v,)
        for v in (bound["shifts"], bound.get("dims", ()))
    )
    if not (isinstance(x, torch.Tensor) and x.is_meta and x.is_floating_point()) or x.numel() == 0:
        return None
    if not all(type(v) is int for v in (*shifts, *dims)):
        return None
    if dims:
        valid = len(shifts) == len(dims) and all(-x.dim() <= d < x.dim() for d in dims)
    else:
        valid = len(shifts) == 1  # the flattened tensor rolled, then viewed back
    return _empty(x.shape, x.dtype) if valid else None


_GROUPED_MM = inspect.signature(lambda mat_a, mat_b, offs=None, bias=None, out_dtype=None: None)


def _grouped_mm(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``torch._grouped_mm`` / ``F.grouped_mm(mat_a, mat_b, offs=…)``, a mixture of
    experts' expert bank: tokens ``(S, K)`` sorted by expert times weights ``(E, K, N)``
    give ``(S, N)``; ``(E, M, K)`` times ``(E, K, N)`` give ``(E, M, N)``. The meta
    device's kernel takes bfloat16 alone, where the CPU runs any floating dtype. Other
    forms (2-D weights cut by ``offs``) and a bias or output dtype are left to it."""
    try:
        bound = _GROUPED_MM.bind(*args, **kwargs).arguments
    except TypeError:
        return None
    a, b = bound["mat_a"], bound["mat_b"]
    if bound.get("bias") is not None or bound.get("out_dtype") is not None:
        return None
    if not all(isinstance(t, torch.Tensor) and t.is_meta for t in (a, b)):
        return None
    if not a.is_floating_point() or a.dtype != b.dtype or b.dim() != 3:  # (any strides:
        return None  # Hugging Face gives the bank transposed)
    if a.dim() == 2 and a.shape[1] == b.shape[1] and bound.get("offs") is not None:
        return _empty((a.shape[0], b.shape[2]), a.dtype)
    if a.dim() == 3 and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[1]:
        return _empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
    return None


_ATTENTION = inspect.signature(
    lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *, enable_gqa=False: (
        None
    )
)


def _attention(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``F.scaled_dot_product_attention(q, k, v, …)`` on ``(B, H, L, E)`` queries and
    ``(B, H_kv, S, E)`` / ``(B, H_kv, S, E_v)`` keys and values gives ``(B, H, L, E_v)``,
    contiguous whatever the operands' layout (a transformer's heads are permuted views) —
    the meta device's Python decomposition takes a millisecond a call. ``H_kv`` is ``H``,
    or divides it with ``enable_gqa``; a mask is boolean or of the queries' dtype and
    broadcasts to ``(B, H, L, S)``, and never comes with ``is_causal``. Anything else
    (other ranks, broadcast batches, empty tensors) is left to the meta run."""
    try:
        bound = _ATTENTION.bind(*args, **kwargs).arguments
    except TypeError:
        return None
    q, k, v, mask = bound["query"], bound["key"], bound["value"], bound.get("attn_mask")
    if not all(
        isinstance(t, torch.Tensor) and t.is_meta and t.dim() == 4 and t.numel() > 0
        for t in (q, k, v)
    ):
        return None
    if not q.is_floating_point() or not q.dtype == k.dtype == v.dtype:
        return None
    (b, h, n, e), (b_k, h_k, s, e_k), (b_v, h_v, s_v, e_v) = q.shape, k.shape, v.shape
    gqa = bound.get("enable_gqa", False)
    if type(gqa) is not bool or not (b == b_k == b_v and h_k == h_v and s == s_v and e == e_k):
        return None
    if h != h_k and not (gqa and h % h_k == 0):
        return None
    causal, dropout, scale = (bound.get(name, default) for name, default in _ATTENTION_FLAGS)
    if type(causal) is not bool or type(dropout) not in (int, float) or not 0 <= dropout <= 1:
        return None
    if scale is not None and type(scale) not in (int, float):
        return None
    if mask is not None:
        if causal or not (isinstance(mask, torch.Tensor) and mask.is_meta) or mask.dim() < 2:
            return None  # (torch refuses a mask of fewer than two dimensions on the CPU)
        if mask.dtype not in (torch.bool, q.dtype):
            return None
        try:
            if torch.broadcast_shapes(mask.shape, (b, h, n, s)) != (b, h, n, s):
                return None
        except RuntimeError:
            return None
    return _empty((b, h, n, e_v), q.dtype)


_ATTENTION_FLAGS = (("is_causal", False), ("dropout_p", 0.0), ("scale", None))


def _float_tensor_in(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() or value.is_complex()
    return isinstance(value, (tuple, list)) and any(_float_tensor_in(v) for v in value)


def _method(name: str) -> Callable[..., Any]:
    return lambda x, *args, **kwargs: getattr(x, name)(*args, **kwargs)


_REARRANGING_METHODS = (
    "view reshape permute transpose unsqueeze squeeze flatten unflatten contiguous expand "
    "repeat t narrow select movedim swapaxes".split()
)
_REARRANGING_FUNCTIONS = (
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.unsqueeze,
    torch.squeeze,
    torch.flatten,
    torch.movedim,
    torch.narrow,
    torch.select,
    torch.t,
    operator.getitem,
)

#: Rules by ``call_function`` target or ``call_method`` name.
FUNCTION_RULES: dict[Any, Rule] = {
    **{op: _elementwise(divides=False) for op in (operator.add, operator.sub, operator.mul)},
    **{name: _elementwise(divides=False) for name in ("add", "sub", "mul")},
    torch.add: _elementwise(divides=False),
    torch.sub: _elementwise(divides=False),
    torch.mul: _elementwise(divides=False),
    operator.truediv: _elementwise(divides=True),
    torch.div: _elementwise(divides=True),
    "div": _elementwise(divides=True),
    torch.nn.functional.adaptive_avg_pool1d: _ADAPTIVE_AVG_POOL[1],
    torch.nn.functional.adaptive_avg_pool2d: _ADAPTIVE_AVG_POOL[2],
    torch.nn.functional.adaptive_avg_pool3d: _ADAPTIVE_AVG_POOL[3],
    **{
        op: _normalisation(op, per_channel=op is not F.layer_norm)
        for op in (F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm)
    },
    torch.cat: _cat,
    torch.concat: _cat,
    torch.concatenate: _cat,
    F.linear: _functional_linear,
    operator.matmul: _matmul,
    torch.matmul: _matmul,
    "matmul": _matmul,
    **{name: _rearranging(_method(name)) for name in _REARRANGING_METHODS},
    **{op: _rearranging(op) for op in _REARRANGING_FUNCTIONS},
    torch.roll: _roll,
    "roll": _roll,
    F.scaled_dot_product_attention: _attention,
    torch._grouped_mm: _grouped_mm,
    **({F.grouped_mm: _grouped_mm} if hasattr(F, "grouped_mm") else {}),
}

#: Rules by exact module type (a subclass may override forward); they take the module
#: (holding meta parameters) first.
MODULE_RULES: dict[type[nn.Module], Callable[[nn.Module, tuple, dict], Any]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.Linear: _linear,
    **dict.fromkeys([nn.RNN, nn.GRU, nn.LSTM], _recurrent),
    nn.AdaptiveAvgPool1d: _pool_module(_ADAPTIVE_AVG_POOL[1]),
    nn.AdaptiveAvgPool2d: _pool_module(_ADAPTIVE_AVG_POOL[2]),
    nn.AdaptiveAvgPool3d: _pool_module(_ADAPTIVE_AVG_POOL[3]),
}

#: Module types whose rule reads the module's settings and its weights' dtypes alone: it
#: takes the module as it is (a recurrent module's weights, listed apart in
#: ``_flat_weights``, follow no stand-in).
SETTINGS_ONLY = frozenset({nn.RNN, nn.GRU, nn.LSTM})
