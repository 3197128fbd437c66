"""Activation checkpointing changes no gradient path (issue 13, kind 1).

``torch.utils.checkpoint`` trades memory for compute: the checkpointed function runs
without saving activations, and backward runs it again. Its re-entrant form runs the
function under ``no_grad`` inside an ``autograd.Function``, which every frontend used to
read as code without gradient. Each model below is analysed with every frontend and
checked against values derived by hand in the comments (from docs/semantics.md) and
against a real backward pass; none was copied from gpa's output. The conventions and
helpers are in tests/semantics.py.
"""

from __future__ import annotations

import sys
import threading
import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import gpa
from gpa.frontends.watch import Checkpoints
from tests.frontends.every_tracer import EVERY_TRACER, layer_records
from tests.semantics import (
    LOSS,
    check_reachability_with_autograd,
    expect,
    expect_network,
    expect_unreachable,
)

IMG = (1, 3, 8, 8)


def conv() -> nn.Conv2d:
    return nn.Conv2d(8, 8, 3, padding=1)


def run_block(block: nn.Sequential, x: torch.Tensor, how: str) -> torch.Tensor:
    """``block(x)``, checkpointed as ``how`` says; every way computes the same values."""
    if how == "plain":
        return block(x)
    if how == "function":  # a closure, not a module: no module call marks where it starts
        return checkpoint(lambda t: block[2](block[1](block[0](t))), x, use_reentrant=True)
    if how.startswith("sequential"):
        return checkpoint_sequential(block, 2, x, use_reentrant=how.endswith("reentrant"))
    return checkpoint(block, x, use_reentrant=how == "reentrant")


HOW = ["plain", "reentrant", "non-reentrant", "function", "sequential", "sequential-reentrant"]


