"""Branches on tests that a proxy answers otherwise than the tensor it stands for.

``docs/semantics.md`` §1.1. fx traces ``forward`` with proxies: ``isinstance(h,
torch.Tensor)`` and ``torch.is_tensor(h)`` are False, ``hasattr(h, "pooler_output")`` is
True, and a leaf module's output is one proxy, never None — where
``nn.MultiheadAttention(…, need_weights=False)`` returns ``(output, None)`` when run. fx
took the other branch in silence: a layer module the model calls was reported uncalled
(every path through it missing, ``max_shortest`` one short) under fx and so under
``auto``, or auto stopped on a shape error instead of moving on. Every frontend must now
give the hand-derived records below (fx: the records, or a refusal that ``auto`` moves on
from), and a real backward the same reachability.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import gpa
from gpa.errors import GpaError, ShapeError, TraceError
from tests.frontends.every_tracer import EVERY_TRACER, auto_after_fx_refuses, layer_records
from tests.semantics import LOSS, check_reachability_with_autograd, expect, expect_unreachable


def _matched(m: nn.Module, f: Any) -> bool:
    match f:  # (Python asks the class pattern's class, from no call)
        case torch.Tensor():
            return True
        case _:
            return False


#: How ``Guarded`` decides whether to call ``proj`` on the backbone's features ``f``.
GUARDS = {
    "isinstance": lambda m, f: isinstance(f, torch.Tensor),
    "is_tensor": lambda m, f: torch.is_tensor(f),
    "not_a_sequence": lambda m, f: not isinstance(f, (list, tuple)),
    "no_attribute": lambda m, f: not hasattr(f, "pooler_output"),
    "no_fields": lambda m, f: not hasattr(f, "_fields"),  # a named tuple's
    "type": lambda m, f: type(f) is torch.Tensor,
    "type_name": lambda m, f: type(f).__name__ == "Tensor",
    "attribute_isinstance": lambda m, f: isinstance(f.mT, torch.Tensor),
    # asked from C code (map), called by a function not of torch's: a test all the same
    "mapped_isinstance": lambda m, f: all(map(isinstance, [f], [torch.Tensor])),
    # a class of torch's consuming an iterator that tests (no call of torch's alone)
    "size_of_mapped": lambda m, f: bool(torch.Size(map(isinstance, [f], [torch.Tensor]))[0]),
    "match": _matched,
    "jit_isinstance": lambda m, f: torch.jit.isinstance(f, torch.Tensor),
    "pytree_any_only": lambda m, f: pytree.tree_any_only(torch.Tensor, lambda t: True, f),
    # arguments unpacked from an iterator that tests, into a function of torch's
    "unpacked_into_torch": lambda m, f: bool(torch.tensor(*map(isinstance, [f], [torch.Tensor]))),
    # tracing-aware code: Python answers from the proxy's own class, asking it nothing
    "not_an_fx_proxy": lambda m, f: not isinstance(f, torch.fx.Proxy),
}


class Guarded(nn.Module):
    """backbone -> (proj if the guard says so) -> mean -> head."""

    def __init__(self, guard: str) -> None:
        super().__init__()
        self.guard = GUARDS[guard]
        self.backbone, self.proj = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        if self.guard(self, f):
            f = self.proj(f)
        return self.head(f.mean((2, 3)))


@EVERY_TRACER
@pytest.mark.parametrize("guard", list(GUARDS))
def test_a_type_or_attribute_test_on_a_layers_output_takes_the_models_branch(
    guard: str, tracer: str
) -> None:
    """By hand, proj called (every guard holds on a tensor): head 1, proj 2, backbone 3.
    fx's proxies fail every guard but ``not_a_sequence`` (a proxy is no tensor, and has
    every attribute): fx refuses, auto moves on; on that one fx gives the records.
    Export's fake tensors fail the exact ``type`` tests: export refuses, auto moves on."""
    model, x = Guarded(guard), torch.randn(1, 3, 6, 6)
    if (tracer == "fx" and guard != "not_a_sequence") or (tracer == "export" and guard in EXACT):
        with pytest.raises(TraceError, match="'proj' is called when it runs, not in the trace"):
            gpa.analyze(model, (x,), tracer=tracer)
        return
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "proj", {2: 1}, ("head",))
    expect(report, "backbone", {3: 1}, ("proj",))
    check_reachability_with_autograd(report, model, x)


class CalledAgain(nn.Module):
    """h = f(x), y = a(x); then f called again on h + y where the guard on ``y`` says
    ``again`` (``h = h + y`` else): a branch taken otherwise calls the same layers, one
    time too few or too many, and leaves none uncalled."""

    def __init__(self, guard: str, again: bool) -> None:
        super().__init__()
        self.guard, self.again = GUARDS[guard], again
        self.f, self.a = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, y = self.f(x), self.a(x)
        return self.f(h + y) if self.guard(self, y) == self.again else h + y


