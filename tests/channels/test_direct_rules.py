"""Direct channel rules against the probe (``docs/semantics.md`` §8).

Axis permutations (``permute``, ``transpose``, ``movedim``, ``t``, ``.T``, ``.mT``),
reshapes (``view``, ``reshape``, ``flatten``, ``unflatten``, ``squeeze``, ``unsqueeze``)
and ``cat`` have direct rules that move each term's index without running the operation. The probe
is the independent reference: it runs the operation for real on a tensor holding channel
positions and reads them back. Both must give the same channel-bearing axes and, term by
term, the same channels at every position — for random shapes (size-1 axes included),
channel axes, and terms of every kind (an index with empty positions, a broadcast index,
a term found everywhere, a norm's mask of held channels, a term found nowhere).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpa.channels.movement import (
    _concatenated,
    _padded,
    _permuted,
    _reshaped,
    _rolled,
    _selected,
    _sliced,
    _unbound,
    probe,
)
from gpa.channels.operations import op_name
from gpa.channels.rules import RULES
from gpa.channels.values import Channels, Term
from gpa.frontends.fx.flow import FLOW, NodeFlow, Shape, ValueInfo

RESHAPES = ("reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze")


class _Context:
    """What the probe asks of the routing pass: nothing these operations need."""

    collapsed: dict = {}

    def fetch_attr(self, target: str) -> Any:
        raise AssertionError(target)

    def note_fallback(self, producer: str, why: str) -> None:
        raise AssertionError(f"{producer}: {why}")

    def channel_count(self, producer: str) -> int:
        return 4


@st.composite
def channels(draw: st.DrawFn) -> Channels:
    """A tensor of 1-4 axes (sizes 1-4), some axes holding channels, 1-3 terms."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    axes = tuple(a for a in range(len(shape)) if draw(st.booleans())) or (0,)
    sizes = tuple(shape[a] for a in axes)
    terms = []
    for k in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["index", "broadcast", "everywhere", "held", "nowhere"]))
        if kind == "everywhere":
            terms.append(Term(f"p{k}", None, everywhere=(0, 2)))
            continue
        values = np.array(
            draw(st.lists(st.integers(-1, 3), min_size=math.prod(sizes), max_size=math.prod(sizes)))
        ).reshape(sizes)
        if kind == "broadcast":  # one row of values repeated along the first channel axis
            values = np.broadcast_to(values[:1], sizes)
        if kind == "nowhere":
            values = np.full(sizes, -1)
        held = np.array([1, 3]) if kind == "held" else None
        terms.append(
            Term(f"p{k}", np.minimum(values, 0) if held is not None else values, held=held)
        )
    return Channels(axes, shape, tuple(terms))


@st.composite
def movements(draw: st.DrawFn, ndim: int, numel: int) -> tuple[str, str, tuple, dict]:
    """(``call_method`` or ``call_function``, target, arguments after the tensor, keywords)."""
    dim = st.integers(-ndim, ndim - 1)
    choices = ["permute", "permute-tuple", "torch.permute", "transpose", "torch.transpose",
               "movedim", "swapaxes", "reshape", "view", "flatten", "unflatten", "squeeze",
               "squeeze-all", "unsqueeze", "T"]  # fmt: skip
    if ndim <= 2:
        choices.append("t")
    if ndim >= 2:
        choices.append("mT")
    kind = draw(st.sampled_from(choices))
    perm = tuple(draw(st.permutations(range(ndim))))
    if kind == "permute":
        return "call_method", "permute", perm, {}
    if kind == "permute-tuple":
        return "call_method", "permute", (perm,), {}
    if kind == "torch.permute":
        return "call_function", torch.permute, (perm,), {}
    if kind in ("transpose", "swapaxes"):
        return "call_method", kind, (draw(dim), draw(dim)), {}
    if kind == "torch.transpose":
        return "call_function", torch.transpose, (draw(dim), draw(dim)), {}
    if kind == "movedim":
        return "call_method", "movedim", (draw(dim), draw(dim)), {}
    if kind in ("reshape", "view"):  # any factorisation of the size, with 1s, one -1 or none
        sizes, left = [], numel
        for p in (2, 2, 3, 2, 5, 3, 7):  # the prime factors, grouped at random
            while left % p == 0:
                left //= p
                if sizes and draw(st.booleans()):
                    sizes[-1] *= p
                else:
                    sizes.append(p)
        sizes = draw(st.permutations(sizes)) if draw(st.booleans()) else sizes
        sizes = [*sizes, *[1] * draw(st.integers(0, 2))]
        if sizes and draw(st.booleans()):
            sizes[draw(st.integers(0, len(sizes) - 1))] = -1
        return "call_method", kind, tuple(sizes) or (1,), {}
    if kind == "flatten":
        start = draw(st.integers(0, ndim - 1))
        return "call_method", "flatten", (start, draw(st.integers(start, ndim - 1))), {}
    if kind == "unflatten":
        return "call_method", "unflatten", (draw(dim), (1, -1)), {}
    if kind == "squeeze":
        return "call_method", "squeeze", (draw(dim),), {}
    if kind == "squeeze-all":
        return "call_method", "squeeze", (), {}
    if kind == "unsqueeze":
        return "call_method", "unsqueeze", (draw(st.integers(-ndim - 1, ndim)),), {}
    if kind in ("T", "mT"):
        return "call_function", getattr, (kind,), {}
    return "call_method", "t", (), {}


