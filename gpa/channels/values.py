"""Channel values and their algebra (``docs/semantics.md`` §8).

Every traced tensor gets a :class:`Channels` value: its *channel-bearing axes* and, for
each layer output reaching it without crossing another layer, a :class:`Term` mapping
every position of those axes to the producer channel found there. The functions here
combine values whatever the operation: positions mixed (:func:`mix`), values joined
(:func:`union`), positions combined along axes (:func:`combine_along`), within groups
(:func:`within_groups`), a range cut out (:func:`cut_along`), equal rows collapsed
(:func:`collapse`), and a probe's tensor written and read back (:func:`probe_tensor`,
:func:`decode_probe`, :func:`remap`). The rules (:mod:`gpa.channels.rules`,
:mod:`gpa.channels.movement`) are built from them.

Example:
    >>> import numpy as np
    >>> ch = Channels((1,), (2, 3), (Term("conv", np.arange(3)),))
    >>> [t.index.tolist() for t in cut_along(ch, 1, 1, 3, (2, 2)).terms]
    [[1, 2]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map

from gpa.frontends.fx.flow import Shape

__all__ = [
    "MAX_PROBE",
    "Channels",
    "Term",
    "by_identity",
    "collapse",
    "combine_along",
    "cut_along",
    "decode_probe",
    "distinct_rows",
    "everywhere_of",
    "leaves",
    "mix",
    "probe_tensor",
    "remap",
    "tracked",
    "unbroadcast",
    "union",
    "unique_values",
    "untracked",
    "within_groups",
]

# Probes larger than this (elements) are not materialised: the operation falls back.
MAX_PROBE = 1 << 24


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


def mix(ch: Channels, shape: tuple[int, ...]) -> Channels:
    """Every channel of every term reaches every position of a tensor of ``shape``."""
    terms = tuple(
        Term(t.producer, None, everywhere_of(t))
        for t in ch.terms
        if t.index is None or (t.index >= 0).any()
    )
    return Channels((), shape, terms)


def union(parts: list[Channels], shape: tuple[int, ...]) -> Channels:
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
                p = collapse(p, a, p.shape[:a] + (1,) + p.shape[a + 1 :])
        moved.append((tuple(a + shift for a in p.axes), p, shift))
    axes = tuple(sorted({a for axes_, _, _ in moved for a in axes_}))
    sizes = tuple(shape[a] for a in axes)
    if math.prod(sizes) > MAX_PROBE:
        return mix(Channels((), shape, tuple(t for p in tracked_parts for t in p.terms)), shape)
    terms = []
    for axes_, p, shift in moved:
        for t in p.terms:
            if t.index is None or (axes_ == axes and t.index.shape == sizes):
                terms.append(t)  # in place already: the same term (see collapse's memo)
                continue
            arr = t.index.reshape([p.shape[a - shift] if a in axes_ else 1 for a in axes])
            terms.append(t.moved(np.broadcast_to(arr, sizes)))
    return Channels(axes, shape, tuple(terms))


def probe_tensor(ch: Channels, base: int) -> torch.Tensor:
    """A tensor of the channels' shape holding ``base`` + the flat channel position.

    ``base`` is at least 1, so that the zeros an operation pads with mean "no channel".
    float64 holds these integers exactly and every movement op takes it.
    """
    sizes = ch.sizes
    values = np.arange(base, base + math.prod(sizes), dtype=np.float64)
    view = [1] * len(ch.shape)
    for a, n in zip(ch.axes, sizes, strict=True):
        view[a] = n
    # written out by numpy, single-threaded (see decode_probe)
    return torch.from_numpy(np.broadcast_to(values.reshape(view), ch.shape).copy())


def decode_probe(
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


def remap(
    channel_count: Callable[[str], int],
    ch_terms: list[tuple[Term, int, int]],
    axes: tuple[int, ...],
    shape: tuple[int, ...],
    positions: np.ndarray,
) -> Channels:
    """Terms re-indexed by probe positions (``positions`` hold base + flat input position).

    A term found everywhere in its input is found wherever that input's positions went:
    everywhere still, at some positions only (a masked term), or nowhere (a producer's
    channel count: ``channel_count``).
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
                    held = range(channel_count(term.producer))
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


def collapse(
    ch: Channels, axis: int, keepdim_shape: tuple[int, ...] | None, memo: dict | None = None
) -> Channels:
    """Positions along ``axis`` combine: each remaining position holds every channel along it.

    With ``keepdim_shape`` the axis stays (of the new size, broadcast); otherwise it is
    removed. ``memo`` (the pass's :attr:`~gpa.channels.operations.RoutingContext.collapsed`) keeps what a term's
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
        return mix(ch, new_shape)
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


def combine_along(ch: Channels, axes: list[int], memo: dict | None = None) -> Channels:
    """Every position along ``axes`` depends on every position along them (softmax, norms);
    ``memo``: see :func:`collapse`."""
    for a in axes:
        size = ch.shape[a]
        ch = collapse(ch, a, ch.shape[:a] + (1,) + ch.shape[a + 1 :], memo)
        shape = ch.shape[:a] + (size,) + ch.shape[a + 1 :]
        ch = union([ch], shape) if ch.axes else Channels((), shape, ch.terms)
    return ch


def within_groups(ch: Channels, axis: int, groups: int) -> Channels:
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


def cut_along(ch: Channels, dim: int, lo: int, hi: int, shape: tuple[int, ...]) -> Channels:
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
