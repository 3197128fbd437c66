"""Feature mixing between a weight and constants is no layer; beside data it is one.

``docs/semantics.md`` §2: a functional feature-mixing call is a layer when it reads a
weight (a parameter, or a value computed from parameters alone — buffers and constants
may appear) beside data (a model input, a layer's output, or what is computed from them).
Spectral norm computes its weight's largest singular value with ``torch.mv(W, v)``, ``v``
a buffer; the autograd frontend took every operand carrying no gradient for data, so that
product became a second call of the layer (``spectral_norm(nn.Conv2d)``: calls 2, every
longest path one longer), and a buffer ``u`` in ``torch.mv(W, u)`` or ``torch.arange`` in
``F.embedding(torch.arange(n), table)`` made a layer of a weight transform. Export, for
its part, took the result of a layer module applied to a buffer for a weight: the
functional layer reading it was missed. Every frontend must give the hand-derived records
below, and a real backward pass the same reachability.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpa
from tests.frontends.every_tracer import EVERY_TRACER, auto_after_fx_refuses, layer_records
from tests.semantics import LOSS, check_reachability_with_autograd, expect, expect_unreachable


class Rescaled(nn.Module):
    """``l1``'s weight divided by a statistic of itself, then ``l1`` applied functionally;
    ``how`` says what the statistic reads beside the weight. ``l1 -> relu -> l2``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 2)
        self.register_buffer("u", torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.l1.weight
        if self.how == "buffer":  # spectral norm's estimate, its vectors given
            sigma = torch.dot(self.u, torch.mv(w, self.u))
        elif self.how == "made":  # a vector made from numbers in forward
            sigma = torch.mv(w, torch.ones(4)).sum()
        elif self.how == "power_iteration":  # spectral norm's, one step under no_grad
            with torch.no_grad():
                v = F.normalize(torch.mv(w.t(), self.u), dim=0)
            sigma = torch.dot(self.u, torch.mv(w, v))
        else:  # "weights": two parameters alone
            sigma = (w @ self.l2.weight.t()).sum()
        return self.l2(torch.relu(F.linear(x, w / sigma, self.l1.bias)))


@EVERY_TRACER
@pytest.mark.parametrize("how", ["buffer", "made", "power_iteration", "weights"])
def test_a_weight_mixed_with_constants_is_no_call(how: str, tracer: str) -> None:
    model = Rescaled(how)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    # one call of l1, the functional linear on x: l1 -> l2 -> loss (2); l2 -> loss (1)
    assert list(report.layers) == ["l1", "l2"]
    expect(report, "l1", {2: 1}, ("l2",))
    if how == "weights":  # l2's weight is in the weight too, with gradient: the linear
        # on x is also a call of l2 (§2, several modules' weights): -> l2 -> loss (2)
        expect(report, "l2", {1: 1, 2: 1}, ("l2", LOSS), calls=2)
    else:
        expect(report, "l2", {1: 1}, (LOSS,))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


def _normed(norm: str) -> nn.Module:
    """conv -> relu -> conv -> flatten -> linear, each weight reparametrised by ``norm``."""
    wrap = {
        "none": lambda m: m,
        "spectral_norm": nn.utils.spectral_norm,
        "parametrized_spectral_norm": nn.utils.parametrizations.spectral_norm,
        "parametrized_weight_norm": nn.utils.parametrizations.weight_norm,
    }[norm]
    return nn.Sequential(
        wrap(nn.Conv2d(3, 4, 3, padding=1)),
        nn.ReLU(),
        wrap(nn.Conv2d(4, 4, 3, padding=1)),
        nn.Flatten(),
        wrap(nn.Linear(64, 2)),
    )


@EVERY_TRACER
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    "norm", ["spectral_norm", "parametrized_spectral_norm", "parametrized_weight_norm"]
)
def test_a_reparametrised_weight_leaves_the_paths_as_they_were(
    norm: str, train: bool, tracer: str
) -> None:
    model = _normed(norm)
    report = gpa.analyze(model, input_shape=(1, 3, 4, 4), tracer=tracer, train=train)
    # a chain of three layers: 3, 2, 1, one call each, whatever computes the weights
    expect(report, "0", {3: 1}, ("2",))
    expect(report, "2", {2: 1}, ("4",))
    expect(report, "4", {1: 1}, (LOSS,))
    plain = gpa.analyze(_normed("none"), input_shape=(1, 3, 4, 4), tracer=tracer, train=train)
    # the same records but the type (a parametrization makes ParametrizedConv2d)
    records, plain_records = layer_records(report), layer_records(plain)
    assert {k: r[1:] for k, r in records.items()} == {k: r[1:] for k, r in plain_records.items()}
    check_reachability_with_autograd(report, model, torch.randn(1, 3, 4, 4))


