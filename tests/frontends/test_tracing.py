"""Tracing: grad-mode switches inside forward, in-place operations, models on the meta device.

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md); none was copied from gpa's output. The conventions and the
helpers (``expect``, ``expect_network``, ``at`` ...) are in tests/semantics.py.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from gpa.errors import TraceError
from gpa.frontends.fx.writes import VIEW_METHODS, made_of_constants, write_into_view
from tests.core.test_paths import ResNet
from tests.semantics import (
    IMG,
    LOSS,
    WITH_INPUTS,
    at,
    check_reachability_with_autograd,
    expect,
    expect_network,
    expect_unreachable,
    pool,
    run,
)

# ======================================================================================
# No-grad blocks inside forward


class NoGradNet(nn.Module):
    """a = c1(x); b = c4(a); [no grad: n = c2(b)]; y = c3(a) + n; fc(pool(y))."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c4 = nn.Conv2d(4, 4, 1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.mode = mode

    @torch.no_grad()
    def frozen(self, b):
        return self.c2(b)

    def forward(self, x):
        a = self.c1(x)
        b = self.c4(a)
        if self.mode == "no_grad":
            with torch.no_grad():
                n = self.c2(b)
        elif self.mode == "set_grad_enabled":
            with torch.set_grad_enabled(False):
                n = self.c2(b)
        elif self.mode == "set_grad_enabled_call":
            torch.set_grad_enabled(False)
            n = self.c2(b)
            torch.set_grad_enabled(True)
        elif self.mode == "inference_mode":
            with torch.inference_mode():
                n = self.c2(b)
            n = n.clone()
        elif self.mode == "decorator":
            n = self.frozen(b)
        elif self.mode == "enable_inside":
            with torch.no_grad(), torch.enable_grad():
                n = self.c2(b)
        elif self.mode == "inference_off_inside":
            with torch.inference_mode(), torch.inference_mode(False):
                n = self.c2(b)
        else:
            n = self.c2(b)
        y = self.c3(a) + n
        return self.fc(pool(y))


@pytest.mark.parametrize(
    "mode", ["no_grad", "set_grad_enabled", "set_grad_enabled_call", "inference_mode", "decorator"]
)
@WITH_INPUTS
def test_no_grad_block(mode, with_inputs):
    model = NoGradNet(mode)
    report = run(model, torch.randn(IMG), with_inputs)
    check_reachability_with_autograd(report, model, torch.randn(IMG))
    assert list(report.layers) == ["c1", "c4", "c2", "c3", "fc"]
    # c2 runs without gradient: its weights get none, and nothing flows into b.
    expect_unreachable(report, "c2")
    # c4's only consumer is c2 under no_grad: unreachable too.
    expect_unreachable(report, "c4")
    # fc 1; c3 -> fc: 2; c1 reaches the loss only through c3: c1-c3-fc, one path of 3
    # (without the no_grad block it would also have c1-c4-c2-fc, length 4).
    expect(report, "fc", {1: 1}, (LOSS,))
    expect(report, "c3", {2: 1}, ("fc",))
    expect(report, "c1", {3: 1}, ("c3",))
    # shortest over reachable layers: 3, 2, 1 -> mean 2
    expect_network(
        report,
        layers=5,
        max_shortest=3,
        min_shortest=1,
        mean_shortest=2.0,
        longest=3,
        unreachable=("c2", "c4"),
    )


@pytest.mark.parametrize("mode", ["plain", "enable_inside", "inference_off_inside"])
def test_grad_enabled_again_inside_no_grad(mode):
    # enable_grad() inside no_grad(), inference_mode(False) inside inference_mode() (which
    # re-enables grad mode, as real autograd confirms below), or no block at all: c2 and
    # c4 get gradient.
    # fc 1; c3 2; c2 -> fc: 2; c4 -> c2 -> fc: 3;
    # c1: c1-c3-fc (3) and c1-c4-c2-fc (4): two paths, senders c3 and c4.
    model = NoGradNet(mode)
    report = gpa.analyze(model, torch.randn(IMG))
    check_reachability_with_autograd(report, model, torch.randn(IMG))
    expect(report, "c2", {2: 1}, ("fc",))
    expect(report, "c4", {3: 1}, ("c2",))
    expect(report, "c1", {3: 1, 4: 1}, ("c3", "c4"))
    assert at(report.layers["c1"].sources_at(3)) == ("c3",)
    assert at(report.layers["c1"].sources_at(4)) == ("c4",)
    expect_network(
        report, layers=5, max_shortest=3, min_shortest=1, mean_shortest=11 / 5, longest=4
    )


# ======================================================================================
# No-grad blocks in export's functional form