@EVERY_TRACER
@pytest.mark.parametrize("again", [True, False], ids=["again", "not_again"])
@pytest.mark.parametrize("guard", list(GUARDS))
def test_a_test_on_a_proxy_that_changes_how_often_a_layer_is_called(
    guard: str, again: bool, tracer: str
) -> None:
    """By hand (every guard holds on a tensor). ``again``: out = f(f(x) + a(x)): f called
    twice, at rounds 1 (from the loss) and 2 (from f), a at 2. Else out = f(x) + a(x): f
    and a once, at 1. fx's proxies fail every guard but ``not_a_sequence``, so its trace
    calls f once where the run calls it twice, or twice where it runs once: fx refuses
    (the run counts the calls), auto moves on; on that guard fx gives the records.
    Export's fake tensors fail the exact ``type`` tests: export refuses too."""
    model, x = CalledAgain(guard, again), torch.randn(2, 4)
    if (tracer == "fx" and guard != "not_a_sequence") or (tracer == "export" and guard in EXACT):
        said = "2 times when it runs, 1 in" if again else "1 time when it runs, 2 in"
        with pytest.raises(TraceError, match=f"'f' is called {said} the trace"):
            gpa.analyze(model, (x,), tracer=tracer)
        return
    report = gpa.analyze(model, (x,), tracer=tracer)
    if again:
        expect(report, "f", {1: 1, 2: 1}, ("f", LOSS), calls=2)
        expect(report, "a", {2: 1}, ("f",))
    else:
        expect(report, "f", {1: 1}, (LOSS,))
        expect(report, "a", {1: 1}, (LOSS,))
    check_reachability_with_autograd(report, model, x)


#: The guards export's fake tensors (a subclass of Tensor) fail too.
EXACT = ("type", "type_name")


class Residual(nn.Module):
    """g = b(a(x)), plus a(x) where the guard on it holds (a residual), then c: a branch
    taken otherwise calls every layer as often and leaves out the residual alone."""

    def __init__(self, guard: str) -> None:
        super().__init__()
        self.guard = GUARDS[guard]
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(h)
        if self.guard(self, h):
            g = g + h
        return self.c(g)


@EVERY_TRACER
@pytest.mark.parametrize("guard", list(GUARDS))
def test_a_test_on_a_proxy_that_leaves_out_a_residual_is_refused(guard: str, tracer: str) -> None:
    """By hand (every guard holds on a tensor): out = c(b(h) + h), h = a(x): c at 1, b at
    2, a at 2 (through c) and 3 (through b). fx's proxies fail every guard but
    ``not_a_sequence`` and export's fake tensors the exact ``type`` tests: their traces
    call every layer once, as the run does, without the residual (a at 3 alone) — read in
    silence before. Now the wiring of the layer calls is checked against one run on the
    meta device: they refuse, auto moves on."""
    model, x = Residual(guard), torch.randn(2, 4)
    if (tracer == "fx" and guard != "not_a_sequence") or (tracer == "export" and guard in EXACT):
        said = "'a' hands its gradient to 'b' in the trace, to 'b', 'c' when it runs"
        with pytest.raises(TraceError, match=said):
            gpa.analyze(model, (x,), tracer=tracer)
        return
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "c", {1: 1}, (LOSS,))
    expect(report, "b", {2: 1}, ("c",))
    expect(report, "a", {2: 1, 3: 1}, ("b", "c"))
    check_reachability_with_autograd(report, model, x)


# Keys a model files a tensor under: its device, dtype, rank, a size (a proxy each under fx).
KEYS = {
    "device": lambda t: t.device,
    "dtype": lambda t: t.dtype,
    "ndim": lambda t: t.ndim,
    "size": lambda t: t.shape[1],
}


class KeptByKey(nn.Module):
    """a's output filed in a dict under ``key(h)`` (timm's feature hooks: by device) and
    looked up under ``key`` of b's output; returned beside c's (``with_head``) or alone."""

    def __init__(self, key: str, with_head: bool) -> None:
        super().__init__()
        self.key, self.with_head = KEYS[key], with_head
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.a(x)
        kept = {self.key(h): h}
        y = self.b(h)
        found = [kept[k] for k in [self.key(y)] if k in kept]
        return [*found, self.c(y)] if self.with_head else found


@pytest.mark.parametrize("with_head", [True, False], ids=["beside_a_head", "alone"])
@pytest.mark.parametrize("key", list(KEYS))
def test_a_tensor_filed_under_its_device_or_shape_is_found(key: str, with_head: bool) -> None:
    """Found by a new user (timm's ``features_only=True, feature_cls="hook"``, whose
    features are filed by device): fx's ``h.device``, ``h.dtype``, ``h.ndim`` and
    ``h.shape[1]`` are a new proxy each time, which hashes by identity, so the lookup found
    nothing. fx (and auto) left a's output out in silence — a at 3 alone — or, with
    nothing else returned, said the model returns no tensor. fx now refuses (hashing a
    proxy is a test answered otherwise), auto moves on. By hand: a at 1 (returned) and 3
    (through b, c); alone, a at 1, b unreachable, c uncalled."""
    model = KeptByKey(key, with_head)
    report = auto_after_fx_refuses(model, "took another branch", input_shape=(2, 4))
    if with_head:
        expect(report, "a", {1: 1, 3: 1}, ("b", LOSS))
        expect(report, "b", {2: 1}, ("c",))
    else:
        expect(report, "a", {1: 1}, (LOSS,))
        expect_unreachable(report, "b")
        expect_unreachable(report, "c", calls=0)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    assert layer_records(report) == layer_records(
        gpa.analyze(model, input_shape=(2, 4), tracer="autograd")
    )


def test_a_model_returning_no_tensor_is_its_own_error_under_fx() -> None:
    """A test answered otherwise under fx does not turn the model's own error into fx's:
    a model that returns no tensor when it runs says so (not "another branch")."""

    class Nothing(KeptByKey):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            kept = {x.device: self.a(x)}
            return [] if kept else [x]

    with pytest.raises(GpaError, match="returns no tensor") as raised:
        gpa.analyze(Nothing("device", False), input_shape=(2, 4), tracer="fx")
    assert not isinstance(raised.value, TraceError)


