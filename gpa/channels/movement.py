"""Channel rules of data movement (``docs/semantics.md`` §8): operations that move
positions without combining them — view, reshape, permute, slicing, ``chunk``/``split``,
``cat``/``stack``, padding, rolling, indexing with constants, pixel shuffle …

:func:`probe` runs the operation for real on a small tensor holding channel positions, so
any permutation (ShuffleNet's shuffle) is tracked exactly; ``cat``, ``split``/``chunk``,
``narrow``, slicing, ``unbind``/``select``, ``roll``, padding, permutations and reshapes
have direct rules giving the same answer without a probe, each falling back to it
(:func:`_or_probe`) where it cannot tell.

Example:
    >>> import numpy as np
    >>> from gpa.frontends.fx.flow import Shape
    >>> g = fx.Graph()
    >>> x = g.placeholder("x")
    >>> ch = Channels((1,), (1, 3), (Term("conv", np.arange(3)),))
    >>> found = _permuted(g.call_method("permute", (x, 1, 0)), {x: ch}, Shape((3, 1)))
    >>> found.axes, found.terms[0].index.tolist()
    ((0,), [0, 1, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten, tree_map

from gpa.channels.operations import (
    RoutingContext,
    Rule,
    called_module,
    fallback,
    first_input,
    known_value,
    node_argument,
    one_axis_first_input,
    op_name,
    shape_leaves,
)
from gpa.channels.values import (
    MAX_PROBE,
    Channels,
    Term,
    cut_along,
    decode_probe,
    leaves,
    probe_tensor,
    remap,
    unbroadcast,
)
from gpa.frontends.fx.constants import constant_value
from gpa.frontends.fx.flow import FLOW, Shape

__all__ = [
    "aten_slice",
    "concatenate",
    "getitem",
    "narrow",
    "padded",
    "permuted",
    "probe",
    "reshaped",
    "rolled",
    "selected",
    "split",
    "unbound",
]


def probe(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """Data movement: run the operation on tensors holding channel positions and read them back.

    Each tracked input becomes a float64 tensor holding 1 + its flat channel-position
    offset, so any permutation or offset the operation applies is read off its result.
    Integer and boolean constants (indices, masks) and sizes computed in ``forward`` take
    their real values; a floating-point tensor without channels holds zeros: no channel.
    The operation runs twice, the second time with every position moved up by the same
    amount: what did not move with them (a padding value, a fill) is no channel.
    """
    base = 1
    ch_terms: list[tuple[Term, int, int]] = []
    probes: dict[fx.Node, Any] = {}
    made: set[int] = set()  # ids of the probe tensors holding positions

    def probe_of(n: fx.Node, value: Channels, alone: bool) -> torch.Tensor | str:
        """The probe standing for ``value`` (an input of ``n``), or why there is none."""
        nonlocal base
        if math.prod(value.shape) > MAX_PROBE:
            return f"{op_name(node)} (too large to probe)"
        if value.terms:
            size = math.prod(value.sizes)
            ch_terms.extend((t, base, size) for t in value.terms)
            base += size
            tensor = probe_tensor(value, base - size)
            made.add(id(tensor))
            return tensor
        if alone and _floating(n):
            # data without channels (a class token, a constant embedding): no channel
            # anywhere (the second run would tell so too; zeros spare evaluating it)
            return torch.zeros(value.shape, dtype=torch.float64)
        # an index or a mask: its values
        constant = constant_value(n, ctx.fetch_attr, MAX_PROBE) if alone else None
        if constant is not None:
            return constant
        return f"{op_name(node)} (computed index)"

    for n, value in inputs.items():
        if isinstance(value, Channels):
            probes[n] = probe_of(n, value, alone=True)
        elif leaves(value):  # several tensors in one input (``torch.cat(x.split(2)[::-1])``)
            probes[n] = tree_map(
                lambda v, n=n: probe_of(n, v, alone=False) if isinstance(v, Channels) else v, value
            )
        elif n.meta[FLOW].is_constant:
            probes[n] = n.meta[FLOW].constant  # a size computed in forward
        else:
            return fallback(ctx, node, inputs, shapes, op_name(node))
        why = next((v for v in tree_flatten(probes[n])[0] if isinstance(v, str)), None)
        if why is not None:
            return fallback(ctx, node, inputs, shapes, why)
    args = fx.node.map_arg(node.args, probes.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, probes.__getitem__)

    def moved(v: Any) -> Any:
        # every tensor apart from the first run's: an operation writing in place into one
        # without channels (a buffer of zeros filled window by window) returns it
        if id(v) in made:
            return v + base
        return v.clone() if isinstance(v, torch.Tensor) else v

    try:
        shifted = tree_map(moved, (args, kwargs))  # before an in-place operation runs
        result = _run(ctx, node, args, kwargs)
        again = _run(ctx, node, *shifted)
    except Exception:  # an op that refuses the probe's dtype: no exact routing
        return fallback(ctx, node, inputs, shapes, op_name(node))

    def decode(out: Any, out_moved: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            return None
        axes, positions = decode_probe(out, out_moved, base)
        return remap(ctx.channel_count, ch_terms, axes, tuple(out.shape), positions)

    return tree_map(decode, result, again)


def _run(ctx: RoutingContext, node: fx.Node, args: Any, kwargs: Any) -> Any:
    """``node``'s operation on ``args`` and ``kwargs``."""
    if node.op == "call_module":
        return called_module(ctx, node)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _floating(node: fx.Node) -> bool:
    info = node.meta[FLOW].value
    return info is not None and info.dtype is not None and "float" in info.dtype