class NoGradThenSliceWrite(nn.Module):
    """y = student(x); [no grad: t = teacher(x)]; t written in a slice; head(y + t).

    A write into a slice (``t[:, :4] = 0``) makes fx refuse and export put its graph in
    functional form, which inlines the ``no_grad`` block without a trace of it. ``case``:
    where the write is, how the block is made, what the block holds and writes into."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.student = nn.Conv1d(8, 8, 1)
        self.teacher = nn.Conv1d(8, 8, 1)
        self.norm = nn.BatchNorm1d(8)  # (train mode: the block updates its statistics)
        self.inner = nn.Conv1d(8, 8, 1)
        self.head = nn.Conv1d(8, 2, 1)
        self.case = case

    @torch.no_grad()
    def frozen(self, x):
        return self.teacher(x)

    def forward(self, x):
        y = self.student(x)
        case = self.case
        if case in ("after", "inside", "inside-data", "in-norm"):
            with torch.no_grad():
                t = self.teacher(x)
                t = self.norm(t) if case == "in-norm" else t
                if case == "inside":
                    t[:, :4] = 0.0
                elif case == "inside-data":
                    t[:, :4] = x[:, :4]
        elif case == "set-grad-enabled":
            with torch.set_grad_enabled(False):
                t = self.teacher(x)
        elif case == "inference-mode":
            with torch.inference_mode():
                t = self.teacher(x)
        elif case == "momentum":  # MoCo: the teacher's weights updated, then the teacher
            with torch.no_grad():
                pairs = zip(self.student.parameters(), self.teacher.parameters(), strict=True)
                for ps, pt in pairs:
                    pt.mul_(0.5).add_(ps.detach(), alpha=0.5)
                t = self.teacher(x)
        elif case == "decorated":
            t = self.frozen(x)
        elif case == "enable-inside":
            with torch.no_grad():
                s = self.teacher(x)
                with torch.enable_grad():
                    t = self.inner(s)
        elif case in ("history", "history-whole"):  # a write into y under no_grad
            with torch.no_grad():
                if case == "history":
                    y[:, :4] = 0.0
                else:
                    y.mul_(2.0)
            t = self.teacher(x).detach()
        if case not in ("inside", "inside-data", "history"):
            t = t.clone()
            t[:, :4] = 0.0
        return self.head(y + t)


@pytest.mark.parametrize("tracer", ["export", "auto", "autograd"])
@pytest.mark.parametrize(
    "case",
    [
        "after",
        "inside",
        "inside-data",
        "in-norm",
        "set-grad-enabled",
        "inference-mode",
        "momentum",
        "decorated",
        "enable-inside",
        "history",
        "history-whole",
    ],
)
def test_a_no_grad_block_stays_one_in_exports_functional_form(case, tracer):
    """Found by a new user (self-distillation: a teacher under ``no_grad``, its output
    masked by a slice write): export, and auto with it, reported the teacher reachable
    (shortest 1 from a head beside it), autograd and a real backward unreachable. By hand:
    head 1; student 2 (head <- student); teacher, called under ``no_grad`` however the
    block is made (or ``inference_mode``; or after a momentum update of its weights in the
    block, MoCo's: a review), and with a norm after it in the block (in train mode: its statistics'
    update is a write into its own buffers, which brings no gradient). Where the block writes under
    ``no_grad`` into the student's output (``y[:, :4] = 0``, ``y.mul_(2)``), y keeps its
    history (§1.3): the student is reached all the same. With ``enable_grad`` inside, the
    inner layer's weights carry gradient into its result: inner 2 (head <- inner)."""
    model = NoGradThenSliceWrite(case)
    x = torch.randn(2, 8, 5)
    report = gpa.analyze(model, (x,), tracer=tracer)
    if tracer == "auto":
        assert report.tracer == "export"  # (fx refuses the slice write)
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "student", {2: 1}, ("head",))
    expect_unreachable(report, "teacher")
    if case == "enable-inside":
        expect(report, "inner", {2: 1}, ("head",))
    check_reachability_with_autograd(report, NoGradThenSliceWrite(case), x)


class DiscardedBesideSliceWrite(nn.Module):
    """h = a(x), written in a slice; a layer called for a result nothing reads."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.a = nn.Conv1d(8, 8, 1)
        self.probe = nn.Conv1d(8, 8, 1)
        self.pair = nn.Sequential(nn.Conv1d(8, 8, 1), nn.ReLU())
        self.norm = nn.BatchNorm1d(8)
        self.case = case

    def forward(self, x):
        h = self.a(x).clone()
        h[:, :4] = x[:, :4]
        if self.case == "input":
            _ = self.probe(x)
        elif self.case == "written":
            _ = self.probe(h)
        elif self.case == "sequential":
            _ = self.pair(h)
        elif self.case == "again":
            _ = self.a(x)
        elif self.case == "no-grad":
            with torch.no_grad():
                _ = self.probe(x)
        elif self.case == "indexed":  # BEiT's relative position index, filled in place
            index = torch.zeros(8, dtype=torch.long)
            index[1:] = torch.arange(7)
            _ = self.probe(h[:, index])
        elif self.case == "normed":  # BEiT's auxiliary head in training
            _ = self.probe(torch.relu(self.norm(h)))
        elif self.case == "masked":  # a float table filled in place (a review)
            mask = torch.zeros(8, 5)
            mask[1:] = 1.0
            _ = self.probe(h * mask)
        return h


@pytest.mark.parametrize("tracer", ["export", "auto", "autograd"])
@pytest.mark.parametrize(
    "case",
    ["input", "written", "sequential", "again", "no-grad", "indexed", "normed", "masked"],
)
def test_a_discarded_call_counts_in_exports_functional_form(case, tracer):
    """Found by a new user: export's functional form (after the slice write) dropped a call
    whose result nothing reads, as dead code: ``calls: 0``, no FLOPs, where autograd and
    the same model without the write count it. By hand: a conv 8 -> 8, kernel 1, on 2 × 5
    positions is 640 multiply-adds, 1,280 FLOPs per call; a -> loss (1); the discarded
    call reached by no gradient (again: ``a`` twice, reached through its first call; a
    discarded call under ``no_grad`` too). Found later on BEiT's segmentation models: the
    call stayed dropped where it read an index table filled in place (dropped with its
    writes) or a batch norm's output in training (whose statistics' update was kept)."""
    model = DiscardedBesideSliceWrite(case)
    x = torch.randn(2, 8, 5)
    report = gpa.analyze(model, (x,), tracer=tracer)
    if tracer == "auto":
        assert report.tracer == "export"  # (fx refuses the slice write)
    called = {"sequential": "pair.0"}.get(case, "probe")
    if case == "again":
        expect(report, "a", {1: 1}, (LOSS,), calls=2)
        assert report.layers["a"].flops == 2 * 1280
    else:
        expect(report, "a", {1: 1}, (LOSS,))
        expect_unreachable(report, called)
        assert report.layers[called].flops == 1280
    assert report.network.flops == 2 * 1280
    check_reachability_with_autograd(report, model, x)


class WeightThroughParameters(nn.Module):
    """head(F.linear(a(x), w)), ``w`` computed from ``b``'s weight read through
    ``parameters()`` (weight standardisation) or ``named_parameters()`` (a scale)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4, bias=False), nn.Linear(4, 2)
        self.how = how

    def forward(self, x):
        if self.how == "standardised":
            w = next(self.b.parameters())
            w = (w - w.mean(1, keepdim=True)) / (w.std(1, keepdim=True) + 1e-5)
        else:
            w = dict(self.b.named_parameters())["weight"] * 2.0
        return self.head(F.linear(self.a(x), w))