class ResidualOffCpu(Residual):
    """:class:`Residual` adding a tensor made on the CPU (no ``device=``): it cannot run on
    the meta device."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x) + torch.arange(4.0)
        g = self.b(h)
        if isinstance(h, torch.Tensor):
            g = g + h
        return self.c(g)


def test_a_residual_left_out_is_refused_where_the_model_cannot_run_on_meta() -> None:
    """The check of the wiring read the run on the meta device only, and a model that
    cannot run there was read in silence without its residual (a review). It reads the
    run on real inputs then, as the autograd frontend does. By hand as for
    :class:`Residual`: a at 2 and 3."""
    model, x = ResidualOffCpu("isinstance"), torch.randn(2, 4)
    with pytest.raises(TraceError, match="'a' hands its gradient to 'b' in the trace"):
        gpa.analyze(model, (x,), tracer="fx")
    report = gpa.analyze(model, (x,))
    assert report.tracer != "fx"
    expect(report, "a", {2: 1, 3: 1}, ("b", "c"))
    check_reachability_with_autograd(report, model, x)


class DrawsThenEmbeds(nn.Module):
    """Draws a Python random number, then embeds its integer input; a residual around
    ``b`` where the draw says so, behind a test a proxy answers as a tensor does."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.b, self.c = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        r = random.random()
        h = self.emb(ids)
        g = self.b(h)
        if not isinstance(g, tuple) and r < 0.5:
            g = g + h
        return self.c(g)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_attempt_at_reading_a_run_draws_what_the_first_drew(seed: int) -> None:
    """From input shapes, the autograd frontend tries float inputs first (the Embedding
    refuses them after the draw), then integers: the second attempt drew anew, so the
    check of fx's wiring saw another residual than the trace and refused it, and auto's
    next frontend drew from where fx left (a review: emb at 3 where the run gives 2).
    Every attempt, and every frontend auto tries, now draws from the same state. By
    hand: with the seed's first draw below 0.5, emb reaches the loss at 2 and 3, else 3."""
    random.seed(seed)
    expected = {2: 1, 3: 1} if random.random() < 0.5 else {3: 1}
    for tracer in ("fx", "autograd", "auto"):
        random.seed(seed)
        report = gpa.analyze(DrawsThenEmbeds(), input_shape=(2, 3), tracer=tracer)
        assert dict(report.layers["emb"].path_histogram) == expected, tracer


class _TimesWeight(torch.autograd.Function):
    """``x @ w`` with its own backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = ctx.saved_tensors
        return g @ w.t(), x.t() @ g


class FunctionOnAWeight(nn.Module):
    """c(f(a(x), w) + b(a(x))) behind a test a proxy answers as a tensor does, f a custom
    autograd Function given a parameter ``w`` (a layer to autograd alone, §1.6)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if not isinstance(h, (list, tuple)):
            h = _TimesWeight.apply(h, self.w) + self.b(h)
        return self.c(h)


def test_a_function_on_a_weight_is_no_branch_taken_otherwise() -> None:
    """autograd reads the Function on ``w`` as a layer, fx keeps it whole and notes it:
    the wiring check read that as another branch and refused fx (a review). Calls of
    records one frontend alone has, naming no module, are passed through. By hand, fx
    (the Function no layer): a reaches the loss at 2 (through it) and 3 (through b)."""
    report = gpa.analyze(FunctionOnAWeight(), (torch.randn(2, 4),), tracer="fx")
    expect(report, "a", {2: 1, 3: 1}, ("b", "c"))


class ParameterGate(Residual):
    """:class:`Residual` whose residual is added where a held weight is a parameter (fx
    holds it as a proxy, which is none)."""

    def __init__(self) -> None:
        super().__init__("isinstance")
        self.gate = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(h)
        if isinstance(self.gate, nn.Parameter):
            g = g + h
        return self.c(g)


def test_isinstance_of_a_parameter_on_a_proxy_is_a_class_test() -> None:
    """torch's parameter class answers ``isinstance`` from its own code, which was taken
    for torch asking, not the model: no check ran, the residual was left out in silence
    (a review). By hand as for :class:`Residual`: a at 2 and 3."""
    model, x = ParameterGate(), torch.randn(2, 4)
    with pytest.raises(TraceError, match="'a' hands its gradient to 'b' in the trace"):
        gpa.analyze(model, (x,), tracer="fx")
    report = gpa.analyze(model, (x,))
    expect(report, "a", {2: 1, 3: 1}, ("b", "c"))
    check_reachability_with_autograd(report, model, x)


#: Tests a model makes on an input (Ultralytics' ``if isinstance(x, dict):`` picks its loss).
INPUT_GUARDS = {
    "isinstance": lambda x: isinstance(x, torch.Tensor),
    "is_tensor": lambda x: torch.is_tensor(x),
    "not_a_dict": lambda x: not isinstance(x, dict),
    "class_name": lambda x: x.__class__.__name__ == "Tensor",
}


class InputGuarded(nn.Module):
    """f if the guard holds on the input (by position or through ``*args``), then head."""

    def __init__(self, guard: str) -> None:
        super().__init__()
        self.guard = INPUT_GUARDS[guard]
        self.f, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        x = xs[0]
        return self.head(self.f(x) if self.guard(x) else x)


class InputGuardedPositional(InputGuarded):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