class Issue(nn.Module):
    """The issue's example: stem, a two-conv block (checkpointed), pooling, a linear."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Sequential(conv(), nn.ReLU(), conv())
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_block(self.b1, self.stem(x), self.how)
        return self.fc(x.mean((2, 3)))


@EVERY_TRACER
@pytest.mark.parametrize("how", HOW)
def test_issue_example(how: str, tracer: str) -> None:
    model = Issue(how)
    report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
    # A chain stem -> b1.0 -> b1.2 -> fc (the ReLU is no layer): fc 1, b1.2 2, b1.0 3,
    # stem 4, one path each, each receiving gradient from the next layer.
    assert list(report.layers) == ["stem", "b1.0", "b1.2", "fc"]
    expect(report, "fc", {1: 1}, (LOSS,))
    expect(report, "b1.2", {2: 1}, ("fc",))
    expect(report, "b1.0", {3: 1}, ("b1.2",))
    expect(report, "stem", {4: 1}, ("b1.0",))
    expect_network(report, layers=4, max_shortest=4, min_shortest=1, mean_shortest=2.5, longest=4)
    check_reachability_with_autograd(report, model, torch.randn(IMG))


@EVERY_TRACER
@pytest.mark.parametrize("how", HOW)
def test_a_frozen_layer_before_a_checkpoint_counts_as_any_other(how: str, tracer: str) -> None:
    """Fine-tuning freezes the stem (semantics §3: a frozen parameter counts as requiring
    gradient). Export ran autograd on the real flags, so a re-entrant checkpoint given
    only the frozen stem's output cut b1 off (found by a new-user review). By hand, as
    :func:`test_issue_example`; the real backward of the same model unfrozen agrees."""
    model = Issue(how)
    model.stem.requires_grad_(False)
    report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
    expect(report, "fc", {1: 1}, (LOSS,))
    expect(report, "b1.2", {2: 1}, ("fc",))
    expect(report, "b1.0", {3: 1}, ("b1.2",))
    expect(report, "stem", {4: 1}, ("b1.0",))
    assert not any(UNFED in n for n in report.notes)
    assert not any(p.requires_grad for p in model.stem.parameters())  # flags as they were
    check_reachability_with_autograd(report, model.requires_grad_(True), torch.randn(IMG))


class Unfed(nn.Module):
    """The first block checkpointed on the model's input itself (``how``), then fc; with
    ``chained``, a second block checkpointed on the first's output; with ``fed``, the
    first given a tensor computed from a parameter beside the input."""

    def __init__(self, how: str, chained: bool = False, fed: bool = False) -> None:
        super().__init__()
        self.how, self.chained, self.fed = how, chained, fed
        self.b1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), conv())
        self.b2 = nn.Sequential(conv(), nn.ReLU(), conv())
        self.scale = nn.Parameter(torch.ones(1, 3, 1, 1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_block(self.b1, x * self.scale if self.fed else x, self.how)
        if self.chained:
            x = run_block(self.b2, x, self.how)
        return self.fc(x.mean((2, 3)))


UNFED = "re-entrant activation checkpoint"


@EVERY_TRACER
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("chained", [False, True], ids=["one", "chained"])
def test_a_reentrant_checkpoint_given_only_the_inputs_passes_no_gradient(
    how: str, chained: bool, tracer: str
) -> None:
    """torch: a re-entrant checkpoint none of whose tensors requires gradient returns
    tensors that carry none; the model's input requires none in training, so the layers
    it runs (and what only its results feed) get no gradient — a real backward leaves
    their .grad None. ``checkpoint_sequential`` checkpoints every segment but the last
    (b1.0 and its ReLU; b1.2 runs plainly). By hand, reachable: fc 1, and the rest as
    a chain to it (b1.0 -> b1.2 -> [b2.0 -> b2.2 ->] fc) from the first layer with
    gradient on."""
    model = Unfed(how, chained)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "None of the inputs have requires_grad"
        report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
        check_reachability_with_autograd(report, model, torch.randn(IMG))
    chain = ["b1.0", "b1.2", *(["b2.0", "b2.2"] if chained else []), "fc"]
    unfed = {
        "reentrant": {"b1.0", "b1.2", "b2.0", "b2.2"},
        "function": {"b1.0", "b1.2", "b2.0", "b2.2"},
        "sequential-reentrant": {"b1.0"},
    }.get(how, set())
    for i, name in enumerate(chain):
        if name in unfed:
            expect_unreachable(report, name)
        else:
            expect(report, name, {len(chain) - i: 1}, (chain[i + 1] if name != "fc" else LOSS,))
    assert any(UNFED in n for n in report.notes) == bool(unfed)


@EVERY_TRACER
def test_a_reentrant_checkpoint_given_a_tensor_from_parameters_passes_gradient(
    tracer: str,
) -> None:
    """``x * scale`` requires gradient (scale is a parameter): by hand b1.2 2, b1.0 3."""
    model = Unfed("reentrant", fed=True)
    report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
    expect(report, "b1.2", {2: 1}, ("fc",))
    expect(report, "b1.0", {3: 1}, ("b1.2",))
    assert not any(UNFED in n for n in report.notes)
    check_reachability_with_autograd(report, model, torch.randn(IMG))


class MadeToRequireGradient(Unfed):
    """``Unfed(how, chained=True)`` whose forward makes a tensor from its input require
    gradient (``made``) before the checkpoints, as Wav2Vec2's, HuBERT's and SpeechT5's
    feature encoders do "for gradient checkpointing"."""

    MADE = {
        "attribute": lambda h: setattr(h, "requires_grad", True) or h,
        "method": lambda h: (h.requires_grad_(), h)[1],
        "method(True)": lambda h: h.requires_grad_(True),
        "copy's attribute": lambda h: setattr(c := h.clone(), "requires_grad", True) or c,
    }

    def __init__(self, how: str, made: str) -> None:
        super().__init__(how, chained=True)
        self.made = made

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.MADE[self.made](x[:, :])  # (a view: the input itself stays as given)
        return super().forward(h)


@EVERY_TRACER
@pytest.mark.parametrize("how", ["reentrant", "function", "sequential-reentrant"])
@pytest.mark.parametrize("made", list(MadeToRequireGradient.MADE))
def test_a_tensor_the_model_makes_require_gradient_feeds_reentrant_checkpoints(
    made: str, how: str, tracer: str
) -> None:
    """Found by a new user on SpeechT5 (and Wav2Vec2, HuBERT): the model sets
    ``requires_grad`` on a tensor made from its input before re-entrant checkpoints, so
    they pass gradient on (a real backward gives every layer gradient); fx and autograd
    cut them as given the inputs alone (export was right). By hand: the chain b1.0 ->
    b1.2 -> b2.0 -> b2.2 -> fc, at 5, 4, 3, 2, 1."""
    model = MadeToRequireGradient(how, made)
    report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
    chain = ["b1.0", "b1.2", "b2.0", "b2.2", "fc"]
    for i, name in enumerate(chain):
        expect(report, name, {len(chain) - i: 1}, (chain[i + 1] if name != "fc" else LOSS,))
    assert not any(UNFED in n for n in report.notes)
    check_reachability_with_autograd(report, model, torch.randn(IMG))


class MadeToRequireGradientElsewhere(nn.Module):
    """``head(checkpoint(block, h))`` (re-entrant), the model making a tensor require
    gradient (``where``): its own input before the checkpoint, or ``h`` after it."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.block, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.where == "own input":
            x.requires_grad_()
            return self.head(checkpoint(self.block, x, use_reentrant=True))
        h = x * 1
        y = checkpoint(self.block, h, use_reentrant=True)
        h.requires_grad_()  # ("after": too late to feed the checkpoint)
        return self.head(y + h)