def _node(op: str, target: Any, args: tuple, kwargs: dict) -> tuple[fx.Node, fx.Node]:
    graph = fx.Graph()
    x = graph.placeholder("x")
    return x, graph.create_node(op, target, (x, *args), kwargs)


def _apply(op: str, target: Any, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    if op == "call_method":
        return getattr(x, target)(*args, **kwargs)
    return target(x, *args, **kwargs)


def _same(direct: Channels, probed: Channels) -> None:
    assert direct.axes == probed.axes
    assert direct.shape == probed.shape
    assert len(direct.terms) == len(probed.terms)
    for d, p in zip(direct.terms, probed.terms, strict=True):
        assert (d.producer, d.everywhere) == (p.producer, p.everywhere)
        assert (d.held is None) == (p.held is None)
        if d.held is not None:
            assert np.array_equal(d.held, p.held)
        assert (d.index is None) == (p.index is None)
        if d.index is not None:
            assert d.index.shape == p.index.shape == direct.sizes
            assert np.array_equal(d.index, p.index)


@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # .T of other than 2 axes: deprecated
@settings(max_examples=600, deadline=None)
@given(st.data())
def test_direct_rules_give_the_probes_answer(data: st.DataObject) -> None:
    value = data.draw(channels())
    op, target, args, kwargs = data.draw(movements(len(value.shape), math.prod(value.shape)))
    x, node = _node(op, target, args, kwargs)
    try:
        out = _apply(op, target, torch.empty(value.shape, device="meta"), args, kwargs)
    except (RuntimeError, IndexError):
        return  # not a valid call for this shape (a view of no such size …)
    shapes = Shape(out.shape)
    rule = _reshaped if op_name(node) in RESHAPES else _permuted
    direct = rule(node, {x: value}, shapes)
    assert direct is not None, f"{op_name(node)}{args}: the direct rule declined"
    _same(direct, probe(_Context(), node, {x: value}, shapes))


def test_the_table_sends_these_operations_to_the_direct_rules() -> None:
    names = "permute transpose movedim swapaxes t getattr.T getattr.mT view reshape flatten"
    assert all(RULES[n].__name__ in ("permuted", "reshaped") for n in names.split())
    moved = {"roll": "rolled", "pad": "padded", "constant_pad_nd": "padded"}
    moved |= {"unbind": "unbound", "select": "selected", "getitem": "getitem"}
    assert {n: RULES[n].__name__ for n in moved} == moved


def test_a_view_as_another_dtype_is_left_to_the_probe() -> None:
    value = Channels((0,), (4,), (Term("p", np.arange(4)),))
    x, node = _node("call_method", "view", (torch.int32,), {})
    assert _reshaped(node, {x: value}, Shape((4,))) is None


def test_a_head_split_keeps_each_channel_at_its_head() -> None:
    # (tokens 2, channels 4) -> (tokens 2, heads 2, 2 channels each): hand-derived
    value = Channels((1,), (2, 4), (Term("p", np.array([0, 1, 2, -1])),))
    x, node = _node("call_method", "view", (2, 2, 2), {})
    found = _reshaped(node, {x: value}, Shape((2, 2, 2)))
    assert found.axes == (1, 2)
    assert found.terms[0].index.tolist() == [[0, 1], [2, -1]]


@pytest.mark.parametrize(
    "target, args, shape",
    [("reshape", (32,), (32,)), ("view", (2, 2, 8), (2, 2, 8)), ("transpose", (0, 1), (8, 4))],
)
def test_a_tensor_larger_than_a_probe_is_left_to_the_probe(monkeypatch, target, args, shape):
    from gpa.channels import movement

    monkeypatch.setattr(movement, "MAX_PROBE", 10)  # the probe's limit, made small
    value = Channels((1,), (4, 8), (Term("p", np.arange(8) % 4),))
    x, node = _node("call_method", target, args, {})
    rule = _reshaped if target in RESHAPES else _permuted
    assert rule(node, {x: value}, Shape(shape)) is None


@pytest.mark.parametrize("target, args", [("transpose", (0, 1)), ("permute", (1, 0, 2))])
def test_an_empty_tensor_moves_no_channel(target, args) -> None:
    # (batch 2, no tokens, 4 channels): the index covers the channels only, not the empty
    # token axis; the probe finds nothing, and so must the rule
    value = Channels((2,), (2, 0, 4), (Term("p", np.arange(4)),))
    x, node = _node("call_method", target, args, {})
    assert _permuted(node, {x: value}, Shape((0, 2, 4))) is None
    assert probe(_Context(), node, {x: value}, Shape((0, 2, 4))).terms == ()


@st.composite
def joined(draw: st.DrawFn) -> tuple[list[str], dict[str, Channels], int, tuple[int, ...]]:
    """Tensors to concatenate (names, some repeated; their channels) along ``dim``."""
    ndim = draw(st.integers(1, 3))
    dim = draw(st.integers(0, ndim - 1))
    shape = [draw(st.integers(1, 3)) for _ in range(ndim)]
    # one producer's terms in several tensors (a class token and the patches of one
    # residual stream), or each tensor's its own
    shared = draw(st.booleans())
    values: dict[str, Channels] = {}
    for k in range(draw(st.integers(1, 3))):
        own = list(shape)
        own[dim] = draw(st.integers(0, 3))
        if k and draw(st.integers(0, 3)) == 0:  # a tensor without channels (a class token)
            values[f"t{k}"] = Channels((), tuple(own), ())
            continue
        drawn = draw(channels())
        axes = tuple(a for a in range(ndim) if draw(st.booleans())) or (dim,)
        sizes = tuple(own[a] for a in axes)
        terms = []
        for t in drawn.terms:
            if t.index is None:  # found everywhere in its tensor: some channels, or all
                whole = draw(st.booleans())
                producer = t.producer if shared else t.producer + f"t{k}"
                terms.append(Term(producer, None, None if whole else t.everywhere))
                continue
            values_ = np.array(
                draw(
                    st.lists(
                        st.integers(-1, 3), min_size=math.prod(sizes), max_size=math.prod(sizes)
                    )
                )
            ).reshape(sizes)
            if draw(st.booleans()):  # alike along the first axis, as a residual stream's
                values_ = np.broadcast_to(values_[:1], sizes)
            producer = t.producer if shared else t.producer + f"t{k}"
            terms.append(Term(producer, values_, held=t.held))
        values[f"t{k}"] = Channels(
            axes, tuple(own), tuple(terms) or (Term(f"p{k}", np.zeros(sizes, np.int64)),)
        )
    names = draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=4))
    return names, values, dim, tuple(shape)


