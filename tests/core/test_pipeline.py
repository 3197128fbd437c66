"""The pipeline pauses Python's cyclic garbage collector while it runs and leaves it as it
found it (enabled or paused by the program), errors included."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import gpa
from gpa.core.graph import LOSS
from gpa.errors import TraceError
from tests.semantics import check_reachability_with_autograd, expect


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


class Watching(nn.Module):
    """Notes whether the collector runs while its forward is traced (outside the model:
    what a forward leaves in the model is restored after an analysis)."""

    def __init__(self, collector_on: list[bool]) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.notes = collector_on.append

    def forward(self, x):
        self.notes(gc.isenabled())
        return self.fc(x)


def test_paused_while_analysing_and_enabled_after() -> None:
    assert gc.isenabled()
    collector_on: list[bool] = []
    report = gpa.analyze(Watching(collector_on), input_shape=(1, 4), channels=True)
    assert collector_on and not any(collector_on)
    assert gc.isenabled()
    assert report.network.max_shortest == 1  # hand-derived: one Linear layer


def test_a_programs_own_pause_is_kept() -> None:
    gc.disable()
    try:
        report = gpa.analyze(model(), input_shape=(1, 4))
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert report.network.max_shortest == 2  # hand-derived: two Linear layers in a chain


def test_an_error_enables_it_again() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.reshape(3, -1, 7))  # no such shape for 1x4

    with pytest.raises(gpa.GpaError):
        gpa.analyze(Broken(), input_shape=(1, 4))
    assert gc.isenabled()


def test_nothing_is_frozen() -> None:
    gpa.analyze(model(), input_shape=(1, 4), channels=True)
    assert gc.get_freeze_count() == 0


def test_cycles_an_analysis_drops_are_freed_by_a_young_pass() -> None:
    """What an analysis drops in reference cycles (fx graphs, autograd graphs) is left to
    the young generations, which free it: not to the oldest, whose passes are rare."""
    gc.collect()
    for _ in range(2):
        gpa.analyze(model(), input_shape=(1, 4), channels=True)
    gc.collect(1)  # the young and middle generations only
    assert gc.collect() < 200  # a full pass finds little left (about 1,500 when promoted)


class TiedLM(torch.nn.Module):
    """An embedding whose weight the output projection holds too (tied by assignment)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.body = torch.nn.Linear(8, 8)
        self.lm = torch.nn.Linear(8, 10, bias=False)
        self.lm.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(torch.relu(self.body(self.emb(ids))))