@pytest.mark.parametrize("tracer", ["fx", "auto"])
@pytest.mark.parametrize("star", [False, True], ids=["positional", "star_args"])
@pytest.mark.parametrize("guard", list(INPUT_GUARDS))
def test_type_tests_on_an_input_are_answered_as_on_the_input(
    guard: str, star: bool, tracer: str
) -> None:
    """fx's placeholder of an input answers the model's type tests with the input's class
    (before: a proxy is no tensor, fx refused and auto moved on to export). By hand: head
    1, f 2; the same from a real backward."""
    model = (InputGuarded if star else InputGuardedPositional)(guard)
    x = torch.randn(2, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert report.tracer == "fx"
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "f", {2: 1}, ("head",))
    check_reachability_with_autograd(report, model, x)


class Attention(nn.Module):
    """inp -> attention -> (extra if its weights are None) -> head; ``wh`` reads the
    attention weights when they are returned. ``how``: ``need_weights`` given by keyword,
    by position, or left to its default (True: the weights are a tensor)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.inp, self.extra, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.wh = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.inp(x)
        if self.how == "keyword":
            o, w = self.att(h, x, x, need_weights=False)
        elif self.how == "positional":
            o, w = self.att(h, x, x, None, False)
        else:
            o, w = self.att(h, x, x)
        if w is None:
            return (self.head(self.extra(o)),)
        return self.head(o), self.wh(w)


@EVERY_TRACER
@pytest.mark.parametrize("how", ["keyword", "positional", "default"])
def test_attention_without_weights_returns_none(how: str, tracer: str) -> None:
    """By hand. Without weights: head 1, extra 2, att 3, inp 4 (wh uncalled). With them:
    head 1, wh 1, att 2 (to head and to wh), inp 3 (extra uncalled). fx took every call's
    weights for a tensor: extra uncalled, or a shape error on wh."""
    model, x = Attention(how), torch.randn(2, 5, 8)
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "head", {1: 1}, (LOSS,))
    if how == "default":
        expect(report, "wh", {1: 1}, (LOSS,))
        expect(report, "att", {2: 2}, ("head", "wh"))
        expect(report, "inp", {3: 2}, ("att",))
        expect_unreachable(report, "extra", calls=0)
    else:
        expect(report, "extra", {2: 1}, ("head",))
        expect(report, "att", {3: 1}, ("extra",))
        expect(report, "inp", {4: 1}, ("att",))
        expect_unreachable(report, "wh", calls=0)
    check_reachability_with_autograd(report, model, x)


class Pooled(nn.Module):
    """backbone -> (its ``pooler_output`` if it has one, else pool) -> head: a proxy has
    every attribute, so fx reads a ``pooler_output`` a tensor does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.pool, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        feats = out.pooler_output if hasattr(out, "pooler_output") else self.pool(out)
        return self.head(feats)


def test_auto_moves_on_when_fx_reads_an_attribute_a_tensor_lacks() -> None:
    """fx fails on the shapes (its error names the operation); auto moves on, and the
    records are by hand: head 1, pool 2, backbone 3."""
    model, x = Pooled(), torch.randn(2, 4)
    with pytest.raises(ShapeError, match="getattr"):
        gpa.analyze(model, (x,), tracer="fx")
    report = gpa.analyze(model, (x,))
    assert report.tracer in ("export", "autograd")
    assert report.notes[0].startswith("tracer auto used ")
    expect(report, "pool", {2: 1}, ("head",))
    expect(report, "backbone", {3: 1}, ("pool",))
    check_reachability_with_autograd(report, model, x)


def test_inputs_that_fit_no_frontend_give_fxs_shape_error() -> None:
    """With inputs that fit no reading, auto tried every frontend and reports fx's error."""
    with pytest.raises(ShapeError, match="input shapes do not fit layer '0'"):
        gpa.analyze(nn.Sequential(nn.Linear(4, 2)), input_shape=(2, 5))


def test_a_model_that_skips_a_layer_when_run_is_not_refused() -> None:
    """A layer module left uncalled by the model itself: the run agrees with fx's trace,
    which is kept (by hand: head 1, unused uncalled)."""

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head, self.unused = nn.Linear(4, 2), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    report = gpa.analyze(Unused(), input_shape=(2, 4))
    assert report.tracer == "fx"
    expect(report, "head", {1: 1}, (LOSS,))
    expect_unreachable(report, "unused", calls=0)


