"""Dynamic convolutions: a convolution whose kernel is computed from parameters *and* the
input (docs/semantics.md §2).

CondConv (timm's ``CondConv2d``, EfficientNet-CondConv) and dynamic convolution mix expert
kernels by weights computed from the input (``sigmoid(routing(pool(x))) @ experts``) and
convolve the features with the result. The convolution is the layer: it mixes the
features, and gradient from the layers after it reaches the layers before it through it.
The mixing that makes its kernel (and bias) is not a layer. gpa used to report that mixing
(``routing @ experts``, one of whose operands is a parameter) as the layer and the
convolution as no layer: paths through a CondConv block were one layer short, and the
layer after the block was missing from the sources of the layer before it (every frontend).

Expected values are derived by hand (§4: two routes between the same two layers crossing no
other layer are one path) and checked against a real backward pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from tests.frontends.every_tracer import EVERY_TRACER
from tests.semantics import LOSS, check_reachability_with_autograd, expect, expect_unreachable

C_IN, C_OUT, EXPERTS = 4, 5, 3
SHAPE = (1, 3, 6, 6)  # CondConv convolves one sample's kernel: batch 1


class CondConv(nn.Module):
    """CondConv: routing weights from the pooled input mix the expert kernels. ``scaled``:
    the kernel is also scaled by the input's mean (data reaching the kernel twice)."""

    def __init__(self, scaled: bool = False) -> None:
        super().__init__()
        self.scaled = scaled
        self.routing = nn.Linear(C_IN, EXPERTS)
        self.weight = nn.Parameter(torch.randn(EXPERTS, C_OUT * C_IN * 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(self.routing(x.mean((2, 3))))
        w = torch.matmul(r, self.weight).view(C_OUT, C_IN, 3, 3)
        if self.scaled:
            w = w * x.mean()
        return F.conv2d(x, w, padding=1)


class Router(nn.Module):
    """A routing weight read functionally (no ``nn.Linear``)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(EXPERTS, C_IN))


class DynamicConv(nn.Module):
    """Dynamic convolution: attention over the experts, read by a functional linear layer;
    both the kernel and the bias are mixed from experts."""

    def __init__(self) -> None:
        super().__init__()
        self.router = Router()
        self.weight = nn.Parameter(torch.randn(EXPERTS, C_OUT * C_IN * 9))
        self.bias = nn.Parameter(torch.randn(EXPERTS, C_OUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(F.linear(x.mean((2, 3)), self.router.weight), -1)
        w = (a @ self.weight).view(C_OUT, C_IN, 3, 3)
        return F.conv2d(x, w, (a @ self.bias).view(C_OUT), padding=1)


class BatchedCondConv(nn.Module):
    """timm's ``CondConv2d`` in short, depthwise: the batch folded into the channels so that
    each sample is convolved with its own kernel (``groups`` = channels × batch, a number
    computed in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.routing = nn.Linear(C_IN, EXPERTS)
        self.weight = nn.Parameter(torch.randn(EXPERTS, C_IN * 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        r = torch.sigmoid(self.routing(x.mean((2, 3))))
        kernel = torch.matmul(r, self.weight).view(b * c, 1, 3, 3)
        y = F.conv2d(x.reshape(1, b * c, h, w), kernel, padding=1, groups=c * b)
        return y.view(b, c, h, w)


class Net(nn.Module):
    """first → block → last; ``functional``: first is a functional convolution on a root
    parameter (its record named ``first`` too, type ``Parameter``)."""

    def __init__(self, block: nn.Module, functional: bool = False, width: int = C_OUT) -> None:
        super().__init__()
        self.functional = functional
        if functional:
            self.first = nn.Parameter(torch.randn(C_IN, 3, 1, 1))
        else:
            self.first = nn.Conv2d(3, C_IN, 1)
        self.block = block
        self.last = nn.Conv2d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.first) if self.functional else self.first(x)
        return self.last(self.block(h))


BLOCKS = {
    # the router is a module: block.routing; the block's call is its convolution
    "condconv": (lambda: Net(CondConv()), "block.routing"),
    # the kernel scaled by the input too: first (a functional layer) stays a layer
    "condconv-scaled-functional-first": (
        lambda: Net(CondConv(scaled=True), functional=True),
        "block.routing",
    ),
    # a functional router, kernel and bias both mixed
    "dynamic-conv": (lambda: Net(DynamicConv()), "block.router"),
}


@EVERY_TRACER
@pytest.mark.parametrize("case", list(BLOCKS))
def test_the_convolution_is_the_layer(case: str, tracer: str) -> None:
    build, router = BLOCKS[case]
    model = build()
    report = gpa.analyze(model, input_shape=SHAPE, tracer=tracer)
    # first → block's conv → last: 3; first → router → (kernel) → block's conv → last: 4.
    # The router reaches the convolution through its kernel (and bias): one path, 3.
    assert list(report.layers) == ["first", router, "block", "last"]
    expect(report, "last", {1: 1}, (LOSS,))
    expect(report, "block", {2: 1}, ("last",))
    expect(report, router, {3: 1}, ("block",))
    expect(report, "first", {3: 1, 4: 1}, (router, "block"))
    assert report.layers["block"].type == type(model.block).__name__
    assert report.network.max_shortest == 3 and report.network.longest == 4
    check_reachability_with_autograd(report, model, torch.randn(SHAPE))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_channels_of_a_depthwise_condconv(tracer: str) -> None:
    # the block convolves each channel alone (groups 4 × batch 1): each of first's 4
    # channels is sent back by that channel of the block only (§8) — and by the routing,
    # whose input feature c is channel c pooled — the block's 4 channels by all of last
    model = Net(BatchedCondConv(), width=C_IN)
    report = gpa.analyze(model, input_shape=SHAPE, tracer=tracer, channels=True)
    assert list(report.layers) == ["first", "block.routing", "block", "last"]
    first = report.layers["first"].segments
    assert [(g.start, g.stop) for g in first] == [(c, c + 1) for c in range(C_IN)]
    for c, g in enumerate(first):
        assert [(s.sender, s.channels) for s in g.sources] == [
            ("block.routing", (c, c + 1)),
            ("block", (c, c + 1)),
        ]
    assert [(g.start, g.stop) for g in report.layers["block"].segments] == [(0, C_IN)]
    assert report.layers["block"].channel_fallbacks == ()


class TwiceConvolved(nn.Module):
    """One mixed kernel convolving twice: ``conv(conv(x, w), w)`` — two calls of the block."""

    def __init__(self) -> None:
        super().__init__()
        self.routing = nn.Linear(C_IN, EXPERTS)
        self.weight = nn.Parameter(torch.randn(EXPERTS, C_IN * C_IN * 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (torch.sigmoid(self.routing(x.mean((2, 3)))) @ self.weight).view(C_IN, C_IN, 3, 3)
        return F.conv2d(F.conv2d(x, w, padding=1), w, padding=1)


@EVERY_TRACER
def test_a_kernel_convolving_twice_makes_two_calls(tracer: str) -> None:
    model = Net(TwiceConvolved(), width=C_IN)
    report = gpa.analyze(model, input_shape=SHAPE, tracer=tracer)
    # conv2 → last: 2; conv1 → conv2 → last: 3 (one record, two calls). routing makes both
    # kernels: → conv2 → last 3, → conv1 → conv2 → last 4. first: → conv1 → conv2 → last 4,
    # → routing → conv1 … 5, → routing → conv2 → last 4.
    expect(report, "block", {2: 1, 3: 1}, ("block", "last"), calls=2)
    expect(report, "block.routing", {3: 1, 4: 1}, ("block",))
    expect(report, "first", {4: 2, 5: 1}, ("block.routing", "block"))
    check_reachability_with_autograd(report, model, torch.randn(SHAPE))


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(C_IN, C_IN))


class ReturnedMaker(nn.Module):
    """A functional layer (``head``) that is returned *and* scales a convolution's kernel:
    its result is data, so it stays a layer and the convolution stays none (§2)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, C_IN, 1)
        self.head = Holder()
        self.kernel = nn.Parameter(torch.randn(C_IN, C_IN, 3, 3))
        self.last = nn.Conv2d(C_IN, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.first(x)
        head = F.linear(h.mean((2, 3)), self.head.weight)
        return self.last(F.conv2d(h, self.kernel * head.mean(), padding=1)), head


@EVERY_TRACER
def test_a_maker_whose_result_is_also_data_stays_a_layer(tracer: str) -> None:
    model = ReturnedMaker()
    report = gpa.analyze(model, input_shape=SHAPE, tracer=tracer)
    # head → <loss> (returned): 1, head → (kernel) → last: 2; first → last (through the
    # convolution, no layer): 2, → head → <loss> 2, → head → last 3
    assert list(report.layers) == ["first", "head", "last"]
    expect(report, "head", {1: 1, 2: 1}, ("last", LOSS))
    expect(report, "first", {2: 2, 3: 1}, ("head", "last"))
    check_reachability_with_autograd(report, model, torch.randn(SHAPE))


class NamedArguments(nn.Module):
    """``F.conv2d(input=..., weight=...)``: a mixed kernel (``mixed``) or one of data alone."""

    def __init__(self, mixed: bool) -> None:
        super().__init__()
        self.mixed = mixed
        self.first = nn.Conv2d(3, C_IN, 1)
        self.routing = nn.Linear(C_IN, EXPERTS)
        self.experts = nn.Parameter(torch.randn(EXPERTS, C_IN * C_IN * 9))
        self.last = nn.Conv2d(C_IN, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.mixed:
            r = torch.sigmoid(self.routing(h.mean((2, 3))))
            w = (r @ self.experts).view(C_IN, C_IN, 3, 3)
        else:  # a kernel of data alone: no layer
            w = h.mean((2, 3)).view(1, C_IN, 1, 1).expand(C_IN, C_IN, 3, 3)
        return self.last(F.conv2d(input=h, weight=w, padding=1))


@EVERY_TRACER
@pytest.mark.parametrize("mixed", [True, False])
def test_named_arguments(mixed: bool, tracer: str) -> None:
    model = NamedArguments(mixed)
    report = gpa.analyze(model, input_shape=SHAPE, tracer=tracer)
    expect(report, "last", {1: 1}, (LOSS,))
    if mixed:  # the root's experts: the layer is named after the parameter
        expect(report, "experts", {2: 1}, ("last",))
        expect(report, "routing", {3: 1}, ("experts",))
        expect(report, "first", {3: 1, 4: 1}, ("routing", "experts"))
    else:  # routing unused: no call, unreachable
        expect(report, "first", {2: 1}, ("last",))
        assert report.layers["routing"].calls == 0
    check_reachability_with_autograd(report, model, torch.randn(SHAPE))


class Variant(nn.Module):
    """A CondConv-like block, ``kind`` saying what else happens to its kernel."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.routing = nn.Linear(C_IN, EXPERTS)
        self.experts = nn.Parameter(torch.randn(EXPERTS, C_IN * C_IN * 9))
        self.w2 = nn.Parameter(torch.randn(C_IN, C_IN, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(self.routing(x.mean((2, 3))))
        if self.kind == "maker-without-gradient":
            with torch.no_grad():
                k = (r @ self.experts).view(C_IN, C_IN, 3, 3)
            return F.conv2d(x, k, padding=1)
        k = (r @ self.experts).view(C_IN, C_IN, 3, 3)
        if self.kind == "also-under-no-grad":
            with torch.no_grad():
                y = F.conv2d(x, k, padding=1)
            return F.conv2d(x + y, k, padding=1)
        if self.kind == "also-detached":
            return F.conv2d(x, k, padding=1) + k.detach().mean()
        # "through-another-conv": a parameter times the dynamic convolution's result
        h = F.conv2d(x, k, padding=1)
        return F.conv2d(x, self.w2 * h.mean(), padding=1) + h


# kind -> layer -> (hand-derived path histogram, sources), or None: unreachable
VARIANTS = {
    # as CondConv: the convolution with gradient is the block's one call (§4: a use that
    # sends no gradient back is on no path; a convolution under no_grad is on none either)
    **{
        kind: {
            "block": ({2: 1}, ("last",)),
            "block.routing": ({3: 1}, ("block",)),
            "first": ({3: 1, 4: 1}, ("block.routing", "block")),
        }
        for kind in ("also-under-no-grad", "also-detached")
    },
    # the maker runs under no_grad: the kernel carries no gradient, the convolution is no
    # layer; the maker (a call of block) and the routing receive none
    "maker-without-gradient": {"first": ({2: 1}, ("last",)), "block": None, "block.routing": None},
    # conv2's kernel is w2 times conv1's result: no functional layer makes it (conv1's
    # result is data), so conv2 is no layer (§2, not covered). block (conv1) → last: 2,
    # also through conv2's kernel (one path); first → conv1 → last 3, → conv2 → last 2,
    # → routing → conv1 → last 4
    "through-another-conv": {
        "block": ({2: 1}, ("last",)),
        "block.routing": ({3: 1}, ("block",)),
        "first": ({2: 1, 3: 1, 4: 1}, ("block.routing", "block", "last")),
    },
}


@EVERY_TRACER
@pytest.mark.parametrize("kind", list(VARIANTS))
def test_what_else_happens_to_the_kernel(kind: str, tracer: str) -> None:
    model = Net(Variant(kind), width=C_IN)
    report = gpa.analyze(model, input_shape=SHAPE, tracer=tracer)
    for name, expected in VARIANTS[kind].items():
        if expected is None:
            expect_unreachable(report, name)
        else:
            expect(report, name, *expected)
    check_reachability_with_autograd(report, model, torch.randn(SHAPE))
