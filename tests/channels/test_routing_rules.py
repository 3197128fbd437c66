"""The op -> rule table of the channel routing (gpa/channels/rules.py) and the pass using it.

Each routing expectation below is derived by hand: a Linear's channels lie on the last
axis, a Conv's on axis 1 (docs/semantics.md §8); ``inbound[producer]`` lists, per
consumer, the producer channel found at each of its input channels (``positions``) or,
for a mixing operation, the producer channels reaching all of them (``mixed``).
"""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gpa
from gpa.channels.movement import probe
from gpa.channels.operations import fallback
from gpa.channels.routing import CHANNELS, Consumer, _rows_along, route_channels, rule_for
from gpa.channels.rules import RULES, pointwise
from gpa.channels.values import Channels, Term, _collapsed_parts, distinct_rows
from gpa.frontends.fx import fx_gradient_graph
from gpa.options import AnalysisOptions


def _node_for(key) -> tuple[fx.Node, nn.Module | None]:
    """A node calling the operation ``key`` names, and the module it calls."""
    g = fx.Graph()
    x = g.placeholder("x")
    if isinstance(key, type):
        return g.call_module("m", (x,)), key.__new__(key)
    if callable(key):
        return g.call_function(key, (x, x)), None
    if key == "getitem":
        return g.call_function(operator.getitem, (x, 0)), None
    if key.startswith("getattr."):
        return g.call_function(getattr, (x, key.partition(".")[2])), None

    def named(*args):
        return args[0]

    named.__name__ = key  # a function is known by its name, wherever it comes from
    return g.call_function(named, (x,)), None


@pytest.mark.parametrize("key", list(RULES), ids=str)
def test_every_row_routes_its_operation(key):
    node, module = _node_for(key)
    assert rule_for(node, module) is RULES[key]


# Method names (a dunder such as "__matmul__" is reached as a function: a method call
# loses its trailing underscores).
METHODS = [k for k in RULES if isinstance(k, str) and k.isidentifier() and not k.startswith("__")]


@pytest.mark.parametrize("key", METHODS)
def test_methods_and_in_place_methods_route_by_name(key):
    g = fx.Graph()
    x = g.placeholder("x")
    assert rule_for(g.call_method(key, (x,))) is RULES[key]
    assert rule_for(g.call_method(key + "_", (x,))) is RULES[key]


def test_modules_route_by_their_most_specific_class():
    class MyBatchNorm(nn.BatchNorm2d):  # inherits _NormBase's row
        pass

    g = fx.Graph()
    node = g.call_module("m", (g.placeholder("x"),))
    assert rule_for(node, MyBatchNorm(4)) is pointwise
    assert rule_for(node, nn.Flatten()) is probe
    assert rule_for(node, nn.Softmax2d()) is fallback


def test_unknown_operations_fall_back():
    g = fx.Graph()
    x = g.placeholder("x")
    assert rule_for(g.call_method("cumsum", (x, 1))) is fallback
    assert rule_for(g.call_function(torch.cumsum, (x, 1))) is fallback
    assert rule_for(g.call_module("m", (x,)), nn.Module()) is fallback


# ---------------------------------------------------------- the pass at work


def route(model: nn.Module, shape: tuple[int, ...], outputs=None):
    graph = fx_gradient_graph(model, AnalysisOptions(input_shape=shape))
    return graph, route_channels(graph.traced, graph.calls, outputs)


def delivered(routing, producer: str) -> list[tuple]:
    """(consumer call, argument, output, positions or None, mixed) per delivery."""
    return [
        (
            d.consumer.call,
            d.consumer.argument,
            d.consumer.output,
            None if d.positions is None else d.positions.tolist(),
            d.mixed,
        )
        for d in routing.inbound[producer]
    ]


class Pair(nn.Module):
    """``forward`` = ``self.body`` applied to the output of Linear ``a`` (4 channels);
    the result feeds Linear ``b``."""

    def __init__(self, body, width: int = 4) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(width, 2)
        self.body = body

    def forward(self, x):
        return self.b(self.body(self.a(x)))


