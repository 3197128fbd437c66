"""Where gradient stops: unused layers, integer and bool side branches, shape-only uses, detach.

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md); none was copied from gpa's output. The conventions and the
helpers (``expect``, ``expect_network``, ``at`` ...) are in tests/semantics.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gpa
from gpa.errors import TraceError
from tests.frontends.every_tracer import EVERY_TRACER
from tests.semantics import (
    LOSS,
    WITH_INPUTS,
    check_reachability_with_autograd,
    expect,
    expect_network,
    expect_unreachable,
    run,
)

# ======================================================================================
# Unused layers


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l5 = nn.Linear(4, 2)
        self.never = nn.Linear(4, 4)  # defined, never called

    def forward(self, x):
        a = self.l1(x)
        dead = self.l2(self.l3(a))  # called, result unused  # noqa: F841
        return self.l5(a)


def test_unused_layers():
    model = Unused()
    report = gpa.analyze(model, torch.randn(2, 4))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # forward order of first calls; the never-called layer last (docs/semantics.md §2)
    assert list(report.layers) == ["l1", "l3", "l2", "l5", "never"]
    # l5 feeds the loss: 1. l1 -> l5: 2, one path; l3 (and l2) give it no gradient, so its
    # only source is l5.
    expect(report, "l5", {1: 1}, (LOSS,))
    expect(report, "l1", {2: 1}, ("l5",))
    # l2's result is discarded; l3 feeds only l2: both receive nothing.
    expect_unreachable(report, "l2")
    expect_unreachable(report, "l3")
    # never called: calls 0, unreachable
    expect_unreachable(report, "never", calls=0)
    expect_network(
        report,
        layers=5,
        max_shortest=2,
        min_shortest=1,
        mean_shortest=1.5,
        longest=2,
        unreachable=("l2", "l3", "never"),
    )


# ======================================================================================
# Integer / bool side branches


class IntSide(nn.Module):
    """a = l1(x); s = l2(x); s only becomes an integer or bool value used to index/mask a."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 5)
        self.l2 = nn.Linear(4, 5)
        width = {"argmax": 1, "index": 1, "max_indices": 1, "topk_indices": 2}
        self.head = nn.Linear(width.get(kind, 5), 2)
        self.kind = kind

    def forward(self, x):
        a, s = self.l1(x), self.l2(x)
        if self.kind == "argmax":
            v = torch.gather(a, 1, s.argmax(dim=1, keepdim=True))
        elif self.kind == "compare":
            v = a * (s > 0).float()
        elif self.kind == "index":
            v = a[torch.arange(a.size(0)), s.argmax(dim=1)].unsqueeze(1)
        elif self.kind == "long":
            v = torch.gather(a, 1, s.long().clamp(0, 4))
        elif self.kind == "to_int64":
            v = torch.gather(a, 1, s.to(torch.int64).clamp(0, 4))
        elif self.kind == "max_indices":
            _, idx = s.max(dim=1, keepdim=True)
            v = torch.gather(a, 1, idx)
        elif self.kind == "topk_indices":
            v = torch.gather(a, 1, s.topk(2, dim=1).indices)
        elif self.kind == "sort_indices":
            _, idx = s.sort(dim=1)
            v = torch.gather(a, 1, idx)
        else:
            v = torch.where(s > s.mean(), a, torch.zeros_like(a))
        return self.head(v)


INT_KINDS = [
    "argmax",
    "index",
    "compare",
    "long",
    "to_int64",
    "max_indices",
    "topk_indices",
    "sort_indices",
    "where",
]


@pytest.mark.parametrize("kind", INT_KINDS)
@WITH_INPUTS
def test_integer_side_branch(kind, with_inputs):
    model = IntSide(kind)
    report = run(model, torch.randn(2, 4), with_inputs)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # gradient reaches a (l1) through gather / mul / where; s only yields integers or bools:
    # l2 is unreachable. head 1, l1 -> head 2.
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "l1", {2: 1}, ("head",))
    expect_unreachable(report, "l2")
    expect_network(
        report,
        layers=3,
        max_shortest=2,
        min_shortest=1,
        mean_shortest=1.5,
        longest=2,
        unreachable=("l2",),
    )


class ArgmaxEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 6)
        self.table = nn.Embedding(6, 4)
        self.l1 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        idx = self.score(x).argmax(dim=1)  # an integer index into the table
        return self.head(self.table(idx) + self.l1(x))


def test_argmax_as_embedding_index():
    report = gpa.analyze(ArgmaxEmbedding(), torch.randn(2, 4))
    # table's weight gets gradient (table -> head: 2); score only produces the index: unreachable
    expect(report, "table", {2: 1}, ("head",))
    expect(report, "l1", {2: 1}, ("head",))
    expect(report, "head", {1: 1}, (LOSS,))
    expect_unreachable(report, "score")


# ======================================================================================
# Shape-only arguments and values without gradient