@settings(max_examples=600, deadline=None)
@given(joined())
def test_cat_gives_the_probes_answer(case) -> None:
    names, values, dim, shape = case
    graph = fx.Graph()
    nodes = {n: graph.placeholder(n) for n in dict.fromkeys(names)}
    for n, node in nodes.items():
        info = ValueInfo(values[n].shape, "torch.float32", True)
        node.meta[FLOW] = NodeFlow(frozenset(), info, Shape(values[n].shape))
    node = graph.call_function(torch.cat, ([nodes[n] for n in names], dim))
    inputs = {nodes[n]: values[n] for n in nodes}
    total = list(shape)
    total[dim] = sum(values[n].shape[dim] for n in names)
    shapes = Shape(total)
    direct = _concatenated(node, inputs, shapes, _Context().channel_count)
    probed = probe(_Context(), node, inputs, shapes)
    if direct is None:  # declined: the probe answers
        return
    assert _meaning(direct) == _meaning(probed)


def test_a_class_token_and_its_patches_are_one_term_again() -> None:
    # a ViT-style stream: x = cat([x[:, :1], x[:, 1:] + f(...)], 1). The class token
    # (1 token) and the patches (2 tokens) both hold channels 0, 1 of "fc" at every token:
    # joined, "fc" is one term, the same row at the 3 tokens, read once (a broadcast)
    graph = fx.Graph()
    cls, patches = graph.placeholder("cls"), graph.placeholder("patches")
    values = {
        cls: Channels((2,), (1, 1, 2), (Term("fc", np.arange(2)),)),
        patches: Channels(
            (1, 2),
            (1, 2, 2),
            (
                Term("fc", np.broadcast_to(np.arange(2), (2, 2))),
                Term("proj", np.array([[1, 0], [-1, -1]])),
            ),
        ),
    }
    for n, v in values.items():
        n.meta[FLOW] = NodeFlow(
            frozenset(), ValueInfo(v.shape, "torch.float32", True), Shape(v.shape)
        )
    node = graph.call_function(torch.cat, ([cls, patches], 1))
    joined = _concatenated(node, values, Shape((1, 3, 2)), _Context().channel_count)
    assert joined.axes == (1, 2)
    assert [t.producer for t in joined.terms] == ["fc", "proj"]
    fc, proj = joined.terms
    assert fc.index.tolist() == [[0, 1], [0, 1], [0, 1]]
    assert fc.index.strides[0] == 0  # one row, not three
    assert proj.index.tolist() == [[-1, -1], [1, 0], [-1, -1]]
    assert _meaning(joined) == _meaning(probe(_Context(), node, values, Shape((1, 3, 2))))