def _or_probe(direct: Callable[[fx.Node, Mapping[fx.Node, Any], Any], Any]) -> Rule:
    """A rule computing ``direct``'s answer, or probing where ``direct`` gives None.

    The direct rules give the probe's answer for the common cases without materialising
    a probe as large as the activation.
    """

    def rule(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
        found = direct(node, inputs, shapes)
        return found if found is not None else probe(ctx, node, inputs, shapes)

    rule.__name__ = rule.__qualname__ = direct.__name__.lstrip("_")
    rule.__doc__ = direct.__doc__
    return rule


def _concatenated(
    node: fx.Node,
    inputs: Mapping[fx.Node, Any],
    shapes: Any,
    channel_count: Callable[[str], int] | None = None,
) -> Any:
    """``cat`` of tensors with channels on the concatenated axis or everywhere; with
    ``channel_count`` (a producer's number of channels), on any axes (:func:`_joined`)."""
    parts = node_argument(node, 0, "tensors")
    dim = node_argument(node, 1, "dim", 0)
    if node.op != "call_function" or not isinstance(parts, (list, tuple)):
        return None
    if not isinstance(shapes, Shape) or not math.prod(shapes):  # empty: no channel (probed)
        return None
    values = [inputs.get(p) if isinstance(p, fx.Node) else None for p in parts]
    if not all(isinstance(v, Channels) for v in values):
        return None
    ndim = len(shapes)
    dim %= ndim
    if any(len(v.shape) != ndim for v in values):
        return None
    if any(v.axes not in ((), (dim,)) for v in values) or any(
        v.axes == () and any(t.index is not None for t in v.terms) for v in values
    ):
        return _joined(parts, inputs, dim, tuple(shapes), channel_count)
    spread = len(values) > 1 and any(t.index is None for v in values for t in v.terms)
    if spread and math.prod(shapes) <= MAX_PROBE:  # channels everywhere in one part only
        return _joined(parts, inputs, dim, tuple(shapes), channel_count)
    terms, offset = [], 0
    for v in values:
        size = v.shape[dim]
        for t in v.terms:
            if t.index is None:
                terms.append(t)
                continue
            index = np.full(shapes[dim], -1, dtype=np.int64)
            index[offset : offset + size] = t.index
            terms.append(t.moved(index))
        offset += size
    axes = (dim,) if any(t.index is not None for t in terms) else ()
    return Channels(axes, tuple(shapes), tuple(terms))


def _joined(
    parts: Sequence[fx.Node],
    inputs: Mapping[fx.Node, Any],
    dim: int,
    shape: tuple[int, ...],
    channel_count: Callable[[str], int] | None,
) -> Channels | None:
    """``cat`` of tensors with channels on any axes: each term's index written into its
    tensor's stretch along ``dim`` (every stretch of a tensor concatenated twice), -1
    elsewhere; a term found everywhere in its tensor is found throughout its stretches (a
    mask of its channels: all of the producer's, by ``channel_count``); a floating-point
    tensor without channels holds none. The axes are those the probe would find varying.
    None (the probe decides) for other tensors without channels, or more than a probe holds.
    """
    if math.prod(shape) > MAX_PROBE or (
        channel_count is None and any(t.index is None for p in parts for t in inputs[p].terms)
    ):
        return None
    present = [p for p in parts if inputs[p].shape[dim]]
    if any(not inputs[p].terms and not _floating(p) for p in present):
        return None
    kept = {p: [a for a in inputs[p].axes if inputs[p].shape[a] > 1] for p in present}
    along = any(dim in kept[p] for p in present) or (
        len(present) > 1 and any(inputs[p].terms for p in present)
    )
    axes = tuple(
        sorted({a for p in present for a in kept[p] if a != dim} | ({dim} if along else set()))
    )
    out = tuple(shape[a] for a in axes)
    stretches: dict[fx.Node, list[int]] = {}
    offset = 0
    for p in parts:
        stretches.setdefault(p, []).append(offset)
        offset += inputs[p].shape[dim]
    # terms of one producer in different tensors sit in disjoint stretches: one term holds
    # them (a class token's and the patches' share of a residual stream are one term
    # again, alike along the tokens: kept broadcast, later passes read one row of it)
    found: list[Term | _Joining] = []
    by_producer: dict[tuple, list[_Joining]] = {}
    for p in dict.fromkeys(present):  # each tensor once, in argument order (as probed)
        value = inputs[p]
        throughout = all(q is p for q in present)  # its stretches fill the result
        for t in value.terms:
            if t.index is None and throughout:
                found.append(t)
                continue
            held = t.held
            if t.index is None:  # found everywhere in its tensor: a mask of its channels
                every = t.everywhere
                held = np.array(
                    every if every is not None else range(channel_count(t.producer)), np.int64
                )
            kind = None if held is None else tuple(held.tolist())
            alike = by_producer.setdefault((t.producer, kind), [])
            joining = next((j for j in alike if all(q is not p for q, _ in j.pieces)), None)
            if joining is None:
                joining = _Joining(t.producer, held, [])
                alike.append(joining)
                found.append(joining)
            joining.pieces.append((p, t.index))
    # pieces alike give one index (later passes remember by identity): a residual
    # stream's terms found everywhere, or written alike, are many
    placed: dict[tuple, np.ndarray] = {}
    terms = []
    for j in found:
        if isinstance(j, Term):
            terms.append(j)
            continue
        key = tuple((id(p), None if index is None else id(index)) for p, index in j.pieces)
        index = placed.get(key)
        if index is None:
            whole = len(j.pieces) == len(present)  # its pieces fill the result
            index = placed[key] = _stretched(j.pieces, inputs, stretches, dim, axes, out, whole)
        if (index >= 0).any():  # the probe drops a term found nowhere
            terms.append(Term(j.producer, index, held=j.held))
    return Channels(axes, shape, tuple(terms))


class _Joining(NamedTuple):
    """One producer's terms of several concatenated tensors (one each, all plain indexes
    or all masks of the same ``held`` channels), made one term: ``pieces`` are (tensor,
    index) pairs, None for a term found everywhere in its tensor."""

    producer: str
    held: np.ndarray | None
    pieces: list[tuple[fx.Node, np.ndarray | None]]


def _stretched(
    pieces: list[tuple[fx.Node, np.ndarray | None]],
    inputs: Mapping[fx.Node, Any],
    stretches: Mapping[fx.Node, list[int]],
    dim: int,
    axes: tuple[int, ...],
    out: tuple[int, ...],
    whole: bool,
) -> np.ndarray:
    """The index of a concatenation's term over its channel ``axes`` (sizes ``out``):
    each piece's index (None: 0, a mask found throughout its tensor) in every stretch of
    its tensor along ``dim``, -1 elsewhere. Built once per axis along which no piece
    varies (a broadcast: a norm's mask is alike across the channels), then broadcast;
    when the pieces fill the result (``whole``) and are one row alike along ``dim``,
    that row broadcast (nothing built, nothing read twice later)."""
    laid = []
    for p, index in pieces:
        value = inputs[p]
        if index is None:
            laid.append((p, np.zeros((1,) * len(axes), np.int64)))
            continue
        drop = tuple(slice(None) if value.shape[a] > 1 else 0 for a in value.axes)
        kept = [a for a in value.axes if value.shape[a] > 1]
        spread = [value.shape[a] if a in kept else 1 for a in axes]
        laid.append((p, unbroadcast(index[drop].reshape(spread), None)))
    if whole and dim in axes:
        k = axes.index(dim)
        first = laid[0][1]
        if all(
            piece.shape[k] == 1 and piece.shape == first.shape and np.array_equal(piece, first)
            for _, piece in laid
        ):
            return np.broadcast_to(first, out)
    sizes = [
        n if a == dim or any(piece.shape[k] > 1 for _, piece in laid) else 1
        for k, (a, n) in enumerate(zip(axes, out, strict=True))
    ]
    index = np.full(sizes, -1, dtype=np.int64)
    for p, piece in laid:
        size = inputs[p].shape[dim]
        stretch = [size if a == dim else n for a, n in zip(axes, sizes, strict=True)]
        moved = np.broadcast_to(piece, stretch)
        for start in stretches[p]:
            index[tuple(slice(start, start + size) if a == dim else slice(None) for a in axes)] = (
                moved
            )
    return np.broadcast_to(index, out) if tuple(sizes) != out else index


def _pieces(
    source: Channels | None, dim: Any, shapes: Any, starts: Callable[[int, list[Shape]], Any]
) -> Any:
    """The pieces along ``dim`` of ``source`` making up ``shapes``; ``starts(dim, pieces)``
    gives each piece's first position along ``dim`` (None: not a direct case)."""
    if source is None:
        return None
    ndim = len(source.shape)
    pieces = shape_leaves(shapes)
    if not pieces or not isinstance(dim, int) or any(len(s) != ndim for s in pieces):
        return None
    dim %= ndim
    first = starts(dim, pieces)
    if first is None:
        return None
    cut = iter(
        [
            cut_along(source, dim, lo, lo + s[dim], tuple(s))
            for lo, s in zip(first, pieces, strict=True)
        ]
    )
    return tree_map(lambda s: next(cut) if isinstance(s, Shape) else None, shapes)


def _split(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``split`` / ``chunk``: consecutive pieces along ``dim``."""
    return _pieces(
        one_axis_first_input(node, inputs),
        node_argument(node, 2, "dim", 0),
        shapes,
        lambda dim, pieces: np.cumsum([0] + [s[dim] for s in pieces[:-1]]).tolist(),
    )


def _narrow(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``narrow(dim, start, length)``: one piece along ``dim``."""
    source = one_axis_first_input(node, inputs)
    start = node_argument(node, 2, "start")

    def starts(dim: int, pieces: list[Shape]) -> list[int] | None:
        return [start % source.shape[dim]] if isinstance(start, int) else None

    return _pieces(source, node_argument(node, 1, "dim", 0), shapes, starts)


def _aten_slice(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``aten.slice(x, dim, start, end, step)`` (export's form of ``x[:, a:b]``): one
    piece along ``dim`` with unit step (a probe would lose a channel axis of size 1)."""
    source = one_axis_first_input(node, inputs)
    start, step = node_argument(node, 2, "start"), node_argument(node, 4, "step", 1)

    def starts(dim: int, pieces: list[Shape]) -> list[int] | None:
        if step != 1 or not isinstance(start, (int, type(None))):
            return None
        return [slice(start, None).indices(source.shape[dim])[0]]

    return _pieces(source, node_argument(node, 1, "dim", 0), shapes, starts)


def _sliced(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``x[a:b, ..., i, c:d]``: basic indexing (:func:`_indexed`)."""
    source = first_input(node, inputs)
    if source is None or not isinstance(shapes, Shape):
        return None
    index = node.args[1]
    return _indexed(source, index if isinstance(index, tuple) else (index,), tuple(shapes))


def _unbound(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``unbind(x, dim)``: each position along ``dim``, its axis dropped (``q, k, v =
    qkv.unbind(0)``), as ``x[..., i, ...]`` gives it."""
    source = first_input(node, inputs)
    dim = node_argument(node, 1, "dim", 0)
    if source is None or not _integer(dim) or not isinstance(shapes, (tuple, list)):
        return None
    if not -len(source.shape) <= dim < len(source.shape):
        return None
    before = (slice(None),) * (dim % len(source.shape))
    pieces = [_indexed(source, (*before, i), tuple(s)) for i, s in enumerate(shapes)]
    return None if any(p is None for p in pieces) else tuple(pieces)


def _selected(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``select(x, dim, i)``: ``x[..., i, ...]`` with ``i`` at axis ``dim``."""
    source = first_input(node, inputs)
    dim, at = node_argument(node, 1, "dim"), node_argument(node, 2, "index")
    if source is None or not _integer(dim) or not _integer(at) or not isinstance(shapes, Shape):
        return None
    if not source.shape or not -len(source.shape) <= dim < len(source.shape):
        return None
    return _indexed(source, (*(slice(None),) * (dim % len(source.shape)), at), tuple(shapes))


def _indexed(source: Channels, index: tuple, shape: tuple[int, ...]) -> Channels | None:
    """``source[index]`` as a tensor of ``shape``: basic indexing by slices with unit steps
    along channel axes, ``...`` and integers (an integer picks one position and drops its
    axis; channels on several axes, or an integer: :func:`_sliced_axes`); None for any
    other index (the probe answers)."""
    ndim = len(source.shape)
    if not all(isinstance(i, slice) or i is Ellipsis or _integer(i) for i in index):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1 :]
    picked = [a for a, i in enumerate(index) if _integer(i)]
    if len(index) > ndim or any(not -source.shape[a] <= index[a] < source.shape[a] for a in picked):
        return None
    index = tuple(slice(i % source.shape[a], i % source.shape[a] + 1) if a in picked else i
                  for a, i in enumerate(index))  # fmt: skip
    if any(
        not all(isinstance(b, (int, type(None))) for b in (i.start, i.stop, i.step)) for i in index
    ):
        return None
    cuts = [i.indices(n) for i, n in zip(index, source.shape, strict=False)]
    if any(cuts[a][2] != 1 for a in source.axes if a < len(cuts)):
        return None
    cuts += [(0, n, 1) for n in source.shape[len(cuts) :]]
    if picked:  # cut as if each picked axis stayed (of size 1), then drop them
        kept = list(shape)
        for a in picked:
            kept.insert(a, 1)
        cut = _sliced_axes(source, [(lo, hi) for lo, hi, _ in cuts], tuple(kept))
        if cut is None:
            return None
        axes = tuple(a - sum(p < a for p in picked) for a in cut.axes)
        return Channels(axes, shape, cut.terms)
    if len(source.axes) > 1:
        return _sliced_axes(source, [(lo, hi) for lo, hi, _ in cuts], shape)
    result = source
    for d in source.axes:
        result = cut_along(result, d, cuts[d][0], cuts[d][1], shape)
    return Channels(result.axes, shape, result.terms)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sliced_axes(
    source: Channels, cuts: list[tuple[int, int]], shape: tuple[int, ...]
) -> Channels | None:
    """``source`` cut to ``[lo, hi)`` along each axis: each term's index cut alike (a
    view); the channel axes left longer than 1 are those the probe would find."""
    if not _probe_sized(source) or not math.prod(shape):
        return None
    axes = tuple(a for a in source.axes if shape[a] > 1)
    # over the axes longer than 1: cut, or (left of length 1) dropped
    pick = tuple(
        slice(*cuts[a]) if shape[a] > 1 else cuts[a][0] for a in source.axes if source.shape[a] > 1
    )
    terms = _each_index(source, lambda index: index[pick])
    return None if terms is None else Channels(axes, shape, terms)


def _rolled(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``roll(x, shifts, dims)`` along given axes: each term's index rolled alike along
    the channel axes among them (along any other axis, positions holding the same channels
    move); a roll of the flattened tensor (no ``dims``) is left to the probe."""
    source = first_input(node, inputs)
    if source is None or not isinstance(shapes, Shape) or not _probe_sized(source):
        return None
    shifts, dims = node_argument(node, 1, "shifts"), node_argument(node, 2, "dims")
    shifts = tuple(shifts) if isinstance(shifts, (tuple, list)) else (shifts,)
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    ndim = len(source.shape)
    if (
        len(shifts) != len(dims)
        or not all(_integer(v) for v in shifts + dims)
        or not all(-ndim <= d < ndim for d in dims)
    ):
        return None
    kept = [a for a in source.axes if source.shape[a] > 1]
    along = [
        (kept.index(d % ndim), s) for s, d in zip(shifts, dims, strict=True) if d % ndim in kept
    ]

    def roll(index: np.ndarray) -> np.ndarray:
        for k, shift in along:
            index = np.roll(index, shift, axis=k)
        return index

    terms = _each_index(source, roll)
    return None if terms is None else Channels(tuple(kept), tuple(shapes), terms)


def _padded(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``F.pad`` / ``constant_pad_nd`` with a constant: the padded positions hold no
    channel (the probe's second run shows the fill did not move), so each padded axis
    longer than 1 becomes channel-bearing, each term's index padded with -1 along it.
    Cropping (negative widths), other modes, and terms found everywhere where a pad is
    not empty are left to the probe."""
    source = first_input(node, inputs)
    if source is None or not isinstance(shapes, Shape) or not _probe_sized(source):
        return None
    pad = node_argument(node, 1, "pad")
    mode = node_argument(node, 2, "mode", "constant") if op_name(node) == "pad" else "constant"
    ndim, out = len(source.shape), tuple(shapes)
    if (
        mode != "constant"
        or not isinstance(pad, (tuple, list))
        or len(pad) % 2
        or len(pad) > 2 * ndim
        or not all(_integer(w) and w >= 0 for w in pad)
    ):
        return None
    widths = [(0, 0)] * ndim  # F.pad's widths run from the last axis backwards
    for k in range(len(pad) // 2):
        widths[ndim - 1 - k] = (pad[2 * k], pad[2 * k + 1])
    kept = [a for a in source.axes if source.shape[a] > 1]
    grown = [a for a in range(ndim) if widths[a] != (0, 0) and out[a] > 1]
    axes = sorted(set(kept) | set(grown))
    if grown and any(t.index is None for t in source.terms):
        return None  # found everywhere before, at some positions only after: the probe's mask

    def padded(index: np.ndarray) -> np.ndarray:
        view = [source.shape[a] if a in kept else 1 for a in axes]
        full = np.broadcast_to(index.reshape(view), [source.shape[a] for a in axes])
        return np.pad(full, [widths[a] for a in axes], constant_values=-1) if grown else full

    terms = _each_index(source, padded)
    return None if terms is None else Channels(tuple(axes), out, terms)


# Pairwise-distinct sizes: an axis permutation applied to a meta tensor of these sizes
# shows, by the sizes of its result, which axis went where.
_MARKS = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53)


def _permuted(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``permute``, ``transpose``, ``movedim``, ``t``, ``.T`` …: an axis permutation.

    Each term's index is transposed (a view: no probe as large as the activation); the
    channel-bearing axes are those the probe would find, the moved ones longer than 1.
    """
    source = first_input(node, inputs)
    ndim = len(source.shape) if source is not None else 0
    if (
        source is None
        or not isinstance(shapes, Shape)
        or not 0 < ndim <= len(_MARKS)
        or not _probe_sized(source)
    ):
        return None
    args, kwargs = known_value(tuple(node.args[1:])), known_value(dict(node.kwargs))
    if any(isinstance(v, fx.Node) for v in tree_flatten((args, kwargs))[0]):
        return None  # an argument computed from tensors
    perm = _written_permutation(op_name(node), args, kwargs, ndim)
    if perm is None:
        marks = torch.empty(_MARKS[:ndim], device="meta")
        try:
            if node.op == "call_method":
                moved = getattr(marks, node.target)(*args, **kwargs)
            else:
                moved = node.target(marks, *args, **kwargs)
        except Exception:  # not a permutation of these axes: the probe decides
            return None
        perm = [_MARKS.index(n) for n in moved.shape if n in _MARKS[:ndim]]
    if len(perm) != ndim or tuple(source.shape[a] for a in perm) != tuple(shapes):
        return None
    kept = [a for a in source.axes if source.shape[a] > 1]
    axes = tuple(i for i, a in enumerate(perm) if a in kept)
    order = [kept.index(perm[i]) for i in axes]
    terms = _each_index(source, lambda index: index.transpose(order))
    return None if terms is None else Channels(axes, tuple(shapes), terms)


def _probe_sized(source: Channels) -> bool:
    """Whether a direct rule answers for ``source``: not when it is empty (its terms do not
    show it: the probe finds no channel) or too large to probe (the probe falls back)."""
    return 0 < math.prod(source.shape) <= MAX_PROBE


def _written_permutation(name: str, args: tuple, kwargs: dict, ndim: int) -> list[int] | None:
    """The permutation ``permute(d0, d1, …)`` or ``transpose(a, b)`` spells out with plain
    axes (output axis i is input axis ``perm[i]``); None for any other spelling.

    Example:
        >>> _written_permutation("permute", ((0, 2, 1),), {}, 3), _written_permutation("transpose", (-1, 0), {}, 3)
        ([0, 2, 1], [2, 1, 0])
    """
    if kwargs:
        return None
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    elif name in ("transpose", "swapaxes", "swapdims") and len(args) == 2:
        dims = args
    else:
        return None
    if not all(type(d) is int and -ndim <= d < ndim for d in dims):
        return None
    if name != "permute":  # the two axes swapped
        swapped = list(range(ndim))
        swapped[dims[0]], swapped[dims[1]] = swapped[dims[1]], swapped[dims[0]]
        dims = swapped
    if len(dims) != ndim:
        return None
    perm = [d % ndim for d in dims]
    return perm if sorted(perm) == list(range(ndim)) else None


def _each_index(
    source: Channels, move: Callable[[np.ndarray], np.ndarray]
) -> tuple[Term, ...] | None:
    """``source``'s terms, each index moved by ``move`` (given it without its size-1 axes),
    as the probe leaves them: a term found nowhere is dropped, one found everywhere kept.
    None when an index is not over the channel axes' sizes (the probe decides)."""
    drop = tuple(slice(None) if source.shape[a] > 1 else 0 for a in source.axes)
    terms = []
    for t in source.terms:
        if t.index is None:
            terms.append(t)
            continue
        if t.index.shape != source.sizes:
            return None
        index = move(t.index[drop])
        if (unbroadcast(index, None) >= 0).any():  # what broadcasting repeats, read once
            terms.append(t.moved(index))
    return tuple(terms)


def _axis_groups(before: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[list, list]]:
    """The smallest runs of axes of ``before`` and ``after`` with equal products: what a
    row-major reshape from one shape to the other keeps apart (size-1 axes join a run).

    Example:
        >>> _axis_groups((2, 6, 5), (2, 3, 2, 5, 1))
        [([0], [0]), ([1], [1, 2]), ([2], [3, 4])]
    """
    groups: list[tuple[list, list]] = []
    i = j = 0
    while i < len(before) and j < len(after):
        left, right, p, q = [i], [j], before[i], after[j]
        i, j = i + 1, j + 1
        while p != q:
            if p < q:
                left.append(i)
                p, i = p * before[i], i + 1
            else:
                right.append(j)
                q, j = q * after[j], j + 1
        groups.append((left, right))
    if groups:  # size-1 axes left over
        groups[-1][0].extend(range(i, len(before)))
        groups[-1][1].extend(range(j, len(after)))
    return groups


def _reshaped(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``view``, ``reshape``, ``flatten``, ``unflatten``, ``squeeze``, ``unsqueeze``: the
    same values read in a new shape (row-major), whatever the arguments say.

    Only the runs of axes holding channels are written out (as the probe would be, but
    not the rest of the activation); an axis the probe would find constant is dropped.
    """
    source = first_input(node, inputs)
    before = source.shape if source is not None else ()
    if (
        source is None
        or not isinstance(shapes, Shape)
        or not _probe_sized(source)
        or math.prod(before) != math.prod(shapes)
        or any(isinstance(v, torch.dtype) for v in tree_flatten((node.args, node.kwargs))[0])
    ):
        return None
    after = tuple(shapes)
    kept = [a for a in source.axes if before[a] > 1]
    groups = [(left, right) for left, right in _axis_groups(before, after) if set(left) & set(kept)]
    wide = [before[a] if any(a in left for left, _ in groups) else 1 for a in range(len(before))]
    long = [after[b] if any(b in right for _, right in groups) else 1 for b in range(len(after))]
    spread = [before[a] if a in kept else 1 for a in range(len(before))]
    if spread == wide:  # every run all channels: the positions vary along each long axis
        axes = tuple(b for b in range(len(after)) if long[b] > 1)
    else:  # where the probe's positions vary: along the output axes they vary along
        positions = np.broadcast_to(np.arange(math.prod(spread)).reshape(spread), wide)
        positions = positions.reshape(long)
        axes = tuple(
            b
            for b in range(len(after))
            if long[b] > 1 and (positions != positions.take([0], axis=b)).any()
        )
    pick = tuple(slice(None) if b in axes else 0 for b in range(len(after)))
    terms = _each_index(
        source,
        lambda index: _regrouped(np.broadcast_to(index.reshape(spread), wide), groups, long)[pick],
    )
    return None if terms is None else Channels(axes, after, terms)


def _regrouped(index: np.ndarray, groups: list[tuple[list, list]], long: list[int]) -> np.ndarray:
    """``index.reshape(long)``, where ``groups`` are the runs of axes the reshape keeps
    apart (:func:`_axis_groups`; axes outside them are of size 1): a run along which
    broadcasting repeats the index throughout stays a broadcast (a term alike at every
    token is not written out once per token)."""
    cut, out = list(index.shape), list(long)
    for left, right in groups:
        if all(index.strides[a] == 0 or index.shape[a] == 1 for a in left):
            cut = [1 if a in left else n for a, n in enumerate(cut)]
            out = [1 if b in right else n for b, n in enumerate(out)]
    if out == list(long):
        return index.reshape(long)
    return np.broadcast_to(index[tuple(slice(0, n) for n in cut)].reshape(out), long)


permuted: Rule = _or_probe(_permuted)
reshaped: Rule = _or_probe(_reshaped)


def concatenate(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``cat``: moved directly (:func:`_concatenated`, knowing each producer's channel
    count), else probed."""
    found = _concatenated(node, inputs, shapes, ctx.channel_count)
    return found if found is not None else probe(ctx, node, inputs, shapes)


split: Rule = _or_probe(_split)
narrow: Rule = _or_probe(_narrow)
_slice: Rule = _or_probe(_sliced)
unbound: Rule = _or_probe(_unbound)
selected: Rule = _or_probe(_selected)
rolled: Rule = _or_probe(_rolled)
padded: Rule = _or_probe(_padded)
aten_slice: Rule = _or_probe(_aten_slice)


def getitem(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``x[...]``: an element of a tuple result, or indexing a tensor (sliced or probed)."""
    if not isinstance(inputs.get(node.args[0]), Channels):
        return inputs[node.args[0]][node.args[1]]
    return _slice(ctx, node, inputs, shapes)