SHAPE_OPS = {
    "expand_as": lambda a, b: b.expand_as(a),
    "zeros_like": lambda a, b: b + torch.zeros_like(a),
    "ones_like": lambda a, b: b * torch.ones_like(a),
    "randn_like": lambda a, b: b + torch.randn_like(a),
    "full_like": lambda a, b: b + torch.full_like(a, 2.0),
    "new_zeros": lambda a, b: b + a.new_zeros(a.shape),
    "new_ones_size": lambda a, b: b + a.new_ones(a.size()),
    "view_as": lambda a, b: b.reshape(-1).view_as(a),
    "reshape_as": lambda a, b: b.reshape(-1).reshape_as(a),
    "type_as": lambda a, b: b.type_as(a),
    "to_other": lambda a, b: b.to(a),
    "size": lambda a, b: b.view(a.size(0), -1),
    "shape": lambda a, b: b.reshape(a.shape[0], a.shape[1]),
    "new_empty_bernoulli": lambda a, b: b * a.new_empty(a.shape).bernoulli_(0.5),
    "empty_like_bernoulli": lambda a, b: b * torch.empty_like(a).bernoulli_(0.5) * 2.0,
}


class ShapeOnly(nn.Module):
    """a = l1(x); b = l2(a); z = op(a, b) where a gives only its shape (or a no-grad mask);
    out = l3(z)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 1 if op == "expand_as" else 4)
        self.l3 = nn.Linear(4, 3)
        self.op = op

    def forward(self, x):
        a = self.l1(x)
        b = self.l2(a)
        return self.l3(SHAPE_OPS[self.op](a, b))


@pytest.mark.parametrize("op", sorted(SHAPE_OPS))
@WITH_INPUTS
def test_shape_only_arguments_add_no_edge(op, with_inputs):
    model = ShapeOnly(op)
    report = run(model, torch.randn(2, 4), with_inputs)
    # a reaches l3 only through l2; its direct use in op gives no gradient. If it did,
    # l1 would have a second path l1-l3 (length 2). So: l1 -> l2 -> l3, one path of 3;
    # l2 -> l3: 2; l3: 1.
    expect(report, "l1", {3: 1}, ("l2",))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l3", {1: 1}, (LOSS,))
    assert report.graph.has_edge("l1", "l2")
    assert not report.graph.has_edge("l1", "l3")
    # real autograd agrees that op(a, b) passes no gradient to a
    a = torch.randn(2, 4, requires_grad=True)
    b = torch.randn(2, 1 if op == "expand_as" else 4, requires_grad=True)
    grad_a, grad_b = torch.autograd.grad(SHAPE_OPS[op](a, b).sum(), [a, b], allow_unused=True)
    assert grad_a is None and grad_b is not None


class ShapeOfLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)

    def forward(self, x):
        a = self.l1(x)
        return self.l2(x).view(a.shape[0], -1)


def test_layer_used_only_for_its_shape_is_unreachable():
    report = gpa.analyze(ShapeOfLayer(), torch.randn(2, 4))
    # l1's output gives only its shape: no gradient; l2 feeds the loss: 1
    expect_unreachable(report, "l1")
    expect(report, "l2", {1: 1}, (LOSS,))


# ======================================================================================
# Detach


class Detached(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 2)
        self.how = how

    def forward(self, x):
        a = self.l1(x)
        if self.how == "method":
            skip = a.detach()
        elif self.how == "function":
            skip = torch.detach(a)
        else:
            skip = a.data
        return self.l3(self.l2(a) + skip)


@pytest.mark.parametrize("how", ["method", "function", "data"])
@WITH_INPUTS
def test_detach(how, with_inputs):
    model = Detached(how)
    report = run(model, torch.randn(2, 4), with_inputs)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # the skip carries no gradient: l1 reaches the loss only through l2:
    # l1-l2-l3 (3), not also l1-l3 (2). l2 2, l3 1.
    expect(report, "l1", {3: 1}, ("l2",))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l3", {1: 1}, (LOSS,))
    expect_network(report, layers=3, max_shortest=3, min_shortest=1, mean_shortest=2.0, longest=3)


@pytest.mark.slow  # (an export)
def test_export_says_what_stops_it_at_data() -> None:
    """torch.export keeps a tensor read through ``.data`` as a constant it cannot trace,
    and its error asks the user to file an issue with torch (a survey): gpa's says what
    it is, what export follows instead and where to go. By hand as in test_detach."""
    with pytest.raises(
        TraceError, match=r"by reading \.data \(\.detach\(\) is followed\)"
    ) as raised:
        gpa.analyze(Detached("data"), input_shape=(2, 4), tracer="export")
    assert "file an issue" not in str(raised.value)
    assert gpa.analyze(Detached("method"), input_shape=(2, 4), tracer="export").tracer == "export"
    report = gpa.analyze(Detached("data"), input_shape=(2, 4))
    expect(report, "l1", {3: 1}, ("l2",))


class FrozenStem(nn.Module):
    """A stem run under no_grad, then a layer whose own weights carry gradient although
    its input does not (a norm, a PReLU), then a head."""

    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.middle = middle
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        with torch.no_grad():
            x = self.stem(x)
        return self.head(self.middle(x))


@pytest.mark.parametrize(
    "middle",
    [
        lambda: nn.BatchNorm2d(4),
        lambda: nn.InstanceNorm2d(4, affine=True),
        lambda: nn.GroupNorm(2, 4),
        lambda: nn.LayerNorm([4, 6, 6]),
        lambda: nn.PReLU(4),
    ],
    ids=["batch_norm", "instance_norm", "group_norm", "layer_norm", "prelu"],
)
@pytest.mark.parametrize(
    "tracer", ["fx", "autograd", pytest.param("export", marks=pytest.mark.slow)]
)
def test_weights_after_a_no_grad_block_carry_gradient(middle, tracer):
    model = FrozenStem(middle())
    kind = type(model.middle)
    report = gpa.analyze(
        model, input_shape=(1, 3, 8, 8), tracer=tracer, layer_types=[nn.Conv2d, kind]
    )
    check_reachability_with_autograd(report, model, torch.randn(1, 3, 8, 8))
    # stem ran without gradient: unreachable. middle's weights feed head: head-middle (2);
    # head 1. Nothing reaches the stem through middle, whose input carries no gradient.
    expect_unreachable(report, "stem")
    expect(report, "middle", {2: 1}, ("head",))
    expect(report, "head", {1: 1}, (LOSS,))


def rectified_copy(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The same write inside a function fx keeps whole and traces into by value."""
    y = torch.nn.functional.linear(x, weight).clone()
    with torch.no_grad():
        y.relu_()
    return y * 2


