"""The flow pass reads a wrapped call through its operations, as running it whole would.

``InliningFlow`` (``gpa.frontends.fx.inline``) works out a call of a ``torch.fx.wrap``
function by tracing into it by value and composing its operations' flows, instead of
running the function whole under autograd and walking the autograd graph. The independent
computation is the plain ``GradientFlow``, which runs it whole: every node of the traced
model — the wrapped calls included — must get the same annotation from both (the arguments
gradient reaches, the result's shapes, dtype and requires_grad, per result of a
multi-result call too). A function writing into an argument is run whole (the pass checks
such writes), and each look of a call is traced once per analysis, the inlining reusing it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from gpa.frontends.fx import fx_gradient_graph, inline
from gpa.frontends.fx.flow import FLOW, PARTS, GradientFlow
from gpa.frontends.fx.inline import InliningFlow
from gpa.frontends.fx.layers import wrapped
from gpa.frontends.fx.tracer import trace
from gpa.options import AnalysisOptions
from tests.frontends.every_tracer import auto_after_fx_refuses, layer_records
from tests.frontends.test_opaque import (
    TRACED_CASES,
    Shifted,
    Siblings,
    Wrapped,
    WrappedTwice,
    Writes,
    _attend,
)


def unweighted_drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """torchvision's ``stochastic_depth`` as it reads in eval mode: the input itself."""
    if not training or p == 0.0:
        return x
    return x * torch.empty(x.shape[0], 1, device=x.device).bernoulli_(1 - p) / (1 - p)