def _meaning(value: Channels) -> dict[str, set[tuple[int, int]]]:
    """Producer -> its (flat position, channel) pairs in ``value``: what the channels
    say, however the terms are cut (one term per stretch of a tensor concatenated twice,
    or one for both) and whichever size-1 axes they keep."""
    found: dict[str, set[tuple[int, int]]] = {}
    view = [1] * len(value.shape)
    for a, n in zip(value.axes, value.sizes, strict=True):
        view[a] = n
    for t in value.terms:
        pairs = found.setdefault(t.producer, set())
        if t.index is None:  # every position
            held = (
                range(_Context().channel_count(t.producer))
                if t.everywhere is None
                else t.everywhere
            )
            pairs.update((p, c) for p in range(math.prod(value.shape)) for c in held)
            continue
        index = np.broadcast_to(t.index.reshape(view), value.shape).reshape(-1)
        for position, channel in enumerate(index.tolist()):
            if channel >= 0:
                held = [channel] if t.held is None else t.held.tolist()
                pairs.update((position, c) for c in held)
    return {p: pairs for p, pairs in found.items() if pairs}


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_slicing_gives_the_probes_answer(data: st.DataObject) -> None:
    value = data.draw(channels())
    index = []
    for n in value.shape[: data.draw(st.integers(1, len(value.shape)))]:
        if data.draw(st.integers(0, 3)) == 0:  # one position, its axis dropped (qkv[0])
            index.append(data.draw(st.integers(-n, n - 1)))
            continue
        lo = data.draw(st.integers(-n, n))
        hi = data.draw(st.one_of(st.none(), st.integers(-n, n)))
        index.append(slice(lo, hi, data.draw(st.sampled_from([None, 1, 1, 2]))))
    if data.draw(st.booleans()):
        index.insert(data.draw(st.integers(0, len(index))), Ellipsis)
    x, node = _node("call_function", operator.getitem, (tuple(index),), {})
    try:
        out = torch.empty(value.shape, device="meta")[tuple(index)]
    except IndexError:  # an integer past its axis (the Ellipsis moved it)
        assert _sliced(node, {x: value}, Shape(())) is None
        return
    if not out.numel():
        return  # empty: the probe finds no channel, the rules leave it to the probe
    shapes = Shape(out.shape)
    direct = _sliced(node, {x: value}, shapes)
    steps = [i.step for i in index if isinstance(i, slice)]
    assert direct is not None or 2 in steps, f"{index}: the direct rule declined"
    if direct is None:  # a step along a channel axis: the probe answers
        return
    probed = probe(_Context(), node, {x: value}, shapes)
    assert _meaning(direct) == _meaning(probed)
    if any(isinstance(i, int) for i in index):  # through _sliced_axes: as the probe leaves it
        _same(direct, probed)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_unbinding_and_selecting_give_the_probes_answer(data: st.DataObject) -> None:
    value = data.draw(channels())
    ndim = len(value.shape)
    dim = data.draw(st.integers(-ndim, ndim - 1))
    meta = torch.empty(value.shape, device="meta")
    if data.draw(st.booleans()):
        how = data.draw(st.sampled_from(["method", "function"]))
        x, node = (
            _node("call_method", "unbind", (dim,), {})
            if how == "method"
            else _node("call_function", torch.unbind, (), {"dim": dim})
        )
        shapes: Any = tuple(Shape(p.shape) for p in meta.unbind(dim))
        direct = _unbound(node, {x: value}, shapes)
    else:
        at = data.draw(st.integers(-value.shape[dim], value.shape[dim] - 1))
        x, node = _node("call_method", "select", (dim, at), {})
        shapes = Shape(meta.select(dim, at).shape)
        direct = _selected(node, {x: value}, shapes)
    assert direct is not None, f"{op_name(node)}: the direct rule declined"
    probed = probe(_Context(), node, {x: value}, shapes)
    if isinstance(shapes, Shape):
        direct, probed = (direct,), (probed,)
    assert len(direct) == len(probed)
    for d, p in zip(direct, probed, strict=True):
        _same(d, p)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_rolling_gives_the_probes_answer(data: st.DataObject) -> None:
    value = data.draw(channels())
    ndim = len(value.shape)
    dims = data.draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=3))
    shifts = [data.draw(st.integers(-5, 5)) for _ in dims]
    if len(dims) == 1 and data.draw(st.booleans()):
        shifts, dims = shifts[0], dims[0]  # torch.roll(x, 2, 1)
    else:
        shifts, dims = tuple(shifts), tuple(dims)
    if data.draw(st.booleans()):
        x, node = _node("call_method", "roll", (shifts, dims), {})
    else:
        x, node = _node("call_function", torch.roll, (shifts,), {"dims": dims})
    shapes = Shape(torch.empty(value.shape, device="meta").roll(shifts, dims).shape)
    direct = _rolled(node, {x: value}, shapes)
    assert direct is not None, f"roll{shifts, dims}: the direct rule declined"
    _same(direct, probe(_Context(), node, {x: value}, shapes))