class SharedTable(torch.nn.Module):
    """T5 in small: ``shared`` (never called) holds the table both stacks' embeddings hold."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = torch.nn.Embedding(10, 8)
        self.enc = torch.nn.Embedding(10, 8)
        self.dec = torch.nn.Embedding(10, 8)
        self.enc.weight = self.dec.weight = self.shared.weight
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mix(self.enc(ids) + self.dec(ids))


@pytest.mark.parametrize("convention", ["torch", "darknet"])
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_shared_parameter_counts_for_the_first_record_holding_it(
    tracer: str, convention: str
) -> None:
    """Found by a new user on T5: the table was counted for ``shared``, the first module
    holding it, which is no record (never called, §2), so both stacks' embeddings showed
    0 parameters. By hand: enc 10 × 8 = 80 (the first record holding it), dec 0 (counted
    once), mix 8 × 8 + 8 = 72; the network counts the table once. Under darknet's
    convention, no embedding's: mix 64."""
    report = gpa.analyze(
        SharedTable(),
        (torch.zeros(1, 3, dtype=torch.long),),
        tracer=tracer,
        count_convention=convention,
    )
    # (darknet counts the weights of conv, linear and bilinear modules alone, §9)
    table, mix = (80, 72) if convention == "torch" else (0, 64)
    assert {r.name: r.params for r in report.layers.values()} == {
        "enc": table,
        "dec": 0,
        "mix": mix,
    }
    assert report.network.params == table + mix


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_weights_tied_by_assignment_are_noted(tracer: str) -> None:
    """Two modules holding one parameter are two records (§2), which a reader could not
    tell from the report: a note names them. By hand: emb -> body -> lm -> loss (3),
    body (2), lm (1); lm's parameters are counted with emb's."""
    report = gpa.analyze(TiedLM(), (torch.zeros(1, 3, dtype=torch.long),), tracer=tracer)
    assert [(r.name, r.shortest, r.longest) for r in report.layers.values()] == [
        ("emb", 3, 3),
        ("body", 2, 2),
        ("lm", 1, 1),
    ]
    assert report.layers["lm"].params == 0
    (note,) = [n for n in report.notes if "tied" in n]
    assert note.startswith(
        "layers hold tied parameters (emb.weight and lm.weight: one parameter): each module"
    )
    untied = gpa.analyze(torch.nn.Sequential(torch.nn.Linear(4, 4)), input_shape=(1, 4))
    assert not [n for n in untied.notes if "tied" in n]


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_data_parallel_wrapper_is_analysed_as_the_module_it_wraps(tracer: str) -> None:
    """``nn.DataParallel`` failed on every frontend (on the CPU it calls its module as it
    is). By hand: 0 -> 1, shortest 2 and 1; the note says the names are the module's."""
    inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    report = gpa.analyze(nn.DataParallel(inner), (torch.randn(2, 4),), tracer=tracer)
    assert {name: r.shortest for name, r in report.layers.items()} == {"0": 2, "1": 1}
    assert report.model == "Sequential"
    assert report.notes[0].startswith("analysed the module DataParallel wraps (its .module)")


def test_count_and_measure_read_a_data_parallel_wrapper_as_its_module() -> None:
    """gpa.count blamed the inputs and gpa.measure found no layer (its names were the
    wrapped module's, its hooks looked on the wrapper). By hand: 4·4 + 4 + 4·2 + 2 = 30
    parameters, the same as the module's own count; both linears measured."""
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    wrapped = nn.DataParallel(inner)
    assert gpa.count(wrapped, (torch.randn(2, 4),)).total_params == 30
    measured = gpa.measure(wrapped, (torch.randn(8, 4),), steps=1)
    assert set(measured.layers) == {"0", "2"}
    assert all(m.output_grad_norm > 0 for m in measured.layers.values())


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_data_parallel_submodule_is_read_through(tracer: str) -> None:
    """A wrapper inside the model was one torch.nn leaf: a layer ``enc`` (export, autograd)
    or a failure (fx). By hand: enc.module.0 -> enc.module.2 -> head, 3, 2, 1."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.DataParallel(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(x))

    report = gpa.analyze(Model(), (torch.randn(2, 4),), tracer=tracer)
    shortest = {name: r.shortest for name, r in report.layers.items()}
    assert shortest == {"enc.module.0": 3, "enc.module.2": 2, "head": 1}


class _Compiled(nn.Module):
    """a -> inner (compiled with torch.compile: 0 -> 2) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.inner = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(self.a(x)))


def _frames_compiled() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].values())


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_compiled_model_is_analysed_as_the_module_it_wraps(tracer: str) -> None:
    """``torch.compile(model)`` crashed export and auto (``bool()`` of the wrapper asks its
    length) and fx, and autograd took seconds compiling it (found by a new-user review).
    Read as the module it wraps, run eagerly, as a data-parallel wrapper is. By hand:
    0 -> 1, shortest 2 and 1."""
    compiled = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    before = _frames_compiled()
    report = gpa.analyze(compiled, (torch.randn(2, 4),), tracer=tracer)
    assert {name: r.shortest for name, r in report.layers.items()} == {"0": 2, "1": 1}
    assert report.notes[0].startswith("analysed the module torch.compile wraps (its ._orig_mod)")
    assert _frames_compiled() == before  # nothing compiled to read it


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_compiled_submodule_is_read_through(tracer: str) -> None:
    """fx refused a compiled submodule ("a dynamo-optimized function"). By hand: a ->
    inner.0 -> inner.2 -> head, 4, 3, 2, 1, under the module's qualified names (its
    state_dict's: ``inner._orig_mod.0``)."""
    expected = {"a": 4, "inner._orig_mod.0": 3, "inner._orig_mod.2": 2, "head": 1}
    _read_without_compiling(_Compiled(), tracer, expected)