def halves(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two results: the first from the layer, the second from ``x`` alone, detached."""
    return F.linear(x, weight), x.detach() * 2


def rectified(x: torch.Tensor, weight: torch.Tensor, how: str) -> torch.Tensor:
    """An in-place operation on a copy, read afterwards: the flow pass passes ``relu_``'s
    value through as it is (the copy's), and fx's later reader is rewired to read it."""
    y = F.linear(x, weight).clone()
    getattr(y, how)()
    return y * 2


torch.fx.wrap("unweighted_drop")
torch.fx.wrap("halves")
torch.fx.wrap("rectified")


class Others(nn.Module):
    """Wrapped calls test_opaque.py does not hold: one reading no parameter and returning
    its input, one whose results depend on different arguments, one writing in place into
    a copy it made and reading it afterwards."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.case == "returns-its-input":
            return self.b(unweighted_drop(self.a(x), 0.5, self.training))
        if self.case.startswith("in-place-"):
            return self.b(rectified(self.a(x), self.b.weight, self.case.removeprefix("in-place-")))
        left, right = halves(self.a(x), self.b.weight)
        return left + right


MODELS = {
    **{
        f"siblings-{case}": (lambda case=case: Siblings(case))
        for case in (*TRACED_CASES, "checks-types", "copy-zeroed")
    },
    "shifted": Shifted,
    "wrapped": lambda: Wrapped(by_value=True),
    "wrapped-twice": lambda: WrappedTwice(by_value=True),
    **{
        f"writes-{case}": (lambda case=case: Writes(case))
        for case in (
            "metadata",
            "no-gradient",
            "under-no-grad",
        )
    },
    "returns-its-input": lambda: Others("returns-its-input"),
    **{
        f"in-place-{how}": (lambda how=how: Others(f"in-place-{how}"))
        for how in ("relu_", "sigmoid_", "neg_")
    },
    "results-apart": lambda: Others("results-apart"),
}


def _annotations(through: bool, model: nn.Module, shape: tuple) -> dict:
    """Every node's annotation by the pass running wrapped calls whole, or reading every
    one of them through its operations (``through``)."""
    gm = trace(model)
    flow = InliningFlow(gm, every=True) if through else GradientFlow(gm)
    flow.run(torch.zeros(shape))
    return _read(gm)


def _read(gm: torch.fx.GraphModule) -> dict:
    """Every node's annotation, nodes by name."""
    return {
        n.name: (
            sorted(m.name for m in n.meta[FLOW].grad_from),
            n.meta[FLOW].value,
            n.meta[FLOW].shapes,
            n.meta[FLOW].constant,
            [sorted(m.name for m in part) for part in n.meta.get(PARTS, ())],
        )
        for n in gm.graph.nodes
    }


# Calls not read through their operations: traced, they would check types on proxies (in
# their own code or a helper's: logs-its-use) or write into a copy fx does not follow
# (test_opaque.py), or write into an argument.
RUN_WHOLE = {"siblings-checks-types", "siblings-copy-zeroed", "siblings-logs-its-use"} | {
    name for name in MODELS if name.startswith("writes-")
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_call_is_read_as_running_it_whole_gives(name: str, monkeypatch) -> None:
    model = MODELS[name]().eval() if name == "returns-its-input" else MODELS[name]()
    shape = (2, 5, 4) if name == "shifted" else (2, 4)
    whole = _annotations(False, model, shape)
    through, read_through = [], InliningFlow._through

    def spy(self, n, inner):
        through.append(n.name)
        return read_through(self, n, inner)

    monkeypatch.setattr(InliningFlow, "_through", spy)
    assert _annotations(True, model, shape) == whole
    assert bool(through) == (name not in RUN_WHOLE)


@pytest.mark.parametrize("how", ["relu_", "sigmoid_", "neg_"])
def test_an_in_place_operation_inside_reads_as_autograd_reads_it(how) -> None:
    # a (4 -> 4) feeds the functional linear on b's weight inside, which feeds b: a's
    # shortest path is a -> linear -> b -> loss (3), b's through its own call (1)
    model = Others(f"in-place-{how}")
    fx_report = gpa.analyze(model, input_shape=(2, 4), tracer="fx")
    assert fx_report.tracer == "fx"
    assert fx_report.layers["a"].shortest == 3
    assert layer_records(fx_report) == layer_records(
        gpa.analyze(model, input_shape=(2, 4), tracer="autograd")
    )


def _passes(monkeypatch) -> list[str]:
    """The flow passes that run over a whole model (their classes' names, in order)."""
    runs, run = [], InliningFlow.run

    def counting(self, *inputs):
        runs.append(type(self).__name__)
        return run(self, *inputs)

    monkeypatch.setattr(InliningFlow, "run", counting)
    return runs


@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
@pytest.mark.parametrize("name", list(MODELS))
def test_operations_put_in_place_carry_the_annotations_a_pass_gives(
    name, channels, monkeypatch
) -> None:
    # the inlining copies each operation's annotation from its traced graph and renames
    # the nodes it names, so no second pass runs; a fresh pass over the new graph (running
    # every call left whole) is the independent computation
    model = MODELS[name]().eval() if name == "returns-its-input" else MODELS[name]()
    shape = (2, 5, 4) if name == "shifted" else (2, 4)
    passes = _passes(monkeypatch)
    graph = fx_gradient_graph(model, AnalysisOptions(input_shape=(shape,), channels=channels))
    assert passes == ["InliningFlow"]
    carried = _read(graph.traced)
    GradientFlow(graph.traced).run(torch.zeros(shape))
    assert carried == _read(graph.traced)


def branchy(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Detaches what its helper finds to be an fx proxy (when traced by value): its
    result, which then carries no gradient."""
    return _tensor_or_detached(F.linear(x, weight))


def branchy_parts(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same for one of two results, which one operation returns together: the pair
    still carries gradient, its second part no longer."""
    return torch.broadcast_tensors(F.linear(x, weight), _tensor_or_detached(x * 1))


def branchy_pair(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two results, the second detached where its helper finds a proxy."""
    return F.linear(x, weight), _tensor_or_detached(x * 1)


def branchy_source(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A result that looks alike either way, read off another input where the helper
    finds a proxy: from ``x`` in a run, from the layer on ``weight`` traced."""
    return _tensor_or_linear(x, weight)


# fx-aware code (transformers' is_torch_fx_proxy) tells a proxy from a tensor; a run and
# export (fake tensors) take the other branch than a trace by value
def _tensor_or_detached(x):
    return x.detach() if isinstance(x, torch.fx.Proxy) else x


def _tensor_or_linear(x, weight):
    return F.linear(x, weight) if isinstance(x, torch.fx.Proxy) else x * 1


torch.fx.wrap("branchy")
torch.fx.wrap("branchy_parts")
torch.fx.wrap("branchy_pair")
torch.fx.wrap("branchy_source")

BRANCHY = {
    "one-result": branchy,
    "one-of-two-results": branchy_parts,
    "one-of-a-pair": branchy_pair,
    "another-input": branchy_source,
}


class Branchy(nn.Module):
    """By hand (a run, where the helpers see tensors): a feeds the wrapped call, whose
    first result feeds head (the linear on b's weight between them unless the call
    returns a's output itself) and whose second, if any, feeds c. a: (2, 3, 2) with two
    results, (2, 2, 1) with one (3 through b's weight, 2 without)."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function
        self.a, self.b, self.c, self.head = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each called by its global name, which fx.wrap patches while tracing
        if self.function == "one-of-two-results":
            p, q = branchy_parts(self.a(x), self.b.weight)
        elif self.function == "one-of-a-pair":
            p, q = branchy_pair(self.a(x), self.b.weight)
        elif self.function == "one-result":
            return self.head(branchy(self.a(x), self.b.weight))
        else:
            return self.head(branchy_source(self.a(x), self.b.weight))
        return self.head(p) + self.c(q)


BY_HAND = {  # a's (shortest, longest, number of paths), as Branchy's docstring derives
    "one-result": (3, 3, 1),
    "one-of-two-results": (2, 3, 2),
    "one-of-a-pair": (2, 3, 2),
    "another-input": (2, 2, 1),
}


def checked_residual(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A skip where its helper takes ``y`` for a tensor (always, in a run): the result
    looks alike and reaches the same inputs either way; only the paths differ."""
    y = F.linear(x, weight)
    return y + x if _is_tensor(y) else y


def checked_twice(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer applied once where its helper takes ``y`` for a tensor, else twice."""
    y = F.linear(x, weight)
    return y if _is_tensor(y) else F.linear(y, weight)


def class_checked_residual(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The skip, where its own code checks ``__class__`` (a proxy's is the proxy's)."""
    y = F.linear(x, weight)
    return y + x if y.__class__ is torch.Tensor else y


def checked_residual_torch(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The skip, its helper asking torch.is_tensor (whose isinstance runs in torch)."""
    y = F.linear(x, weight)
    return y + x if _is_tensor_by_torch(y) else y


def _is_tensor(y):
    return isinstance(y, torch.Tensor)


def _is_tensor_by_torch(y):
    return torch.is_tensor(y)


torch.fx.wrap("checked_residual")
torch.fx.wrap("checked_residual_torch")
torch.fx.wrap("checked_twice")
torch.fx.wrap("class_checked_residual")


class Checks(nn.Module):
    """By hand (a run): with the skip, a reaches head directly (2) and through the linear
    on b's weight (3): a (2, 3, 2); without, only through it once: a (3, 3, 1); b (2, 2, 1)."""

    def __init__(self, skip: bool | str) -> None:
        super().__init__()
        self.skip = skip
        self.a, self.b, self.head = (nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip == "is-tensor":
            return self.head(checked_residual_torch(self.a(x), self.b.weight))
        if self.skip:
            return self.head(checked_residual(self.a(x), self.b.weight))
        return self.head(checked_twice(self.a(x), self.b.weight))


class ClassChecks(Checks):
    """:class:`Checks` with the skip whose function compares its value's ``__class__`` (a
    class of its own: gpa reads the comparisons of a class in the functions forward
    calls by name for the whole class, whichever branch calls them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(class_checked_residual(self.a(x), self.b.weight))


@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
@pytest.mark.parametrize(
    "skip", [True, "is-tensor", False], ids=["skip-or-not", "is-tensor", "once-or-twice"]
)
def test_a_helpers_type_check_on_a_proxy_keeps_the_call_whole(skip, channels) -> None:
    # the operations traced into look alike and reach the same inputs whichever branch
    # the helper takes: only noticing that it asked a proxy its class tells the trace
    # from the run. fx keeps the call whole and says so; auto moves on
    name = {True: "checked_residual", "is-tensor": "checked_residual_torch"}.get(
        skip, "checked_twice"
    )
    fx_report = gpa.analyze(Checks(skip), input_shape=(2, 4), tracer="fx", channels=channels)
    assert any(f"'{name}'" in note for note in fx_report.notes)
    report = gpa.analyze(Checks(skip), input_shape=(2, 4), channels=channels)
    assert report.tracer != "fx"
    a = report.layers["a"]
    assert (a.shortest, a.longest, a.num_paths) == ((2, 3, 2) if skip else (3, 3, 1))
    autograd = gpa.analyze(Checks(skip), input_shape=(2, 4), tracer="autograd")
    assert layer_records(report) == layer_records(autograd)


def shifts_of(x: torch.Tensor) -> list[int]:
    """Sizes, from a function fx keeps whole (Swin3D fits its window so)."""
    return [1, x.shape[0] - 1]


def rolled_linear(x: torch.Tensor, weight: torch.Tensor, shifts: list[int]) -> torch.Tensor:
    """Hands sizes it was given to torch (whose argument parser asks each one's class)."""
    return F.linear(torch.roll(x, shifts=(-shifts[0],), dims=(0,)), weight)


torch.fx.wrap("shifts_of")
torch.fx.wrap("rolled_linear")


class RolledBySizes(nn.Module):
    """By hand: a -> the linear on b's weight -> head: a (3, 3, 1), b (2, 2, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = (nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(rolled_linear(self.a(x), self.b.weight, shifts_of(x)))


@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
def test_torch_asking_the_class_of_a_size_does_not_keep_the_call_whole(channels) -> None:
    # torch's C functions, called from the function's own frame, ask proxies holding sizes
    # whether they are symbolic: no type check of the function's (Swin3D was kept whole)
    report = gpa.analyze(RolledBySizes(), input_shape=(3, 4), tracer="fx", channels=channels)
    assert report.notes == []
    a = report.layers["a"]
    assert (a.shortest, a.longest, a.num_paths) == (3, 3, 1)
    autograd = gpa.analyze(RolledBySizes(), input_shape=(3, 4), tracer="autograd")
    assert layer_records(report) == layer_records(autograd)


def test_a_function_reading_its_arguments_class_is_run_whole() -> None:
    # its own code asks y.__class__: not traced by value, fx says so and auto moves on
    model = ClassChecks(True)
    fx_report = gpa.analyze(model, input_shape=(2, 4), tracer="fx")
    assert any("'class_checked_residual'" in note for note in fx_report.notes)
    report = gpa.analyze(model, input_shape=(2, 4))
    assert report.tracer == "autograd"
    a = report.layers["a"]
    assert (a.shortest, a.longest, a.num_paths) == (2, 3, 2)  # with the skip, by hand


@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
@pytest.mark.parametrize("function", list(BRANCHY))
def test_a_call_whose_operations_do_not_do_what_it_did_stays_whole(function, channels) -> None:
    # the inlining looks at the function's own code only; a helper tells the proxy from a
    # tensor and branches, so the traced operations' result does not look as the call's
    # did (each tensor's requires_grad counts, not the pair's) or gradient reaches another
    # input (same look): the call stays whole, fx says it could not look into it, and
    # auto moves on to a frontend that follows the run
    gm = trace(Branchy(function))
    flow = InliningFlow(gm, every=channels)
    flow.run(torch.zeros(2, 4))
    calls = [n for n in gm.graph.nodes if wrapped(n)]
    name = BRANCHY[function].__name__
    assert inline.inline_calls(gm, calls, flow) == inline.Inlined([], [name])
    fx_report = gpa.analyze(Branchy(function), input_shape=(2, 4), tracer="fx", channels=channels)
    assert any(f"'{name}' is a function fx keeps whole" in note for note in fx_report.notes)
    assert "b" not in fx_report.layers or fx_report.layers["b"].paths is None  # unseen
    report = gpa.analyze(Branchy(function), input_shape=(2, 4), channels=channels)
    assert report.tracer != "fx"
    a = report.layers["a"]
    assert (a.shortest, a.longest, a.num_paths) == BY_HAND[function]
    autograd = gpa.analyze(Branchy(function), input_shape=(2, 4), tracer="autograd")
    assert layer_records(report) == layer_records(autograd)


def test_a_call_writing_into_its_argument_runs_whole(monkeypatch) -> None:
    # accumulate() adds into its first argument: traced, its graph writes into a
    # placeholder, so the pass runs it whole (and checks the write) — the trace is not used
    run_whole = []
    original = GradientFlow._run_under_autograd

    def spy(self, n):
        run_whole.append(n.name)
        return original(self, n)

    monkeypatch.setattr(GradientFlow, "_run_under_autograd", spy)
    gm = trace(Writes("metadata"))
    InliningFlow(gm, every=True).run(torch.zeros(2, 4))
    assert "accumulate" in run_whole
    assert "accumulate" not in [
        n.name for n in gm.graph.nodes if n.op == "call_function" and n.target is inline.setitem_
    ]


class Alike(nn.Module):
    """Two calls of ``attend`` on arguments that look alike (4 features, a 4 x 4 weight, a
    bias): one look."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = _attend(True, x, self.a.weight, self.a.bias)  # by the name fx patched
        return self.head(_attend(True, hidden, self.b.weight, self.b.bias))


def test_each_look_is_traced_once_per_analysis(monkeypatch) -> None:
    # one trace serves the flow pass (neither call runs whole) and the inlining of both
    traced, run_whole = [], []
    trace_by_value, run = inline._traced, GradientFlow._run_under_autograd

    def counting(gm, call, *args):
        traced.append(call.name)
        return trace_by_value(gm, call, *args)

    def spy(self, n):
        run_whole.append(n.name)
        return run(self, n)

    monkeypatch.setattr(inline, "_traced", counting)
    monkeypatch.setattr(GradientFlow, "_run_under_autograd", spy)
    report = gpa.analyze(Alike(), input_shape=(1, 4), tracer="fx")
    assert report.notes == []
    assert traced == ["attend"]
    assert not [name for name in run_whole if name.startswith("attend")]
    # a -> head and b -> head by hand: a feeds b feeds head
    assert {n: r.shortest for n, r in report.layers.items()} == {"a": 3, "b": 2, "head": 1}


def test_each_traced_operation_is_worked_out_once(monkeypatch) -> None:
    # the call's flows are composed from its operations as the trace worked them out: the
    # run over the traced graph takes each as it stands (no rule, look-alike or meta run)
    worked_out, composing = [], []
    passed_through, run_on = GradientFlow._passed_through, GradientFlow.run_on

    def spy(self, n):
        if composing:
            worked_out.append(n.name)
        return passed_through(self, n)

    def composed(self, values, enabled):
        composing.append(True)
        try:
            return run_on(self, values, enabled)
        finally:
            composing.pop()

    monkeypatch.setattr(GradientFlow, "_passed_through", spy)
    monkeypatch.setattr(GradientFlow, "run_on", composed)
    gm = trace(Alike())
    InliningFlow(gm).run(torch.zeros(1, 4))
    assert worked_out == []
    assert [n.meta[FLOW].value.shape for n in gm.graph.nodes if n.name.startswith("attend")] == [
        (1, 4),
        (1, 4),
    ]


# ---------------------------------------------------------------- writes through aliases
# A fresh pair of eyes found writes the traced operations do not show whole: through an
# alias fx does not know as a view (``x.T``; ``x.contiguous()`` and ``x.to(dtype)``, which
# return ``x`` itself when nothing changes). Running the function whole sees them.

ALIASES = ("T", "mT", "adjoint", "contiguous", "to-same-dtype", "float", "moveaxis", "swapdims")


def alias(t: torch.Tensor, how: str) -> torch.Tensor:
    """Another name of ``t``'s memory (2-D ``t``)."""
    if how == "T":
        return t.T
    if how == "mT":
        return t.mT
    if how == "adjoint":
        return t.adjoint()
    if how == "contiguous":
        return t.contiguous()
    if how == "to-same-dtype":
        return t.to(torch.float32)
    if how == "float":
        return t.float()
    if how == "moveaxis":
        return t.moveaxis(0, 1)
    return t.swapdims(0, 1)


def mix_into(h: torch.Tensor, g: torch.Tensor, w: torch.Tensor, how: str) -> torch.Tensor:
    alias(h, how).copy_(alias(g * w, how))  # writes into its argument h
    return w * 1.0


def fill(x: torch.Tensor, scale: torch.Tensor, how: str) -> torch.Tensor:
    out = torch.zeros(x.shape)
    alias(out, how).copy_(alias(x, how))  # writes x into the tensor it made
    return out * scale


torch.fx.wrap("mix_into")
torch.fx.wrap("fill")


class WritesIntoAnArgumentThroughAnAlias(nn.Module):
    """By hand: h = a(x) is overwritten by c(x) * w inside the call and read by b after it,
    so c reaches the loss through b (sources: b)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        s = mix_into(h, self.c(x), self.w, self.how)
        return self.b(h) + s


class FillsThroughAnAlias(nn.Module):
    """By hand: b(fill(a(x))): a has one path of length 2, b one of length 1."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(fill(self.a(x), self.scale, self.how))


@pytest.mark.parametrize("how", ALIASES)
def test_a_write_into_an_argument_through_an_alias_is_refused_by_fx(how: str) -> None:
    report = auto_after_fx_refuses(
        WritesIntoAnArgumentThroughAnAlias(how),
        "writes in place into an argument",
        input_shape=(3, 4),
    )
    assert report.layers["c"].sources == ("b",)
    autograd = gpa.analyze(
        WritesIntoAnArgumentThroughAnAlias(how), input_shape=(3, 4), tracer="autograd"
    )
    assert layer_records(report) == layer_records(autograd)


@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
@pytest.mark.parametrize("how", ALIASES)
def test_a_write_through_an_alias_of_a_made_tensor_is_read_whole(how: str, channels) -> None:
    model = FillsThroughAnAlias(how)
    fx_report = gpa.analyze(model, input_shape=(3, 4), tracer="fx", channels=channels)
    assert {n: (r.shortest, r.longest, r.num_paths) for n, r in fx_report.layers.items()} == {
        "a": (2, 2, 1),
        "b": (1, 1, 1),
    }
    autograd = gpa.analyze(model, input_shape=(3, 4), tracer="autograd")
    assert layer_records(fx_report) == layer_records(autograd)


# ------------------------------------------------------------ what tracing by value sees


def _as_tensor(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A helper checking the type of what it is given: a proxy is no tensor."""
    if isinstance(v, torch.Tensor):
        return v
    return torch.zeros_like(like)


def combine(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _as_tensor(x, bias) * bias


def gated(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = x * 2
    if y.requires_grad:  # True in a training run: the result depends on x
        return y * w
    return w.expand(y.shape) + 0


torch.fx.wrap("combine")
torch.fx.wrap("gated")


class Checked(nn.Module):
    """By hand: b(f(a(x), ...)) where f's result depends on a's output: a (2, 2, 1)."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("bias", torch.ones(4))
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.function == "type-check-in-a-helper":
            return self.b(combine(self.a(x), self.bias))
        return self.b(gated(self.a(x), self.w))


@pytest.mark.parametrize("function", ["type-check-in-a-helper", "branch-on-requires-grad"])
def test_what_the_function_checks_is_answered_as_a_run_would(function: str) -> None:
    # a helper's type check would see a proxy: the call is run whole. requires_grad is
    # answered by the value the pass worked out (under autograd, as in training)
    model = Checked(function)
    fx_report = gpa.analyze(model, input_shape=(3, 4), tracer="fx")
    assert fx_report.layers["a"].shortest == 2 and fx_report.layers["a"].num_paths == 1
    autograd = gpa.analyze(model, input_shape=(3, 4), tracer="autograd")
    assert layer_records(fx_report) == layer_records(autograd)