def test_a_roll_of_the_flattened_tensor_is_left_to_the_probe() -> None:
    value = Channels((1,), (2, 3), (Term("p", np.arange(3)),))
    x, node = _node("call_function", torch.roll, (1,), {})
    assert _rolled(node, {x: value}, Shape((2, 3))) is None


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_padding_gives_the_probes_answer(data: st.DataObject) -> None:
    value = data.draw(channels())
    ndim = len(value.shape)
    pad = tuple(data.draw(st.integers(0, 2)) for _ in range(2 * data.draw(st.integers(1, ndim))))
    fill = data.draw(st.sampled_from([0.0, 1.0, -3.5]))
    if data.draw(st.booleans()):
        x, node = _node("call_function", F.pad, (pad,), {"value": fill})
    else:
        x, node = _node("call_function", torch.constant_pad_nd, (pad, fill), {})
    shapes = Shape(F.pad(torch.empty(value.shape, device="meta"), pad).shape)
    direct = _padded(node, {x: value}, shapes)
    found_everywhere = any(t.index is None for t in value.terms)
    assert direct is not None or (any(pad) and found_everywhere), f"pad{pad}: declined"
    if direct is not None:
        _same(direct, probe(_Context(), node, {x: value}, shapes))


@pytest.mark.parametrize(
    "pad, kwargs", [((1, -1), {}), ((1, 1), {"mode": "reflect"}), ((1, 1), {"mode": "replicate"})]
)
def test_cropping_and_copying_pads_are_left_to_the_probe(pad, kwargs) -> None:
    value = Channels((1,), (2, 3), (Term("p", np.arange(3)),))
    x, node = _node("call_function", F.pad, (pad,), kwargs)
    out = F.pad(torch.empty(2, 3), pad, **kwargs).shape
    assert _padded(node, {x: value}, Shape(out)) is None


def test_a_padded_token_axis_holds_no_channel_at_the_pads() -> None:
    # (tokens 2, channels 3) padded by one token after: by hand, token 2 holds none
    value = Channels((1,), (2, 3), (Term("p", np.array([0, 1, 2])),))
    x, node = _node("call_function", F.pad, ((0, 0, 0, 1),), {})
    found = _padded(node, {x: value}, Shape((3, 3)))
    assert found.axes == (0, 1)
    assert found.terms[0].index.tolist() == [[0, 1, 2], [0, 1, 2], [-1, -1, -1]]