def _read_without_compiling(model: nn.Module, tracer: str, shortest: dict[str, int]) -> gpa.Report:
    """``model``'s report under ``tracer``, whose layers have these ``shortest`` paths,
    made without compiling anything."""
    before = _frames_compiled()
    report = gpa.analyze(model, (torch.randn(2, 4),), tracer=tracer)
    assert {name: r.shortest for name, r in report.layers.items()} == shortest
    assert _frames_compiled() == before
    return report


class _CompiledLayer(nn.Module):
    """a -> inner (one Linear, compiled with torch.compile) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.inner = torch.compile(nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(self.a(x)))


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
def test_a_compiled_layer_is_one_layer_read_through(tracer: str) -> None:
    """Found by a new user: a compiled Linear is a layer twice over (torch.compile's
    wrapper passes for the class it wraps), so the autograd frontend (and auto) listed
    ``inner`` beside ``inner._orig_mod``, never called and unreachable (4 layers, one a
    phantom), and fx refused, its run finding ``inner`` called. By hand: a -> inner ->
    head, 3, 2, 1; one layer per module, under its state_dict's name. (Export refuses a
    compiled module read as one call: its graph does not show the call's bounds.)"""
    model = _CompiledLayer()
    expected = {"a": 3, "inner._orig_mod": 2, "head": 1}
    report = _read_without_compiling(model, tracer, expected)
    assert report.network.unreachable == ()
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_an_averaged_copy_is_analysed_as_the_module_it_wraps(tracer: str) -> None:
    """An EMA or SWA copy (``AveragedModel``) failed under fx: its ``forward(*args,
    **kwargs)`` hands a proxy on unpacked. By hand: 0 -> 1, shortest 2 and 1; compiled
    inside, both wrappers are noted."""
    inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    averaged = torch.optim.swa_utils.AveragedModel(torch.compile(inner))
    report = gpa.analyze(averaged, (torch.randn(2, 4),), tracer=tracer)
    assert {name: r.shortest for name, r in report.layers.items()} == {"0": 2, "1": 1}
    assert [n.split(" (")[0] for n in report.notes[:2]] == [
        "analysed the module AveragedModel wraps",
        "analysed the module torch.compile wraps",
    ]