@pytest.mark.parametrize(
    "body, width, expected",
    [
        # cat: a's 4 channels, then its channel 0 again; each part is a delivery of its own
        (
            lambda y: torch.cat([y, y[:, :1]], 1),
            5,
            [([0, 1, 2, 3, -1], None), ([-1, -1, -1, -1, 0], None)],
        ),
        # chunk (direct rule): b sees the second half
        (lambda y: y.chunk(2, 1)[1], 2, [([2, 3], None)]),
        # narrow(1, start 1, length 2): channels 1, 2
        (lambda y: y.narrow(1, 1, 2), 2, [([1, 2], None)]),
        # slicing with a negative start: the last three
        (lambda y: y[:, -3:], 3, [([1, 2, 3], None)]),
        # flip is probed: reversed
        (lambda y: y.flip(1), 4, [([3, 2, 1, 0], None)]),
        # pointwise: positions kept
        (lambda y: torch.relu(y) * 2, 4, [([0, 1, 2, 3], None)]),
        # softmax over the channels: every channel reaches every input of b
        (lambda y: y.softmax(-1), 4, [(None, (0, 1, 2, 3))]),
        # a reduction over the channels, broadcast back: all mixed
        (lambda y: y - y.mean(1, keepdim=True), 4, [([0, 1, 2, 3], None), (None, (0, 1, 2, 3))]),
        # layer norm over the channel axis
        (lambda y: F.layer_norm(y, (4,)), 4, [(None, (0, 1, 2, 3))]),
        # an unknown operation: full mixing
        (lambda y: torch.cumsum(y, 1), 4, [(None, (0, 1, 2, 3))]),
        # normalize(x, p, dim): dim is the third argument (default 1, the channels here)
        (lambda y: F.normalize(y), 4, [(None, (0, 1, 2, 3))]),
        (lambda y: F.normalize(y, 2.0, 1), 4, [(None, (0, 1, 2, 3))]),
        # ... over the batch axis, the channels keep their positions
        (lambda y: F.normalize(y, 2.0, 0), 4, [([0, 1, 2, 3], None)]),
    ],
    ids=[
        "cat",
        "chunk",
        "narrow",
        "slice",
        "flip",
        "pointwise",
        "softmax",
        "mean",
        "ln",
        "cumsum",
        "normalize",
        "normalize-p-dim",
        "normalize-batch",
    ],
)
def test_linear_channels_through(body, width, expected):
    _, routing = route(Pair(body, width), (1, 4))
    assert [(p, m) for _, _, _, p, m in delivered(routing, "a")] == expected


def test_unknown_operation_is_reported_as_fallback():
    _, routing = route(Pair(lambda y: torch.cumsum(y, 1)), (1, 4))
    assert dict(routing.fallbacks) == {"a": {"cumsum"}}
    # and in the report: a's one segment receives b's gradient, every channel mixed
    report = gpa.analyze(Pair(lambda y: torch.cumsum(y, 1)), input_shape=(1, 4), channels=True)
    (segment,) = report.layers["a"].segments
    assert (segment.start, segment.stop, segment.fallback) == (0, 4, ("cumsum",))
    assert [(s.sender, s.channels, s.mixed) for s in segment.sources] == [("b", (0, 4), True)]