@EVERY_TRACER
@pytest.mark.parametrize("where", ["own input", "after"])
def test_only_what_is_made_to_require_gradient_before_a_checkpoint_feeds_it(
    where: str, tracer: str
) -> None:
    """Found by a review of the change above: fx fed the checkpoint from a
    ``requires_grad_()`` made after it, and autograd did not count the model's own input
    made to require gradient. A real backward decides: its own input feeds the checkpoint
    (block 2 -> head 1); after it, block gets none."""
    model = MadeToRequireGradientElsewhere(where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "None of the inputs have requires_grad"
        report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        check_reachability_with_autograd(report, model, torch.randn(2, 4))
    if where == "own input":
        expect(report, "block", {2: 1}, ("head",))
    else:
        expect_unreachable(report, "block")
    expect(report, "head", {1: 1}, (LOSS,))


class MadeToRequireNone(nn.Module):
    """``h = x[:, :]; h.requires_grad = False; fc(h)``: what training does too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, :]
        h.requires_grad = False
        return self.fc(h)


@EVERY_TRACER
def test_a_tensor_the_model_makes_require_no_gradient_is_read_as_before(tracer: str) -> None:
    """Found by a review of the change above: recording every assignment to a proxy's
    ``requires_grad`` made fx refuse ``h.requires_grad = False`` on a tensor from the
    input (which training allows). By hand: fc at 1."""
    report = gpa.analyze(MadeToRequireNone(), input_shape=(2, 4), tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    expect(report, "fc", {1: 1}, (LOSS,))


class Residual(nn.Module):
    """§5's ResNet with B = 2 basic blocks, each checkpointed (``how``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(conv(), nn.ReLU(), conv()) for _ in range(2))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + run_block(block, x, self.how)
        return self.fc(x.mean((2, 3)))


@EVERY_TRACER
@pytest.mark.parametrize("how", ["reentrant", "non-reentrant"])
def test_residual_blocks(how: str, tracer: str) -> None:
    model = Residual(how)
    report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
    # §5 with B = 2: in block b, conv2 has shortest 2 and longest 2 + 2(B - b), conv1 3 and
    # 3 + 2(B - b), one path per length; the stem {2 + 2k: C(2, k)} = {2: 1, 4: 2, 6: 1}.
    # Senders: block 1's conv2 and the stem reach block 2's conv1 and fc through the
    # identities; the stem also reaches block 1's conv1.
    expect(report, "fc", {1: 1}, (LOSS,))
    expect(report, "blocks.1.2", {2: 1}, ("fc",))
    expect(report, "blocks.1.0", {3: 1}, ("blocks.1.2",))
    expect(report, "blocks.0.2", {2: 1, 4: 1}, ("blocks.1.0", "fc"))
    expect(report, "blocks.0.0", {3: 1, 5: 1}, ("blocks.0.2",))
    expect(report, "stem", {2: 1, 4: 2, 6: 1}, ("blocks.0.0", "blocks.1.0", "fc"))
    check_reachability_with_autograd(report, model, torch.randn(IMG))


class Inner(nn.Module):
    """A checkpointed module that holds a checkpoint and a ``no_grad`` of its own."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.a(x)
        return checkpoint(self.c, self.b(x) + z, use_reentrant=self.reentrant)


class Nested(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.inp, self.inner = nn.Linear(4, 4), Inner(reentrant)
        self.frozen, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.inner, self.inp(x), use_reentrant=self.reentrant)
        with torch.no_grad():  # checkpointing code without gradient keeps it so
            f = checkpoint(self.frozen, h, use_reentrant=self.reentrant)
        return self.out(h + f)


@EVERY_TRACER
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_nested_checkpoints_keep_the_users_no_grad(reentrant: bool, tracer: str) -> None:
    model = Nested(reentrant)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    # inp -> inner.b -> inner.c -> out; inner.a runs under the user's no_grad inside the
    # checkpointed module, frozen under a no_grad around its checkpoint: both unreachable.
    expect(report, "out", {1: 1}, (LOSS,))
    expect(report, "inner.c", {2: 1}, ("out",))
    expect(report, "inner.b", {3: 1}, ("inner.c",))
    expect(report, "inp", {4: 1}, ("inner.b",))
    expect_unreachable(report, "inner.a")
    expect_unreachable(report, "frozen")
    expect_network(
        report,
        layers=6,
        max_shortest=4,
        min_shortest=1,
        mean_shortest=2.5,
        longest=4,
        unreachable=("inner.a", "frozen"),
    )
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


def test_without_inputs_fx_reads_checkpoints_too() -> None:
    # No inputs: gradient flow from operation names and grad-mode markers; the same chain.
    report = gpa.analyze(Issue("reentrant"), tracer="fx")
    with_inputs = gpa.analyze(Issue("plain"), input_shape=IMG, tracer="fx")
    assert layer_records(report) == layer_records(with_inputs)


def test_the_watch_is_this_threads_alone() -> None:
    """While analyses read a checkpointed model, torch's own re-entrant checkpoint in
    another thread still runs its function without gradient."""
    inside: list[bool] = []
    done = threading.Event()

    def record(t: torch.Tensor) -> torch.Tensor:
        inside.append(torch.is_grad_enabled())
        return t * 2

    def other() -> None:
        x = torch.ones(2, requires_grad=True)
        while not done.is_set():
            checkpoint(record, x, use_reentrant=True)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        for tracer in ("fx", "export", "autograd"):
            gpa.analyze(Issue("reentrant"), input_shape=IMG, tracer=tracer)
    finally:
        done.set()
        thread.join()
    assert inside and not any(inside)


def test_a_trace_function_installed_before_keeps_its_events() -> None:
    """A debugger's or coverage's trace function sees the calls made under the watch,
    and is the thread's trace function again afterwards."""
    seen: list[bool] = []

    def function(t: torch.Tensor) -> torch.Tensor:
        return t * 2

    def previous(frame, event, arg):
        if event == "call" and frame.f_code is function.__code__:
            seen.append(torch.is_grad_enabled())

    sys.settrace(previous)
    try:
        with Checkpoints():
            checkpoint(function, torch.ones(2, requires_grad=True), use_reentrant=True)
        assert sys.gettrace() is previous
    finally:
        sys.settrace(None)
    assert seen == [True]  # seen, with the grad mode backward runs it in


class _NoGradStem(nn.Module):
    """The stem run under ``no_grad`` (a frozen feature extractor), then a re-entrant
    checkpoint of b1: given nothing that requires gradient, it passes none on."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Sequential(conv(), nn.ReLU(), conv())
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.stem(x)
        return self.fc(run_block(self.b1, h, "reentrant").mean((2, 3)))


@EVERY_TRACER
def test_a_checkpoint_given_a_layer_run_without_gradient_is_unfed(tracer: str) -> None:
    """fx took the stem's result for one requiring gradient because the stem has weights
    (found by an adversarial review); by hand and by a real backward: fc 1, the stem and
    b1 unreachable, noted."""
    model = _NoGradStem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "None of the inputs have requires_grad"
        report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
        check_reachability_with_autograd(report, model, torch.randn(IMG))
    expect(report, "fc", {1: 1}, (LOSS,))
    for name in ("stem", "b1.0", "b1.2"):
        expect_unreachable(report, name)
    assert any(UNFED in n for n in report.notes)


class _CheckpointedHead(nn.Module):
    """``b`` checkpointed on ``a``'s output, which requires gradient: nothing is cut."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.b, self.a(x), use_reentrant=True)


class _CheckpointedStem(_CheckpointedHead):
    """``a`` checkpointed on the model's input alone: cut (§1.7)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(checkpoint(self.a, x, use_reentrant=True))


@EVERY_TRACER
@pytest.mark.parametrize(("model", "expected"), [(_CheckpointedHead, 2), (_CheckpointedStem, None)])
def test_torchs_checkpoint_warning_is_not_passed_on_gpa_notes_a_cut_instead(
    tracer: str, model: type, expected: int | None
) -> None:
    """The fx frontend's own runs made torch warn "None of the inputs have
    requires_grad=True" where training would not (a checkpoint given a layer's output):
    the very words §1.7 quotes for a cut (found by a new user). By hand: ``b`` feeds the
    loss (1), ``a`` reaches it through ``b`` (2) unless its checkpoint is cut."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = gpa.analyze(model(), input_shape=(2, 4), tracer=tracer)
    assert [r.shortest for r in report.layers.values()] == [expected, 1]
    assert not [w for w in caught if "requires_grad=True" in str(w.message)]
    cut = [n for n in report.notes if "given no tensor that requires gradient" in n]
    assert len(cut) == (expected is None)


class _CheckpointedOffMeta(nn.Module):
    """A checkpoint given ``a``'s output and a mask the model makes on the CPU, which keeps
    it off the meta device: the autograd frontend runs it on real inputs after a failed
    meta attempt. ``cut``: the checkpoint is given the model's input instead."""

    def __init__(self, cut: bool) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.cut = cut

    def masked(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.b(h).masked_fill(~mask, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(2, 4, dtype=torch.bool)
        if self.cut:
            return self.c(checkpoint(self.masked, x, mask, use_reentrant=True) + self.a(x))
        return self.c(checkpoint(self.masked, self.a(x), mask, use_reentrant=True))


@pytest.mark.parametrize(
    ("cut", "expected"), [(False, {"a": 3, "b": 2, "c": 1}), (True, {"a": 2, "b": None, "c": 1})]
)
def test_a_failed_meta_attempts_checkpoints_are_no_checkpoints_of_the_run_read(
    cut: bool, expected: dict
) -> None:
    """The checkpoint the failed meta attempt ran was counted with the real run's, and,
    given nothing, noted as cutting the layers it runs (found by a new user). By hand:
    ``c`` feeds the loss (1), ``b`` through it (2), ``a`` through ``b`` (3); with the
    checkpoint given the input, ``b`` is cut and ``a`` reaches the loss through ``c`` (2)."""
    report = gpa.analyze(_CheckpointedOffMeta(cut), (torch.randn(2, 4),), tracer="autograd")
    assert any("cannot run on the meta device" in n for n in report.notes)
    assert {n: r.shortest for n, r in report.layers.items()} == expected
    cut_notes = [n for n in report.notes if "given no tensor that requires gradient" in n]
    assert len(cut_notes) == cut


class _AddsAFilter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.filterwarnings("ignore", "a filter of the model's own", UserWarning)
        return self.a(x)


def _filtered_messages() -> list[str]:
    return [f[1].pattern for f in warnings.filters if f[1] is not None]


def test_the_warning_filter_leaves_the_users_filters_as_they_are() -> None:
    """gpa's filter is gone after the analysis, whichever thread ran it (the whole list
    saved and restored per thread left it installed for good when analyses overlapped),
    and a filter the model's own code adds during the analysis stays (found by a review)."""
    before = list(warnings.filters)
    try:

        def analyse() -> None:
            gpa.analyze(nn.Sequential(*[nn.Linear(8, 8) for _ in range(20)]), input_shape=(1, 8))

        for _ in range(3):
            threads = [threading.Thread(target=analyse) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not [m for m in _filtered_messages() if "requires_grad" in m]
        gpa.analyze(_AddsAFilter(), input_shape=(1, 4), tracer="autograd")
        assert "a filter of the model's own" in _filtered_messages()
        assert not [m for m in _filtered_messages() if "requires_grad" in m]
    finally:
        warnings.filters[:] = before