class _Pair(nn.Module):
    """``(a(x), b(x))``, with ``c`` for the hooks below to call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)


WRAPPERS = {
    "DataParallel": nn.DataParallel,
    "AveragedModel": torch.optim.swa_utils.AveragedModel,
    "torch.compile": torch.compile,
}


def _detach_b(module: nn.Module, args: tuple, out: tuple) -> torch.Tensor:
    return out[0] + out[1].detach()


#: Hooks on a wrapper (``inner``, the module it wraps, held in a closure: the wrapper has
#: not its layers as attributes), and each layer's path histogram and sources by hand
#: (None: never reached).
WRAPPER_HOOKS = {
    # out = a(x) + b(x).detach(): b's one path is cut
    "detaching": (
        lambda w, inner: w.register_forward_hook(_detach_b),
        {"a": ({1: 1}, (LOSS,)), "b": None, "c": None},
    ),
    "with_kwargs": (
        lambda w, inner: w.register_forward_hook(
            lambda mod, args, kwargs, out: _detach_b(mod, args, out), with_kwargs=True
        ),
        {"a": ({1: 1}, (LOSS,)), "b": None, "c": None},
    ),
    "always_called": (
        lambda w, inner: w.register_forward_hook(_detach_b, always_call=True),
        {"a": ({1: 1}, (LOSS,)), "b": None, "c": None},
    ),
    # out = (a(c(x)), b(c(x))): c reaches the loss through a and through b
    "pre": (
        lambda w, inner: w.register_forward_pre_hook(lambda mod, args: (inner.c(args[0]),)),
        {"a": ({1: 1}, (LOSS,)), "b": ({1: 1}, (LOSS,)), "c": ({2: 2}, ("a", "b"))},
    ),
}


@pytest.mark.parametrize("hook", list(WRAPPER_HOOKS))
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_hooks_on_a_wrapper_are_run(wrapper: str, hook: str) -> None:
    """gpa analysed the module a wrapper holds without the hooks on the wrapper, which
    run around that module's call: a hook detaching part of the output was read with the
    path it cuts, in silence, by every frontend. They now run, on the wrapped module (fx
    refuses it then: it traces forward alone; auto moves on to export), and are removed
    after. Numbers by hand (:data:`WRAPPER_HOOKS`) and which layers a real backward of the
    wrapper reaches."""
    register, expected = WRAPPER_HOOKS[hook]
    wrapped, x = WRAPPERS[wrapper](_Pair()), torch.randn(2, 4)
    inner = getattr(wrapped, "module", None) or wrapped._orig_mod  # (AveragedModel copies)
    register(wrapped, inner)
    kind = "OptimizedModule" if wrapper == "torch.compile" else wrapper
    with pytest.raises(TraceError, match=f"_Pair is wrapped in {kind} carrying forward hooks"):
        gpa.analyze(wrapped, (x,), tracer="fx")
    for tracer in ("export", "autograd", "auto"):
        report = gpa.analyze(wrapped, (x,), tracer=tracer)
        assert report.tracer == ("export" if tracer == "auto" else tracer)
        for name, held in expected.items():
            if held is None:
                assert not report.layers[name].reachable, name
            else:
                expect(report, name, *held)
        assert any(n.startswith("ran the forward hooks") for n in report.notes)
        assert not (inner._forward_hooks or inner._forward_pre_hooks)  # (removed after)
    with torch.compiler.set_stance("force_eager"):  # (compiled, b's gradient is zeros)
        out = wrapped(x)
    sum(t.sum() for t in (out if isinstance(out, tuple) else (out,))).backward()
    reached = {n for n in expected if getattr(inner, n).weight.grad is not None}
    assert reached == {n for n, held in expected.items() if held is not None}


def test_a_wrappers_hooks_run_around_those_of_the_module_it_wraps() -> None:
    """The wrapper's pre-hooks run before the wrapped module's, its forward hooks after,
    each in the order registered: the order of a call of the wrapper itself."""
    ran: list[str] = []
    inner = nn.Linear(4, 4)
    wrapped = nn.DataParallel(inner)
    for module, name in ((inner, "inner"), (wrapped, "wrapper"), (wrapped, "wrapper 2")):
        module.register_forward_pre_hook(lambda *_, n=name: ran.append(f"{n} pre"))
        module.register_forward_hook(lambda *_, n=name: ran.append(n))
    wrapped(torch.randn(2, 4))
    called, ran[:] = list(ran), []
    assert called[0] == "wrapper pre" and called[-1] == "wrapper 2"  # (Python's order)
    gpa.analyze(wrapped, (torch.randn(2, 4),), tracer="autograd")
    assert ran and ran == called * (len(ran) // len(called))


class _Head(nn.Module):
    """``a(x)``, with ``b`` and ``c`` for the wrappers' hooks to call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


def _nested(outer: str) -> tuple[nn.Module, _Head]:
    """``outer`` around DataParallel around a :class:`_Head`: the inner wrapper's hook adds
    ``b`` of the output (read through its ``module`` argument, the wrapper), the outer's
    calls ``c`` on it."""
    model = WRAPPERS[outer](nn.DataParallel(_Head()))
    held = model._orig_mod if outer == "torch.compile" else model.module  # (a copy)
    head = held.module
    held.register_forward_hook(lambda mod, args, out: out + mod.module.b(out))
    model.register_forward_hook(lambda mod, args, out: head.c(out))
    return model, head


