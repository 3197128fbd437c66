"""The three frontends (fx, export, autograd) against each other and against hand derivations.

Three independent computations of the same contract must agree: every model of the
hand-derived semantics tests (:data:`SEMANTICS`), of tests/core/test_properties.py and
of the channel tests (whose tests are re-run here with ``gpa.analyze`` comparing every
frontend on every call that has inputs) and every model of the built-in zoo gives
identical per-layer records, and fx and export identical channel segments. Models fx
cannot trace (data-dependent control flow) are analysed by ``tracer="auto"`` and
checked against values derived by hand.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import gpa
import gpa.models
from gpa.errors import GpaError, ShapeError, TraceError
from tests.channels import test_properties as test_channel_properties
from tests.channels import test_segments
from tests.core import test_paths, test_properties, test_serialize
from tests.frontends import test_gradient_flow, test_inputs_outputs, test_layers, test_tracing
from tests.frontends.every_tracer import layer_records
from tests.semantics import check_reachability_with_autograd, expect

LOSS = "<loss>"
_analyze = gpa.analyze


def records(report) -> list[tuple]:
    """Everything a report says per layer, in order."""
    return [(name, *record) for name, record in layer_records(report).items()]


def channel_records(report) -> list[tuple]:
    """Each layer's channel segments, as the report holds them (None at layer level)."""
    return [(name, r.segments, r.gradient_combinations) for name, r in report.layers.items()]


#: Every analysis another frontend could not read, as (model class, tracer, reason).
UNREAD: list[tuple[str, str, str]] = []


def every_frontend(model, example_inputs=None, **options):
    """``gpa.analyze`` that also runs every other frontend (fx, export, autograd) on the
    same model and requires identical records — channel segments too, from fx and export.

    A frontend that cannot read the model (fx on data-dependent Python, export on
    data-dependent shapes) is recorded in :data:`UNREAD`; it must then be one the
    analysis itself did not need.
    """
    report = _analyze(model, example_inputs, **options)
    if example_inputs is None and options.get("input_shape") is None:
        return report
    rest = {k: v for k, v in options.items() if k not in ("tracer", "name")}
    for tracer in ("fx", "export", "autograd"):
        if tracer == report.tracer or (tracer == "autograd" and rest.get("channels")):
            continue
        try:
            other = _analyze(model, example_inputs, tracer=tracer, **rest)
        except (TraceError, ShapeError) as exc:  # (fx's reading may not fit: auto moves on)
            UNREAD.append((type(model).__name__, tracer, str(exc).splitlines()[0]))
            continue
        assert records(other) == records(report), tracer
        if _has_fallback(report) or _has_fallback(other):
            # a fallback assumes full mixing where a frontend cannot route exactly (export
            # routes inside an autograd.Function's forward, fx does not): an upper bound
            assert other.network.layers == report.network.layers, tracer
            continue
        assert other.network == report.network, tracer
        assert channel_records(other) == channel_records(report), tracer
    return report


def _has_fallback(report) -> bool:
    return any(r.channel_fallbacks for r in report.layers.values())


@pytest.fixture(autouse=True)
def _compare_tracers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpa, "analyze", every_frontend)


def _slow_copy(test):
    """``test`` again, marked ``slow`` (a second pass over a suite the fast tier runs once).

    The original keeps its own marks; a test marked slow already is reused as it is.
    """
    if any(mark.name == "slow" for mark in getattr(test, "pytestmark", [])):
        return test

    @functools.wraps(test)
    def copy(*args, **kwargs):
        return test(*args, **kwargs)

    return pytest.mark.slow(copy)


# Re-run the hand-derived semantics tests, the brute-force property tests and the
# channel tests with every frontend: each of their analyses with inputs is now also a
# cross-check of fx, export and autograd (and of fx and export at channel level). The
# semantics tests were one file (test_semantics.py) before they were split by topic;
# their copies keep the prefix test_both_semantics_.
SEMANTICS = (
    test_paths,
    test_serialize,
    test_layers,
    test_gradient_flow,
    test_inputs_outputs,
    test_tracing,
)
_CHANNELS = (test_segments, test_channel_properties)
for _prefix, _modules in (
    ("semantics", SEMANTICS),
    ("properties", (test_properties,)),
    ("channels", _CHANNELS),
):
    for _module in _modules:
        for _name, _test in list(vars(_module).items()):
            if _name.startswith("test_") and callable(_test) and "cli" not in _name:
                globals()[f"test_both_{_prefix}_{_name[5:]}"] = _slow_copy(_test)