class Beside(nn.Module):
    """``l1(x)`` plus a functional linear on ``table``, whose input is ``what``; then
    ``relu -> l2``."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 2)
        self.table = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("pos", torch.randn(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.what == "positions":  # rows picked by constant indices: a weight
            extra = F.embedding(torch.arange(1), self.table)
        elif self.what == "data_without_gradient":  # data all the same
            with torch.no_grad():
                scaled = x * 2
            extra = F.linear(scaled, self.table)
        elif self.what == "layer_on_buffer":  # a layer's output is data, whatever it read
            extra = F.linear(self.l1(self.pos), self.table)
        else:  # "layer_on_buffer_without_gradient"
            with torch.no_grad():
                made = self.l1(self.pos)
            extra = F.linear(made, self.table)
        return self.l2(torch.relu(self.l1(x) + extra))


@EVERY_TRACER
def test_rows_of_a_weight_at_constant_positions_are_no_layer(tracer: str) -> None:
    model = Beside("positions")
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    # table's rows are added as a weight (§2): no layer, not listed; l1 -> l2 -> loss
    assert list(report.layers) == ["l1", "l2"]
    expect(report, "l1", {2: 1}, ("l2",))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


@EVERY_TRACER
@pytest.mark.parametrize(
    "what", ["data_without_gradient", "layer_on_buffer", "layer_on_buffer_without_gradient"]
)
def test_a_weight_mixed_with_data_is_a_layer(what: str, tracer: str) -> None:
    model = Beside(what)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    # table's call reads data: table -> l2 -> loss (2). l1's call on x: l1 -> l2 -> loss
    # (2); on the buffer with gradient: l1 -> table -> l2 -> loss (3), without: none
    expect(report, "table", {2: 1}, ("l2",))
    expect(report, "l2", {1: 1}, (LOSS,))
    if what == "layer_on_buffer":
        expect(report, "l1", {2: 1, 3: 1}, ("table", "l2"), calls=2)
    elif what == "layer_on_buffer_without_gradient":
        expect(report, "l1", {2: 1}, ("l2",), calls=2)
    else:
        expect(report, "l1", {2: 1}, ("l2",))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


def test_a_weight_mixed_with_data_under_no_grad_is_an_unreachable_layer() -> None:
    """The sibling under ``no_grad``: ``F.linear(x, table)`` on data is a call of table
    that gradient never reaches (the frontend records it from the forward pass)."""

    class NoGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(4, 4)
            self.table = nn.Parameter(torch.randn(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                gate = F.linear(x, self.table)
            return self.l1(x) * gate

    for tracer in ("fx", "autograd"):
        report = gpa.analyze(NoGrad(), input_shape=(2, 4), tracer=tracer)
        expect_unreachable(report, "table", calls=1)
        expect(report, "l1", {1: 1}, (LOSS,))


#: A weight multiplied by data before ``F.linear(x, ·)``: by values (floating point), it is
#: a weight times data and no layer's weight (§2, "computed from parameters alone"); by
#: positions (integer and boolean tensors, ``torch.where`` on a mask), a weight picked by
#: data, and the call is one of ``w``. The autograd frontend, which sees no edge to a value
#: carrying no gradient, made a layer of the first five (fx and export did not).
SCALED_BY = {
    "detached_input": (False, lambda m, x: m.w * x.detach()),
    "detached_layer": (False, lambda m, x: m.w * m.a(x).detach()),
    "layer_under_no_grad": (False, lambda m, x: m.w * torch.no_grad()(m.a)(x)),
    "float_mask": (False, lambda m, x: m.w * (x > 0).float()),
    "where_data_else_data": (False, lambda m, x: torch.where(x > 0, m.w, x.detach())),
    "bool_mask": (True, lambda m, x: m.w * (x > 0)),
    "integer_mask": (True, lambda m, x: m.w * (x > 0).long()),
    "where_data_else_zero": (True, lambda m, x: torch.where(x > 0, m.w, 0.0)),
    "picked_then_scaled": (True, lambda m, x: m.w[x.argmax(0)] * 2),
    "random_mask": (True, lambda m, x: m.w * (torch.rand_like(m.w) > 0.5).float()),
    "buffer_mask": (True, lambda m, x: m.w * m.mask),
}


class Scaled(nn.Module):
    """``F.linear(x, w ∘ s)`` -> head, ``s`` one of :data:`SCALED_BY`; ``a`` is called only
    where ``s`` reads it (without gradient)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.scale = SCALED_BY[how][1]
        self.w = nn.Parameter(torch.randn(4, 4))
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.register_buffer("mask", (torch.rand(4, 4) > 0.5).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.linear(x, self.scale(self, x)))