@pytest.mark.parametrize("outer", ["AveragedModel", "torch.compile"])
def test_hooks_on_nested_wrappers_run_outermost_last(outer: str) -> None:
    """Each wrapper's hooks run around those of the wrappers inside it (a review: the
    outer's ran first, c(a) + b(c(a)) read). By hand, out = c(a(x) + b(a(x))): c at 1, b
    at 2 (through c), a at 2 and 3; and a real backward reaches every layer."""
    model, inner = _nested(outer)
    x = torch.randn(2, 4)
    for tracer in ("export", "autograd", "auto"):
        report = gpa.analyze(model, (x,), tracer=tracer)
        expect(report, "c", {1: 1}, (LOSS,))
        expect(report, "b", {2: 1}, ("c",))
        expect(report, "a", {2: 1, 3: 1}, ("b", "c"))
        assert not (inner._forward_hooks or inner._forward_pre_hooks)
    with torch.compiler.set_stance("force_eager"):
        model(x).sum().backward()
    assert all(getattr(inner, n).weight.grad is not None for n in "abc")


def test_concurrent_analyses_of_a_wrapped_model_carry_its_hooks_once() -> None:
    """Two analyses at once each carried the wrapper's hook onto the module, and one
    restored the other's after removing its own: the hook ran twice in one analysis, and
    stayed on the user's module for good (a review). By hand: out = a(x) + b(x).detach():
    a at 1, b unreachable, in every analysis; no hook left."""
    from concurrent.futures import ThreadPoolExecutor

    wrapped = nn.DataParallel(_Pair())
    wrapped.register_forward_hook(_detach_b)

    def shortest(_: int) -> dict[str, int | None]:
        report = gpa.analyze(wrapped, (torch.randn(2, 4),), tracer="autograd")
        return {name: r.shortest for name, r in report.layers.items()}

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(shortest, range(8)))
    assert results == [{"a": 1, "b": None, "c": None}] * 8
    assert not wrapped.module._forward_hooks


class _Ema(torch.optim.swa_utils.AveragedModel):
    """An averaged copy whose own ``forward`` detaches ``b``'s output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.module(x)
        return a + b.detach()


class _Parallel(nn.DataParallel):
    """A data-parallel wrapper whose own ``forward`` detaches ``b``'s output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.module(x)
        return a + b.detach()


@pytest.mark.parametrize("wrapper", [_Ema, _Parallel])
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_wrappers_subclass_with_a_forward_of_its_own_is_a_model(
    tracer: str, wrapper: type[nn.Module]
) -> None:
    """It was read through as the module it wraps, without its forward: ``b`` was read
    reached; the autograd frontend then refused the data-parallel one (torch's stateless
    API takes no DataParallel: ModelError). By hand: module.a reaches the loss in 1,
    module.b and module.c never; a real backward agrees."""
    model, x = wrapper(_Pair()), torch.randn(2, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "module.a", {1: 1}, (LOSS,))
    assert not report.layers["module.b"].reachable
    assert not any(n.startswith("analysed the module") for n in report.notes)
    check_reachability_with_autograd(report, model, x)


def test_a_compiled_module_with_no_length_is_read_through() -> None:
    """``torch.compile(nn.Sequential())`` is falsy (no length): reading its wrappers asked
    it for its ``.module`` (AttributeError). It is refused as having no layers."""
    with pytest.raises(gpa.GpaError, match="has no layers"):
        gpa.analyze(torch.compile(nn.Sequential()), (torch.randn(2, 4),))