@pytest.mark.parametrize("how", ["standardised", "scaled"])
def test_a_weight_computed_from_parameters_fx_cannot_see(how):
    """Found by a review: ``parameters()`` gives the parameters themselves, not fx's
    proxies, so what forward computes from them ran while fx traced and became a constant:
    ``b`` was reported uncalled and unreachable (auto too), where a real backward gives it
    gradient. fx refuses (auto moves on to export). By hand: head 1, b (the functional
    linear reading its weight) 2, a 3."""
    model, x = WeightThroughParameters(how), torch.randn(2, 4)
    with pytest.raises(TraceError, match="out of torch.fx's sight"):
        gpa.analyze(model, (x,), tracer="fx")
    for tracer in ("auto", "export", "autograd"):
        report = gpa.analyze(model, (x,), tracer=tracer)
        expect(report, "head", {1: 1}, (LOSS,))
        expect(report, "b", {2: 1}, ("head",))
        expect(report, "a", {3: 1}, ("b",))
    check_reachability_with_autograd(report, model, x)


# ======================================================================================
# In-place operations


class InplaceAdd(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 2)
        self.how = how

    def forward(self, x):
        a = self.l1(x)
        b = self.l2(x)
        if self.how == "add_":
            a.add_(b)
        else:
            a += b
        F.relu(a, inplace=True)
        return self.l3(a)


@pytest.mark.parametrize("how", ["add_", "iadd"])
def test_inplace_add(how):
    report = gpa.analyze(InplaceAdd(how), torch.randn(2, 4))
    # l3 reads a after b was added into it: l1 -> l3 and l2 -> l3, 2 each; l3 1
    expect(report, "l1", {2: 1}, ("l3",))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l3", {1: 1}, (LOSS,))
    expect_network(report, layers=3, max_shortest=2, min_shortest=1, mean_shortest=5 / 3, longest=2)


# ======================================================================================
# Models built on the meta device


class Huge(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(100_000, 100_000)  # 40 GB of float32 weights
        self.l2 = nn.Linear(100_000, 10)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def test_model_built_on_meta_device():
    with torch.device("meta"):
        big = Huge()
        resnet = ResNet(3)
    report = gpa.analyze(big, input_shape=(1, 100_000))
    expect(report, "l1", {2: 1}, ("l2",))
    expect(report, "l2", {1: 1}, (LOSS,))
    # the meta-built ResNet gives the hand-derived numbers of test_resnet (B = 3)
    report = gpa.analyze(resnet, input_shape=IMG)
    expect(
        report,
        "stem",
        {2: 1, 4: 3, 6: 3, 8: 1},
        ("fc", "blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1"),
    )
    assert report.network.max_shortest == 3


class OddName(nn.Module):
    """A module name that is no Python name (ModuleDict keys are free text)."""

    def __init__(self) -> None:
        super().__init__()
        self.d = nn.ModuleDict({'a"b': nn.Linear(2, 2)})

    def forward(self, x):
        return self.d['a"b'](x)


def test_module_names_fx_cannot_write_as_code() -> None:
    """fx and export write module names into generated Python; a name with a quote does
    not compile. The fx frontend never needs that code (its passes interpret the graph),
    so it reads the model, as the autograd frontend does: one layer feeding the loss.
    torch.export writes the code itself: there it is a frontend limit (a TraceError naming
    the module), not an internal error."""
    expected = {'d.a"b': 1}
    for tracer in ("fx", "autograd"):
        report = gpa.analyze(OddName(), input_shape=(1, 2), tracer=tracer)
        assert {n: r.shortest for n, r in report.layers.items()} == expected
    assert gpa.analyze(OddName(), input_shape=(1, 2)).tracer == "fx"
    with pytest.raises(TraceError, match=re.escape("'d.a\"b'")):
        gpa.analyze(OddName(), input_shape=(1, 2), tracer="export")


class SizeMethods(nn.Module):
    """Sizes read in forward and used as what they are, torch.Size objects."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(8, 8)

    def forward(self, x):
        shape, size = x.shape, x.size()
        flat = x.reshape(shape.numel() // shape[-1], size[-1])
        return self.l(flat).reshape(size)


@pytest.mark.parametrize(
    "tracer", ["fx", "autograd", pytest.param("export", marks=pytest.mark.slow)]
)
def test_sizes_keep_their_type(tracer):
    # one layer feeding the loss: l shortest 1, whatever the reshapes around it
    report = gpa.analyze(SizeMethods(), input_shape=(2, 5, 8), tracer=tracer)
    assert {n: (r.shortest, r.longest) for n, r in report.layers.items()} == {"l": (1, 1)}


class AugmentedAlias(nn.Module):
    """``b += y`` where ``b`` is another name of ``a``: the write lands in ``a``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        a = self.c1(x)
        b = a
        b += self.c2(x)
        n = x.size(0)
        m = n
        m += 1  # a number: rebinding only, n keeps its value
        return self.fc(a.mean((2, 3))).reshape(n, -1)[: m - 1]


class AugmentedView(AugmentedAlias):
    """``v *= y`` where ``v`` is a view of ``a``, read again afterwards."""

    def forward(self, x):
        a = self.c1(x)
        v = a.view(a.size(0), 8, -1)
        v *= self.c2(x).flatten(2)
        return self.fc(a.mean((2, 3)))


@pytest.mark.parametrize(
    "tracer", ["fx", "autograd", pytest.param("export", marks=pytest.mark.slow)]
)
def test_augmented_assignment_through_another_name(tracer):
    model = AugmentedAlias()
    model(torch.randn(2, 3, 6, 6))  # runs in eager mode
    report = gpa.analyze(model, input_shape=(2, 3, 6, 6), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 3, 6, 6))
    # a = c1(x) + c2(x) feeds fc: c1 and c2 at 2 (through fc), fc at 1
    expect(report, "c1", {2: 1}, ("fc",))
    expect(report, "c2", {2: 1}, ("fc",))
    expect(report, "fc", {1: 1}, (LOSS,))


def test_augmented_assignment_into_a_view_is_refused_by_fx():
    """As for ``mul_`` into a view (semantics §1.3): fx refuses, auto moves on to a frontend
    that follows the write; a = c1(x) * c2(x) there, so both feed fc."""
    model = AugmentedView()
    with pytest.raises(TraceError, match="writes in place into a view of"):
        gpa.analyze(model, input_shape=(2, 3, 6, 6), tracer="fx")
    report = gpa.analyze(model, input_shape=(2, 3, 6, 6))
    assert report.tracer != "fx"
    check_reachability_with_autograd(report, model, torch.randn(2, 3, 6, 6))
    expect(report, "c1", {2: 1}, ("fc",))
    expect(report, "c2", {2: 1}, ("fc",))