@EVERY_TRACER
@pytest.mark.parametrize("how", list(SCALED_BY))
def test_a_weight_scaled_by_data_is_no_layers_weight_and_picked_by_it_is(
    how: str, tracer: str
) -> None:
    """By hand: head 1 (its sources the loss); w's call, where it is one, feeds head (2);
    a carries no gradient; and a real backward gives w a gradient either way."""
    model, x = Scaled(how), torch.randn(4, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "head", {1: 1}, (LOSS,))
    if SCALED_BY[how][0]:
        expect(report, "w", {2: 1}, ("head",))
    else:
        assert "w" not in report.layers
    assert not report.layers["a"].reachable
    check_reachability_with_autograd(report, model, x)


#: A weight given the input's dtype, device or shape before ``F.conv2d(x, ·)``: the input's
#: metadata alone, so still a weight (``gpa.frontends.metadata``).
CAST_LIKE = {
    "type_as": lambda w, x: w.type_as(x),
    "to": lambda w, x: w.to(x),
    "ones_like": lambda w, x: w * torch.ones_like(x).mean(),
    "expand_as": lambda w, x: w.expand_as(torch.empty_like(w)),
    "new_ones": lambda w, x: w * x.new_ones(()),
}


class CastConv(nn.Module):
    """A convolution written with ``F.conv2d`` whose weight is cast like the input."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.cast = CAST_LIKE[how]
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.cast(self.weight, x), padding=1)


class CastChain(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.stem, self.body, self.mid = CastConv(how), nn.Conv2d(4, 4, 3, padding=1), CastConv(how)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.body(self.stem(x))).mean((2, 3)))


@EVERY_TRACER
@pytest.mark.parametrize("how", list(CAST_LIKE))
def test_a_weight_cast_like_the_input_is_a_weight(how: str, tracer: str) -> None:
    """fx and export dropped stem and mid from the report (``type_as``, ``ones_like``,
    ``new_ones``; fx ``to`` too), and the autograd frontend joined them for
    ``ones_like`` after it learnt that a weight times data is no weight (found by an
    adversarial review). By hand: stem 4, body 3, mid 2, head 1."""
    model, x = CastChain(how), torch.randn(1, 4, 6, 6)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert list(report.layers) == ["stem", "body", "mid", "head"]
    expect(report, "stem", {4: 1}, ("body",))
    expect(report, "body", {3: 1}, ("mid",))
    expect(report, "mid", {2: 1}, ("head",))
    check_reachability_with_autograd(report, model, x)


@EVERY_TRACER
def test_data_shaped_like_itself_is_still_data(tracer: str) -> None:
    """``x.expand_as(x)`` reads x's values (as the first operand) as well as its shape: the
    product with w is a layer (found by the property test against brute force). By hand:
    w 2, head 1."""

    class Expanded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.head = nn.Parameter(torch.randn(4, 4)), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.expand_as(x) @ self.w)

    model, x = Expanded(), torch.randn(3, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "w", {2: 1}, ("head",))
    check_reachability_with_autograd(report, model, x)


class BiasBeside(nn.Module):
    """A feature-mixing call of data by data (a hypernetwork's kernel, ``hyper``'s output)
    whose only parameter is the bias it adds (``how``): ``enc -> mix -> out`` and
    ``hyper -> mix -> out``, ``mix`` the functional call."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.enc = nn.Linear(4, 4)
        self.hyper = nn.Linear(4, 16)
        self.b = nn.Parameter(torch.zeros(4))
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, kernel = self.enc(x), self.hyper(x).sum(0).view(4, 4)
        if self.how == "linear":
            mixed = F.linear(h, kernel, self.b)
        elif self.how == "linear_keyword":
            mixed = F.linear(h, kernel, bias=self.b)
        elif self.how == "conv":
            mixed = F.conv1d(h[..., None], kernel[..., None], self.b)[..., 0]
        elif self.how == "addmm":
            mixed = torch.addmm(self.b, h, kernel)
        else:  # "addmm_method"
            mixed = self.b.addmm(h, kernel)
        return self.out(mixed)