@pytest.mark.slow  # every zoo entry at full size, both tracers
@pytest.mark.parametrize("name", gpa.models.names())
def test_builtin_zoo_tracers_agree(name: str) -> None:
    model = gpa.models.build(name)
    fx_report = _analyze(model, input_shape=model.input_shape, tracer="fx", channels=True)
    export_report = _analyze(model, input_shape=model.input_shape, tracer="export", channels=True)
    autograd_report = _analyze(model, input_shape=model.input_shape, tracer="autograd")
    for other in (export_report, autograd_report):
        assert records(other) == records(fx_report)
    assert channel_records(export_report) == channel_records(fx_report)
    assert export_report.network == fx_report.network
    assert autograd_report.network == replace(fx_report.network, gradient_combinations=None)


# ------------------------------------------------- models fx cannot trace, by hand


class Gate(nn.Module):
    """Branches on the value of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.a1 = nn.Linear(4, 4)
        self.a2 = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        if x.mean() > 0:
            return self.a2(F.relu(self.a1(x)))
        return self.b(x)


def test_auto_falls_back_on_data_dependent_branch() -> None:
    with pytest.raises(TraceError):
        _analyze(Gate(), torch.ones(2, 4), tracer="fx")
    report = _analyze(Gate(), torch.ones(2, 4), tracer="auto")
    # mean(ones) > 0: the branch a1 -> a2 runs; b is never called.
    assert [r[:7] for r in records(report)] == [
        ("a1", "Linear", 1, 2, 2, (2,), 1),
        ("a2", "Linear", 1, 1, 1, (1,), 1),
        ("b", "Linear", 0, None, None, (), 0),
    ]
    assert list(report.network.unreachable) == ["b"]
    assert any(
        n.startswith("tracer auto used autograd: fx: torch.fx cannot trace Gate")
        and "; export: torch.export cannot export Gate" in n
        for n in report.notes
    )
    # The branch cannot be decided on the meta device: the model ran on real inputs.
    assert any("real inputs" in n for n in report.notes)


def test_auto_branch_with_zero_inputs_from_shape() -> None:
    # input_shape gives zeros: mean 0 is not > 0, so only b runs.
    report = _analyze(Gate(), input_shape=(2, 4), tracer="auto")
    assert [r[:7] for r in records(report)] == [
        ("b", "Linear", 1, 1, 1, (1,), 1),
        ("a1", "Linear", 0, None, None, (), 0),
        ("a2", "Linear", 0, None, None, (), 0),
    ]


class Unrolled(nn.Module):
    """A residual conv applied as many times as the input is wide / 4 (fx: range(Proxy))."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.stem(x)
        for _ in range(x.shape[-1] // 4):
            h = h + self.conv(h)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_auto_unrolls_shape_dependent_loop() -> None:
    report = _analyze(Unrolled(), input_shape=(1, 3, 8, 8), tracer="auto")
    # Width 8: two calls c1, c2 of conv; h1 = h0 + c1(h0), h2 = h1 + c2(h1), fc(h2).
    # fc: 1. conv: c2 -> fc (2); c1 -> c2 -> fc (3), c1 -> fc (2): {2: 2, 3: 1}.
    # stem: -> c1 -> c2 -> fc (4), -> c1 -> fc (3), -> c2 -> fc (3), -> fc (2): {2: 1, 3: 2, 4: 1}.
    got = {r[0]: (r[2], r[7], r[8]) for r in records(report)}
    assert got == {
        "stem": (1, {2: 1, 3: 2, 4: 1}, ("conv", "fc")),
        "conv": (2, {2: 2, 3: 1}, ("conv", "fc")),
        "fc": (1, {1: 1}, (LOSS,)),
    }
    assert report.network.max_shortest == 2
    assert report.network.longest == 4
    # Shapes alone decide this loop: it ran on the meta device.
    assert not any("real inputs" in n for n in report.notes)


class ItemScaled(nn.Module):
    """Reads a value with .item() (impossible on meta) and detaches a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        scale = float(x.abs().mean().item()) + 1.0
        h = self.l1(x) * scale
        side = self.l3(self.l2(h).detach())  # no gradient reaches l2 (nor l1 through it)
        with torch.no_grad():
            ignored = self.head(h)  # a call without gradient
        return self.head(h + side) + 0 * ignored


def test_autograd_honours_detach_and_no_grad_on_real_run() -> None:
    report = _analyze(ItemScaled(), input_shape=(2, 4), tracer="autograd")
    got = {r[0]: r[2:7] for r in records(report)}
    # head: 1 (two calls: one without gradient). l3 -> head: 2. l1 -> head: 2 (its
    # route through l2 is detached). l2: unreachable.
    assert got == {
        "l1": (1, 2, 2, (2,), 1),
        "l2": (1, None, None, (), 0),
        "l3": (1, 2, 2, (2,), 1),
        "head": (2, 1, 1, (1,), 1),
    }


class TiedFunctional(nn.Module):
    """Functional layers: a tied embedding read by F.linear and x @ w.t() inside a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.w = nn.Parameter(torch.randn(6, 6))

    def forward(self, ids):
        h = self.emb(ids)
        steps = int(ids.shape[1])
        for _ in range(steps // 2):
            h = torch.tanh(h @ self.w.t())
        return F.linear(h, self.emb.weight)


def test_auto_functional_layers_named_after_owner() -> None:
    report = _analyze(TiedFunctional(), input_shape=(2, 4), tracer="auto")
    # ids width 4: w is applied twice. emb (call 1) -> w -> w -> emb (call 2, F.linear).
    # emb record: call 2 has 1; call 1 has 4 -> {1: 1, 4: 1}. w: {2: 1, 3: 1}.
    got = {r[0]: (r[1], r[2], r[7]) for r in records(report)}
    assert got == {"emb": ("Embedding", 2, {1: 1, 4: 1}), "w": ("Parameter", 2, {2: 1, 3: 1})}
    # the input is read by an embedding: the shape was turned into int64 indices
    assert report.inputs == [{"shape": [2, 4], "dtype": "int64"}]


# ------------------------------------------------------------------ errors and CLI


def test_autograd_needs_inputs() -> None:
    with pytest.raises(GpaError, match="needs example inputs"):
        _analyze(Gate(), tracer="autograd")


def test_auto_without_inputs_keeps_fx_error() -> None:
    with pytest.raises(TraceError, match="needs example inputs"):
        _analyze(Gate(), tracer="auto")


def test_unknown_tracer() -> None:
    with pytest.raises(GpaError, match="unknown tracer"):
        _analyze(Gate(), input_shape=(1, 4), tracer="jit")


def test_autograd_shape_error_names_module() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))
    with pytest.raises(GpaError, match="in module '2'"):
        _analyze(net, input_shape=(1, 3, 8, 8), tracer="autograd")