# Views fx recorded under names it did not know as views: the write into them was missed
# (f was reported feeding nothing), silently, under fx and so auto.
_VIEWS = {
    "swapdims": lambda h: h.swapdims(0, 1),
    "torch.swapdims": lambda h: torch.swapdims(h, 0, 1),
    "moveaxis": lambda h: h.moveaxis(0, 1),
    "T": lambda h: h.T,
    "mT": lambda h: h.mT,
    "adjoint": lambda h: h.adjoint(),
    "reshape_as": lambda h: h.reshape_as(h),
    "ravel": lambda h: h.ravel(),
    "tensor_split": lambda h: h.tensor_split(2, 1)[0],
    "torch.tensor_split": lambda h: torch.tensor_split(h, 2, 1)[0],
    "hsplit": lambda h: h.hsplit(2)[1],
}


class WrittenThroughAView(nn.Module):
    """``v = view(h)``, ``v += f(h')``, then ``h`` read by b: by hand, f's source is b."""

    def __init__(self, view: str) -> None:
        super().__init__()
        self.view = _VIEWS[view]
        self.a, self.f, self.b = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        v = self.view(h)
        v += self.f(h * 1.0).sum()
        return self.b(h)


@pytest.mark.parametrize("view", list(_VIEWS))
def test_a_write_into_a_view_of_any_name_is_refused_by_fx(view):
    model = WrittenThroughAView(view)
    with pytest.raises(TraceError, match="view"):
        gpa.analyze(model, input_shape=(4, 3), tracer="fx")
    report = gpa.analyze(model, input_shape=(4, 3))
    assert report.layers["f"].sources == ("b",)
    check_reachability_with_autograd(report, model, torch.randn(4, 3))


# Methods that return a view of their argument only at times (the flow pass asks the call
# whether it returned the argument itself), ``detach`` (autograd follows no write through
# it), and the parts of sparse tensors.
_NOT_ALWAYS_VIEWS = frozenset(
    "contiguous to cpu cuda pin_memory coalesce conj positive resolve_conj resolve_neg detach "
    "indices values crow_indices col_indices ccol_indices row_indices slice_inverse".split()
)


def test_every_method_aten_marks_a_view_is_followed_as_one():
    # independent of the list: ATen's schemas, whose result aliases the first argument
    views = set()
    for name in dir(torch.Tensor):
        op = getattr(torch.ops.aten, name, None)
        if name.startswith("_") or name.endswith("_") or not hasattr(op, "overloads"):
            continue
        schemas = [getattr(op, o)._schema for o in op.overloads()]
        if schemas and all(
            s.arguments
            and s.returns
            and s.arguments[0].alias_info is not None
            and not s.arguments[0].alias_info.is_write
            and s.returns[0].alias_info is not None
            and not s.returns[0].alias_info.is_write
            for s in schemas
        ):
            views.add(name)
    assert {"view", "transpose", "swapdims", "mT"} <= views  # the schemas say so
    assert views - _NOT_ALWAYS_VIEWS <= VIEW_METHODS


# ======================================================================================
# Writes into views of a fresh tensor (Swin's attention mask): only constants, or not


_FRESH = {
    "new_zeros": lambda y: y.new_zeros(y.shape),
    "zeros_like": lambda y: torch.zeros_like(y),
    "new_full": lambda y: y.new_full(tuple(y.shape), 3.0),
    "zeros": lambda y: torch.zeros(2, 4),
}


class _TwoLayersAndAFreshTensor(nn.Module):
    def __init__(self, fresh: str) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.fresh = _FRESH[fresh]


class NumbersIntoMask(_TwoLayersAndAFreshTensor):
    """y = a(x); mask = fresh tensor with numbers written into slices of it (a slice
    assignment and an in-place fill of a view); b(y + mask) + y."""

    def forward(self, x):
        y = self.a(x)
        mask = self.fresh(y)
        mask[:, :2] = -1.0
        mask[:, 2:].fill_(2.0)
        return self.b(y + mask) + y


class LayerIntoFresh(_TwoLayersAndAFreshTensor):
    """y = a(x); buf = fresh tensor with half of y written into it; b(buf)."""

    def forward(self, x):
        y = self.a(x)
        buf = self.fresh(y)
        buf[:, :2] = y[:, :2]
        return self.b(buf)


@pytest.mark.parametrize("fresh", sorted(_FRESH))
@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_numbers_written_into_a_fresh_mask(tracer: str, fresh: str) -> None:
    """The mask is made of constants: no gradient goes through it whatever is written, so
    export reads it without a functional rewrite (``write_into_view`` finds nothing)."""
    model = NumbersIntoMask(fresh)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # a: to the loss directly (+ y) at 1, through b at 2; b at 1
    expect(report, "a", {1: 1, 2: 1}, ("b", LOSS))
    expect(report, "b", {1: 1}, (LOSS,))
    program = torch.export.export(model, (torch.randn(2, 4),), strict=False)
    assert write_into_view(program.graph_module.graph) is None


@pytest.mark.parametrize("fresh", [*sorted(_FRESH), "constant-over-a-layer"])
@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_a_layer_written_into_a_fresh_tensor_reaches_through_it(tracer: str, fresh: str):
    """A write that carries gradient is followed (export: in functional form). The last
    case writes a constant into a view taken of ``m`` before a(x) was written into ``m``:
    ``m`` is no constant then, nor any view of it (found by a fresh pair of eyes: export
    skipped the functional rewrite and lost a; the autograd frontend ordered the view's
    fresh autograd node before what it reads and failed)."""
    model = ViewBeforeTheWrite(constant=True) if fresh not in _FRESH else LayerIntoFresh(fresh)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # a only through b: 2; b at 1
    expect(report, "a", {2: 1}, ("b",))
    expect(report, "b", {1: 1}, (LOSS,))
    program = torch.export.export(model, (torch.randn(2, 4),), strict=False)
    assert write_into_view(program.graph_module.graph) is not None