@EVERY_TRACER
@pytest.mark.parametrize("how", ["linear", "linear_keyword", "conv", "addmm", "addmm_method"])
def test_a_bias_beside_data_makes_no_layer(how: str, tracer: str) -> None:
    """A bias added to a product of data is no layer (§2: a layer mixes features with a
    weight): fx and export read ``b`` as one (``b -> out -> loss``, and enc, hyper one
    layer further away), the autograd frontend did not."""
    model = BiasBeside(how)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert sorted(report.layers) == ["enc", "hyper", "out"]
    # enc -> out -> loss and hyper -> out -> loss: the mixing between them is no layer
    expect(report, "enc", {2: 1}, ("out",))
    expect(report, "hyper", {2: 1}, ("out",))
    expect(report, "out", {1: 1}, (LOSS,))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


class InnerStep(nn.Module):
    """One MAML inner step: the head's weight moved against its own gradient on the
    features, then applied to them."""

    def __init__(self, materialized: bool = False) -> None:
        super().__init__()
        self.enc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        # (an unused input's gradient made zeros: fx's own run then raised nothing)
        self.options = {"allow_unused": True, "materialize_grads": True} if materialized else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.enc(x)
        inner = self.head(f).pow(2).mean()
        (step,) = torch.autograd.grad(inner, self.head.weight, create_graph=True, **self.options)
        return F.linear(f, self.head.weight - 0.1 * step, self.head.bias)


@pytest.mark.parametrize("materialized", [False, True])
def test_fx_says_it_cannot_follow_a_gradient_taken_in_forward(materialized: bool) -> None:
    """Found by a new user: fx blamed the input shapes ("input shapes do not fit
    operation 'grad'") for ``torch.autograd.grad`` inside forward, which it cannot follow
    (it runs each operation on leaves of its own); auto moves on. By hand: the adapted
    weight is the head's minus data (its gradient on the features), so the last linear is
    no layer (§2); head's call -> the step -> loss (1); enc -> loss through the last
    linear (1) and through head's call (2)."""
    model = InnerStep(materialized)
    report = auto_after_fx_refuses(
        model,
        r"forward differentiates .*torch\.autograd\.grad.*--tracer export or autograd",
        input_shape=(3, 4),
    )
    expect(report, "enc", {1: 1, 2: 1}, ("head", LOSS))
    expect(report, "head", {1: 1}, (LOSS,))
    check_reachability_with_autograd(report, model, torch.randn(3, 4))
    assert layer_records(report) == layer_records(
        gpa.analyze(model, input_shape=(3, 4), tracer="autograd")
    )