@pytest.mark.parametrize("hooked", [False, True])
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_wrapped_torchscript_module_is_refused_as_one(tracer: str, hooked: bool) -> None:
    """A TorchScript module is refused as the model (gpa reads Python code); wrapped in
    DataParallel it crashed export and auto (AttributeError inside torch), and with hooks
    on the wrapper the analysis (a ScriptModule takes no hooks). Refused, as unwrapped."""
    wrapped = nn.DataParallel(torch.jit.script(nn.Sequential(nn.Linear(4, 4))))
    if hooked:
        wrapped.register_forward_hook(_detach_b)
    with pytest.raises(gpa.GpaError, match="is a TorchScript module"):
        gpa.analyze(wrapped, (torch.randn(2, 4),), tracer=tracer)


def test_measure_runs_the_hooks_on_a_wrapper() -> None:
    """gpa.measure ran the wrapped module without the wrapper's hooks: ``b`` was measured
    with gradient that its detached output never gets. By a real backward: none."""
    inner = _Pair()
    wrapped = nn.DataParallel(inner)
    wrapped.register_forward_hook(_detach_b)
    measured = gpa.measure(wrapped, (torch.randn(8, 4),), steps=1)
    assert measured.layers["a"].output_grad_norm > 0
    assert measured.layers["b"].output_grad_norm == 0
    assert not inner._forward_hooks


def test_count_and_measure_read_a_compiled_model_as_its_module() -> None:
    """By hand: 4·4 + 4 + 4·2 + 2 = 30 parameters; both linears measured, eagerly."""
    compiled = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert gpa.count(compiled, (torch.randn(2, 4),)).total_params == 30
    before = _frames_compiled()
    measured = gpa.measure(compiled, (torch.randn(8, 4),), steps=1)
    assert set(measured.layers) == {"0", "2"}
    assert all(m.output_grad_norm > 0 for m in measured.layers.values())
    assert _frames_compiled() == before


