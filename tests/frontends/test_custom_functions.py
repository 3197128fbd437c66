"""Custom autograd Functions (``docs/semantics.md`` §1.2).

Autograd runs a Function's ``forward`` under ``no_grad`` and links its result to every
tensor argument that requires grad, through ``backward``: a straight-through estimator's
``round(x)`` or ``(x > 0).float()`` passes gradient although its forward's operations do
not. fx traced into forward and took it for code without gradient (the layer before it
reported unreachable, silently, under fx and so auto); export records forward's operations
too, so it refuses. Expected values by hand, checked against a real backward and the
autograd frontend.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpa
from gpa.errors import TraceError
from gpa.frontends.export import ExportError
from tests.channels.test_routes_against_autograd import SHAPE, Between, reached, routed
from tests.semantics import LOSS, check_reachability_with_autograd, expect


def _function(forward, backward=lambda ctx, g: g) -> type[torch.autograd.Function]:
    return type(
        "Fn",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


FUNCTIONS = {
    "round-estimator": _function(lambda ctx, x: torch.round(x)),
    "binarizing-estimator": _function(lambda ctx, x: (x > 0).float()),
    "sign-estimator": _function(lambda ctx, x: torch.sign(x).detach()),
    "gradient-reversal": _function(lambda ctx, x: x.view_as(x), lambda ctx, g: -g),
    "memory-saving-swish": _function(lambda ctx, x: x * torch.sigmoid(x)),
    "integer-round-trip": _function(lambda ctx, x: x.long().float()),
}
# applied through an ``apply`` bound before tracing (``reverse = GradReverse.apply``)
BOUND = {name: function.apply for name, function in FUNCTIONS.items()}


class Through(nn.Module):
    """``b(F(a(x)))`` for a custom Function F: by hand b 1 (loss), a 2 (b)."""

    def __init__(self, name: str, bound: bool) -> None:
        super().__init__()
        self.name, self.bound = name, bound
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        apply = BOUND[self.name] if self.bound else FUNCTIONS[self.name].apply
        return self.b(apply(self.a(x)))


@pytest.mark.parametrize("bound", [False, True], ids=["applied", "bound-before"])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
def test_gradient_goes_through_a_custom_function(tracer, name, bound):
    model = Through(name, bound)
    if bound and tracer == "fx":  # torch runs forward itself: fx cannot take the call whole
        with pytest.raises(TraceError, match="apply bound before tracing"):
            gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        return
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    # auto: fx, else export (which refuses custom Functions), else autograd
    assert report.tracer == {"auto": "autograd" if bound else "fx"}.get(tracer, tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("b",))


@pytest.mark.slow
@pytest.mark.parametrize("bound", [False, True], ids=["applied", "bound-before"])
@pytest.mark.parametrize("name", ["round-estimator", "binarizing-estimator"])
def test_export_refuses_a_custom_function(name, bound):
    # export's graph holds forward's operations: (x > 0).float() would cut the gradient
    with pytest.raises(TraceError, match="custom autograd Function") as raised:
        gpa.analyze(Through(name, bound), input_shape=(2, 4), tracer="export")
    assert isinstance(raised.value.__cause__, ExportError)


class TwoInTwoOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        return (x > 0).float() * y.detach(), x.detach() + y.detach()

    @staticmethod
    def backward(ctx, g, h):
        return g + h, g + h


class Pair(nn.Module):
    """``p, q = F(a(x), c(x)); b(p) + q``: gradient reaches both arguments from both
    results. By hand: b 1 (loss); a and c each at 1 (q, loss) and 2 (p through b)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        p, q = TwoInTwoOut.apply(self.a(x), self.c(x))
        return self.b(p) + q


class Binarize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return (x > 0).float()

    @staticmethod
    def backward(ctx, g):
        return g


def binarized(x, w):
    """A helper fx keeps whole, applying an estimator inside (traced into by value)."""
    if x.shape[-1] > 2:  # a branch on a shape: fx alone cannot trace it
        return torch.nn.functional.linear(Binarize.apply(x), w)
    return x