def zeroed_column(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """An item assignment so (fx traces one only by value, inside such a function)."""
    y = torch.nn.functional.linear(x, weight).clone()
    with torch.no_grad():
        y[:, 0] = 0.0
    return y * 2


torch.fx.wrap("rectified_copy")
torch.fx.wrap("zeroed_column")


class WrittenUnderNoGrad(nn.Module):
    """b's output written in place under ``no_grad``, then read by head. Autograd records
    no write, so b's output keeps its history: by hand head 1, b 2 (head-b), a 3."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.how == "wrapped":
            return self.head(rectified_copy(self.a(x), self.b.weight) + self.b.bias)
        if self.how == "wrapped-setitem":
            return self.head(zeroed_column(self.a(x), self.b.weight) + self.b.bias)
        y = self.b(self.a(x))
        with torch.no_grad():
            if self.how == "method":
                y.clamp_(-1, 1)
            elif self.how == "functional-inplace":
                torch.nn.functional.relu(y, inplace=True)
            elif self.how == "module-inplace":
                self.act(y)
            elif self.how == "setitem":
                y[:, 0] = 0.0
            elif self.how == "augmented":
                y += 1.0
            elif self.how == "zeroed":
                y.zero_()
            elif self.how == "out":  # export records aten.add.out, writing its ``out``
                torch.add(y, 1.0, out=y)
            elif self.how == "detached-alias":  # the same memory, written through another name
                y.detach().clamp_(-1, 1)
        if self.how == "through-data":  # .data: an alias autograd does not see
            y.data.clamp_(-1, 1)
        return self.head(y)


WRITES = [
    "method", "functional-inplace", "module-inplace", "setitem", "augmented", "zeroed", "out",
    "detached-alias",
]  # fmt: skip


# What a frontend cannot read at all (auto moves on): fx item assignment in forward,
# export an in-place write through ``.data``.
REFUSED = {("fx", "setitem"): "item assignment", ("export", "through-data"): "cannot export"}


@pytest.mark.parametrize("how", [*WRITES, "through-data", "wrapped", "wrapped-setitem"])
@pytest.mark.parametrize(
    "tracer", ["fx", "autograd", "auto", pytest.param("export", marks=pytest.mark.slow)]
)
def test_a_write_under_no_grad_keeps_the_history_of_what_it_writes_into(how, tracer):
    model = WrittenUnderNoGrad(how)
    if (tracer, how) in REFUSED:
        with pytest.raises(TraceError, match=REFUSED[tracer, how]):
            gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        return
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "b", {2: 1}, ("head",))
    expect(report, "a", {3: 1}, ("b",))


@pytest.mark.parametrize("how", [w for w in WRITES if w != "setitem"])
def test_without_inputs_a_write_under_no_grad_keeps_the_history_too(how):
    # fx without example inputs decides flow from operation names: the same paths by hand
    report = gpa.analyze(WrittenUnderNoGrad(how), tracer="fx")
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "b", {2: 1}, ("head",))
    expect(report, "a", {3: 1}, ("b",))


class WrittenThroughDetached(nn.Module):
    """``v = h.detach()`` written in place with f's output (with gradient on), then h read by
    b and, with ``read_alias``, v by c. The write changes h's values, not its history:
    autograd gives b's gradient to a alone, and c's (v's history is the write) to f. By
    hand: b 1 (loss), a 2 (b); f unreachable, or 2 (c) with c 1 (loss) — unless the write
    goes through a detached alias of v in turn (``v.detach().sub_(y)``: v keeps none)."""

    def __init__(self, how: str, read_alias: bool) -> None:
        super().__init__()
        self.how, self.read_alias = how, read_alias
        self.a, self.f, self.b, self.c = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x):
        h, y = self.a(x), self.f(x)
        v = h[0].detach() if self.how == "view-then-detach" else h.detach()
        if self.how == "augmented":
            v += y
        elif self.how in ("method", "view-then-detach"):
            v.add_(y[0] if self.how == "view-then-detach" else y)
        elif self.how == "mul":
            v.mul_(y)
        elif self.how == "copy":
            v.copy_(y)
        elif self.how == "setitem":
            v[0] = y[0]
        elif self.how == "into-a-view":
            v[1].add_(y[1])
        elif self.how == "reshaped":
            v.view(-1).add_(y.view(-1))
        elif self.how == "detached-twice":
            v.detach().sub_(y)
        out = self.b(h)
        return out + self.c(v) if self.read_alias else out


DETACHED_WRITES = [
    "augmented", "method", "mul", "copy", "setitem", "into-a-view", "reshaped",
    "detached-twice", "view-then-detach",
]  # fmt: skip


@pytest.mark.parametrize("read_alias", [False, True], ids=["base-read", "alias-read"])
@pytest.mark.parametrize("how", DETACHED_WRITES)
@pytest.mark.parametrize(
    "tracer", ["fx", "autograd", "auto", pytest.param("export", marks=pytest.mark.slow)]
)
def test_a_write_through_a_detached_alias_leaves_the_bases_history(tracer, how, read_alias):
    # export's functional form made h's readers read the write (f feeding b, a unreachable)
    model = WrittenThroughDetached(how, read_alias)
    if tracer == "fx" and how == "setitem":
        with pytest.raises(TraceError, match="item assignment"):
            gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        return
    if tracer == "fx" and read_alias and how in ("into-a-view", "reshaped"):
        with pytest.raises(TraceError, match="through views"):  # v read after its view's write
            gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        return
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("b",))
    if read_alias:
        expect(report, "c", {1: 1}, (LOSS,))
    if read_alias and how != "detached-twice":
        expect(report, "f", {2: 1}, ("c",))
    else:
        expect_unreachable(report, "f")


class AllDetached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)

    def forward(self, x):
        # the output carries gradient (to the input) but l1's part of it is detached; a
        # model whose outputs carry none is an error (tests/cli/test_errors.py)
        return x + self.l1(x).detach()


def test_no_reachable_layer():
    report = gpa.analyze(AllDetached(), torch.randn(2, 4))
    # l1's result is detached: l1 gets nothing; the shortest/longest summaries are over
    # an empty set of reachable layers: None (null in JSON)
    expect_unreachable(report, "l1")
    expect_network(
        report,
        layers=1,
        max_shortest=None,
        min_shortest=None,
        mean_shortest=None,
        longest=None,
        unreachable=("l1",),
    )
    assert json.loads(report.to_json())["network"]["max_shortest"] is None


class Broadcast(nn.Module):
    """Two layers broadcast together by one multi-result op; only the second result is
    returned, so only b (and its input) receives gradient."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        if self.op == "broadcast_tensors":
            _, kept = torch.broadcast_tensors(self.a(x), self.b(x))
        elif self.op == "atleast_2d":
            _, kept = torch.atleast_2d(self.a(x), self.b(x))
        else:  # a list result: torch.unbind of a stack
            _, kept = torch.unbind(torch.stack([self.a(x), self.b(x).expand(-1, 4)]))
        return kept


@pytest.mark.parametrize("op", ["broadcast_tensors", "atleast_2d", "unbind"])
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_each_result_of_a_multi_result_op_apart(op, tracer):
    model = Broadcast(op)
    report = gpa.analyze(model, torch.randn(2, 4), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    expect(report, "b", {1: 1}, (LOSS,))
    if op == "unbind":  # stack then unbind: each part is one of the stacked tensors again,
        # but the stack is one tensor: both layers reach the loss through it
        expect(report, "a", {1: 1}, (LOSS,))
    else:
        expect_unreachable(report, "a")


class WrittenThroughItsAlias(nn.Module):
    """``y = op(h)``, ``y += f(h)``, then ``h`` read again by b. Where ``op`` returns ``h``
    itself (dropout in eval mode, ``contiguous`` of a contiguous tensor, ``float`` of a
    float one) or a view of it (``nn.Unflatten``) the write changes ``h`` too: by hand f's sources are b and g. Where it
    returns a new tensor (dropout in train mode, ``h * 1``) only g reads f. (f reads a
    copy of ``h``: a real backward needs the tensors it saved as they were.)"""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.f = nn.Linear(3, 4), nn.Linear(4, 4)
        self.b, self.g = nn.Linear(4, 2), nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)
        self.unflatten = nn.Unflatten(1, (2, 2))  # a view of its input, not the input

    def forward(self, x):
        h = self.a(x)
        if self.how == "unflatten-module":
            y = self.unflatten(h)
        elif self.how == "dropout-module":
            y = self.drop(h)
        elif self.how == "dropout-function":
            y = torch.nn.functional.dropout(h, 0.5, self.training)
        elif self.how == "contiguous":
            y = h.contiguous()
        elif self.how == "float":
            y = h.float()
        else:
            y = h * 1.0
        y += self.f(h * 1.0).view(y.shape)
        return self.b(h) + self.g(y.reshape(h.shape))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(
    "how", ["dropout-module", "dropout-function", "contiguous", "float", "unflatten-module", "copy"]
)
def test_a_write_through_an_operation_returning_its_input_reaches_the_input(how, train):
    model = WrittenThroughItsAlias(how)
    always = ("contiguous", "float", "unflatten-module")
    aliased = how in always or (how.startswith("dropout") and not train)
    expected = ("b", "g") if aliased else ("g",)
    if aliased:  # fx's graph shows no write into h: refused, auto moves on
        with pytest.raises(TraceError, match="holds the same memory as 'a'"):
            gpa.analyze(model, input_shape=(2, 3), tracer="fx", train=train)
    for tracer in ["autograd", "auto"] + ([] if aliased else ["fx"]):
        report = gpa.analyze(model, input_shape=(2, 3), tracer=tracer, train=train)
        assert tuple(sorted(report.layers["f"].sources)) == expected, tracer
        check_reachability_with_autograd(report, model, torch.randn(2, 3))


class WrittenBesideItsAlias(nn.Module):
    """``y = chain(h)``, then f's output written into one name and the other read by b:
    ``y += f(x); b(h)`` or ``h += f(x); b(y)``. Where every operation of the chain returns
    its input itself or a view of it, the write changes both names: by hand b 1 (loss),
    a and f 2 (b). Where one makes a new tensor, f reaches b only if the write goes into
    the name b reads (``write_into_read``)."""

    CHAINS = {
        "contiguous": lambda s, h: h.contiguous(),
        "identity-module": lambda s, h: s.identity(h),
        "contiguous-twice": lambda s, h: h.contiguous().contiguous(),
        "identity-twice": lambda s, h: s.identity(s.identity(h)),
        "float-then-contiguous": lambda s, h: h.float().contiguous(),
        "identity-then-contiguous": lambda s, h: s.identity(h).contiguous(),
        "flatten-module-of-2d": lambda s, h: s.flatten(h),
        "dropout-module": lambda s, h: s.drop(h),
        "dropout-at-zero": lambda s, h: torch.nn.functional.dropout(h, 0.0, True),
        "contiguous-then-times-one": lambda s, h: h.contiguous() * 1.0,
    }

    def __init__(self, chain: str, write_into_base: bool) -> None:
        super().__init__()
        self.chain, self.write_into_base = chain, write_into_base
        self.a, self.f, self.b = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.identity, self.flatten, self.drop = nn.Identity(), nn.Flatten(), nn.Dropout(0.5)

    def forward(self, x):
        h = self.a(x)
        y = self.CHAINS[self.chain](self, h)
        written, read = (h, y) if self.write_into_base else (y, h)
        written += self.f(x)
        return self.b(read)


@pytest.mark.parametrize("write_into_base", [False, True], ids=["alias-written", "base-written"])
@pytest.mark.parametrize("chain", sorted(WrittenBesideItsAlias.CHAINS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_a_write_beside_an_alias_made_through_a_chain_reaches_the_other_name(
    chain, write_into_base, train
):
    # fx missed the write where the alias took more than one operation, or where the base
    # was written and the alias read (f reported feeding nothing); export read dropout in
    # eval mode or at p = 0 as a copy
    model = WrittenBesideItsAlias(chain, write_into_base)
    aliased = chain != "contiguous-then-times-one" and not (chain == "dropout-module" and train)
    if aliased:
        with pytest.raises(TraceError, match="holds the same memory as"):
            gpa.analyze(model, input_shape=(2, 4), tracer="fx", train=train)
    tracers = ["autograd", "auto", "export"] + ([] if aliased else ["fx"])
    for tracer in tracers:
        report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, train=train)
        check_reachability_with_autograd(report, model.train(train), torch.randn(2, 4))
        expect(report, "b", {1: 1}, (LOSS,))
        expect(report, "a", {2: 1}, ("b",))
        if aliased:
            expect(report, "f", {2: 1}, ("b",))
        else:
            expect_unreachable(report, "f")


class DetachedBeforeItsBaseIsWritten(nn.Module):
    """``v = h.detach(); h += f(x)``, then v read by c (and x by d, so that the output
    carries gradient): v sees the new values but has no history, so by hand only d gets
    gradient (1, loss); a, f and c none (c's weights do: c's own parameters are reached
    through its call at 1). ``also_h``: ``c(h)`` too, through which a and f reach c."""

    def __init__(self, also_h: bool) -> None:
        super().__init__()
        self.also_h = also_h
        self.a, self.f, self.c, self.d = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x):
        h = self.a(x)
        v = h.detach()
        h += self.f(x)
        out = self.c(v) + self.d(x)
        return out + self.c(h) if self.also_h else out


@pytest.mark.parametrize("also_h", [False, True], ids=["alias-read", "both-read"])
@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto", "export"])
def test_a_detached_alias_read_after_its_base_is_written_carries_no_gradient(tracer, also_h):
    # export's functional form detached again where v is read, inside c's call: a and f
    # were reported feeding c
    model = DetachedBeforeItsBaseIsWritten(also_h)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    expect(report, "d", {1: 1}, (LOSS,))
    if also_h:
        expect(report, "c", {1: 2}, (LOSS,), calls=2)
        expect(report, "a", {2: 1}, ("c",))
        expect(report, "f", {2: 1}, ("c",))
    else:
        expect(report, "c", {1: 1}, (LOSS,))
        expect_unreachable(report, "a")
        expect_unreachable(report, "f")


class WrittenUnderNoGradThroughAView(nn.Module):
    """``with torch.no_grad(): view(h).write_()``, then h read by c (and x by b): autograd
    records no write, so h keeps its history — by hand c 1 (loss), a 2 (c), b 1 (loss)."""

    WRITES = {
        "zero-a-column": lambda h: h[:, 0].zero_(),
        "fill-a-narrow": lambda h: h.narrow(1, 0, 2).fill_(0.0),
        "clamp-a-view": lambda h: h.view(-1).clamp_(-1, 1),
        "set-a-slice": lambda h: h[:, :2].copy_(torch.ones(2, 2)),
    }

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        with torch.no_grad():
            self.WRITES[self.how](h)
        return self.c(h) + self.b(x)


@pytest.mark.parametrize("how", sorted(WrittenUnderNoGradThroughAView.WRITES))
@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto", "export"])
def test_a_write_under_no_grad_into_a_view_is_read_by_every_frontend(tracer, how):
    # the autograd frontend raised (it asked the view made under no_grad its grad_fn);
    # fx refused the write into a view of h read afterwards
    model = WrittenUnderNoGradThroughAView(how)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    expect(report, "c", {1: 1}, (LOSS,))
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("c",))


class ConstantThroughItsAlias(nn.Module):
    """``y = drop(h)`` (``h`` itself in eval mode), ``y += 1`` or ``y += f(x)`` under
    ``no_grad``: a write bringing no gradient changes no path, so fx reads it (by hand: a
    feeds b and g, each at path length 2; f, under no_grad, reaches nothing)."""

    def __init__(self, under_no_grad: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.g = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)
        self.f = nn.Linear(3, 4)
        self.drop = nn.Dropout(0.5)
        self.under_no_grad = under_no_grad

    def forward(self, x):
        h = self.a(x)
        y = self.drop(h)
        if self.under_no_grad:  # autograd records no write: f reaches nothing
            z = self.f(x)
            with torch.no_grad():
                y += z
        else:
            y += 1.0
        return self.b(h) + self.g(y)


@pytest.mark.parametrize("under_no_grad", [False, True], ids=["constant", "under-no-grad"])
def test_a_constant_written_through_an_alias_is_read_by_fx(under_no_grad):
    model = ConstantThroughItsAlias(under_no_grad)
    report = gpa.analyze(model, input_shape=(2, 3), tracer="fx", train=False)
    expect(report, "a", {2: 2}, ("b", "g"))
    check_reachability_with_autograd(report, model.eval(), torch.randn(2, 3))


class Levels(nn.Module):
    """A head per decoder level, stacked (detection transformers): l0 -> l1; head.0 reads
    l0, head.1 reads l1. ``pick`` says what is returned."""

    def __init__(self, pick: str) -> None:
        super().__init__()
        self.pick = pick
        self.l0, self.l1 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.head = nn.ModuleList([nn.Linear(4, 3), nn.Linear(4, 3)])
        self.register_buffer("rows", torch.tensor([1, 0]))
        self.register_buffer("keep", torch.tensor([True, False]))
        self.register_buffer("cells", torch.tensor([[True, False, True], [False, True, True]]))

    def forward(self, x: torch.Tensor):
        h0 = self.l0(x)
        h1 = self.l1(h0)
        outs = [self.head[0](h0), self.head[1](h1)]
        levels = torch.stack(outs)
        if self.pick == "last":
            return levels[-1]
        if self.pick == "select":
            return levels.select(0, 1)
        if self.pick == "first":
            return torch.select(levels, 0, 0)
        if self.pick == "tuple":
            return levels[-1, :]
        if self.pick == "keywords":
            return levels.select(dim=0, index=1)
        if self.pick == "further":  # the last level's first column
            return levels[-1, :, 0]
        if self.pick == "nested":  # a pick of a pick: levels[1]
            return torch.stack([levels, levels.flip(0)])[0][1]
        if self.pick == "deeper":  # a pick of a pick of a pick: levels[1]
            stacked = torch.stack([levels, levels])
            return torch.stack([stacked, stacked])[1][0][1]
        if self.pick == "negative":  # a negative axis: levels[1]
            return levels.select(-3, 1)
        if self.pick == "sliced":  # a pick after a whole axis: levels stacked on axis 1
            return torch.stack(outs, dim=1)[:, 1]
        if self.pick == "ellipsis":  # a pick after an ellipsis: stacked on the last axis
            return torch.stack(outs, dim=-1)[..., 1]
        if self.pick == "between":  # an ellipsis, the pick, then more: levels[1][:, :2]
            return torch.stack(outs, dim=1)[..., 1, :2]
        if self.pick == "trailing":  # an ellipsis after the pick: levels[1]
            return levels[1, ...]
        if self.pick == "unsqueezed":  # an ellipsis, the pick, a new axis: levels[1][..., None]
            return torch.stack(outs, dim=-1)[..., 1, None]
        if self.pick == "inner":  # a stack picked from a stack, then picked from: levels[1]
            stacked = torch.stack([torch.stack(outs[::-1], 1), torch.stack(outs, 1)])
            return stacked[1, :, 1]
        if self.pick == "indexed":  # rows by an index tensor, then the pick: levels[1][rows]
            return torch.stack(outs, dim=1)[self.rows, 1]
        if self.pick == "listed":  # rows by a list, then the pick: levels[1][[1, 0]]
            return torch.stack(outs, dim=1)[[1, 0], 1]
        if self.pick == "masked":  # rows by a mask, then the pick: levels[1][keep]
            return torch.stack(outs, dim=1)[self.keep, 1]
        if self.pick == "masked-2d":  # a mask of two axes, then the pick: levels[1][cells]
            return torch.stack(outs, dim=2)[self.cells, 1]
        if self.pick == "rows":  # the first row of every level, stacked on the last axis
            return torch.stack(outs, dim=-1)[0]
        if self.pick == "chosen":  # the level the data chooses: any of them
            return levels[h1.sum(-1).argmax() % 2]
        if self.pick == "across":  # an element along another axis: every level in it
            return levels[:, 0]
        return levels[-1], levels[:-1]  # the aux outputs too


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
def test_a_level_the_data_chooses_reads_every_head(tracer: str) -> None:
    """``levels[i]`` with ``i`` computed from data: which head the loss reads depends on the
    input, so every head is reached (fx and export cannot trace the pick; autograd ran it
    once and, before, read the element it picked then). By hand: both heads 1, l0 reaches
    head.0 (2) and, through l1, head.1 (3)."""
    report = gpa.analyze(Levels("chosen"), (torch.randn(2, 4),), tracer=tracer)
    expect(report, "head.0", {1: 1}, (LOSS,))
    expect(report, "head.1", {1: 1}, (LOSS,))
    expect(report, "l0", {2: 1, 3: 1}, ("l1", "head.0"))


@EVERY_TRACER
@pytest.mark.parametrize(
    "pick",
    [
        *("last", "select", "tuple", "keywords", "further", "nested", "deeper", "negative"),
        *("sliced", "ellipsis", "between", "trailing", "unsqueezed", "inner"),
        *("indexed", "listed", "masked", "masked-2d"),
        *("first", "across", "aux", "rows"),
    ],
)
def test_a_level_picked_from_a_stack_reads_only_its_head(tracer: str, pick: str) -> None:
    """By hand. ``levels[-1]`` is head.1's output itself: head.0 gets no gradient (a real
    backward gives it none), l1 -> head.1 (2), l0 -> l1 -> head.1 (3); so are picks of
    picks and a pick along the stacked axis named negatively (a survey and a review:
    autograd read every head), and a pick after whole axes or an ellipsis (``[:, 1]``,
    ``[..., 1]``, ``[..., 1, None]``) or of a stack picked from a stack (``S[1, :, 1]``): fx
    read every head; so it did after rows chosen by an index tensor, a list or a mask
    (``S[idx, 1]``: the index and the pick broadcast together, head 1's rows alone). ``first``: head.0
    alone, l0 -> head.0 (2), l1 and head.1 unreachable. Picking along another axis, or
    returning the other levels too, reads both heads: l0 -> head.0 (2) and l0 -> l1 ->
    head.1 (3); so does a row of levels stacked on the last axis (``rows``: autograd took the
    axis -1, saved unsigned, for the stacked one and read head.1 unreachable)."""
    model, x = Levels(pick), torch.randn(2, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    if pick in (
        "last",
        "select",
        "tuple",
        "keywords",
        "further",
        "nested",
        "deeper",
        "negative",
        "sliced",
        "ellipsis",
        "between",
        "trailing",
        "unsqueezed",
        "inner",
        "indexed",
        "listed",
        "masked",
        "masked-2d",
    ):
        expect(report, "head.1", {1: 1}, (LOSS,))
        expect(report, "l1", {2: 1}, ("head.1",))
        expect(report, "l0", {3: 1}, ("l1",))
        expect_unreachable(report, "head.0")
    elif pick == "first":
        expect(report, "head.0", {1: 1}, (LOSS,))
        expect(report, "l0", {2: 1}, ("head.0",))
        expect_unreachable(report, "l1")
        expect_unreachable(report, "head.1")
    else:
        expect(report, "head.0", {1: 1}, (LOSS,))
        expect(report, "head.1", {1: 1}, (LOSS,))
        expect(report, "l1", {2: 1}, ("head.1",))
        expect(report, "l0", {2: 1, 3: 1}, ("l1", "head.0"))
    # a real backward: autograd's stack sends the unpicked heads zeros, not None
    outputs = model(x)
    sum(t.sum() for t in (outputs if isinstance(outputs, tuple) else (outputs,))).backward()
    nonzero = {
        n for n in ("l0", "l1", "head.0", "head.1") if model.get_submodule(n).weight.grad.any()
    }
    assert nonzero == {n for n, r in report.layers.items() if r.reachable}
    if tracer in ("fx", "export"):  # the channel level agrees
        channels = gpa.analyze(model, (x,), tracer=tracer, channels=True)
        assert {n: r.shortest for n, r in channels.layers.items()} == {
            n: r.shortest for n, r in report.layers.items()
        }


class ReadAfterAWriteIntoAView(nn.Module):
    """A tensor written through a view (``g[:, 0] = 0``), then read through a view (or a
    detach) by a layer call and by something else. Export's functional form makes the view
    again before its first reader and records it in that reader's module call: the
    grouping by module folded it into the call. ``how`` picks the reading:

    * ``returned``: ``y = g.t().t()`` read by b and returned beside: by hand, a reaches the
      loss through y (length 1) and through b (length 2);
    * ``detached``: ``b(g.detach()) + d(c(h))``: gradient reaches a through c alone
      (a→c→d: 3); b's detach stops it;
    * ``skip``: a conditional position encoding after a class token is zeroed,
      ``head(peg(t) + t)`` with t = ``a(x)`` written: a reaches head directly (2) and
      through peg (3);
    * ``block``: the write and the view inside a block, ``y, z = block(x)`` returning
      ``b(v), v`` with v a view of the written tensor, then ``head(y) + z``: a reaches the
      loss through z (1) and through b and head (3);
    * ``before``: the view made before the write, ``b(v) + v`` (autograd makes its node
      again at its first reader, inside b's call: the autograd frontend folded it there):
      a reaches the loss through v (1) and through b (2);
    * ``carried``: the same with a value carrying gradient written, ``g[:, 1:2] = c(x)[:,
      :1]`` (fx and export refuse it: auto reads it with autograd): a and c each reach the
      loss through v (1) and through b (2).
    """

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c, self.d = (nn.Linear(4, 4) for _ in range(4))
        self.block = _WrittenBlock() if how == "block" else None

    def forward(self, x):
        if self.how == "block":
            y, z = self.block(x)
            return self.d(y) + z
        h = self.a(x)
        g = h * 1.0
        v = g.t().t() if self.how in ("before", "carried") else None  # made before the write
        if self.how == "carried":
            g[:, 1:2] = self.c(x)[:, :1]
        else:
            g[:, 0] = 0.0
        if self.how == "returned":
            y = g.t().t()
            return self.b(y), y
        if self.how == "detached":
            return self.b(g.detach()) + self.d(self.c(h))
        if self.how == "skip":  # c is the position encoding, d the head
            return self.d(self.c(g) + g)
        return self.b(v) + v


class _WrittenBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        g = self.a(x) * 1.0
        g[:, 0] = 0.0
        v = g.t().t()
        return self.b(v), v


@pytest.mark.parametrize("how", ["returned", "detached", "skip", "block", "before", "carried"])
@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_a_view_read_after_a_write_stays_where_it_was_made(tracer, how):
    """Found by a survey (a Twins/CPVT position encoding, torchvision's MViT): after a
    write into a view, export's views made again were folded into their first reader's
    call — one layer more on the other reader's paths, a detach lost — and auto, refused
    by fx (the write), gave export's numbers. Expected values by hand (class docstring)."""
    model = ReadAfterAWriteIntoAView(how)
    if how == "carried" and tracer == "export":
        with pytest.raises(TraceError, match="writes in place"):
            gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        return
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    auto = "autograd" if how == "carried" else "export"
    assert report.tracer == (auto if tracer == "auto" else tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    if how == "returned":
        expect(report, "a", {1: 1, 2: 1}, ("b", LOSS))
        expect(report, "b", {1: 1}, (LOSS,))
    elif how == "detached":
        expect(report, "a", {3: 1}, ("c",))
        expect(report, "b", {1: 1}, (LOSS,))
    elif how == "skip":
        expect(report, "a", {2: 1, 3: 1}, ("c", "d"))
        expect(report, "c", {2: 1}, ("d",))
    elif how == "block":
        expect(report, "block.a", {1: 1, 3: 1}, ("block.b", LOSS))
        expect(report, "block.b", {2: 1}, ("d",))
    else:
        expect(report, "a", {1: 1, 2: 1}, ("b", LOSS))
        expect(report, "b", {1: 1}, (LOSS,))
        if how == "carried":
            expect(report, "c", {1: 1, 2: 1}, ("b", LOSS))