def test_frozen_layers_are_analysed_as_any_and_noted() -> None:
    """A backbone frozen for fine-tuning, or an EMA copy, is analysed as any other layer
    (§3) with no word about it (found by a new-user review): a note names the frozen
    layers. By hand: 0 -> 1 -> 2, shortest 3, 2, 1 whichever is frozen."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    one = gpa.analyze(model, input_shape=(1, 4))
    assert {name: r.shortest for name, r in one.layers.items()} == {"0": 3, "1": 2, "2": 1}
    assert [n for n in one.notes if "frozen" in n] == [
        "1 layer's parameters are frozen (requires_grad=False): 0; gradient paths are "
        "structural, so they are analysed as any other layer's, though a real backward "
        "leaves their weights without gradient (and a re-entrant checkpoint given only what "
        "they compute passes none on in training, docs/semantics.md §1.7)"
    ]
    every = gpa.analyze(model.requires_grad_(False), input_shape=(1, 4))
    assert {name: r.shortest for name, r in every.layers.items()} == {"0": 3, "1": 2, "2": 1}
    assert any(n.startswith("every layer's parameters are frozen") for n in every.notes)
    trained = gpa.analyze(model.requires_grad_(True), input_shape=(1, 4))
    assert not [n for n in trained.notes if "frozen" in n]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.c1(x))


class _CompiledBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.h = nn.Linear(4, 4), torch.compile(_Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.a(x))


@pytest.mark.parametrize(
    "options",
    [
        {"leaf_modules": ["h"]},
        {"leaf_modules": [_Block]},
        {"layer_types": [nn.Linear, _Block]},
    ],
    ids=["leaf-by-name", "leaf-by-class", "layer-type"],
)
def test_a_compiled_block_read_as_one_call(options: dict) -> None:
    """fx read through a compiled block declared a leaf, and the autograd frontend crashed
    on it (the truth of a compiled module asks its length); export's graph shows no call of
    a compiled module (found by an adversarial review). By hand, the block one layer:
    a -> block, shortest 2 and 1; export refuses and auto reads it with fx."""
    model = _CompiledBlock()
    for tracer in ("fx", "autograd", "auto"):
        report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, **options)
        assert [r.shortest for r in report.layers.values()] == [2, 1]
        assert list(report.layers)[0] == "a" and len(report.layers) == 2
    with pytest.raises(TraceError, match="'h' is compiled"):
        gpa.analyze(model, input_shape=(2, 4), tracer="export", **options)


class _TrainOnlySide(nn.Module):
    """``b(a(x))``, plus ``side(x)`` in train mode only (an auxiliary head)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.side = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b(self.a(x))
        return out + self.side(x) if self.training else out


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_modules_in_eval_mode_in_a_model_in_train_mode_are_named(tracer: str) -> None:
    """A frozen backbone set to eval mode inside a model in train mode is analysed in
    train mode, as the whole model: by hand, its side reachable (shortest 2: side -> head),
    and a note names the outermost module in eval mode, not those inside it."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = _TrainOnlySide(), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

    model = Model()
    model.backbone.eval()
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert report.layers["backbone.side"].shortest == 2
    [note] = [n for n in report.notes if "eval mode" in n]
    assert note.startswith("modules in eval mode in a model in train mode (backbone) ")
    assert not model.backbone.training and model.training
    model.backbone.train()
    assert not [n for n in gpa.analyze(model, input_shape=(2, 4)).notes if "eval mode" in n]
    model.backbone.eval()
    assert not [n for n in gpa.analyze(model, input_shape=(2, 4), train=False).notes if "eval" in n]


class _FrozenNorms(nn.Module):
    """Keeps its backbone in eval mode whatever ``train()`` asks (mmdetection's
    ``norm_eval``): its train mode is the backbone's eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = _TrainOnlySide(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> _FrozenNorms:
        super().train(mode)
        self.backbone.eval()
        return self


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_modules_a_models_train_keeps_in_eval_mode_are_not_noted(tracer: str) -> None:
    """The frontends set the mode by the model's own ``train()``, which keeps the backbone
    in eval mode: it is analysed so, as it trains (by hand: side uncalled, b at 2), and
    no note says otherwise (a review: the note said it was analysed in train mode)."""
    model = _FrozenNorms().train()
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert not report.layers["backbone.side"].reachable
    assert report.layers["backbone.b"].shortest == 2
    assert not [n for n in report.notes if "eval mode" in n]


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_model_set_to_eval_mode_and_analysed_in_train_mode_is_noted(tracer: str) -> None:
    """``model.eval()`` does not choose the mode (train is the default): the numbers are
    train mode's — by hand, side reachable (1) in train mode, uncalled in eval mode — and
    a note says so (found by a new-user review: yolov8n's dfl differed without a word).
    No note where the modes agree, and the model's mode is left as it was."""
    from gpa.pipeline import EVAL_MODEL_NOTE

    model = _TrainOnlySide().eval()
    trained = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert EVAL_MODEL_NOTE in trained.notes
    assert trained.layers["side"].reachable and trained.layers["side"].shortest == 1
    evaluated = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, train=False)
    assert EVAL_MODEL_NOTE not in evaluated.notes
    assert not evaluated.layers["side"].reachable
    assert not model.training
    model.train()
    assert EVAL_MODEL_NOTE not in gpa.analyze(model, input_shape=(2, 4), tracer=tracer).notes


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_train_set_on_one_module_keeps_its_word(tracer: str) -> None:
    """A ``train`` bound on one module object (not its class) that keeps it in eval mode
    is the model's own ``train`` there too: the analysis in train mode leaves that part in
    eval mode, as ``model.train()`` does — by hand, its side is not called (a review:
    a faster mode switch looked at classes only and called it)."""
    import types

    model = nn.Sequential(nn.Linear(4, 4), _TrainOnlySide()).eval()
    model[1].train = types.MethodType(
        lambda self, mode=True: nn.Module.train(self, False), model[1]
    )
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert not report.layers["1.side"].reachable
    assert report.layers["1.b"].shortest == 1
    assert not model.training and not model[1].training