class AddedAndMixed(nn.Module):
    """``addmm(h, h, W)``: the same data added and mixed by a weight."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.post = nn.Linear(4, 4), nn.Linear(4, 2)
        self.W = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        return self.post(torch.addmm(h, h, self.W))


@EVERY_TRACER
def test_data_both_added_and_mixed_by_a_weight_is_a_layer(tracer: str) -> None:
    """Found by a review: reading the mixed operands without the added one, fx and export
    dropped ``h`` altogether where it is both (``addmm(h, h, W)``), and ``W`` was no layer.
    It is one: W -> post -> loss (2), one call."""
    model = AddedAndMixed()
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert list(report.layers) == ["pre", "W", "post"]
    expect(report, "W", {2: 1}, ("post",))
    # h is added around W too (see test_what_a_layer_only_adds_goes_around_it): pre ->
    # post (2) and pre -> W -> post (3)
    expect(report, "pre", {2: 1, 3: 1}, ("W", "post"))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


class AddedByALayer(nn.Module):
    """A weight ``W`` mixing ``pre``'s output, its call adding ``g``'s (``how``: as
    ``F.linear``'s bias, ``addmm``'s input, ``baddbmm``'s, a convolution's bias), or the
    same written apart (``apart``: ``h @ W.T + g``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.pre, self.g, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.W = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.pre(x), self.g(x)
        if self.how == "linear":
            y = F.linear(h, self.W, g.mean(0))
        elif self.how == "addmm":
            y = torch.addmm(g, h, self.W.t())
        elif self.how == "addmm_method":
            y = g.addmm(h, self.W.t())
        elif self.how == "baddbmm":
            y = torch.baddbmm(g[None], h[None], self.W.t()[None])[0]
        elif self.how == "conv":
            y = F.conv1d(h[..., None], self.W[..., None], g.mean(0))[..., 0]
        else:  # "apart"
            y = h @ self.W.t() + g
        return self.head(y)


@EVERY_TRACER
@pytest.mark.parametrize("how", ["linear", "addmm", "addmm_method", "baddbmm", "conv"])
def test_what_a_layer_only_adds_goes_around_it(how: str, tracer: str) -> None:
    """Found by a new user: every frontend read what a layer call adds to its product (a
    bias computed from data, ``addmm``'s input) as passing through the layer: ``g`` one
    step too far, its source ``W``. Backward hands the added tensor the output's gradient
    as it is, as for ``h @ W.T + g`` written apart (§2). By hand: pre -> W -> head (3),
    g -> head (2), W 2, head 1, one path each; the records equal those of the model
    written apart."""
    model = AddedByALayer(how)
    report = gpa.analyze(model, input_shape=(3, 4), tracer=tracer)
    expect(report, "pre", {3: 1}, ("W",))
    expect(report, "g", {2: 1}, ("head",))
    expect(report, "W", {2: 1}, ("head",))
    expect(report, "head", {1: 1}, (LOSS,))
    apart = gpa.analyze(AddedByALayer("apart"), input_shape=(3, 4), tracer=tracer)
    assert layer_records(report) == layer_records(apart)
    check_reachability_with_autograd(report, model, torch.randn(3, 4))


class ChannelsOfABias(nn.Module):
    """A convolution whose bias is two layers' outputs side by side (``g1``'s channels 0-1,
    ``g2``'s 2-3), its output channels read apart (0-1 by ``h1``, 2-3 by ``h2``); on an
    unbatched input (``batched``: a batch of one)."""

    def __init__(self, batched: bool) -> None:
        super().__init__()
        self.batched = batched
        self.pre, self.g1, self.g2 = nn.Conv1d(4, 4, 1), nn.Linear(4, 2), nn.Linear(4, 2)
        self.h1, self.h2 = nn.Conv1d(2, 1, 1), nn.Conv1d(2, 1, 1)
        self.W = nn.Parameter(torch.randn(4, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (4, 6)
        z = x.mean(-1)
        bias = torch.cat([self.g1(z), self.g2(z)])
        h = self.pre(x[None] if self.batched else x)
        y = F.conv1d(h, self.W, bias)
        return self.h1(y[..., :2, :]).sum() + self.h2(y[..., 2:, :]).sum()


@pytest.mark.parametrize("batched", [True, False])
def test_a_convolutions_added_bias_meets_its_channels(batched: bool) -> None:
    """Found by a review: on an unbatched input (C, L) the bias was laid along L, so each
    of g1, g2 had both h1 and h2 as sources; backward hands bias channel c the gradient of
    output channel c alone. By hand: g1's two channels -> h1 (2), g2's -> h2 (2)."""
    report = gpa.analyze(ChannelsOfABias(batched), input_shape=(4, 6), channels=True)
    for layer, reader in (("g1", "h1"), ("g2", "h2")):
        (segment,) = report.layers[layer].segments
        assert [s.sender for s in segment.sources] == [reader]
        assert segment.paths.shortest == 2


@pytest.mark.parametrize("how", ["linear", "addmm", "conv"])
def test_what_a_layer_only_adds_goes_around_it_per_channel(how: str) -> None:
    """The channel analysis (§8) adds what a call only adds to the call's output channels,
    along its channel axis (a convolution's bias: axis 1), as ``+`` written apart does:
    the same segments, sources and all, as the model written apart."""
    report = gpa.analyze(AddedByALayer(how), input_shape=(3, 4), channels=True)
    apart = gpa.analyze(AddedByALayer("apart"), input_shape=(3, 4), channels=True)
    assert report.layers["g"].segments == apart.layers["g"].segments
    assert report.layers["pre"].segments == apart.layers["pre"].segments
    (segment,) = report.layers["g"].segments
    assert (segment.paths.shortest, [s.sender for s in segment.sources]) == (2, ["head"])