def test_unknown_module_is_reported_by_its_class():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.s, self.b = nn.Conv2d(3, 4, 1), nn.Softmax2d(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(self.s(self.a(x)))

    _, routing = route(Model(), (1, 3, 2, 2))
    assert dict(routing.fallbacks) == {"a": {"Softmax2d"}}
    assert delivered(routing, "a") == [("b", None, None, None, (0, 1, 2, 3))]


class Convs(nn.Module):
    """Conv ``a`` (4 channels on axis 1), ``body``, then conv ``b``."""

    def __init__(self, body, width: int = 4) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(width, 2, 1)
        self.body = body

    def forward(self, x):
        return self.b(self.body(self.a(x)))


def _shuffle(y):  # ShuffleNet's channel shuffle with 2 groups of 2
    return y.view(1, 2, 2, 2, 2).transpose(1, 2).reshape(1, 4, 2, 2)


@pytest.mark.parametrize(
    "body, width, expected",
    [
        # the shuffle interleaves the groups: b's input 1 holds a's channel 2
        (_shuffle, 4, [[0, 2, 1, 3]]),
        # group norm with 2 groups: each input channel holds one member of each pair
        # position r of its group (rows [0, 0, 2, 2] and [1, 1, 3, 3])
        (lambda y: F.group_norm(y, 2), 4, [[0, 0, 2, 2], [1, 1, 3, 3]]),
        # pooling keeps channels
        (lambda y: F.max_pool2d(y, 2), 4, [[0, 1, 2, 3]]),
        # zero-padding the channel axis by one on each side: none at 0 and 5
        (lambda y: F.pad(y, (0, 0, 0, 0, 1, 1)), 6, [[-1, 0, 1, 2, 3, -1]]),
    ],
    ids=["shuffle", "group_norm", "max_pool", "pad"],
)
def test_conv_channels_through(body, width, expected):
    _, routing = route(Convs(body, width), (1, 3, 2, 2))
    assert [p for _, _, _, p, _ in delivered(routing, "a")] == expected


class TransposedGroups(nn.Module):
    """Conv ``a`` (4 channels), a functional transposed conv with 2 groups given
    positionally (conv_transpose2d(x, w, b, stride, padding, output_padding, groups)), a
    head; ``w`` is a parameter of the root, so the transposed conv is a functional layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.w = nn.Parameter(torch.randn(4, 1, 1, 1))  # in 4, out 1 per group
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        return self.head(F.conv_transpose2d(self.a(x), self.w, None, 1, 0, 0, 2))


def test_groups_of_a_positional_functional_transposed_conv():
    graph, routing = route(TransposedGroups(), (1, 3, 2, 2))
    (call,) = [n for n, c in graph.calls.items() if c.record == "w"]
    assert routing.groups[call] == 2
    report = gpa.analyze(TransposedGroups(), input_shape=(1, 3, 2, 2), channels=True)
    # a's channels 0-1 reach the transposed conv's group 0, 2-3 its group 1
    assert [(s.start, s.stop) for s in report.layers["a"].segments] == [(0, 2), (2, 4)]


def test_flatten_gives_each_channel_its_block():
    # (1, 4, 2, 2) flattened: Linear input i holds conv channel i // 4
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Linear(16, 2)

        def forward(self, x):
            return self.b(torch.flatten(self.a(x), 1))

    _, routing = route(Model(), (1, 3, 2, 2))
    assert delivered(routing, "a") == [("b", None, None, [i // 4 for i in range(16)], None)]


def test_attention_mixes_query_and_key_and_keeps_value_channels():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))

        def forward(self, x):
            return self.o(F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x)))

    _, routing = route(Model(), (1, 3, 4))
    assert delivered(routing, "q") == [("o", None, None, None, (0, 1, 2, 3))]
    assert delivered(routing, "k") == [("o", None, None, None, (0, 1, 2, 3))]
    assert delivered(routing, "v") == [("o", None, None, [0, 1, 2, 3], None)]


def test_consumers_are_typed_arguments_and_outputs():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c = nn.Linear(4, 3), nn.Linear(4, 2)
            self.bil = nn.Bilinear(3, 2, 1)

        def forward(self, x):
            y, z = self.a(x), self.c(x)
            return self.bil(y, z), y

    _, routing = route(Model(), (1, 4))
    # the bilinear takes two tensors: y is its argument 0, z its argument 1; y is also
    # returned as output "1"
    assert delivered(routing, "a") == [
        ("bil", 0, None, [0, 1, 2], None),
        (None, None, "1", [0, 1, 2], None),
    ]
    assert delivered(routing, "c") == [("bil", 1, None, [0, 1], None)]
    assert Consumer(None, output="1") in routing.in_channels
    assert routing.in_channels[Consumer("bil", 0)] == 3


def test_every_node_is_annotated():
    graph, _ = route(Pair(lambda y: y.flip(1)), (1, 4))
    nodes = {n.name: n.meta[CHANNELS] for n in graph.traced.graph.nodes}
    assert nodes["output"] is None
    assert nodes["flip"].terms[0].index.tolist() == [3, 2, 1, 0]
    assert all(isinstance(v, Channels) for k, v in nodes.items() if k != "output")


class PaddedPool(nn.Module):
    """Ultralytics' HGStem (RT-DETR): a padded tensor max-pooled with stride 1, next to
    the padded tensor cut back. Padding puts positions without channels at the border;
    pooling changes the size of those channel-bearing axes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.pool = nn.MaxPool2d(2, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.a(x), [0, 1, 0, 1])
        return self.b(torch.cat([self.pool(x), x[:, :, :-1, :-1]], 1))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_pooling_a_padded_tensor(tracer):
    # by hand: a's channel c is b's input channels c (pooled) and 4 + c (cut back), so
    # a is one segment, one round from b; b's channels reach the loss
    report = gpa.analyze(PaddedPool(), input_shape=(1, 3, 5, 5), channels=True, tracer=tracer)
    (segment,) = report.layers["a"].segments
    assert (segment.start, segment.stop, segment.paths.timestamps) == (0, 4, (2,))
    assert [(s.sender, s.channels, s.mixed) for s in segment.sources] == [
        ("b", (0, 4), False),
        ("b", (4, 8), False),
    ]


class TokenMixing(nn.Module):
    """MLP-Mixer in small: ``s`` writes a stream of 3 tokens x 4 channels, ``a`` mixes the
    tokens (its 3 channels are the tokens), ``b`` reads the sum along the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.s, self.a, self.b = nn.Linear(4, 4), nn.Linear(3, 3), nn.Linear(4, 2)

    def forward(self, x):
        y = self.s(x)
        return self.b(y + self.a(y.transpose(1, 2)).transpose(1, 2))


def test_a_channel_broadcast_along_the_read_axis_is_one_masked_delivery():
    # a's channel t sits at token t of the stream, at every one of its 4 channels: each of
    # a's 3 channels reaches all 4 input channels of b (mixed, §8: each channel of the
    # segment reaches all of them). One delivery holds all three (not one per channel:
    # MLP-Mixer has 196 per block).
    _, routing = route(TokenMixing(), (1, 3, 4))
    (d,) = routing.inbound["a"]
    assert (d.consumer.call, d.positions.tolist(), d.held.tolist()) == ("b", [0] * 4, [0, 1, 2])
    report = gpa.analyze(TokenMixing(), input_shape=(1, 3, 4), channels=True)
    (segment,) = report.layers["a"].segments
    assert (segment.start, segment.stop, segment.paths.timestamps) == (0, 3, (2,))
    assert [(x.sender, x.channels, x.mixed) for x in segment.sources] == [("b", (0, 4), True)]
    # s reaches b directly (channel c at c) and through a, which reads its channel axis
    # as positions: every channel of s reaches every input of a
    (segment,) = report.layers["s"].segments
    assert segment.paths.timestamps == (2, 3)
    assert [(x.sender, x.channels, x.mixed) for x in segment.sources] == [
        ("a", (0, 3), True),
        ("b", (0, 4), False),
    ]


class TwoTokenMixers(nn.Module):
    """:class:`TokenMixing` with two token-mixing blocks writing to the stream."""

    def __init__(self) -> None:
        super().__init__()
        self.s, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.a1, self.a2 = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        y = self.s(x)
        y = y + self.a1(y.transpose(1, 2)).transpose(1, 2)
        y = y + self.a2(y.transpose(1, 2)).transpose(1, 2)
        return self.b(y)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_mixed_does_not_depend_on_how_the_stream_was_written(tracer):
    # By hand: every channel of s sits at every token, so it reaches every input channel
    # (token) of a1 and of a2 alike — mixed both times, though a1 reads s's own output and
    # a2 the stream after a1 wrote to it (a2 said "not mixed" before) — and channel c of b;
    # a1's channel t sits at token t: a2's input channel t (one each), every channel of b.
    report = gpa.analyze(TwoTokenMixers(), input_shape=(1, 3, 4), channels=True, tracer=tracer)
    (s,) = report.layers["s"].segments
    assert [(x.sender, x.channels, x.mixed) for x in s.sources] == [
        ("a1", (0, 3), True),
        ("a2", (0, 3), True),
        ("b", (0, 4), False),
    ]
    (a1,) = report.layers["a1"].segments
    assert [(x.sender, x.channels, x.mixed) for x in a1.sources] == [
        ("a2", (0, 3), False),
        ("b", (0, 4), True),
    ]


@pytest.mark.parametrize(
    "index",
    [
        np.broadcast_to(np.array([[1], [-1], [0]]), (3, 4)),  # broadcast along the read axis
        np.array([[1] * 4, [-1] * 4, [0] * 4]),  # the same values, written out
    ],
    ids=["broadcast", "written-out"],
)
def test_rows_each_one_channel_throughout_are_one_mask(index):
    # read along axis 1 (4 positions): channels 1 and 0 each at all 4 positions
    ((positions, held),) = _rows_along(Term("a", index), 1, 4)
    assert (positions.tolist(), held.tolist()) == ([0, 0, 0, 0], [0, 1])


def test_rows_differing_along_the_read_axis_are_one_delivery_each():
    index = np.array([[0, 1, -1], [-1, -1, -1], [0, 1, -1], [2, 2, 3]])
    found = _rows_along(Term("a", index), 1, 3)
    assert [(p.tolist(), h) for p, h in found] == [([0, 1, -1], None), ([2, 2, 3], None)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.integers(-1, 2), min_size=3, max_size=3), min_size=1, max_size=12),
    st.integers(1, 4),
)
def test_distinct_rows_are_each_row_holding_a_channel_once_in_order(rows, repeat):
    # brute force: rows in order, a row again or one holding no channel skipped; runs of a
    # row (each row ``repeat`` times, as token after token of one stream) change nothing
    index = np.repeat(np.array(rows), repeat, axis=0)
    expected: list[list[int]] = []
    for row in rows:
        if row not in expected and max(row) >= 0:
            expected.append(row)
    assert distinct_rows(index).tolist() == expected


class Twin(nn.Module):
    """Linear ``a`` (3 tokens x 4 channels), ``body``, Linear ``b`` over the channels."""

    def __init__(self, body) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.body = body

    def forward(self, x):
        return self.b(self.body(self.a(x)))


def _group_norm(groups):
    return lambda z: F.group_norm(z.transpose(1, 2), groups(z)).transpose(1, 2)


# Each operation's parameter computed in forward (a size, a rank) and written out; a's
# segments by hand: a norm or softmax over the channels reaches every input channel of b
# (mixed); a reduction or normalisation over the tokens keeps channel c at c; a group norm
# of 2 groups over the channels cuts a in two, each channel of a half reaching all of its
# half of b (mixed, as a layer norm's channels reach all of b).
MIXED = [(0, 4, [("b", (0, 4), True)])]
KEPT = [(0, 4, [("b", (0, 4), False)])]
HALVES = [(0, 2, [("b", (0, 2), True)]), (2, 4, [("b", (2, 4), True)])]


@pytest.mark.parametrize(
    "computed, written, expected",
    [
        (lambda z: F.layer_norm(z, z.shape[-1:]), lambda z: F.layer_norm(z, (4,)), MIXED),
        (lambda z: F.layer_norm(z, (z.shape[-1],)), lambda z: F.layer_norm(z, (4,)), MIXED),
        (lambda z: z.softmax(z.dim() - 1), lambda z: z.softmax(2), MIXED),
        (lambda z: F.normalize(z, 2.0, z.dim() - 2), lambda z: F.normalize(z, 2.0, 1), KEPT),
        (
            lambda z: z * z.mean(dim=z.dim() - 2, keepdim=True),
            lambda z: z * z.mean(dim=1, keepdim=True),
            KEPT,
        ),
        (
            lambda z: z * z.sum(dim=(z.dim() - 1,), keepdim=True),
            lambda z: z * z.sum(dim=(2,), keepdim=True),
            MIXED,
        ),
        (_group_norm(lambda z: z.shape[-1] // 2), _group_norm(lambda z: 2), HALVES),
    ],
    ids=[
        "layer-norm-size",
        "layer-norm-tuple",
        "softmax",
        "normalize",
        "mean",
        "sum",
        "group-norm",
    ],
)
def test_parameters_computed_in_forward_route_as_written_ones(computed, written, expected):
    # before: a raw TypeError (layer norm given x.shape[-1:], a sum over a computed dim) or
    # a needless fallback to full mixing (the others)
    for body in (computed, written):
        report = gpa.analyze(Twin(body), input_shape=(1, 3, 4), channels=True)
        found = [
            (s.start, s.stop, [(x.sender, x.channels, x.mixed) for x in s.sources], s.fallback)
            for s in report.layers["a"].segments
        ]
        assert found == [(*segment, ()) for segment in expected]


def test_an_empty_read_axis_delivers_nothing():
    assert _rows_along(Term("a", np.zeros((3, 0), dtype=np.int64)), 1, 0) == []


@pytest.mark.parametrize(
    "index, k, held",
    [
        # a norm's mask, alike at every (token, token) pair, read along the heads
        (np.broadcast_to(np.array([0, -1, 0, -1]), (3, 5, 4)), 2, np.array([1, 2])),
        # a channel row alike at every token, read along the channels
        (np.broadcast_to(np.array([2, -1, 0, 1]), (3, 4)), 1, None),
        # alike along the channels read, different per token
        (np.broadcast_to(np.array([[1], [-1], [3]]), (3, 4)), 1, None),
        # mixed: broadcast along one axis, varying along the other two
        (np.broadcast_to(np.arange(6).reshape(2, 1, 3) - 2, (2, 4, 3)), 2, None),
    ],
    ids=["held-mask", "one-row", "one-channel-per-row", "partly-broadcast"],
)
def test_a_broadcast_index_is_read_as_its_written_out_copy(index, k, held) -> None:
    size = index.shape[k]
    viewed = _rows_along(Term("p", index, held=held), k, size)
    written = _rows_along(Term("p", np.ascontiguousarray(index), held=held), k, size)
    assert len(viewed) == len(written) > 0
    for (rows, kept), (rows_, kept_) in zip(viewed, written, strict=True):
        assert np.array_equal(rows, rows_)
        assert (kept is None and kept_ is None) or np.array_equal(kept, kept_)


@pytest.mark.parametrize("kept", [False, True], ids=["removed", "kept"])
@pytest.mark.parametrize(
    "index, k, held",
    [
        # attention's mask per head, alike at every token pair, collapsed along the heads
        (np.broadcast_to(np.array([0, -1, 0])[:, None, None], (3, 4, 5)), 0, np.array([2])),
        # a channel row alike at every token, collapsed along the tokens or the channels
        (np.broadcast_to(np.array([2, -1, 0, 1]), (3, 4)), 0, None),
        (np.broadcast_to(np.array([2, -1, 0, 1]), (3, 4)), 1, None),
        # ten channels, one per row, alike along the last axis (a norm's many rows)
        (np.broadcast_to(np.arange(10)[:, None, None], (10, 2, 3)), 0, None),
        # ten alike rows, broadcast along the collapsed axis itself
        (np.broadcast_to(np.array([3, 3, -1]), (10, 3)), 0, None),
        # varying along the collapsed axis and one other, broadcast along the third
        (np.broadcast_to(np.arange(6).reshape(3, 2, 1) % 4 - 1, (3, 2, 5)), 0, None),
        (np.broadcast_to(np.arange(6).reshape(3, 2, 1) % 4 - 1, (3, 2, 5)), 1, None),
    ],
    ids=[
        "held-mask",
        "row-along-tokens",
        "row-along-channels",
        "many-rows",
        "alike-rows",
        "partly",
        "partly-1",
    ],
)
def test_a_broadcast_index_collapses_as_its_written_out_copy(index, k, held, kept) -> None:
    shape = tuple(1 if a == k else n for a, n in enumerate(index.shape)) if kept else None
    viewed = _collapsed_parts(Term("p", index, held=held), k, shape)
    written = _collapsed_parts(Term("p", np.ascontiguousarray(index), held=held), k, shape)
    assert len(viewed) == len(written) > 0
    for (part, kept_channels), (part_, kept_channels_) in zip(viewed, written, strict=True):
        assert part.shape == part_.shape and np.array_equal(part, part_)
        assert (kept_channels is None and kept_channels_ is None) or np.array_equal(
            kept_channels, kept_channels_
        )