class NormedGuarded(nn.Module):
    """backbone -> every kind of norm -> attention whose values are twice as wide as its
    queries -> (proj if the result is a tensor 8 wide) -> head. The check that fx's trace
    took the model's branches runs the model on the meta device, where the functional
    norms answer by shape (``_ShapesOfNorms``): the branch reads the shapes they give."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.norms = nn.Sequential(
            nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4), nn.LayerNorm([4, 4])
        )
        self.rms = nn.RMSNorm(4) if hasattr(nn, "RMSNorm") else nn.LayerNorm(4)
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rms(self.norms(self.backbone(x)).flatten(2).transpose(1, 2))
        values = torch.cat([tokens, tokens], -1)
        f = nn.functional.scaled_dot_product_attention(tokens, tokens, values)
        if isinstance(f, torch.Tensor) and f.shape[-1] == 8:
            f = self.proj(f)
        return self.head(f.mean(1))


@pytest.mark.parametrize("train", [True, False])
def test_the_branch_check_reads_the_shapes_norms_and_attention_give(train: bool) -> None:
    """By hand: the model calls proj (its attention's result is 8 wide); fx's proxy is no
    tensor, so its trace leaves proj out, and the check must see proj called (refusal).
    Autograd reads proj: head 1, proj 2, backbone 3."""
    model, x = NormedGuarded().train(train), torch.randn(2, 3, 6, 6)
    with pytest.raises(TraceError, match="'proj' is called when it runs, not in the trace"):
        gpa.analyze(model, (x,), tracer="fx", train=train)
    report = gpa.analyze(model, (x,), tracer="autograd", train=train)
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "proj", {2: 1}, ("head",))
    expect(report, "backbone", {3: 1}, ("proj",))


F = nn.functional
_X = torch.empty(2, 4, 5, 6, device="meta")
_W = torch.empty(4, device="meta")
_NORM_CALLS = {
    "batch_norm_train": (F.batch_norm, (_X, _W, _W, _W, _W), {"training": True}),
    "batch_norm_eval": (F.batch_norm, (_X, _W, _W), {}),
    "instance_norm": (F.instance_norm, (_X,), {}),
    "group_norm": (F.group_norm, (_X, 2, _W, _W), {}),
    "layer_norm": (F.layer_norm, (_X, (6,)), {}),
    "layer_norm_keywords": (F.layer_norm, (), {"input": _X, "normalized_shape": (5, 6)}),
}
# calls torch's kernel answers otherwise than a contiguous tensor of the input's shape, or
# refuses: each must be left to it
_LEFT_TO_TORCH = {
    "channels_last": (F.batch_norm, (_X.contiguous(memory_format=torch.channels_last), _W, _W), {}),
    "permuted_layer_norm": (F.layer_norm, (_X.permute(0, 2, 3, 1), (4,)), {}),
    "mixed_dtypes": (F.group_norm, (_X.to(torch.bfloat16), 2, _W, _W), {}),
    "one_value_per_channel": (F.batch_norm, (_X[:1, :, :1, :1], _W, _W), {"training": True}),
    "wrong_normalized_shape": (F.layer_norm, (_X, (5,)), {}),
    "groups_not_dividing": (F.group_norm, (_X, 3), {}),
    "requiring_gradient": (F.layer_norm, (_X.clone().requires_grad_(), (6,)), {}),
    # contiguous, but with channels-last strides where a size-1 dimension leaves a choice
    "size_one_strides": (
        F.batch_norm,
        (_X[:, :, :1, :1].contiguous(memory_format=torch.channels_last), _W, _W),
        {},
    ),
}


def _answer(function: Any, args: tuple, kwargs: dict) -> Any:
    try:
        out = function(*args, **kwargs)
    except Exception as exc:  # torch refuses: so must the stand-in
        return type(exc)
    return out.shape, out.stride(), out.dtype, out.device, out.requires_grad


@pytest.mark.parametrize("case", [*_NORM_CALLS, *_LEFT_TO_TORCH])
def test_norms_by_shape_answer_as_torch_on_the_meta_device(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each functional norm under ``_ShapesOfNorms`` gives what torch's own meta kernel
    gives — shape, strides, dtype, device, whether it requires gradient, or its refusal —,
    answering by shape for row-major tensors of one dtype requiring no gradient, and
    leaving every other call to torch."""
    from gpa.frontends.fx import branches

    answered = []
    monkeypatch.setattr(
        branches,
        "_BY_SHAPE",
        {
            f: (
                lambda a, k, rule=rule: (
                    (found := rule(a, k)) is not None and answered.append(1) or found
                )
            )
            for f, rule in branches._BY_SHAPE.items()
        },
    )
    function, args, kwargs = {**_NORM_CALLS, **_LEFT_TO_TORCH}[case]
    real = _answer(function, args, kwargs)
    with branches._ShapesOfNorms():
        stood_in = _answer(function, args, kwargs)
    assert stood_in == real
    assert answered == ([1] if case in _NORM_CALLS else [])


class Permuted(nn.Module):
    """A ConvNeXt-style layer norm over a permuted tensor, then a branch on contiguity
    (torch's layer norm gives a contiguous result) that fx's proxy fails."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.b, self.c = nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x.permute(0, 2, 3, 1))
        return self.b(h) if isinstance(h, torch.Tensor) and h.is_contiguous() else self.c(h)


def test_the_branch_check_reads_the_strides_torch_gives() -> None:
    """By hand: torch's layer norm gives a contiguous tensor, so the model calls b; fx's
    trace takes c, and the check must see b called (refusal); autograd reads b."""
    model, x = Permuted(), torch.randn(2, 4, 5, 5)
    with pytest.raises(TraceError, match="'b' is called when it runs, not in the trace"):
        gpa.analyze(model, (x,), tracer="fx")
    report = gpa.analyze(model, (x,), tracer="autograd")
    expect(report, "b", {1: 1}, (LOSS,))
    expect_unreachable(report, "c", calls=0)


def test_a_mode_of_the_callers_sees_every_norm_of_the_check() -> None:
    """Under a TorchFunctionMode of the caller's, the check leaves the norms to it (and to
    torch): the mode sees each of the model's four norm calls once."""
    from torch.overrides import TorchFunctionMode

    from gpa.frontends.fx.branches import calls_when_run

    class Counting(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.norms = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.norms += func in (F.batch_norm, F.group_norm, F.instance_norm, F.layer_norm)
            return func(*args, **(kwargs or {}))

    model = NormedGuarded()
    with Counting() as counting:
        called = calls_when_run(model, (torch.randn(2, 3, 6, 6),), ["proj"])
    assert called == {"proj": 1} and counting.norms == 4


class Doubled(nn.Module):
    def __init__(self, lin: nn.Module) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 2


class SharedInLeaf(nn.Module):
    """f called, then again inside the leaf ``w`` that holds it; a test that a proxy and a
    tensor answer alike (``isinstance(h, (tuple, list))``)."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.g = nn.Linear(4, 4), nn.Linear(4, 4)
        self.w = Doubled(self.f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w(self.f(x))
        if isinstance(h, (tuple, list)):
            h = h[0]
        return self.g(h)


def test_calls_inside_a_leaf_are_not_counted_against_the_trace() -> None:
    """The run calls f twice, once inside the leaf w, which the trace records as one call
    (of a layer holding f's weights): no other branch (the count refused it). By hand: g
    1, w 2, f 3 (its own call), as autograd reads it."""
    model, x = SharedInLeaf(), torch.randn(2, 4)
    fx_report = gpa.analyze(model, (x,), tracer="fx", leaf_modules=["w"])
    expect(fx_report, "g", {1: 1}, (LOSS,))
    expect(fx_report, "w", {2: 1}, ("g",))
    expect(fx_report, "f", {3: 1}, ("w",))
    by_autograd = gpa.analyze(model, (x,), tracer="autograd", leaf_modules=["w"])
    assert layer_records(fx_report) == layer_records(by_autograd)
    check_reachability_with_autograd(fx_report, model, x)


class ScriptedGuarded(nn.Module):
    """a -> (the TorchScript block if a's output is a tensor) -> g."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.g = nn.Linear(4, 4), nn.Linear(4, 4)
        self.inner = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if isinstance(h, torch.Tensor):
            h = self.inner(h)
        return self.g(h)


def test_a_test_before_a_scripted_call_is_refused_by_fx() -> None:
    """The block (a TorchScript module, which takes no hooks of its own) is counted by the
    run's global hooks: called when run, not in the trace, so fx refuses (before: the
    block's layers uncalled, in silence) and auto moves on."""
    model, x = ScriptedGuarded(), torch.randn(2, 4)
    match = "'inner' is called when it runs, not in the trace"
    report = auto_after_fx_refuses(model, match, example_inputs=(x,))
    # by hand: the block is one call (§1.1): g 1, inner 2, a 3
    expect(report, "g", {1: 1}, (LOSS,))
    expect(report, "inner", {2: 1}, ("g",))
    expect(report, "a", {3: 1}, ("inner",))


class TiedTyped(nn.Module):
    """a (also held as b) -> c -> b, naming its activation's class on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b = self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if not type(h).__name__:  # names a class (a proxy's, a fake tensor's): no test
            raise TypeError("a class without a name")
        return self.b(self.c(h))


class ScriptedNamed(nn.Module):
    """a TorchScript layer between a and g; the class names read, a test after it."""

    def __init__(self, test_after: bool) -> None:
        super().__init__()
        self.test_after = test_after
        self.a, self.g = nn.Linear(4, 4), nn.Linear(4, 4)
        self.sc = torch.jit.script(nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sc(self.a(x))
        if type(x).__name__ == "Tensor" and self.test_after and isinstance(h, torch.Tensor):
            h = h + 0  # (a test after the scripted call: no layer call depends on it)
        return self.g(h)


@pytest.mark.parametrize("tracer", ["fx", "export", "auto"])
def test_names_of_classes_and_tests_after_scripted_calls_are_read(tracer: str) -> None:
    """By hand: TiedTyped: b (= a) called twice, at 1 (from the loss) and 3 (through c),
    c at 2. ScriptedNamed: g 1, sc 2, a 3. Nothing to refuse (before: export refused a
    tied model that named a class; fx any scripted model whose code named ``type``, or
    that tested a proxy after the scripted call). Export reads no TorchScript."""
    x = torch.randn(2, 4)
    tied = gpa.analyze(TiedTyped(), (x,), tracer=tracer)
    expect(tied, "a", {1: 1, 3: 1}, ("c", LOSS), calls=2)
    expect(tied, "c", {2: 1}, ("a",))
    if tracer == "export":
        return
    for test_after in (False, True):
        report = gpa.analyze(ScriptedNamed(test_after), (x,), tracer=tracer)
        assert report.tracer == "fx"
        expect(report, "g", {1: 1}, (LOSS,))
        expect(report, "sc", {2: 1}, ("g",))
        expect(report, "a", {3: 1}, ("sc",))


class DropsCheckpointed(nn.Module):
    """Six checkpointed blocks, each skipped on a draw of Python's random numbers; a class
    test in forward (export counts its calls against a run drawing the same numbers)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if random.random() < 0.5:
                continue
            # (a re-entrant one: export exports again, to see its grad modes)
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=i % 2 == 0)
        if type(x) is not torch.Tensor:  # (fake tensors: no layer call depends on it)
            x = x + 0
        return x


@pytest.mark.slow
@pytest.mark.parametrize("tracer", ["export", "autograd"])
@pytest.mark.parametrize("seed", range(4))
def test_exported_twice_the_check_draws_what_export_drew(seed: int, tracer: str) -> None:
    """Export exports a checkpointed model twice (the second time to see its grad modes);
    both draw what the first drew, and the runs checking the calls and their wiring draw
    it too. By hand: the blocks called are those the first six draws after the seed keep
    (before: refused on most seeds, the run drawing what the first export drew, the
    program the second's). The autograd frontend runs such a model twice too, and read
    the second run's draws (the check of export's wiring, which it reads, then differed)."""
    random.seed(seed)
    kept = [random.random() >= 0.5 for _ in range(6)]
    random.seed(seed)
    report = gpa.analyze(DropsCheckpointed(), (torch.randn(2, 4),), tracer=tracer)
    assert [report.layers[f"blocks.{i}"].calls for i in range(6)] == [int(k) for k in kept]


class ScriptedAgain(nn.Module):
    """f -> js (TorchScript) -> js again if js's output is a tensor -> g."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.g = nn.Linear(4, 4), nn.Linear(4, 4)
        self.js = torch.jit.script(nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.js(self.f(x))
        if isinstance(h, torch.Tensor):
            h = self.js(h)
        return self.g(h)


def test_a_scripted_module_called_again_behind_a_test_is_counted() -> None:
    """js is called before the test in the trace, and again behind it when run: the run's
    global hooks count both calls, fx refuses, and auto's reading is by hand: g 1, js at
    2 and 3 (from g, then from js), f 4."""
    model, x = ScriptedAgain(), torch.randn(2, 4)
    report = auto_after_fx_refuses(model, "'js' is called 2 times", example_inputs=(x,))
    expect(report, "g", {1: 1}, (LOSS,))
    expect(report, "js", {2: 1, 3: 1}, ("js", "g"), calls=2)
    expect(report, "f", {4: 1}, ("js",))


class TiedBranching(nn.Module):
    """f (also held as g) -> k -> (k again if the activation's class is Tensor) -> g."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.k = nn.Linear(4, 4), nn.Linear(4, 4)
        self.g = self.f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.k(self.f(x))
        if type(h) is torch.Tensor:
            h = self.k(h)
        return self.g(h)


@pytest.mark.slow
def test_export_of_a_tied_model_that_tests_an_exact_class_counts_calls_by_class() -> None:
    """Export runs a copy of a tied model, whose modules are not the model's: its calls are
    counted by class (Linear: 3 in export's trace, 4 when run), export refuses, auto reads
    it with autograd. By hand: f (= g) at 1 and 4, k at 2 and 3."""
    model, x = TiedBranching(), torch.randn(2, 4)
    with pytest.raises(TraceError, match="'Linear modules' is called 4 times when it runs, 3"):
        gpa.analyze(model, (x,), tracer="export")
    report = gpa.analyze(model, (x,))
    assert report.tracer == "autograd"
    expect(report, "f", {1: 1, 4: 1}, ("k", LOSS), calls=2)
    expect(report, "k", {2: 1, 3: 1}, ("k", "f"), calls=2)


class NamedGuard(nn.Module):
    """a -> (f if the activation's class is named Tensor) -> f -> b, in forward itself."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.f, self.b = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if type(h).__name__ == "Tensor":  # a class's name compared: a class test
            h = self.f(h)
        return self.b(self.f(h))


@pytest.mark.parametrize("tracer", ["fx", "export", "auto"])
def test_a_class_name_compared_in_forward_is_a_class_test(tracer: str) -> None:
    """A proxy's and a fake tensor's class names are not Tensor's: fx and export refuse (the
    run calls f twice, their traces once), auto reads it with autograd. By hand: b 1, f at
    2 and 3, a 4."""
    model, x = NamedGuard(), torch.randn(2, 4)
    if tracer != "auto":
        with pytest.raises(TraceError, match="'f' is called 2 times when it runs, 1 in"):
            gpa.analyze(model, (x,), tracer=tracer)
        return
    report = gpa.analyze(model, (x,))
    assert report.tracer == "autograd"
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "f", {2: 1, 3: 1}, ("f", "b"), calls=2)
    expect(report, "a", {4: 1}, ("f",))


class HalfResidual(nn.Module):
    """1×1 convolutions a (1 → 4 channels), b and c (4 → 4): the residual around b adds a's
    channels [0, 2) alone where the guard on a's output holds, all four otherwise. Either
    branch calls every layer once and feeds b's and a's outputs to the same layers: only
    the channels differ."""

    def __init__(self, guard: str) -> None:
        super().__init__()
        self.guard = GUARDS[guard]
        self.a, self.b, self.c = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(h)
        half = self.guard(self, h)
        g = torch.cat([g[:, :2] + h[:, :2], g[:, 2:]], 1) if half else g + h
        return self.c(g)


def _segments(record: Any) -> list[tuple]:
    """(start, stop, gradient timestamps, path count, {(sender, its channels)}) per segment."""
    return [
        (
            s.start,
            s.stop,
            set(s.paths.timestamps),
            s.paths.num_paths,
            {(src.sender, src.channels) for src in s.sources},
        )
        for s in record.segments
    ]


@pytest.mark.parametrize("tracer", ["fx", pytest.param("export", marks=pytest.mark.slow), "auto"])
@pytest.mark.parametrize("guard", list(GUARDS))
def test_a_test_on_a_proxy_that_routes_other_channels_gives_no_channel_segments(
    guard: str, tracer: str
) -> None:
    """By hand (every guard holds on a tensor): c reaches the loss at 1, b at 2 (through
    c); a's channels [0, 2) at 2 (the residual, c's input channels [0, 2)) and 3 (through
    b, its input channels [0, 2)), its channels [2, 4) at 3 alone (b's [2, 4)). fx's trace
    of a branch taken otherwise adds the residual to all four channels: [0, 4) at 2 and 3,
    in silence before (the layer calls agree, and so does their wiring). A run cannot
    check channels: where a test on a proxy may answer otherwise, fx refuses channel
    segments — all guards but ``not_a_sequence``, an ``isinstance`` test naming classes
    a proxy and a tensor both fail, which fx reads; export's fake tensors answer all but
    the exact ``type`` tests as tensors do, and it refuses those. auto moves on to export,
    or says no frontend can give them."""
    model, x = HalfResidual(guard), torch.randn(1, 1, 4, 4)
    read_by_fx = guard == "not_a_sequence"
    if (tracer == "fx" and not read_by_fx) or (tracer == "export" and guard in EXACT):
        with pytest.raises(TraceError, match="cannot give channel segments"):
            gpa.analyze(model, (x,), tracer=tracer, channels=True)
        return
    if tracer == "auto" and guard in EXACT:
        with pytest.raises(TraceError, match="no frontend that gives channel segments"):
            gpa.analyze(model, (x,), channels=True)
        return
    report = gpa.analyze(model, (x,), tracer=tracer, channels=True)
    assert report.tracer == ("fx" if read_by_fx and tracer != "export" else "export")
    assert _segments(report.layers["a"]) == [
        (0, 2, {2, 3}, 2, {("b", (0, 2)), ("c", (0, 2))}),
        (2, 4, {3}, 1, {("b", (2, 4))}),
    ]
    assert _segments(report.layers["b"]) == [(0, 4, {2}, 1, {("c", (0, 4))})]
    # without channels every frontend reads it: the layer calls and their wiring agree
    for layers in ("fx", "autograd"):
        layer_level = gpa.analyze(model, (x,), tracer=layers)
        expect(layer_level, "a", {2: 1, 3: 1}, ("b", "c"))
        expect(layer_level, "b", {2: 1}, ("c",))
        check_reachability_with_autograd(layer_level, model, x)


def test_the_channel_refusal_names_the_line_that_tested_the_proxy() -> None:
    """fx's refusal says where the model's code first tested a proxy (the guard's line
    here), so the user can see which test it was."""
    line = GUARDS["isinstance"].__code__.co_firstlineno
    with pytest.raises(TraceError, match=rf"test_proxy_branches\.py, line {line}\)"):
        gpa.analyze(
            HalfResidual("isinstance"), (torch.randn(1, 1, 4, 4),), channels=True, tracer="fx"
        )


class PairGuarded(nn.Module):
    """a, then attention over a's output (an (output, weights) pair, one proxy to fx) and
    b; the attention's output added to b's where the guard on the pair holds."""

    def __init__(self, guard: str) -> None:
        super().__init__()
        self.guard = guard
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        pair, g = self.attn(h, h, h), self.b(h)
        if self.guard == "tuple" and isinstance(pair, tuple):
            g = g + pair[0]
        if self.guard == "size" and isinstance(h.size(-1), int):
            g = g + pair[0]
        return self.c(g)


@pytest.mark.parametrize("guard", ["tuple", "size"])
def test_an_isinstance_test_is_answered_as_on_the_value_the_proxy_stands_for(guard: str) -> None:
    """fx reads an ``isinstance`` test naming classes as the value the proxy stands for
    answers it, once the gradient-flow pass knows that value: where the two answers
    differ — a pair returned by a leaf call, a size (an int) — fx checks its trace against
    a run and refuses the branch it took otherwise; where they agree (a tensor is no list,
    nor is a proxy; torch's C code asking a proxy in ``torch.cat``'s list its class) fx
    reads the model, channels too (``test_a_test_on_a_proxy_that_routes_other_channels…``
    and ``tests/channels/test_routes_against_autograd.py``). By hand (every guard holds
    when run): c at 1; b and attn at 2 (through c); a at 3, through b and through attn."""
    model, x = PairGuarded(guard), torch.randn(2, 3, 4)
    with pytest.raises(TraceError, match="'attn' hands its gradient to"):
        gpa.analyze(model, (x,), tracer="fx")
    report = gpa.analyze(model, (x,))
    assert report.tracer != "fx"
    expect(report, "c", {1: 1}, (LOSS,))
    expect(report, "attn", {2: 1}, ("c",))
    expect(report, "a", {3: 2}, ("attn", "b"))
    check_reachability_with_autograd(report, model, x)


def _plain_tensor(h: Any) -> bool:
    """A module-level helper comparing a value's class (Python asks a proxy nothing)."""
    return type(h) is torch.Tensor


def _described(h: Any) -> str:
    """A helper naming ``type`` for a message only: no test."""
    return f"a {type(h).__name__}"


class HelperGuarded(Residual):
    """:class:`Residual` whose residual is added where a module-level helper says the value
    is a plain tensor."""

    def __init__(self) -> None:
        super().__init__("isinstance")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(h)
        if _plain_tensor(h):
            g = g + h
        return self.c(g)


class HelperDescribed(HelperGuarded):
    """:class:`Residual` with its residual, calling a helper that names a value's class for
    a message."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(h)
        return self.c(g + h if _described(h) else g)


@pytest.mark.parametrize("tracer", ["fx", pytest.param("export", marks=pytest.mark.slow), "auto"])
def test_a_class_compared_in_a_helper_the_model_calls_is_a_class_test(tracer: str) -> None:
    """``type(h) is torch.Tensor`` in a module-level function forward calls: fx's proxy
    and export's fake tensor fail it, and the source of forward alone shows no test — fx
    and export left out the residual in silence (a at 3 alone). The comparisons of a
    value's class in the functions forward calls by name are read too: fx and export
    check their trace against a run and refuse; auto moves on to autograd. By hand as for
    :class:`Residual`: a at 2 and 3. A helper naming the class for a message is no test:
    fx reads that model (a at 2 and 3: the residual is always added)."""
    model, x = HelperGuarded(), torch.randn(2, 4)
    if tracer != "auto":
        with pytest.raises(TraceError, match="'a' hands its gradient to 'b' in the trace"):
            gpa.analyze(model, (x,), tracer=tracer)
        return
    report = gpa.analyze(model, (x,))
    assert report.tracer == "autograd"
    expect(report, "a", {2: 1, 3: 1}, ("b", "c"))
    check_reachability_with_autograd(report, model, x)
    described = gpa.analyze(HelperDescribed(), (x,), channels=True)
    assert described.tracer == "fx"
    expect(described, "a", {2: 1, 3: 1}, ("b", "c"))