@pytest.mark.slow  # subprocesses
def test_cli_tracer_option(tmp_path: Path) -> None:
    source = tmp_path / "gate.py"
    source.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Gate(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.a = nn.Linear(4, 4)
                    self.b = nn.Linear(4, 4)

                def forward(self, x):
                    return self.a(x) if x.sum() > 0 else self.b(x)

            model = Gate()
            input_shape = (1, 4)
            """
        )
    )
    fails = subprocess.run(
        [sys.executable, "-m", "gpa", "analyze", str(source), "--tracer", "fx"],
        capture_output=True,
        text=True,
    )
    assert fails.returncode == 2
    assert "--tracer auto" in fails.stderr
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpa",
            "analyze",
            str(source),
            "--tracer",
            "auto",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    # zeros: sum 0 -> b, a never called
    lines = ok.stdout.splitlines()
    assert lines[1].startswith("b,Linear,1,1,1")
    assert lines[2].startswith("a,Linear,0")
    assert "tracer auto used autograd: fx: " in ok.stderr
    # torch's own output about the failed export (log lines, a partial graph) is not shown
    assert "def forward" not in ok.stderr and "symbolic_shapes" not in ok.stderr


def _attend(x, w, b):
    return F.linear(x, w, b)


torch.fx.wrap("_attend")  # as torchvision does with its Swin attention


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(_attend(x, self.qkv.weight, self.qkv.bias))


def test_autograd_sees_functional_layer_inside_fx_wrapped_function() -> None:
    # F.linear on qkv's weight is a functional layer named qkv: qkv -> head -> loss.
    # (fx records _attend as one call, then traces into it by value; see test_opaque.py.)
    report = _analyze(Wrapped(), input_shape=(1, 4), tracer="autograd")
    assert [r[:7] for r in records(report)] == [
        ("qkv", "Linear", 1, 2, 2, (2,), 1),
        ("head", "Linear", 1, 1, 1, (1,), 1),
    ]


class WeightWithoutGradient(nn.Module):
    """qkv's weight read without gradient beside data, as fx and export see a layer:
    ``w.detach()``, a weight made under ``no_grad``, and both operands without gradient."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.qkv = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        if self.how == "detach":
            y = F.linear(x, self.qkv.weight.detach())
        elif self.how == "no_grad":
            with torch.no_grad():
                w = self.qkv.weight * 2
            y = F.linear(x, w.t().t())  # followed through ops with gradient on too
        elif self.how == "weights-only":  # transforms a weight: no layer (§2)
            y = x @ (self.qkv.weight @ self.qkv.weight.detach())
        else:  # nothing it reads carries gradient: a layer no gradient reaches
            y = F.linear(x.detach(), self.qkv.weight.detach()) + x
        return self.head(y)


@pytest.mark.parametrize("how", ["detach", "no_grad"])
def test_a_weight_without_gradient_beside_data_is_a_layer(how: str) -> None:
    # hand derivation: qkv -> head -> loss; every frontend agrees (every_frontend)
    report = gpa.analyze(WeightWithoutGradient(how), input_shape=(2, 4))
    assert [r[:7] for r in records(report)] == [
        ("qkv", "Linear", 1, 2, 2, (2,), 1),
        ("head", "Linear", 1, 1, 1, (1,), 1),
    ]


def test_weights_multiplied_with_one_without_gradient_make_a_weight_not_a_layer() -> None:
    # W @ W.detach() only transforms qkv's weight; x @ (that) is qkv's call, 2 × 4 × 4
    # multiply-adds (autograd took W @ W.detach() for the call: 4 × 4 × 4, wrong FLOPs)
    report = gpa.analyze(WeightWithoutGradient("weights-only"), input_shape=(2, 4))
    assert [r[:7] for r in records(report)] == [
        ("qkv", "Linear", 1, 2, 2, (2,), 1),
        ("head", "Linear", 1, 1, 1, (1,), 1),
    ]
    assert report.network.flops == 2 * (2 * 4 * 4 + 2 * 4 * 2)


def test_a_layer_reading_nothing_with_gradient_is_called_but_unreached() -> None:
    report = gpa.analyze(WeightWithoutGradient("nothing"), input_shape=(2, 4))
    qkv, head = report.layers["qkv"], report.layers["head"]
    assert (qkv.calls, qkv.shortest, qkv.num_paths) == (1, None, 0)
    assert (head.calls, head.shortest, head.num_paths) == (1, 1, 1)


def _attend_with_weight_made_without_gradient(x, w):
    with torch.no_grad():
        w2 = w * 2
    return F.linear(x, w2)


torch.fx.wrap("_attend_with_weight_made_without_gradient")


class WrappedWeightWithoutGradient(Wrapped):
    """``Wrapped``'s layers, its wrapped function making the weight under ``no_grad``."""

    def forward(self, x):
        return self.head(_attend_with_weight_made_without_gradient(x, self.qkv.weight))


def test_inside_a_wrapped_function_every_frontend_agrees_on_a_weight_without_gradient():
    # autograd runs the wrapped function as it is, fx traces into it by value (auto keeps
    # fx), export reads it too: all must see qkv as the layer feeding head
    model = WrappedWeightWithoutGradient()
    auto = _analyze(model, input_shape=(2, 4))
    assert auto.tracer == "fx"
    for tracer in ("autograd", "export"):
        assert records(_analyze(model, input_shape=(2, 4), tracer=tracer)) == records(auto)
    assert [r[:7] for r in records(auto)] == [
        ("qkv", "Linear", 1, 2, 2, (2,), 1),
        ("head", "Linear", 1, 1, 1, (1,), 1),
    ]


class MarksItsFeatures(nn.Module):
    """Wav2Vec2's feature encoder in short: in training it sets ``requires_grad`` on a
    value made from its input, which torch allows on a leaf only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv1d(1, 4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, None]
        if self.training:
            h.requires_grad = True
        return self.head(self.conv(h).mean(-1))


@pytest.mark.parametrize("train", [True, False])
def test_a_model_setting_requires_grad_on_its_features_is_read(train: bool) -> None:
    """The frontend's inputs carried gradient, so the model raised "you can only change
    requires_grad flags of leaf variables"; it is run again with inputs carrying none, as
    in training. By hand: conv -> head -> loss (2), head -> loss (1)."""
    report = gpa.analyze(MarksItsFeatures(), input_shape=(2, 16), tracer="autograd", train=train)
    assert {n: (r.shortest, r.longest) for n, r in report.layers.items()} == {
        "conv": (2, 2),
        "head": (1, 1),
    }


class WritesIntoItsInput(nn.Module):
    """Preprocessing in place, in forward: ``x.div_(255)`` and its kin, then conv -> fc."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
        self.act = nn.ReLU(inplace=True)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "div_":
            x.div_(255.0)
        elif self.how == "isub":
            x -= 0.5
        elif self.how == "setitem":
            x[:, 0] = 0.0
        elif self.how == "view":
            x[0].mul_(2.0)
        elif self.how == "inplace-module":
            x = self.act(x)
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("given", ["inputs", "shape"])
@pytest.mark.parametrize("how", ["div_", "isub", "setitem", "view", "inplace-module"])
def test_a_model_writing_into_its_input_is_read(how: str, given: str) -> None:
    """Found by a new user: the frontend's inputs carried gradient, so a model writing
    into its input in place raised "a leaf Variable that requires grad is being used in an
    in-place operation", blamed on the model's line (and under auto, for a model fx and
    export refuse, no frontend read it). It runs again with inputs carrying none, as in
    training. By hand: conv -> fc -> loss (2), fc -> loss (1); the caller's tensor is left
    as it was."""
    x = torch.rand(2, 3, 8, 8)
    before = x.clone()
    model = WritesIntoItsInput(how)
    if given == "inputs":
        report = gpa.analyze(model, (x,), tracer="autograd")
    else:
        report = gpa.analyze(model, input_shape=(2, 3, 8, 8), tracer="autograd")
    assert {n: (r.shortest, r.longest) for n, r in report.layers.items()} == {
        "conv": (2, 2),
        "fc": (1, 1),
    }
    assert torch.equal(x, before)
    check_reachability_with_autograd(report, model, x.clone())


class ReadsAValue(nn.Module):
    """``a -> b``, and a Python number read off ``a``'s output (``.item()``, which the
    meta device cannot give: Hugging Face's mask helpers do so)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h) * (2.0 if h.sum().item() >= 0 else 1.0)


def test_a_model_without_weights_that_cannot_run_on_meta_runs_on_zeros() -> None:
    """A model built on the meta device (a transformers TARGET) that reads a value could
    not be run at all: the real run needs weights. Zeros stand in for them, and a note says
    so. By hand: a -> b -> loss (2), b -> loss (1)."""
    with torch.device("meta"):
        model = ReadsAValue()
    report = gpa.analyze(model, input_shape=(2, 4), tracer="autograd")
    assert {n: (r.shortest, r.longest) for n, r in report.layers.items()} == {
        "a": (2, 2),
        "b": (1, 1),
    }
    assert report.notes[0].endswith(
        "run once on real inputs with zero weights (the model holds none)"
    )
    assert model.a.weight.is_meta  # the model keeps no weights


def test_weights_too_large_to_stand_zeros_in_for_are_the_frontends_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gpa.frontends.autograd as frontend

    monkeypatch.setattr(frontend, "ZERO_WEIGHTS_BUDGET", 100)  # bytes: less than a's weight
    with torch.device("meta"):
        model = ReadsAValue()
    with pytest.raises(TraceError, match="holds its weights on the meta device, where its"):
        gpa.analyze(model, input_shape=(2, 4), tracer="autograd")


class _FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.linear(x, self.w))  # the functional layer's line


def test_a_functional_layer_has_its_source_line_as_under_fx() -> None:
    """gpa check places a failing layer on the line calling it and gpa explain names it:
    autograd gave functional layers none (found by an adversarial review)."""
    import inspect

    lines, first = inspect.getsourcelines(_FunctionalNet.forward)
    line = first + next(i for i, text in enumerate(lines) if "the functional layer's line" in text)
    for tracer in ("fx", "autograd"):
        report = gpa.analyze(_FunctionalNet(), (torch.randn(1, 4),), tracer=tracer)
        assert report.layers["w"].site == (__file__, line)


class Hooked(nn.Module):
    """a -> b -> head; a forward hook on b adds ``side`` of b's input to b's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.side = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.b.register_forward_hook(lambda module, args, out: out + self.side(args[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
def test_a_layer_a_forward_hook_calls_is_a_layer_of_its_own(tracer: str) -> None:
    """The hook's call of side was taken for part of b's call (side missing, a's paths
    one). By hand: head 1; b and side 2 (into head through the sum); a 3, twice."""
    model, x = Hooked(), torch.randn(2, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert report.tracer == "autograd"  # fx and export run no hooks of a leaf's
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "b", {2: 1}, ("head",))
    expect(report, "side", {2: 1}, ("head",))
    expect(report, "a", {3: 2}, ("b", "side"))
    check_reachability_with_autograd(report, model, x)


#: Hooks on the layer ``b`` of ``a -> b -> head``: each (but the observer) runs ``side``.
HOOKS = {
    "module": ("forward", lambda m: lambda mod, args, out: out + m.side(args[0])),
    "functional": (
        "forward",
        lambda m: lambda mod, args, out: out + F.linear(args[0], m.side.weight),
    ),
    "pre": ("pre", lambda m: lambda mod, args: (args[0] + m.side(args[0]),)),
    "observer": ("forward", lambda m: lambda mod, args, out: None),
}


@pytest.mark.parametrize("how", list(HOOKS))
def test_hooks_on_a_layer_are_read_by_autograd_alone(how: str) -> None:
    """fx records a layer's call without its hooks, export folds what they compute into the
    call (side missing: found by an adversarial review): both refuse a model whose layer
    modules carry hooks, and auto reads it with autograd. By hand: head 1; b 2; side 2
    beside b (3 before it, for the pre-hook); a 3 through b and through side (4 through
    side then b)."""
    model, x = Hooked(), torch.randn(2, 4)
    model.b._forward_hooks.clear()
    kind, make = HOOKS[how]
    hook = make(model)
    if kind == "pre":
        model.b.register_forward_pre_hook(hook)
    else:
        model.b.register_forward_hook(hook)
    for tracer in ("fx", "export"):
        with pytest.raises(TraceError, match="'b' carry forward hooks"):
            gpa.analyze(model, (x,), tracer=tracer)
    report = gpa.analyze(model, (x,))
    assert report.tracer == "autograd"
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "b", {2: 1}, ("head",))
    if how == "observer":
        assert not report.layers["side"].reachable
        expect(report, "a", {3: 1}, ("b",))
    elif how == "pre":
        expect(report, "side", {3: 1}, ("b",))
        expect(report, "a", {3: 1, 4: 1}, ("b", "side"))
    else:
        expect(report, "side", {2: 1}, ("head",))
        expect(report, "a", {3: 2}, ("b", "side"))
    check_reachability_with_autograd(report, model, x)


def _marking(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    output.requires_grad_(True)  # Hugging Face's enable_input_require_grads, word for word


def _marking_by_default(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    output.requires_grad_()


@pytest.mark.parametrize("hook", [_marking, _marking_by_default])
def test_a_hook_only_marking_the_output_as_requiring_gradient_is_no_computation(
    hook: Callable,
) -> None:
    """Gradient checkpointing in Hugging Face puts such a hook on the input embeddings:
    fx and export refused every such model (found by a new-user review). It changes no
    value, and the layer's output carries gradient anyway (§3): every frontend reads the
    model, auto with fx. By hand: head 1, b 2, a 3."""
    model, x = Hooked(), torch.randn(2, 4)
    model.b._forward_hooks.clear()
    model.a.register_forward_hook(hook)
    for tracer in ("fx", "export", "autograd", "auto"):
        report = gpa.analyze(model, (x,), tracer=tracer)
        assert report.tracer == ("fx" if tracer == "auto" else tracer)
        expect(report, "head", {1: 1}, (LOSS,))
        expect(report, "b", {2: 1}, ("head",))
        expect(report, "a", {3: 1}, ("b",))
    check_reachability_with_autograd(report, model, x)


@pytest.mark.parametrize(
    "hook",
    [
        lambda module, args, output: args[0].requires_grad_(True) and None,  # marks, then more
        lambda module, args, output: output.requires_grad_(True),  # returns it: a value
        lambda module, args, output: args,  # replaces the output
    ],
)
def test_a_hook_doing_more_than_marking_still_makes_fx_and_export_refuse(hook: Callable) -> None:
    model, x = Hooked(), torch.randn(2, 4)
    model.b._forward_hooks.clear()
    model.a.register_forward_hook(hook)
    for tracer in ("fx", "export"):
        with pytest.raises(TraceError, match="'a' carry forward hooks"):
            gpa.analyze(model, (x,), tracer=tracer)


def test_hooks_on_a_block_fx_traces_into_are_read_by_every_frontend() -> None:
    """A hook on a module fx and export trace into (a block; Hugging Face's output capture)
    runs there as any code: no refusal. By hand: head 1; b.c and side 2 (into head)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b, self.side, self.head = Block(), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.b(x))

    model = Net()
    model.b.register_forward_hook(lambda mod, args, out: out + model.side(args[0]))
    x = torch.randn(2, 4)
    for tracer in ("fx", "export", "autograd"):
        report = gpa.analyze(model, (x,), tracer=tracer)
        expect(report, "b.c", {2: 1}, ("head",))
        expect(report, "side", {2: 1}, ("head",))
    assert gpa.analyze(model, (x,)).tracer == "fx"


class _Chain(nn.Module):
    """``b(a(x))``, with ``c`` for the hooks below to call; ``pair``: returns ``(b(h), h)``."""

    def __init__(self, pair: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.pair = pair

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x)
        return (self.b(h), h) if self.pair else self.b(h)


#: Hooks on the model itself, and each layer's (histogram, sources) by hand.
ROOT_HOOKS = {
    # out = b(h) + h.detach(): a's one path is through b (fx read a second, straight)
    "detaching": (
        True,
        lambda m: m.register_forward_hook(lambda mod, args, out: out[0] + out[1].detach()),
        {"a": ({2: 1}, ("b",)), "b": ({1: 1}, (LOSS,)), "c": None},
    ),
    # out = c(b(a(x)))
    "calling": (
        False,
        lambda m: m.register_forward_hook(lambda mod, args, out: mod.c(out)),
        {"a": ({3: 1}, ("b",)), "b": ({2: 1}, ("c",)), "c": ({1: 1}, (LOSS,))},
    ),
    # out = b(a(c(x)))
    "pre": (
        False,
        lambda m: m.register_forward_pre_hook(lambda mod, args: (mod.c(args[0]),)),
        {"c": ({3: 1}, ("a",)), "a": ({2: 1}, ("b",)), "b": ({1: 1}, (LOSS,))},
    ),
    "pre_with_kwargs": (
        False,
        lambda m: m.register_forward_pre_hook(
            lambda mod, args, kwargs: ((mod.c(args[0]),), kwargs), with_kwargs=True
        ),
        {"c": ({3: 1}, ("a",)), "a": ({2: 1}, ("b",)), "b": ({1: 1}, (LOSS,))},
    ),
    # registered for every module: it calls c on the model's output alone
    "every_module": (
        False,
        lambda m: torch.nn.modules.module.register_module_forward_hook(
            lambda mod, args, out: mod.c(out) if mod is m else out
        ),
        {"a": ({3: 1}, ("b",)), "b": ({2: 1}, ("c",)), "c": ({1: 1}, (LOSS,))},
    ),
}


@pytest.mark.parametrize("how", list(ROOT_HOOKS))
def test_hooks_on_the_model_itself_are_run(how: str) -> None:
    """fx traces ``forward`` alone, without the model's own hooks: a hook detaching a
    returned tensor was read with the path it cuts, in silence, and auto reported fx's
    numbers; a hook calling a layer was refused as a test on a proxy. fx now refuses a
    model carrying hooks itself (or hooks registered for every module); export and
    autograd call the model, hooks and all (export refuses the layers the latter hook
    too). Numbers by hand (:data:`ROOT_HOOKS`)."""
    pair, hook, expected = ROOT_HOOKS[how]
    model, x = _Chain(pair), torch.randn(2, 4)
    handle = hook(model)
    try:
        with pytest.raises(TraceError, match="hooks itself|registered for every module"):
            gpa.analyze(model, (x,), tracer="fx")
        report = gpa.analyze(model, (x,))
        assert report.tracer == ("autograd" if how == "every_module" else "export")
        assert sorted(report.layers) == sorted(expected)
        for name, held in expected.items():
            if held is None:  # (never called)
                assert not report.layers[name].reachable
            else:
                expect(report, name, *held)
        check_reachability_with_autograd(report, model, x)
    finally:
        handle.remove()


class _CallingDetaches(_Chain):
    """Its class's own ``__call__`` returns ``b(h) + h.detach()``."""

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        return out[0] + out[1].detach()


def test_a_models_own_call_is_run() -> None:
    """fx traces ``forward`` alone, not a ``__call__`` the model's class defines: the
    path the latter cuts was read, in silence (auto reported it). fx refuses; export and
    autograd call the model. By hand: a's one path is through b, b's to the loss; c is
    never called."""
    model, x = _CallingDetaches(pair=True), torch.randn(2, 4)
    with pytest.raises(TraceError, match=r"defines _CallingDetaches.__call__"):
        gpa.analyze(model, (x,), tracer="fx")
    for tracer in ("export", "autograd", "auto"):
        report = gpa.analyze(model, (x,), tracer=tracer)
        assert report.tracer == ("export" if tracer == "auto" else tracer)
        expect(report, "a", {2: 1}, ("b",))
        expect(report, "b", {1: 1}, (LOSS,))
        assert not report.layers["c"].reachable
        check_reachability_with_autograd(report, model, x)


class CachesThenReadsValues(nn.Module):
    """Caches a tensor in a list on its first call (torchvision's anchor generator keeps
    its anchors so), then reads values (``nonzero``), which the meta device cannot give."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.cache: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cache:
            self.cache.append(torch.ones(4, device=x.device))
        h = self.a(x) * self.cache[0]
        kept = torch.nonzero(h.sum(1) > -1e9)[:, 0]
        return self.b(h[kept])


def test_a_run_on_the_meta_device_leaves_nothing_for_the_run_on_real_inputs() -> None:
    """The meta run cached a meta tensor before failing, and the run on real inputs read it
    ("Cannot copy out of meta tensor"): every torchvision detector in eval mode had no
    frontend (found by a new-user review). By hand: a -> b, shortest 2 and 1; the model's
    cache is as it was."""
    model = CachesThenReadsValues()
    report = gpa.analyze(model, input_shape=(2, 4), tracer="autograd")
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("b",))
    assert model.cache == []
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


class _NoGradLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().forward(x)


def test_a_marking_hook_on_a_layer_whose_forward_may_switch_gradient_off_counts() -> None:
    """The mark gives gradient to an output its module's own forward computed without it
    (found by an adversarial review: fx read such a layer as reachable): accepted on
    torch.nn's own forwards alone."""
    model, x = Hooked(), torch.randn(2, 4)
    model.b._forward_hooks.clear()
    model.a = _NoGradLinear(4, 4)
    model.a.register_forward_hook(_marking)
    for tracer in ("fx", "export"):
        with pytest.raises(TraceError, match="'a' carry forward hooks"):
            gpa.analyze(model, (x,), tracer=tracer)
    report = gpa.analyze(model, (x,))
    assert report.tracer == "autograd"
    assert not report.layers["a"].reachable
    check_reachability_with_autograd(report, model, x)


def test_a_marking_hook_on_a_module_without_weights_counts() -> None:
    """On a module without weights the mark is what gives its output gradient (an input
    stage before a re-entrant checkpoint: found by an adversarial review), so fx and
    export refuse such a leaf as they refuse any hooked one."""

    class Stage(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stage, self.head = Stage(), nn.Linear(4, 2)
            self.stage.register_forward_hook(_marking)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stage(x))

    for tracer in ("fx", "export"):
        with pytest.raises(TraceError, match="'stage' carry forward hooks"):
            gpa.analyze(Net(), input_shape=(2, 4), tracer=tracer, leaf_modules=["stage"])