def test_only_torchs_own_operations_make_constants() -> None:
    """A user function may read parameters: what it returns is never taken for a constant,
    nor anything made from it."""

    def user_made(y):
        return y.new_zeros(y.shape)

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    made = graph.call_function(user_made, (x,))
    filled = graph.call_method("fill_", (made, 1))
    fresh = graph.call_method("new_zeros", (x, (2,)))
    graph.output((graph.call_function(torch.add, (x, filled)), fresh))
    found = made_of_constants(graph)
    assert [found[n] for n in (x, made, filled, fresh)] == [False, False, False, True]


class LayerIntoBuffer(nn.Module):
    """y = a(x); y copied into a buffer (under no_grad: a running statistic); b(buf) + y."""

    def __init__(self, no_grad: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("buf", torch.zeros(2, 4))
        self.no_grad = no_grad

    def forward(self, x):
        y = self.a(x)
        with torch.set_grad_enabled(not self.no_grad):
            self.buf.copy_(y)
        return self.b(self.buf) + y


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_running_statistic_written_without_gradient(tracer: str) -> None:
    model = LayerIntoBuffer(no_grad=True)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # the buffer carries no gradient: a only through "+ y" at 1; b at 1
    expect(report, "a", {1: 1}, (LOSS,))
    expect(report, "b", {1: 1}, (LOSS,))


@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_a_layer_written_into_a_buffer_reaches_through_it(tracer: str) -> None:
    """fx reads the buffer anew after the write and refuses; the others follow it."""
    model = LayerIntoBuffer(no_grad=False)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert report.tracer != "fx"
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # a: "+ y" at 1, through the buffer and b at 2; b at 1
    expect(report, "a", {1: 1, 2: 1}, ("b", LOSS))
    expect(report, "b", {1: 1}, (LOSS,))


@pytest.mark.parametrize(
    "model", [LayerIntoFresh("zeros"), LayerIntoBuffer(no_grad=False)], ids=["made", "buffer"]
)
def test_fx_refuses_gradient_written_into_an_attribute(model: nn.Module) -> None:
    with pytest.raises(TraceError, match="a tensor fx holds as an attribute"):
        gpa.analyze(model, input_shape=(2, 4), tracer="fx")


class ViewBeforeTheWrite(nn.Module):
    """m = zeros_like(x); v = a view of m taken first; a(x) copied into m; (with
    ``constant``: a constant written into a view of v); b(cat([v, v]))."""

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.constant = constant

    def forward(self, x):
        m = torch.zeros_like(x)
        v = m.narrow(1, 0, 2)
        m.copy_(self.a(x))
        if self.constant:
            v.narrow(1, 0, 1).zero_()
        return self.b(torch.cat([v, v], 1))


class _TwoLayersAndABuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("buf", torch.zeros(2, 4))


class IntoABuffersView(_TwoLayersAndABuffer):
    """Half of a(x) copied into a view of a buffer; b(buf)."""

    def forward(self, x):
        self.buf[:, :2].copy_(self.a(x)[:, :2])
        return self.b(self.buf)


class AddedIntoABuffer(_TwoLayersAndABuffer):
    """buf += a(x); b(buf)."""

    def forward(self, x):
        self.buf += self.a(x)
        return self.b(self.buf)


class IntoAMadeTensorReadThroughAView(_TwoLayersAndABuffer):
    """c = a tensor made of constants (a clone of a buffer, or zeros); v = a view of c,
    taken before or after a(x) is written into c; b(v) — or b of a value computed from c
    or v (``computed``: c + 1, ``summed``: x * c.sum(), ``catted``: cat([v, v])). fx holds
    c, v and what is computed from them while tracing as constants of their own (reviews:
    fx read them without the write and reported a unreachable)."""

    def __init__(self, made: str) -> None:
        super().__init__()
        self.made = made

    def forward(self, x):
        c = self.buf.clone() if self.made == "clone" else torch.zeros(2, 4)
        v = c[:, :2] if self.made == "catted" else c[:, :]
        c[:, :] = self.a(x)
        if self.made == "after":
            v = c[:, :]
        if self.made == "computed":
            return self.b(c + 1)
        if self.made == "summed":
            return self.b(x * c.sum())
        return self.b(torch.cat([v, v], 1) if self.made == "catted" else v)


_WRITES = {
    "buffer-view": IntoABuffersView,
    "buffer-add": AddedIntoABuffer,
    "view-before": ViewBeforeTheWrite,
    **{
        f"made-{made}": functools.partial(IntoAMadeTensorReadThroughAView, made)
        for made in ("clone", "zeros", "after", "computed", "summed", "catted")
    },
}


@pytest.mark.parametrize("kind", sorted(_WRITES))
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_layer_reaches_through_other_names_of_what_it_is_written_into(
    tracer: str, kind: str
) -> None:
    """A view of a buffer fx made while tracing, an augmented assignment into a buffer, a
    view taken before a write into its base (fresh pair of eyes: fx and export reported a
    unreachable, or fx failed with a KeyError), a view of a tensor made of constants
    (fx reported a unreachable). Every frontend either follows the write or,
    fx only, refuses it (auto then moves on)."""
    model = _WRITES[kind]()
    try:
        report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    except TraceError:
        assert tracer == "fx" and kind != "buffer-add"  # fx follows ``+=`` into a buffer
        return
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # a only through what it is written into, then b: 2; b at 1
    expect(report, "a", {2: 1}, ("b",))
    expect(report, "b", {1: 1}, (LOSS,))


class _AThenC(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(width, 2)


class WriteIntoOneSlice(_AThenC):
    """h = a(x); tail = h[:, 2:] taken first; h[:, :2] doubled in place; c(tail)."""

    def __init__(self) -> None:
        super().__init__(width=2)

    def forward(self, x):
        h = self.a(x)
        tail = h[:, 2:]
        h[:, :2].mul_(2)
        return self.c(tail)


class ReluOfOneSlice(_AThenC):
    """p, q = the halves of a(x); p.relu_(); c(cat([p, q]))."""

    def forward(self, x):
        y = self.a(x)
        p, q = y[:, :2], y[:, 2:]
        p.relu_()
        return self.c(torch.cat([p, q], 1))


class ReluOfAMaximum(_AThenC):
    """v, i = a(x).max(1) (a tuple, not views of one tensor); v.relu_(); c(v), i."""

    def __init__(self) -> None:
        super().__init__(width=1)

    def forward(self, x):
        v, i = self.a(x).max(1, keepdim=True)
        v.relu_()
        return self.c(v), i


class IndexAddIntoZeros(_AThenC):
    """torch.zeros(2, 4).index_add_(0, idx, a(x)), only its result read; c(result)."""

    def forward(self, x):
        made = torch.zeros(2, 4).index_add_(0, torch.tensor([1, 0]), self.a(x))
        return self.c(made)


_NOT_REFUSED = {
    "one-slice": WriteIntoOneSlice,
    "relu-of-a-slice": ReluOfOneSlice,
    "relu-of-a-maximum": ReluOfAMaximum,
    "index-add-into-zeros": IndexAddIntoZeros,
}


@pytest.mark.parametrize("kind", sorted(_NOT_REFUSED))
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_in_place_writes_every_frontend_follows(tracer: str, kind: str) -> None:
    """Writes no other name reads stale (found by a second fresh pair of eyes: fx refused
    them and export's functional rewrite then failed, for a while)."""
    model = _NOT_REFUSED[kind]()
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # a through c: 2; c at 1
    expect(report, "a", {2: 1}, ("c",))
    expect(report, "c", {1: 1}, (LOSS,))


class ViewWrittenThenShapeRead(nn.Module):
    """``v = h.swapdims(0, 1); v += f(x)`` (or ``v = self.drop(h)``, ``h`` itself in eval
    mode), then only ``h``'s metadata is read — its shape, or a tensor made like it
    (``zeros_like``, ``new_zeros``, ``full_like``) —: no value of ``h`` is read after the
    write, so fx follows it (by hand: f, a at 2 through b; b at 1)."""

    def __init__(self, read: str = "shape", alias: str = "swapdims") -> None:
        super().__init__()
        self.read, self.alias = read, alias
        self.a, self.f, self.b = nn.Linear(3, 4), nn.Linear(3, 1), nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = self.a(x)
        v = h.swapdims(0, 1) if self.alias == "swapdims" else self.drop(h)
        v += self.f(x).sum()
        made = {
            "shape": lambda: torch.zeros(()),  # h.shape alone, below
            "zeros_like": lambda: torch.zeros_like(h),
            "new_zeros": lambda: h.new_zeros(h.shape[0], 1),
            "full_like": lambda: torch.full_like(h, 2.0),
        }[self.read]()
        out = self.b(v.swapdims(0, 1) if self.alias == "swapdims" else v)
        return out.reshape(h.shape[0], -1) + made.sum()


@pytest.mark.parametrize("alias", ["swapdims", "dropout-in-eval"])
@pytest.mark.parametrize("read", ["shape", "zeros_like", "new_zeros", "full_like"])
def test_a_view_written_then_only_its_bases_metadata_read_is_followed_by_fx(read, alias):
    # zeros_like/new_zeros/full_like were refused as reads of h's values until the 11th session
    model = ViewWrittenThenShapeRead(read, alias).eval()
    report = gpa.analyze(model, input_shape=(4, 3), tracer="fx", train=False)
    expect(report, "f", {2: 1}, ("b",))
    expect(report, "a", {2: 1}, ("b",))
    check_reachability_with_autograd(report, model, torch.randn(4, 3))


class ViewWrittenThenMadeLikeAndRead(ViewWrittenThenShapeRead):
    """As above, but ``h``'s values are read too (``zeros_like(h) + h``): refused by fx."""

    def forward(self, x):
        h = self.a(x)
        v = h.swapdims(0, 1)
        v += self.f(x).sum()
        return self.b(v.swapdims(0, 1)) + (torch.zeros_like(h) + h).sum()


def test_a_view_written_then_its_bases_values_read_beside_a_made_like_is_refused_by_fx():
    with pytest.raises(TraceError, match="writes in place into a view"):
        gpa.analyze(ViewWrittenThenMadeLikeAndRead(), input_shape=(4, 3), tracer="fx")


@torch.jit.script
def _gated(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(y)


class CallsAScriptedFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.c(_gated(self.a(x), self.b(x)))


def test_a_scripted_function_refused_by_fx_is_said_in_one_line_with_what_reads_it():
    """fx's refusal was TorchScript's whole cast dump (declaration, position, value) and a
    guess; the function is compiled code fx's proxies cannot enter (found by a new user)."""
    with pytest.raises(TraceError) as raised:
        gpa.analyze(CallsAScriptedFunction(), input_shape=(2, 4), tracer="fx")
    message = str(raised.value)
    assert "compiled TorchScript" in message and "--tracer export or autograd" in message
    assert "Declaration:" not in message and "depends on tensor values" not in message
    report = gpa.analyze(CallsAScriptedFunction(), input_shape=(2, 4))  # auto: export
    # by hand: c feeds the loss; a and b reach it through the gate and c
    assert {n: r.shortest for n, r in report.layers.items()} == {"a": 2, "b": 2, "c": 1}


class AssignsAnItem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        h[:, 0] = 0.0
        return self.b(h)


def test_item_assignment_refused_by_fx_says_what_reads_it():
    # the refusal blamed data-dependent Python; an item assignment is no such thing
    with pytest.raises(TraceError) as raised:
        gpa.analyze(AssignsAnItem(), input_shape=(2, 4), tracer="fx")
    message = str(raised.value)
    assert "records no item assignment" in message and "--tracer export or autograd" in message
    assert "depends on tensor values" not in message
    report = gpa.analyze(AssignsAnItem(), input_shape=(2, 4))  # auto: export reads it
    assert report.tracer == "export"
    expect(report, "a", {2: 1}, ("b",))


class Packed(nn.Module):
    """An LSTM over a packed batch of sequences of the given lengths, then a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 2)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        return self.head(out)


def test_a_packed_sequence_refused_by_fx_says_what_reads_it():
    """Found by a new user: fx's refusal of ``pack_padded_sequence`` was torch's bare
    "``__cuda_array_interface__`` must be a dict" (it makes a tensor of the lengths'
    values, which proxies do not hold). It now says so, and what reads it. By hand,
    auto (autograd): rnn -> head (2)."""
    x, lengths = torch.randn(3, 5, 4), torch.tensor([5, 3, 2])
    with pytest.raises(TraceError) as raised:
        gpa.analyze(Packed(), (x, lengths), tracer="fx")
    message = str(raised.value)
    assert "makes a tensor of a traced tensor's values" in message
    assert "pack_padded_sequence" in message and "--tracer autograd" in message
    report = gpa.analyze(Packed(), (x, lengths))
    assert report.tracer == "autograd"
    expect(report, "rnn", {2: 1}, ("head",))


class RecipeByRank(nn.Module):
    """Looks its permutation up by the input's number of dimensions, as einops' layers
    (``Rearrange``, ``Reduce``, ``EinMix``) look up their recipe."""

    def __init__(self) -> None:
        super().__init__()
        self.recipes = {4: (0, 2, 3, 1)}

    def forward(self, x):
        return x.permute(*self.recipes[x.ndim]).flatten(1, 2)


def test_a_lookup_by_a_size_refused_by_fx_says_why():
    """Found by a new user on einops: fx's refusal of ``self._multirecipe[input.ndim]``
    was a bare ``KeyError: Proxy(getattr_1)``. It now says that a proxy is no number, and
    what reads it: auto (export), and fx with the module a leaf. By hand: conv -> head
    (2), head at 1."""
    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), RecipeByRank(), nn.Linear(8, 4))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TraceError) as raised:
        gpa.analyze(model, x, tracer="fx")
    message = str(raised.value)
    assert "KeyError: Proxy(" in message and "self.recipes[x.ndim]" in message
    assert "looks a value up by a number torch.fx holds as a proxy" in message
    assert "--leaf 1" in message
    as_leaf = gpa.analyze(model, x, tracer="fx", leaf_modules=["1"])
    for report, tracer in ((gpa.analyze(model, x), "export"), (as_leaf, "fx")):
        assert report.tracer == tracer
        expect(report, "0", {2: 1}, ("2",))
        expect(report, "2", {1: 1}, (LOSS,))


def _passes_everything_on(forward):
    """A decorator with a signature of its own, as Hugging Face's ``@can_return_tuple``."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return forward(self, *args, **kwargs)

    return wrapper


class Decorated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    @_passes_everything_on
    def forward(self, x, mask=None, **kwargs):
        return self.b(self.a(x))


def _reads_its_keywords(forward):
    """A decorator reading the keywords it is given, as Hugging Face's
    ``@merge_with_config_defaults`` (BERT, GPT-2): fx's binding leaves them None."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        use_cache = kwargs.get("use_cache")  # (a local of its own, as theirs have)
        if use_cache is not None:
            kwargs["use_cache"] = bool(use_cache)
        return forward(self, *args, **kwargs)

    return wrapper


class DecoratedReading(Decorated):
    @_reads_its_keywords
    def forward(self, x, mask=None, **kwargs):
        return self.b(self.a(x))


@pytest.mark.parametrize("model", [Decorated, DecoratedReading])
def test_a_decorated_forward_refused_by_fx_is_not_blamed_on_values(model):
    """fx fails with "co_varnames is too small" on Llama, and inside the decorator on BERT
    and GPT-2; the message advised declaring a leaf for data-dependent Python (or nothing
    at all), where there is none."""
    with pytest.raises(TraceError) as raised:
        gpa.analyze(model(), input_shape=(2, 4), tracer="fx")
    message = str(raised.value)
    first = message.splitlines()[0]  # the reason first (a new-user review: Python's came first)
    assert first.startswith(f"torch.fx cannot trace {model.__name__}: it cannot bind")
    assert "wrapped by a decorator taking *args and **kwargs" in first
    assert "--tracer export or autograd reads models fx cannot" in message
    assert "depends on tensor values" not in message
    report = gpa.analyze(model(), input_shape=(2, 4))  # auto: export reads it
    assert report.tracer == "export"
    expect(report, "a", {2: 1}, ("b",))


#: How ``SplitBlock`` splits cv1's output into two halves, iterated as a whole.
SPLITS = {
    "chunk": lambda h: list(h.chunk(2, 1)),
    "torch_chunk": lambda h: list(torch.chunk(h, 2, dim=1)),
    "split_sizes": lambda h: list(h.split([2, 2], 1)),
    "torch_split_sizes": lambda h: list(torch.split(h, [2, 2], dim=1)),
    "tensor_split": lambda h: list(torch.tensor_split(h, [2], dim=1)),
    "tuple": lambda h: [*h.chunk(2, 1)],
}


class SplitBlock(nn.Module):
    """Ultralytics' C2f: ``y = list(cv1(x).chunk(2, 1)); y.append(m(y[-1]));
    cv2(cat(y))``. fx cannot count the pieces of a proxy it iterates."""

    def __init__(self, split: str) -> None:
        super().__init__()
        self.split = SPLITS[split]
        self.cv1, self.m, self.cv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.split(self.cv1(x))
        y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_pieces_of_a_split_iterated_whole(split: str, tracer: str) -> None:
    """fx failed ("Proxy object cannot be iterated"), and auto went to export on every
    Ultralytics model. By hand: cv2 1; m 2; cv1 2 (into cv2 through both halves: one
    path) and 3 (through m)."""
    model, x = SplitBlock(split), torch.randn(1, 3, 4, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    expect(report, "cv2", {1: 1}, (LOSS,))
    expect(report, "m", {2: 1}, ("cv2",))
    expect(report, "cv1", {2: 1, 3: 1}, ("cv2", "m"))
    check_reachability_with_autograd(report, model, x)


def test_fewer_pieces_than_asked_are_not_read_as_more() -> None:
    """``chunk(2)`` of a dimension of size 1 gives one piece: fx, which reads two, fails
    on the shapes, and auto moves on (by hand: a 1, b uncalled)."""

    class Narrow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(1, 1), nn.Linear(1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pieces = list(x.chunk(2, 1))
            return self.a(pieces[0]) if len(pieces) == 1 else self.b(pieces[1])

    report = gpa.analyze(Narrow(), input_shape=(2, 1))
    assert report.tracer in ("export", "autograd")
    expect(report, "a", {1: 1}, (LOSS,))
    expect_unreachable(report, "b", calls=0)


@pytest.mark.parametrize(
    ("error", "data_dependent"),
    [
        (
            torch.fx.proxy.TraceError(
                "symbolically traced variables cannot be used as inputs to control flow"
            ),
            True,
        ),
        (RuntimeError("'len' is not supported in symbolic tracing by default"), True),
        (
            RuntimeError(
                "Detected that you are using FX to symbolically trace a dynamo-optimized function"
            ),
            False,
        ),
        (NotImplementedError('Module [Wrapper] is missing the required "forward" function'), False),
    ],
)
def test_the_control_flow_hint_is_given_for_control_flow_alone(
    error: BaseException, data_dependent: bool
) -> None:
    """Every failure of fx's was said to be control flow depending on tensor values, with
    advice to declare a leaf: a compiled function or a missing forward too (found by a
    new-user review)."""
    from gpa.frontends.fx.tracer import _trace_failure_message

    message = _trace_failure_message(nn.Linear(2, 2), error)
    assert ("cannot follow control flow" in message) == data_dependent
    assert message.endswith("(auto moves on).")


class _Checks(nn.Module):
    """A layer that branches on its input's dtype, as peft's LoRA layers do: a proxy
    cannot answer, a meta tensor can."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(x) if x.dtype == torch.float32 else self.l(x.float())


def test_the_module_fx_stopped_in_is_named_as_the_leaf_to_declare() -> None:
    """The hint said to declare "the module that does it" a leaf without naming it (a
    review of peft models: the line was in peft's code, the module a LoRA layer)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(_Checks()))
    with pytest.raises(gpa.GpaError) as caught:
        gpa.analyze(model, input_shape=(1, 2), tracer="fx")
    message = str(caught.value)
    assert f"  while tracing module '1.0' ({__name__}._Checks)" in message
    assert "Declare the module that does it a leaf (--leaf 1.0 / leaf_modules=[...])" in message
    # what a leaf costs is said, and what reads the layers apart (a new-user review
    # followed the leaf advice on efficientvit, whose layers inside the leaf were then
    # read as one, and on yolov8n's head, which returns its inputs and fx then refused)
    assert "the layers inside it as one (where it returns none of its inputs" in message
    assert "--tracer export or autograd may read it with every layer apart" in message
    # and so declared, fx reads the model: 0 -> 1.0 (one call) -> loss
    report = gpa.analyze(model, input_shape=(1, 2), tracer="fx", leaf_modules=["1.0"])
    expect(report, "0", {2: 1}, ("1.0",))


class _Gate(nn.Module):
    """Calls its layer where its input's values say so."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(x) if x.sum() > 0 else x


def test_the_leaf_hint_says_a_leaf_cannot_test_values() -> None:
    """The hint offered a leaf for a test of values, and the leaf then failed on the meta
    device (a review): it now says a leaf serves where the code tests sizes, not values."""
    model = nn.Sequential(_Gate(), nn.Linear(2, 2))
    with pytest.raises(gpa.GpaError) as caught:
        gpa.analyze(model, input_shape=(1, 2), tracer="fx")
    assert "tests sizes, not values" in str(caught.value)
    with pytest.raises(gpa.GpaError, match="cannot run on the meta device"):
        gpa.analyze(model, input_shape=(1, 2), tracer="fx", leaf_modules=["0"])


class _Optional(nn.Module):
    """A layer that adds its second input where that one's values say so."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None and y.sum() > 0:
            x = x + y
        return self.fc(x)


class _Twice(nn.Module):
    """A block called twice, which fx traces on its first call and cannot on its second
    (fx names that call ``block@1``, no module's name)."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.head = _Optional(), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.block(x), x))


class _CaughtThenRoot(nn.Module):
    """A failure inside ``block`` the model catches, then one in the root's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.head = _Checks(), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            x = self.block(x)
        except Exception:
            x = x * 1
        return self.head(x) if x.sum() > 0 else x


@pytest.mark.parametrize(
    ("model", "named"),
    [(_Twice, "'block' (tests.frontends.test_tracing._Optional)"), (_CaughtThenRoot, None)],
)
def test_the_module_named_is_the_one_fx_stopped_in(model, named) -> None:
    """Before: an internal error for the block called twice (``auto`` stopped there too),
    and the caught failure's module blamed for the root's."""
    with pytest.raises(gpa.GpaError) as caught:
        gpa.analyze(model(), input_shape=(1, 2), tracer="fx")
    lines = str(caught.value).splitlines()
    tracing = [line for line in lines if line.startswith("  while tracing module")]
    assert tracing == ([f"  while tracing module {named}"] if named else [])
    assert gpa.analyze(model(), input_shape=(1, 2)).tracer != "fx"  # auto moves on


class _TestsTimestepRank(nn.Module):
    """diffusers' UNets normalise the timestep in their own forward: ``len(t.shape)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(t.shape) == 0:
            t = t[None]
        return self.lin(x) * t[:, None]


class _IteratesSizes(nn.Module):
    """UNet2DConditionModel checks its sample's size so: ``for dim in sample.shape[-2:]``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dim in x.shape[-1:]:
            if dim % 2:
                raise ValueError("odd")
        return self.lin(x)


class _LooksUpByRank(nn.Module):
    """einops' lookup of a recipe by ``x.ndim``, in the root's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scales = {2: 1.0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scales[x.ndim]


@pytest.mark.parametrize("model", [_TestsTimestepRank, _IteratesSizes, _LooksUpByRank])
def test_a_failure_in_the_roots_own_forward_advises_no_leaf(model: type[nn.Module]) -> None:
    """Found by a survey of diffusers' models (seven of nine: UNet2D, UNet1D, ControlNet,
    UNet2DCondition, Flux): fx failed in the model's own forward, and its hint said to
    declare "the module that does it" a leaf with the placeholder ``--leaf NAME`` — the
    model itself, which no leaf can hold. The hint now says so and what reads it; a
    failure inside a submodule still names that module
    (``test_the_module_fx_stopped_in_is_named_as_the_leaf_to_declare``)."""
    shapes = [(2, 4), (2,)] if model is _TestsTimestepRank else [(2, 4)]
    with pytest.raises(TraceError) as caught:
        gpa.analyze(model(), input_shape=shapes, tracer="fx")
    message = " ".join(str(caught.value).split())
    assert "--leaf" not in message
    assert "That code is the model's own forward, which cannot be a leaf: rewrite" in message
    # and what the hint names reads it: the linear, one step from the loss
    report = gpa.analyze(model(), input_shape=shapes, tracer="autograd")
    assert {name: r.shortest for name, r in report.layers.items()} == {"lin": 1}