torch.fx.wrap("binarized")


class WrappedEstimator(nn.Module):
    """``binarized(a(x), w)``, w a parameter: by hand w 1 (loss), a 2 (w)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return binarized(self.a(x), self.w)


# model -> {layer: (path histogram, sources)}, by hand (see each model's docstring)
FURTHER = {
    Pair: {
        "b": ({1: 1}, (LOSS,)),
        "a": ({1: 1, 2: 1}, (LOSS, "b")),
        "c": ({1: 1, 2: 1}, (LOSS, "b")),
    },
    WrappedEstimator: {"w": ({1: 1}, (LOSS,)), "a": ({2: 1}, ("w",))},
}


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
@pytest.mark.parametrize("kind", list(FURTHER), ids=lambda kind: kind.__name__)
def test_a_function_of_two_tensors_and_one_inside_a_function_fx_keeps_whole(kind, tracer):
    model = kind()
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    for name, (histogram, sources) in FURTHER[kind].items():
        expect(report, name, histogram, sources)


class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g):
        return x * g

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.sum(0)


class ScaledByFunction(nn.Module):
    """A Function given a parameter (``Scale.apply(h, self.g)``): what it does with it is
    its own, so fx notes it and auto moves on to autograd. By hand b 1, a 2 (b)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.g = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.b(Scale.apply(self.a(x), self.g))


def test_a_custom_function_given_a_parameter_is_noted_and_auto_moves_on():
    fx = gpa.analyze(ScaledByFunction(), input_shape=(2, 4), tracer="fx")
    assert any("'Scale' is a custom autograd Function" in n for n in fx.notes)
    auto = gpa.analyze(ScaledByFunction(), input_shape=(2, 4))
    assert auto.tracer == "autograd"
    assert (
        "fx: cannot look into Scale (a custom autograd Function given parameters)"
        in (auto.notes[0])
    )
    for report in (fx, auto):
        expect(report, "b", {1: 1}, (LOSS,))
        expect(report, "a", {2: 1}, ("b",))


class Flipped(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.flip(-1)

    @staticmethod
    def backward(ctx, g):
        return g.flip(-1)


def test_channels_through_a_custom_function_fall_back_over_never_under():
    # fx takes the call whole: the documented fallback (every channel reaches every
    # channel), which covers the real route
    def flipped(y):  # Flipped.apply looked up at the call (see the bound-before case)
        return Flipped.apply(y)

    report = gpa.analyze(Between(flipped), (torch.randn(*SHAPE),), channels=True, tracer="fx")
    record = report.to_dict()["layers"][0]
    assert record["channel_fallback"] == ["Flipped"]
    assert [n for n in report.notes if n.startswith("channel routing fell back")] == [
        "channel routing fell back through Flipped (for 1 layer(s)): gpa cannot follow "
        "channels through them, so every channel reaching them is taken to reach every "
        "position after them — the segments and gradient combinations of those layers "
        "over-approximate (docs/semantics.md §8; the JSON's channel_fallback names the "
        "operations per layer)"
    ]
    assert record["shortest"] == 2
    route, truth = routed(record), reached(flipped)
    assert torch.equal(route | truth, route) and route.all()


class Coupling(nn.Module):
    """A reversible coupling on the two halves of its input: ``y1 = x1 + f(x2)``,
    ``y2 = x2 + g(y1)``. ``saving``: it runs ``f`` and ``g`` under ``no_grad`` unless
    recomputing (reformer-pytorch's blocks do)."""

    def __init__(self, saving: bool = False) -> None:
        super().__init__()
        self.saving = saving
        self.f, self.g = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        x1, x2 = x.chunk(2, -1)
        with torch.no_grad() if self.saving and not recompute else contextlib.nullcontext():
            y1 = x1 + self.f(x2)
            y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], -1)


