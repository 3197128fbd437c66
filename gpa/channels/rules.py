"""What each operation does to channels: the channel values and the op -> rule table.

Every traced tensor gets a :class:`Channels` value: its *channel-bearing axes* and, for
each layer output reaching it without crossing another layer, a :class:`Term` mapping
every position of those axes to the producer channel found there
(``docs/semantics.md`` §8). A *rule* computes the value of an operation's result from
the values of its inputs; :data:`RULES` maps each operation to its rule, as fvcore's
``_DEFAULT_SUPPORTED_OPS`` maps ops to FLOP handlers. The routing pass
(:mod:`gpa.channels.routing`) looks every node up there and knows no operation itself;
an operation not in the table goes to :func:`fallback`.

The rules, by what an operation does to channels:

* data movement (view, reshape, permute, slicing, ``chunk``/``split``, ``cat``/``stack``,
  padding, ``index_select`` with a constant index, pixel shuffle …): :func:`probe` runs it
  for real on a small tensor holding channel positions, so any permutation (ShuffleNet's
  shuffle) is tracked exactly; ``cat``, ``split``/``chunk``, ``narrow`` and basic slicing
  of one-axis channels have direct rules with the same answer and no probe;
* pointwise and broadcasting operations, and batch norm: :func:`pointwise`; pooling,
  resampling and instance norm, which keep channel positions but along the axes they
  window over: :func:`windowed`;
* operations combining positions along an axis (softmax, layer and group norm,
  reductions, products of activations, attention): the positions they combine depend on
  every channel involved;
* anything else: :func:`fallback`, "every channel reaches every position", recorded.

Adding an operation is adding one row to :data:`RULES`: a function or method name (as
:func:`op_name` spells it), an ``operator`` function, or a module class (looked up along
the called module's MRO), mapped to a :data:`Rule`.

Example:
    >>> RULES["flip"] is probe, RULES[nn.ReLU] is pointwise, RULES["softmax"] is combine
    (True, True, True)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from gpa.frontends.fx.constants import constant_value
from gpa.frontends.fx.flow import FLOW, Shape
from gpa.frontends.fx.layers import CONV_FUNCTIONS
from gpa.frontends.modules import POINTWISE_MODULES

__all__ = [
    "MAX_PROBE",
    "RULES",
    "Channels",
    "OpKey",
    "Rule",
    "RoutingContext",
    "Term",
    "attention",
    "by_identity",
    "combine",
    "concatenate",
    "everywhere_of",
    "fallback",
    "field",
    "getitem",
    "group_norm",
    "is_conv",
    "layer_axis",
    "layer_channel_axis",
    "layer_groups",
    "layer_input_axis",
    "layer_output_axis",
    "layer_norm",
    "leaves",
    "matmul",
    "narrow",
    "op_name",
    "permuted",
    "pointwise",
    "probe",
    "reduce",
    "reshaped",
    "split",
    "tracked",
    "unbroadcast",
    "untracked",
    "windowed",
]

# Probes larger than this (elements) are not materialised: the operation falls back.
MAX_PROBE = 1 << 24


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class Term:
    """The channels of one producer found in a tensor.

    ``index`` (over the tensor's channel-bearing axes) holds the producer channel at
    each position, -1 where it has none. When ``index`` is None, the channels in
    ``everywhere`` (None: all of the producer's channels) reach every position.

    When ``held`` (sorted producer channels) is given, ``index`` is a mask: every channel
    of ``held`` is found at each position where ``index`` is 0 (none where it is -1).
    That is what a norm over the channel axis leaves (each position holds all channels);
    one such term stands for as many one-channel terms as ``held`` has channels.

    Example:
        >>> Term("conv", np.array([2, 3, -1])).index.tolist()  # channels 2, 3 of conv, then none
        [2, 3, -1]
        >>> t = Term("conv", np.array([0, -1]), held=np.array([0, 1, 2]))  # 0-2 at position 0
        >>> everywhere_of(t)
        (0, 1, 2)
    """

    producer: str
    index: np.ndarray | None
    everywhere: tuple[int, ...] | None = None
    held: np.ndarray | None = None

    def moved(self, index: np.ndarray) -> Term:
        """The same channels at the positions of a new ``index`` (the result of moving,
        cutting or broadcasting this term's ``index``)."""
        return Term(self.producer, index, held=self.held)


@dataclass(frozen=True)
class Channels:
    """Channel provenance of one tensor: channel-bearing ``axes`` (ascending) and terms.

    Example:
        >>> Channels((1,), (2, 4, 8, 8), (Term("conv", np.arange(4)),)).sizes
        (4,)
    """

    axes: tuple[int, ...]
    shape: tuple[int, ...]
    terms: tuple[Term, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """The sizes of the channel-bearing axes."""
        return tuple(self.shape[a] for a in self.axes)


def untracked(shapes: Any) -> Any:
    """The value of a result carrying no layer's channels (``shapes``: its structure)."""
    return tree_map(lambda s: Channels((), tuple(s), ()) if isinstance(s, Shape) else None, shapes)


def leaves(value: Any) -> list[Channels]:
    """The :class:`Channels` of every tensor in a (possibly nested) value."""
    return [c for c in tree_flatten(value)[0] if isinstance(c, Channels)]


def tracked(value: Any) -> bool:
    """Whether any tensor of ``value`` carries some layer's channels."""
    return any(c.terms for c in leaves(value))


def everywhere_of(term: Term) -> tuple[int, ...] | None:
    """The channels a term holds anywhere, for "reaches every position" (None: all)."""
    if term.index is None:
        return term.everywhere
    if term.held is not None:
        return tuple(term.held.tolist()) if (term.index >= 0).any() else ()
    return tuple(unique_values(term.index[term.index >= 0]).tolist())


# ------------------------------------------------------------ the context


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
        """A memo of :func:`_collapse` for this pass (see there)."""


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


# ------------------------------------------------------- channel algebra


def _mix(ch: Channels, shape: tuple[int, ...]) -> Channels:
    """Every channel of every term reaches every position of a tensor of ``shape``."""
    terms = tuple(
        Term(t.producer, None, everywhere_of(t))
        for t in ch.terms
        if t.index is None or (t.index >= 0).any()
    )
    return Channels((), shape, terms)


def _union(parts: list[Channels], shape: tuple[int, ...]) -> Channels:
    """Broadcast several tensors' channels onto ``shape`` (pointwise operations, and those
    keeping channel positions: norms with per-channel statistics, pooling, upsampling).

    A channel-bearing axis whose size the operation changes (pooling a tensor padded with
    zeros, so that its border positions hold no channel) is collapsed first: the channels
    found anywhere along it are found everywhere along it — over, never under, the
    positions reached.
    """
    tracked_parts = [p for p in parts if p.terms]
    if not tracked_parts:
        return Channels((), shape, ())
    ndim = len(shape)
    moved = []
    for p in tracked_parts:
        shift = ndim - len(p.shape)
        for a in p.axes:
            if p.shape[a] not in (1, shape[a + shift]):
                p = _collapse(p, a, p.shape[:a] + (1,) + p.shape[a + 1 :])
        moved.append((tuple(a + shift for a in p.axes), p, shift))
    axes = tuple(sorted({a for axes_, _, _ in moved for a in axes_}))
    sizes = tuple(shape[a] for a in axes)
    if math.prod(sizes) > MAX_PROBE:
        return _mix(Channels((), shape, tuple(t for p in tracked_parts for t in p.terms)), shape)
    terms = []
    for axes_, p, shift in moved:
        for t in p.terms:
            if t.index is None or (axes_ == axes and t.index.shape == sizes):
                terms.append(t)  # in place already: the same term (see _collapse's memo)
                continue
            arr = t.index.reshape([p.shape[a - shift] if a in axes_ else 1 for a in axes])
            terms.append(t.moved(np.broadcast_to(arr, sizes)))
    return Channels(axes, shape, tuple(terms))


def _probe_tensor(ch: Channels, base: int) -> torch.Tensor:
    """A tensor of the channels' shape holding ``base`` + the flat channel position.

    ``base`` is at least 1, so that the zeros an operation pads with mean "no channel".
    float64 holds these integers exactly and every movement op takes it.
    """
    sizes = ch.sizes
    values = np.arange(base, base + math.prod(sizes), dtype=np.float64)
    view = [1] * len(ch.shape)
    for a, n in zip(ch.axes, sizes, strict=True):
        view[a] = n
    # written out by numpy, single-threaded (see _decode)
    return torch.from_numpy(np.broadcast_to(values.reshape(view), ch.shape).copy())


def _decode(
    out: torch.Tensor, moved: torch.Tensor, shift: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """Channel-bearing axes of a probe result and its (integer) values over them: the
    values that moved up by ``shift`` in ``moved`` (the result of positions moved up by
    it); any other value (a padding or fill value) is 0, no channel.

    Read with numpy, single-threaded: as large as an activation, the probe is compared
    once per axis, and torch's threads would contend with whatever else runs.
    """
    if out.numel() == 0:
        return (), np.zeros((), dtype=np.int64)
    values, again = (
        (
            t.detach().cpu() if t.dtype == torch.float64 else t.detach().cpu().to(torch.float64)
        ).numpy()
        for t in (out, moved)
    )
    with np.errstate(invalid="ignore"):  # infinities (a max pool's padding) are no channel
        values = np.where(again - values == shift, values, 0.0)
    axes = tuple(
        a
        for a in range(values.ndim)
        if values.shape[a] > 1 and (values != values[(slice(None),) * a + (slice(0, 1),)]).any()
    )
    index = tuple(slice(None) if a in axes else 0 for a in range(values.ndim))
    return axes, np.rint(values[index]).astype(np.int64)


def _remap(
    ctx: RoutingContext,
    ch_terms: list[tuple[Term, int, int]],
    axes: tuple[int, ...],
    shape: tuple[int, ...],
    positions: np.ndarray,
) -> Channels:
    """Terms re-indexed by probe positions (``positions`` hold base + flat input position).

    A term found everywhere in its input is found wherever that input's positions went:
    everywhere still, at some positions only (a masked term), or nowhere.
    """
    terms = []
    # the terms of one input share its range of probe positions (a residual stream holds
    # a term per layer writing to it): where that input's positions went is found once
    went: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, bool, bool]] = {}
    # re-indexed once per input and values (None: nowhere); terms alike share the result
    moved: dict[tuple, np.ndarray | None] = {}
    for term, base, size in ch_terms:
        if (base, size) not in went:
            inside = (positions >= base) & (positions < base + size)
            everywhere = bool(inside.all())
            local = positions - base if everywhere else positions[inside] - base
            went[base, size] = (inside, local, everywhere, everywhere or bool(inside.any()))
        inside, local, everywhere, somewhere = went[base, size]
        if term.index is None:
            if everywhere:
                terms.append(term)
            elif somewhere:
                held = term.everywhere
                if held is None:
                    held = range(ctx.channel_count(term.producer))
                mask = np.where(inside, 0, -1)
                terms.append(Term(term.producer, mask, held=np.array(held, dtype=np.int64)))
            continue
        if not somewhere:
            continue
        key = (base, size, *_values_key(term.index))
        if key not in moved:
            flat = term.index.reshape(-1)
            if everywhere:
                index = flat[local].astype(np.int64, copy=False)
            else:
                index = np.full(positions.shape, -1, dtype=np.int64)
                index[inside] = flat[local]
            moved[key] = index if (index >= 0).any() else None
        if moved[key] is not None:
            terms.append(term.moved(moved[key]))
    return Channels(axes, tuple(shape), tuple(terms))


def _values_key(index: np.ndarray) -> tuple:
    """A key equal for two indices holding the same values: for an index broadcast along
    some axes, its shape and the values it repeats (every block of an MLP-Mixer writes its
    tokens to the stream alike); else the array itself, by identity.

    Example:
        >>> row = np.broadcast_to(np.arange(2), (2, 2))  # [[0, 1], [0, 1]]
        >>> column = np.broadcast_to(np.arange(2)[:, None], (2, 2))  # [[0, 0], [1, 1]]
        >>> _values_key(row) == _values_key(np.broadcast_to(np.arange(2), (2, 2)))
        True
        >>> _values_key(row) == _values_key(column)
        False
    """
    if 0 not in index.strides:
        return (id(index),)
    along = tuple(step == 0 for step in index.strides)
    kept = index[tuple(slice(0, 1) if b else slice(None) for b in along)]
    return index.shape, along, index.dtype.str, kept.tobytes()


def _collapse(
    ch: Channels, axis: int, keepdim_shape: tuple[int, ...] | None, memo: dict | None = None
) -> Channels:
    """Positions along ``axis`` combine: each remaining position holds every channel along it.

    With ``keepdim_shape`` the axis stays (of the new size, broadcast); otherwise it is
    removed. ``memo`` (the pass's :attr:`RoutingContext.collapsed`) keeps what a term's
    index collapsed to: the terms of a residual stream reach every later norm unchanged,
    and would otherwise be collapsed again at each (quadratic in depth).
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
        kept = None if keepdim_shape is None else tuple(new_shape[a] for a in ch.axes)
        parts = by_identity(memo, (t.index, t.held), (k, kept), _collapsed_parts, t, k, kept)
        terms.extend(Term(t.producer, part, held=held) for part, held in parts)
    if keepdim_shape is not None:
        return Channels(ch.axes, new_shape, tuple(terms))
    axes = tuple(a - (a > axis) for a in rest)
    return Channels(axes, new_shape, tuple(terms))


def by_identity(
    memo: dict | None,
    arrays: tuple[Any, ...],
    extra: Hashable,
    compute: Callable[..., Any],
    *args: Any,
) -> Any:
    """``compute(*args)``, kept in ``memo`` (None: not kept) under the identity of
    ``arrays`` and ``extra``; the arrays are held by the memo, so their ids stay theirs.

    Example:
        >>> memo, a = {}, np.arange(3)
        >>> by_identity(memo, (a,), 0, np.sum, a), by_identity(memo, (a,), 0, np.negative, 1)
        (np.int64(3), np.int64(3))
    """
    if memo is None:
        return compute(*args)
    key = (*map(id, arrays), extra)
    known = memo.get(key)
    if known is not None and all(x is y for x, y in zip(known[0], arrays, strict=True)):
        return known[1]
    value = compute(*args)
    memo[key] = (arrays, value)
    return value


def _collapsed_parts(
    t: Term, k: int, kept_shape: tuple[int, ...] | None
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(index, held) of the terms left when ``t``'s index collapses along its ``k``-th
    axis; the axis kept as size 1 and broadcast to ``kept_shape`` unless that is None."""
    moved = np.moveaxis(t.index, k, 0)
    once = np.moveaxis(unbroadcast(t.index, k), k, 0)
    parts = []
    for row, held in _collapsed_rows(once.reshape(once.shape[0], -1), t.held):
        part = np.broadcast_to(row.reshape(once.shape[1:]), moved.shape[1:])
        if kept_shape is not None:
            part = np.broadcast_to(np.expand_dims(part, k), kept_shape)
        parts.append((part, held))
    return parts


def unbroadcast(index: np.ndarray, keep: int | None) -> np.ndarray:
    """``index`` with every axis but ``keep`` (None: every axis) along which broadcasting
    repeats it (stride 0) cut to size 1: what the axis repeats is read once, and never copied.

    Example:
        >>> rows = np.broadcast_to(np.arange(4), (3, 4))  # one row, three times
        >>> columns = np.broadcast_to(np.array([[0], [1]]), (2, 3))  # one column, three times
        >>> unbroadcast(rows, 1).shape, unbroadcast(columns, 0).shape, unbroadcast(rows, 0).shape
        ((1, 4), (2, 1), (3, 4))
    """
    return index[
        tuple(
            slice(0, 1) if a != keep and step == 0 else slice(None)
            for a, step in enumerate(index.strides)
        )
    ]


# Above this many distinct rows, a collapse also tries one term per distinct channel set.
_FEW_ROWS = 8


def _collapsed_rows(
    rows: np.ndarray, held: np.ndarray | None
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The terms left when the ``rows`` of one term's index (along the collapsed axis ×
    the remaining positions) combine: ``(index, held)`` pairs whose union holds, at each
    remaining position, every channel of that position's column.

    Either one term per distinct row (each row's channels where they were), or one
    masked term per distinct *set* of channels a column holds, whichever is fewer: a
    norm over 768 channels leaves 768 distinct rows but a single set.

    Example:
        >>> rows = np.array([[-1, c, c] for c in range(10)])  # channels 0-9 at positions 1, 2
        >>> [(i.tolist(), h.tolist()) for i, h in _collapsed_rows(rows, None)]
        [([-1, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])]
    """
    present = rows >= 0
    if held is not None:  # a mask: present wherever any row is
        return [(np.where(present.any(axis=0), 0, -1), held)]
    if len(rows) > _FEW_ROWS:
        # the common case, in one pass: each row one channel, all at the same positions
        # (a channel axis broadcast over the others, as a norm over the channels sees it)
        shared = (present == present[:1]).all()
        if shared and present[0].any():
            where = np.flatnonzero(present[0])
            values = rows[:, where]
            if (values == values[:, :1]).all():
                return [(np.where(present[0], 0, -1), unique_values(values[:, 0]))]
    distinct = distinct_rows(rows)
    if len(distinct) <= _FEW_ROWS:
        return [(row, None) for row in distinct]
    columns = np.sort(rows, axis=0)
    columns[1:][columns[1:] == columns[:-1]] = -1  # each column's channels once, -1 padded
    columns = np.sort(columns, axis=0).T
    present = present.any(axis=0)
    keys = np.ascontiguousarray(columns).view(
        np.dtype((np.void, columns.dtype.itemsize * columns.shape[1]))
    )
    sets, which = np.unique(keys[present].ravel(), return_inverse=True)
    if len(sets) >= len(distinct):
        return [(row, None) for row in distinct]
    label = np.full(len(columns), -1, dtype=np.int64)
    label[present] = which.ravel()
    found = []
    for i, key in enumerate(sets):
        channels = np.frombuffer(key.tobytes(), dtype=columns.dtype)
        found.append((np.where(label == i, 0, -1), channels[channels >= 0].astype(np.int64)))
    return found


def unique_values(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array: a sort and a comparison of
    neighbours (numpy's hash-based ``np.unique`` is many times slower on large arrays).

    Example:
        >>> unique_values(np.array([3, 1, 3, 2])).tolist()
        [1, 2, 3]
    """
    flat = np.sort(values, axis=None)
    if flat.size == 0:
        return flat
    keep = np.empty(flat.size, dtype=bool)
    keep[0] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    return flat[keep]


def distinct_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of a 2-D integer array that hold a channel (a value >= 0), in
    order of first occurrence — one ``np.unique`` over the rows' bytes, no Python loop.

    Example:
        >>> distinct_rows(np.array([[0, 1], [-1, -1], [0, 1], [2, -1]])).tolist()
        [[0, 1], [2, -1]]
        >>> distinct_rows(np.array([[3, -1], [3, -1]])).tolist(), distinct_rows(-np.ones((2, 2))).shape
        ([[3, -1]], (0, 2))
    """
    if len(rows) > 1 and (rows == rows[:1]).all():  # a term alike along the rows: no copy
        rows = rows[:1]
    rows = np.ascontiguousarray(rows[(rows >= 0).any(axis=1)])
    if len(rows) > 1:  # a row repeated in a run (a token's channels, token after token): once
        rows = rows[np.r_[True, (rows[1:] != rows[:-1]).any(axis=1)]]
    if len(rows) <= 1:
        return rows
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    return rows[np.sort(first)]


def _combine_along(ch: Channels, axes: list[int], memo: dict | None = None) -> Channels:
    """Every position along ``axes`` depends on every position along them (softmax, norms);
    ``memo``: see :func:`_collapse`."""
    for a in axes:
        size = ch.shape[a]
        ch = _collapse(ch, a, ch.shape[:a] + (1,) + ch.shape[a + 1 :], memo)
        shape = ch.shape[:a] + (size,) + ch.shape[a + 1 :]
        ch = _union([ch], shape) if ch.axes else Channels((), shape, ch.terms)
    return ch


def _within_groups(ch: Channels, axis: int, groups: int) -> Channels:
    """Positions along ``axis`` combine within each of ``groups`` equal groups (group norm)."""
    k = ch.axes.index(axis)
    width = ch.shape[axis] // groups
    terms = []
    for t in ch.terms:
        if t.index is None:
            terms.append(t)
            continue
        moved = np.moveaxis(t.index, k, -1)
        grouped = moved.reshape(moved.shape[:-1] + (groups, width))
        if t.held is not None:  # a mask: present in a whole group wherever in one member
            member = np.repeat((grouped >= 0).any(axis=-1, keepdims=True), width, axis=-1)
            mask = np.where(member.reshape(moved.shape), 0, -1)
            terms.append(t.moved(np.moveaxis(mask, -1, k)))
            continue
        for r in range(width):
            member = np.repeat(grouped[..., r : r + 1], width, axis=-1).reshape(moved.shape)
            terms.append(Term(t.producer, np.moveaxis(member, -1, k)))
    return Channels(ch.axes, ch.shape, tuple(terms))


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
            terms.append(t.moved(part))
    return Channels(ch.axes, shape, tuple(terms))


# ------------------------------------------------------------- arguments


def _arg(node: fx.Node, position: int, keyword: str, default: Any = None) -> Any:
    """An argument of ``node`` given by keyword or at ``position``.

    The keyword wins: in ``normalize(x, 2.0, dim=1)`` the second argument is ``p``.
    """
    if keyword in node.kwargs:
        return _known(node.kwargs[keyword])
    return _known(node.args[position]) if len(node.args) > position else default


def _known(value: Any) -> Any:
    """``value`` with every node whose result the flow pass knows as a plain number or
    sizes (``x.shape[1:]``, ``x.dim() - 1``: computed in ``forward``) replaced by that
    result; tensor nodes are left as they are."""

    def known(v: Any) -> Any:
        flow = v.meta.get(FLOW) if isinstance(v, fx.Node) else None
        return flow.constant if flow is not None and flow.is_constant else v

    return tree_map(known, value)


def _first(node: fx.Node, inputs: Mapping[fx.Node, Any]) -> Channels | None:
    """The channels of the first argument, if it is a tensor."""
    first = node.args[0] if node.args else None
    value = inputs.get(first) if isinstance(first, fx.Node) else None
    return value if isinstance(value, Channels) else None


def _one_axis_first(node: fx.Node, inputs: Mapping[fx.Node, Any]) -> Channels | None:
    """The first argument's channels when they lie on at most one axis (the direct rules' case)."""
    source = _first(node, inputs)
    return source if source is not None and len(source.axes) <= 1 else None


def _shape_leaves(shapes: Any) -> list[Shape]:
    return [s for s in tree_flatten(shapes)[0] if isinstance(s, Shape)]


def _called_module(ctx: RoutingContext, node: fx.Node) -> nn.Module:
    return ctx.fetch_attr(node.target)


# ------------------------------------------------------------------ rules


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
        why = (
            type(_called_module(ctx, node)).__name__ if node.op == "call_module" else op_name(node)
        )
    terms = tuple(t for v in inputs.values() for c in leaves(v) for t in c.terms)
    for t in terms:
        ctx.note_fallback(t.producer, why)
    mixed = Channels((), (), terms)
    return tree_map(
        lambda s: _mix(mixed, tuple(s)) if isinstance(s, Shape) else None,
        node.meta[FLOW].shapes,
    )


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
    return _union([v for v in inputs.values() if isinstance(v, Channels)], tuple(shapes))


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
    ch = _first(node, inputs)
    found = _shape_leaves(shapes)
    if ch is None or not found:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    name = type(_called_module(ctx, node)).__name__ if node.op == "call_module" else op_name(node)
    digits = [c for c in name if c.isdigit()]
    ndim, out = len(ch.shape), tuple(found[0])
    resampled = any(w in name.lower() for w in ("adaptive", "interpolate", "upsample"))
    for a in range(max(ndim - (int(digits[-1]) if digits else ndim - 2), 0), ndim):
        if a in ch.axes and not (resampled and len(out) == ndim and out[a] == ch.shape[a]):
            ch = _collapse(ch, a, ch.shape[:a] + (1,) + ch.shape[a + 1 :], ctx.collapsed)
    others = [v for n, v in inputs.items() if n is not first and isinstance(v, Channels)]
    return _results(_union([ch, *others], out), shapes)


def _results(value: Channels, shapes: Any, every: bool = False) -> Any:
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


def normalised_with_statistics(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """ATen's batch norm returning its statistics beside the result (export's graph spells
    ``batch_norm`` so where the model writes in place): the result as ``batch_norm``'s —
    each channel stays where it is —, the statistics (per channel, for the running ones'
    update) no channel."""
    found = _shape_leaves(shapes)
    if not found:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    return _results(pointwise(ctx, node, inputs, found[0]), shapes)


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
            tensor = _probe_tensor(value, base - size)
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
        axes, positions = _decode(out, out_moved, base)
        return _remap(ctx, ch_terms, axes, tuple(out.shape), positions)

    return tree_map(decode, result, again)


def _run(ctx: RoutingContext, node: fx.Node, args: Any, kwargs: Any) -> Any:
    """``node``'s operation on ``args`` and ``kwargs``."""
    if node.op == "call_module":
        return _called_module(ctx, node)(*args, **kwargs)
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
    parts = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0)
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
    pieces = _shape_leaves(shapes)
    if not pieces or not isinstance(dim, int) or any(len(s) != ndim for s in pieces):
        return None
    dim %= ndim
    first = starts(dim, pieces)
    if first is None:
        return None
    cut = iter(
        [_cut(source, dim, lo, lo + s[dim], tuple(s)) for lo, s in zip(first, pieces, strict=True)]
    )
    return tree_map(lambda s: next(cut) if isinstance(s, Shape) else None, shapes)


def _split(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``split`` / ``chunk``: consecutive pieces along ``dim``."""
    return _pieces(
        _one_axis_first(node, inputs),
        _arg(node, 2, "dim", 0),
        shapes,
        lambda dim, pieces: np.cumsum([0] + [s[dim] for s in pieces[:-1]]).tolist(),
    )


def _narrow(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``narrow(dim, start, length)``: one piece along ``dim``."""
    source = _one_axis_first(node, inputs)
    start = _arg(node, 2, "start")

    def starts(dim: int, pieces: list[Shape]) -> list[int] | None:
        return [start % source.shape[dim]] if isinstance(start, int) else None

    return _pieces(source, _arg(node, 1, "dim", 0), shapes, starts)


def _aten_slice(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``aten.slice(x, dim, start, end, step)`` (export's form of ``x[:, a:b]``): one
    piece along ``dim`` with unit step (a probe would lose a channel axis of size 1)."""
    source = _one_axis_first(node, inputs)
    start, step = _arg(node, 2, "start"), _arg(node, 4, "step", 1)

    def starts(dim: int, pieces: list[Shape]) -> list[int] | None:
        if step != 1 or not isinstance(start, (int, type(None))):
            return None
        return [slice(start, None).indices(source.shape[dim])[0]]

    return _pieces(source, _arg(node, 1, "dim", 0), shapes, starts)


def _sliced(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``x[a:b, ..., i, c:d]``: basic indexing (:func:`_indexed`)."""
    source = _first(node, inputs)
    if source is None or not isinstance(shapes, Shape):
        return None
    index = node.args[1]
    return _indexed(source, index if isinstance(index, tuple) else (index,), tuple(shapes))


def _unbound(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``unbind(x, dim)``: each position along ``dim``, its axis dropped (``q, k, v =
    qkv.unbind(0)``), as ``x[..., i, ...]`` gives it."""
    source = _first(node, inputs)
    dim = _arg(node, 1, "dim", 0)
    if source is None or not _integer(dim) or not isinstance(shapes, (tuple, list)):
        return None
    if not -len(source.shape) <= dim < len(source.shape):
        return None
    before = (slice(None),) * (dim % len(source.shape))
    pieces = [_indexed(source, (*before, i), tuple(s)) for i, s in enumerate(shapes)]
    return None if any(p is None for p in pieces) else tuple(pieces)


def _selected(node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``select(x, dim, i)``: ``x[..., i, ...]`` with ``i`` at axis ``dim``."""
    source = _first(node, inputs)
    dim, at = _arg(node, 1, "dim"), _arg(node, 2, "index")
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
        result = _cut(result, d, cuts[d][0], cuts[d][1], shape)
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
    source = _first(node, inputs)
    if source is None or not isinstance(shapes, Shape) or not _probe_sized(source):
        return None
    shifts, dims = _arg(node, 1, "shifts"), _arg(node, 2, "dims")
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
    source = _first(node, inputs)
    if source is None or not isinstance(shapes, Shape) or not _probe_sized(source):
        return None
    pad = _arg(node, 1, "pad")
    mode = _arg(node, 2, "mode", "constant") if op_name(node) == "pad" else "constant"
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
    source = _first(node, inputs)
    ndim = len(source.shape) if source is not None else 0
    if (
        source is None
        or not isinstance(shapes, Shape)
        or not 0 < ndim <= len(_MARKS)
        or not _probe_sized(source)
    ):
        return None
    args, kwargs = _known(tuple(node.args[1:])), _known(dict(node.kwargs))
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
    source = _first(node, inputs)
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
        return getattr(_called_module(ctx, node), name, None)
    return _arg(node, position, name)


def combine(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``softmax``, ``normalize``, ``nn.Softmax`` …: positions along ``dim`` combine."""
    ch = _first(node, inputs)
    dim = _parameter(ctx, node, 1, "dim")
    if ch is None or not isinstance(dim, int):
        return fallback(ctx, node, inputs, shapes, op_name(node))
    if not ch.shape:  # a number: nothing along dim 0 (or -1) to combine
        return ch
    return _combine_along(ch, [dim % len(ch.shape)], ctx.collapsed)


def normalize(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``F.normalize(x, p=2.0, dim=1)``: positions along ``dim`` (default 1) combine."""
    ch = _first(node, inputs)
    dim = _arg(node, 2, "dim", 1)
    if ch is None or not isinstance(dim, int):
        return fallback(ctx, node, inputs, shapes, op_name(node))
    if not ch.shape:  # a number: nothing along dim 0 (or -1) to combine
        return ch
    return _combine_along(ch, [dim % len(ch.shape)], ctx.collapsed)


def layer_norm(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``layer_norm``, ``rms_norm``, ``nn.LayerNorm`` …: positions along the normalised
    (last) axes combine."""
    ch = _first(node, inputs)
    normalized = _parameter(ctx, node, 1, "normalized_shape")
    if ch is None or normalized is None:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    count = 1 if isinstance(normalized, int) else len(tuple(normalized))
    ndim = len(ch.shape)
    return _combine_along(ch, list(range(ndim - count, ndim)), ctx.collapsed)


def group_norm(
    ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any
) -> Any:
    """``group_norm``, ``nn.GroupNorm``: channels (axis 1) combine within each group."""
    ch = _first(node, inputs)
    groups = _parameter(ctx, node, 1, "num_groups")
    if ch is None or len(ch.shape) < 2:
        return fallback(ctx, node, inputs, shapes, "group_norm")
    if groups == ch.shape[1] or 1 not in ch.axes:
        return ch
    if groups == 1:
        return _combine_along(ch, [1], ctx.collapsed)
    if not isinstance(groups, int):  # a group count computed in forward
        return fallback(ctx, node, inputs, shapes, "group_norm")
    return _within_groups(ch, 1, groups)


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
    ch = _first(node, inputs)
    dim = _parameter(ctx, node, signature.dim_at, "dim")
    if name in ("max", "min") and isinstance(inputs.get(_arg(node, 1, "other")), Channels):
        return pointwise(ctx, node, inputs, shapes)  # max(a, b) of two tensors
    if isinstance(dim, bool):  # std(x, unbiased) / var(x, unbiased): every dim
        dim = None
    found = _shape_leaves(shapes)
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
        result = _collapse(result, d, kept)
    result = Channels(result.axes, tuple(found[0]), result.terms)
    return _results(result, shapes, every=signature.values)


def matmul(ctx: RoutingContext, node: fx.Node, inputs: Mapping[fx.Node, Any], shapes: Any) -> Any:
    """``a @ b`` of two activations: the contracted axis combines."""
    a, b = inputs.get(node.args[0]), inputs.get(node.args[1])
    if not (isinstance(a, Channels) and isinstance(b, Channels) and isinstance(shapes, Shape)):
        return fallback(ctx, node, inputs, shapes, op_name(node))
    if len(a.shape) < 2 or len(b.shape) < 2:
        return fallback(ctx, node, inputs, shapes, op_name(node))
    # a (..., n, k) @ b (..., k, m): k is combined; a's n and b's m move to the result.
    a_part = _collapse(a, len(a.shape) - 1, a.shape[:-1] + (1,))
    b_part = _collapse(b, len(b.shape) - 2, b.shape[:-2] + (1,) + b.shape[-1:])
    return _union([a_part, b_part], tuple(shapes))


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
        value = _arg(node, position, keyword)
        return inputs.get(value) if isinstance(value, fx.Node) else None

    q, k, v = given(0, "query"), given(1, "key"), given(2, "value")
    mask = given(3, "attn_mask")
    if not all(isinstance(x, Channels) for x in (q, k, v)) or not isinstance(shapes, Shape):
        return fallback(ctx, node, inputs, shapes, "scaled_dot_product_attention")
    if min(len(q.shape), len(k.shape), len(v.shape)) < 2 or (
        _arg(node, 7, "enable_gqa", False) and len(q.shape) > 2 and q.shape[-3] != k.shape[-3]
    ):
        return fallback(ctx, node, inputs, shapes, "scaled_dot_product_attention")
    # q (…, L, E) · k (…, S, E): E combines, then the softmax and v's product combine S
    parts = [
        _collapse(q, len(q.shape) - 1, q.shape[:-1] + (1,)),
        _collapse(
            _collapse(k, len(k.shape) - 1, k.shape[:-1] + (1,)),
            len(k.shape) - 2,
            k.shape[:-2] + (1, 1),
        ),
        _collapse(v, len(v.shape) - 2, v.shape[:-2] + (1,) + v.shape[-1:]),
    ]
    if isinstance(mask, Channels) and mask.terms and mask.shape:  # (…, L, S), added to q·kᵀ
        parts.append(_collapse(mask, len(mask.shape) - 1, mask.shape[:-1] + (1,)))
    return _union(parts, tuple(shapes))


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
    axis = layer_axis(conv, len(shape))
    if not conv or module is None or len(shape) != 3:
        return axis
    width = _width(module, output)
    return 2 if shape[1] != width and shape[2] == width else axis


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