class Reversible(torch.autograd.Function):
    """Runs the blocks in forward without keeping their activations (autograd runs a
    Function's forward without gradient; ``no_grad`` says it again) and recomputes them in
    backward, as Hugging Face's Reformer and reversible networks do."""

    @staticmethod
    def forward(ctx, x, blocks, no_grad):
        ctx.blocks = blocks
        ctx.save_for_backward(x)
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            for block in blocks:
                x = block(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = y = x.detach().requires_grad_()
            for block in ctx.blocks:
                y = block(y, recompute=True)
            torch.autograd.backward(y, grad)
        return x.grad, None, None


def _run_blocks(x: torch.Tensor, blocks: nn.ModuleList, no_grad: bool) -> torch.Tensor:
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for block in blocks:
            x = block(x)
    return x


class ReversibleSetUp(torch.autograd.Function):
    """:class:`Reversible` written in torch's newer style: ``forward`` takes no ``ctx``,
    ``setup_context`` fills it afterwards."""

    @staticmethod
    def forward(x, blocks, no_grad):
        return _run_blocks(x, blocks, no_grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.blocks, _ = inputs
        ctx.save_for_backward(x)

    backward = Reversible.backward


class ReversibleSetUpShared(ReversibleSetUp):
    """A subclass overriding ``setup_context`` alone: its ``forward`` is its base's code
    (which a mere subclass made the base's go unrecognised: found by an adversarial
    review)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ReversibleSetUp.setup_context(ctx, inputs, output)


def _passed_on(function: Callable) -> Callable:
    """A decorator as a logging or profiling one is: it calls ``function`` as it is."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        return function(*args)

    return wrapper


class ReversibleDecorated(torch.autograd.Function):
    """:class:`ReversibleSetUp` with a decorated ``forward`` (whose code is the wrapper's)."""

    @staticmethod
    @_passed_on
    def forward(x, blocks, no_grad):
        return _run_blocks(x, blocks, no_grad)

    setup_context = staticmethod(ReversibleSetUp.setup_context)
    backward = Reversible.backward


#: The Function each way of writing it calls, and the name its note gives.
REVERSIBLE_STYLES = {
    "set_up": (ReversibleSetUp, "ReversibleSetUp"),
    "set_up_shared": (ReversibleSetUpShared, "ReversibleSetUp"),  # forward's definer
    "set_up_decorated": (ReversibleDecorated, "ReversibleDecorated"),
}


class RevNet(nn.Module):
    """a -> Reversible(coupling) -> head; ``how``: ``plain`` calls the block without the
    Function; ``unfed`` gives the Function the model's input (no ``a``); ``set_up``, the
    Function written with ``setup_context``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.blocks = nn.ModuleList([Coupling(saving=how == "saving_blocks")])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.how == "unfed" else self.a(x)
        if self.how == "plain":
            return self.head(self.blocks[0](h))
        function = REVERSIBLE_STYLES.get(self.how, (Reversible,))[0]
        no_grad = self.how == "no_grad" or self.how in REVERSIBLE_STYLES
        return self.head(function.apply(h, self.blocks, no_grad))


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
@pytest.mark.parametrize(
    "how", ["plain", "as_run", "no_grad", "saving_blocks", "unfed", *REVERSIBLE_STYLES]
)
def test_layers_a_reversible_function_recomputes_in_backward(how: str, tracer: str) -> None:
    """The layers run in the Function's forward got no gradient (autograd runs it without),
    and the paths through it were cut: ``a`` one path of 2. Backward recomputes them: by
    hand, as without the Function (``plain``), head 1; g 2; f 2 and 3 (through g); a 2,
    3 (f), 3 (g), 4 (f, g). Given the model's input alone (``unfed``), in training nothing
    the Function gets requires gradient, and its outputs carry none: f and g get none
    (a real backward's answer too)."""
    model, x = RevNet(how), torch.randn(3, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert report.tracer == "autograd" or how == "plain"  # (fx cannot run the Function)
    expect(report, "head", {1: 1}, (LOSS,))
    if how == "unfed":
        assert not report.layers["blocks.0.f"].reachable
        assert not report.layers["blocks.0.g"].reachable
    else:
        expect(report, "blocks.0.g", {2: 1}, ("head",))
        expect(report, "blocks.0.f", {2: 1, 3: 1}, ("head", "blocks.0.g"))
        expect(report, "a", {2: 1, 3: 2, 4: 1}, ("head", "blocks.0.f", "blocks.0.g"))
    name = REVERSIBLE_STYLES.get(how, (None, "Reversible"))[1]
    noted = any(f"'{name}' compute with the model's weights" in n for n in report.notes)
    assert noted == (how != "plain")
    check_reachability_with_autograd(report, model, x)


class Linear(torch.autograd.Function):
    """``x @ w.T`` with its own backward (PyTorch's tutorial Function)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad.t() @ x


class TwoWeights(torch.autograd.Function):
    """Two functional layers in forward, recomputed in backward; ``how``: under
    ``set_grad_enabled(False)``, or through the inner Function ``Linear``."""

    @staticmethod
    def forward(ctx, x, w1, w2, how):
        ctx.save_for_backward(x, w1, w2)
        if how == "set_grad_enabled":
            with torch.set_grad_enabled(False):
                return F.linear(F.linear(x, w1), w2)
        return Linear.apply(Linear.apply(x, w1), w2)

    @staticmethod
    def backward(ctx, grad):
        with torch.enable_grad():
            x, w1, w2 = (t.detach().requires_grad_() for t in ctx.saved_tensors)
            torch.autograd.backward(F.linear(F.linear(x, w1), w2), grad)
        return x.grad, w1.grad, w2.grad, None


class Recomputed(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.w1, self.w2 = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(TwoWeights.apply(self.a(x), self.w1, self.w2, self.how))


@pytest.mark.parametrize("how", ["set_grad_enabled", "nested"])
def test_a_recomputing_function_switching_gradient_off_or_nesting_another(how: str) -> None:
    """``set_grad_enabled(False)`` inside the forward, or an inner Function inside it, left
    w1 and w2 unreachable (found by an adversarial review). By hand: head 1, w2 2, w1 3,
    a 4; a real backward through the Functions' own backwards gives each a gradient."""
    model, x = Recomputed(how), torch.randn(3, 4)
    report = gpa.analyze(model, (x,), tracer="autograd")
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "w2", {2: 1}, ("head",))
    expect(report, "w1", {3: 1}, ("w2",))
    expect(report, "a", {4: 1}, ("w1",))
    check_reachability_with_autograd(report, model, x)


def _adding() -> type:
    class Fn(torch.autograd.Function):  # a sum whose forward detaches, its backward not
        @staticmethod
        def forward(x, y):
            return x.detach() + y

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            return grad, grad

    return Fn


def _recomputing() -> type:
    class Fn(ReversibleSetUp):  # the same name as the other, computing with weights
        pass

    return Fn


class TwoNamedAlike(nn.Module):
    """a, b -> Adding (named Fn) -> Recomputing (named Fn, runs a coupling) -> head."""

    adding, recomputing = _adding(), _recomputing()

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.blocks = nn.ModuleList([Coupling()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.adding.apply(self.a(x), self.b(x))
        return self.head(self.recomputing.apply(h, self.blocks, True))


def test_functions_named_alike_are_told_apart() -> None:
    """The watch went by name: the sum, named as the recomputing Function, was read as
    recomputing too, and its detach cut a off (found by an adversarial review). By hand
    (each Function as its backward: the sum sends to both; the coupling as in
    :func:`test_layers_a_reversible_function_recomputes_in_backward`): a and b each as
    that test's a; a real backward reaches every layer."""
    model, x = TwoNamedAlike(), torch.randn(3, 4)
    report = gpa.analyze(model, (x,), tracer="autograd")
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "blocks.0.g", {2: 1}, ("head",))
    for name in ("a", "b"):
        expect(report, name, {2: 1, 3: 2, 4: 1}, ("head", "blocks.0.f", "blocks.0.g"))
    check_reachability_with_autograd(report, model, x)
