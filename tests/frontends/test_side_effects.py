"""Analysing a model leaves no trace in it, in torch, or in another thread's analysis."""

from __future__ import annotations

import collections
import random
import threading
import types
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
import gpa.models
from gpa.errors import TraceError


class Constant(nn.Module):
    """Its forward makes a tensor constant, which fx stores on the traced root."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * torch.tensor([2.0])


class NoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.a(x)
        return self.b(y)


def test_the_users_model_is_not_modified() -> None:
    model = Constant()
    before = dict(vars(model))
    before_modules = dict(model._modules)
    for tracer in ("fx", "autograd"):
        gpa.analyze(model, input_shape=(1, 4), tracer=tracer)
    assert vars(model).keys() == before.keys()
    assert all(vars(model)[k] is v for k, v in before.items())
    assert dict(model._modules) == before_modules


def _tree(model: nn.Module) -> list[tuple[str, type, list, list, list, list]]:
    """Every module of ``model`` with the names and objects it holds."""
    return [
        (
            name,
            type(m),
            [(k, id(v)) for k, v in m._modules.items()],
            [(k, id(v)) for k, v in m._parameters.items()],
            [(k, id(v)) for k, v in m._buffers.items()],
            sorted(vars(m)),
        )
        for name, m in model.named_modules(remove_duplicate=False)
    ]


class Spare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.spare = nn.Conv2d(3, 4, 1), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


class Nested(nn.Module):
    """Layers called two and three levels down, two never called (one beside a called
    one), a tensor constant and a buffer read two levels down: what a GraphModule copies
    path by path."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Sequential(Spare(), nn.Conv2d(4, 4, 1))
        self.unused = nn.Sequential(nn.Linear(2, 2))
        self.stage[1].register_buffer("scale", torch.ones(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage(x) * self.stage[1].scale
        return y + torch.tensor([1.0])


@pytest.mark.parametrize(
    ("tracer", "channels"),
    [("fx", False), ("fx", True), ("export", False), ("export", True), ("autograd", False)],
)
def test_no_module_of_the_model_gains_or_loses_anything(tracer: str, channels: bool) -> None:
    model = Nested()
    before = _tree(model)
    report = gpa.analyze(model, input_shape=(1, 3, 4, 4), tracer=tracer, channels=channels)
    # (the analysis ran: the two convolutions, the linears never called)
    reachable = {name: r.reachable for name, r in report.layers.items()}
    assert reachable == {
        "stage.0.conv": True,
        "stage.1": True,
        "stage.0.spare": False,
        "unused.0": False,
    }
    assert _tree(model) == before


class Rewriting(nn.Module):
    """Its forward caches a value, replaces a buffer, deletes an attribute, registers a
    submodule anew (last in order) and, with ``swap``, swaps two buffers' names: what a
    model keeping state (RT-DETR's anchors) does."""

    def __init__(self, swap: bool) -> None:
        super().__init__()
        self.swap = swap
        self.fc = nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))
        self.register_buffer("offset", torch.zeros(4))
        self.note = "kept"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cache = x
        if self.swap:  # names and objects both: the same names and tensors, in another
            # order, each name holding the other's (torch.export keys buffers by name: no)
            first, second = self._buffers.pop("scale"), self._buffers.pop("offset")
            self.register_buffer("offset", first)
            self.register_buffer("scale", second)
        else:
            self.scale = self.scale * 2
        del self.note
        self.fc = self._modules.pop("fc")
        return self.fc(x) * self.offset + self.scale


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_what_forward_rewrites_is_restored(tracer: str) -> None:
    model = Rewriting(swap=tracer != "export")
    saved = [
        (m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules))
        for m in model.modules()
    ]
    report = gpa.analyze(model, input_shape=(1, 4), tracer=tracer)
    assert report.layers["fc"].shortest == 1  # hand-derived: one Linear feeding the loss
    for m, attributes, parameters, buffers, children in saved:
        for now, before in (
            (vars(m), attributes),
            (m._parameters, parameters),
            (m._buffers, buffers),
            (m._modules, children),
        ):
            assert list(now) == list(before)  # names, in their order
            assert all(now[k] is v for k, v in before.items())  # the same objects


class Capturing(nn.Module):
    """On its first call it hooks its block to capture the block's output, and notes that
    in a flag (as a Hugging Face model installs its output-capturing hooks); it also
    caches what it saw in a dict and a list, in place."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.seen: dict[str, torch.Tensor] = {}
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self, "_hooked", False):
            self.block.register_forward_hook(lambda m, a, out: self.captured.append(out))
            self._hooked = True
        self.captured: list[torch.Tensor] = []
        self.seen["x"] = x
        self.shapes.append(tuple(x.shape))
        h = self.block(x)
        (one,) = self.captured  # captured twice if hooked twice: it fails, as HF's did
        return self.head(one + h)


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_hooks_and_containers_forward_fills_in_place_are_restored(tracer: str) -> None:
    """SegFormer (Hugging Face) broke after an analysis: its first call had installed
    hooks and set a flag; gpa restored the flag, not the hooks, and the next call hooked
    twice. Every dict and list a module holds is now restored, hooks included."""
    model = Capturing()
    x = torch.randn(2, 4)
    expected = model.head(2 * model.block(x))  # by hand: the hook captures block(x)
    if tracer == "fx":  # fx runs no hooks: the capture is empty, the forward fails
        with pytest.raises(TraceError):
            gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    else:
        report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        # block -> head -> loss, twice (directly and through the hook's capture): 2; head 1
        assert (report.layers["block"].shortest, report.layers["head"].shortest) == (2, 1)
    assert len(model.block._forward_hooks) == 0
    assert (model.seen, model.shapes) == ({}, [])
    torch.testing.assert_close(model(x), expected)  # called as before: hooked once
    assert len(model.block._forward_hooks) == 1


def test_mixed_train_eval_flags_survive_every_tracer() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout())
    model[1].eval()
    for tracer in ("fx", "autograd"):
        gpa.analyze(model, input_shape=(2, 4), tracer=tracer, train=False)
        assert [m.training for m in model] == [True, False, True]


def test_grad_mode_switches_are_not_patched() -> None:
    real = (torch._C._set_grad_enabled, torch.inference_mode.__enter__, torch.no_grad.__enter__)
    seen = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch._C._set_grad_enabled is real[0])
            with torch.no_grad():
                x = x * 1
            return self.fc(x)

    report = gpa.analyze(Spy(), input_shape=(1, 4), tracer="fx")
    assert seen == [True]  # forward ran once under tracing, with torch's own switch
    assert report.layers["fc"].shortest == 1
    assert real == (
        torch._C._set_grad_enabled,
        torch.inference_mode.__enter__,
        torch.no_grad.__enter__,
    )
    assert torch.is_grad_enabled()


def test_a_failing_forward_gets_no_attributes_on_its_exception() -> None:
    error = ValueError("the model's own error")

    class Raises(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise error

    with pytest.raises(gpa.GpaError, match="the model's own error"):
        gpa.analyze(Raises(), input_shape=(1, 4), tracer="autograd")
    assert not [k for k in vars(error) if k.startswith("_gpa")]


def _records(report: gpa.Report) -> dict:
    return {n: (r.shortest, r.longest, r.num_paths, r.sources) for n, r in report.layers.items()}


def test_two_threads_analyse_at_once() -> None:
    """Concurrent analyses (both tracers, grad-mode regions, one model shared by two
    threads) give exactly the serial results."""
    resnet = gpa.models.build("resnet", blocks=3)
    jobs = [
        (resnet, {"input_shape": resnet.input_shape, "tracer": "fx"}),
        (resnet, {"input_shape": resnet.input_shape, "tracer": "autograd"}),
        (NoGrad(), {"input_shape": (1, 4), "tracer": "fx"}),
        (NoGrad(), {"input_shape": (1, 4), "tracer": "autograd"}),
    ]
    serial = [_records(gpa.analyze(m, **o)) for m, o in jobs]
    assert serial[2]["a"][0] is None and serial[2]["b"][0] == 1  # a only runs under no_grad
    found: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            model, options = jobs[i % len(jobs)]
            found.setdefault(i % len(jobs), []).append(_records(gpa.analyze(model, **options)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4 * len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, expected in enumerate(serial):
        assert found[i] == [expected] * 4
    assert torch.is_grad_enabled()


def test_libraries_beside_torch_are_model_code() -> None:
    """torchvision (and torchaudio …) live next to torch in site-packages with names that
    start like torch's directory: their files are model code, so calls they make have
    source lines (a prefix test without the separator took them for torch's own)."""
    import os

    import torch

    from gpa.frontends.frames import stack_trace_site

    beside = os.path.dirname(torch.__file__) + "vision/models/resnet.py"
    inside = os.path.join(os.path.dirname(torch.__file__), "nn", "modules", "conv.py")
    trace = f'  File "{beside}", line 7, in forward\n  File "{inside}", line 9, in forward\n'
    assert stack_trace_site(trace) == (beside, 7)


class Keeping(nn.Module):
    """Fills containers nested in its attributes, draws noise and reads a value (so that
    the autograd tracer runs it on real inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.cache = {"seen": []}
        self.counts: collections.defaultdict = collections.defaultdict(list)
        self.ids: set[int] = set()
        self.recent: collections.deque = collections.deque(maxlen=3)
        self.pair = ([],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.dropout(self.a(x), 0.5) + 0.01 * torch.randn_like(x)
        for kept in (self.cache["seen"], self.counts["h"], self.recent, self.pair[0]):
            kept.append(h)
        self.ids.add(len(self.ids))
        if bool(h.sum() > -1e9):  # a value read: real inputs under autograd
            pass
        return self.b(h)


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_nested_containers_and_random_states_are_kept(tracer: str) -> None:
    """What forward fills inside a cache (a list in a dict, a defaultdict's lists, a set, a
    deque, a list in a tuple) stayed filled — under fx with a proxy that a deepcopy of the
    cache then failed on — and the autograd tracer's real run moved torch's random state,
    changing what a seeded training step drew next."""
    model = Keeping()
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    try:
        gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    except TraceError:  # fx and export refuse the value read; autograd and auto read it
        assert tracer in ("fx", "export")
    assert model.cache == {"seen": []} and dict(model.counts) == {}
    assert (model.ids, list(model.recent), model.pair) == (set(), [], ([],))
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert (states[2] == np.random.get_state()[1]).all()


class Anchors(dict):
    """A cache class as models write them (``class Cache(dict): pass``)."""


class CachingDeeper(nn.Module):
    """Caches its anchors on first use in a dict subclass, and in a dict four levels down:
    the analysis left a proxy, a fake or a meta tensor there, and the next real forward
    failed (found by a review)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.anchors = Anchors()
        self.deep = {"a": {"b": {"c": {}}}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cache in (self.anchors, self.deep["a"]["b"]["c"]):
            if "grid" not in cache:
                cache["grid"] = torch.ones_like(x)
        return self.fc(x) * self.anchors["grid"] * self.deep["a"]["b"]["c"]["grid"]


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_caches_in_container_subclasses_and_deeper_are_kept(tracer: str) -> None:
    model = CachingDeeper()
    gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert model.anchors == {} and type(model.anchors) is Anchors
    assert model.deep == {"a": {"b": {"c": {}}}}
    x = torch.randn(2, 4)
    assert torch.equal(model(x), model.fc(x))  # the next real forward fills them anew


class Filling(nn.Module):
    """Fills containers that are empty before, one to six levels down (in dicts, lists and
    tuples), one held under two names, a list holding itself (with ``loop``: torch.export
    recurses into it without end), and containers already holding entries: most of what a
    module holds is empty (its hook dicts)."""

    def __init__(self, loop: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.deep = [{"a": ([{"b": []}],)}]  # the innermost list is six levels down
        self.queue, self.kinds = collections.deque(), set()
        self.alias = self.shared = []
        self.loop: list = []
        if loop:
            self.loop.append(self.loop)
        self.held = {"k": [1]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.deep[0]["a"][0][0]["b"].append(x)
        self.queue.append(x)
        self.kinds.add("seen")
        self.alias.append(x)
        self.loop.append(x)
        self.held["k"].append(2)
        self.held["new"] = x
        self.fc.register_forward_hook(lambda *args: None)
        return self.fc(x)


@pytest.mark.parametrize(("tracer", "loop"), [("fx", True), ("export", False), ("autograd", True)])
def test_containers_forward_fills_are_as_before_at_every_depth(tracer: str, loop: bool) -> None:
    model = Filling(loop)
    loop_held = model.loop
    gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert model.deep == [{"a": ([{"b": []}],)}]
    assert not model.queue and not model.kinds and not model.fc._forward_hooks
    assert model.alias == [] and model.alias is model.shared
    assert model.loop is loop_held and model.loop == ([model.loop] if loop else [])
    assert model.held == {"k": [1]}


class Counting(nn.Module):
    """Writes into its buffers in place while it runs: a step counter, a queue of keys (as
    MoCo keeps one), a flag filled once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("step", torch.zeros(()))
        self.register_buffer("queue", torch.zeros(4, 4))
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.step.add_(1)
        self.seen.fill_(1)
        h = self.fc(x)
        self.queue[:2] = h.detach()[:2]
        return h


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_what_forward_writes_into_buffers_in_place_is_not_kept(tracer: str) -> None:
    """§1.8: fx's trace ran ``self.step.add_(1)`` on the real buffer (a buffer is no proxy
    in symbolic tracing): each analysis advanced the counter."""
    model = Counting()
    for _ in range(2):
        report = gpa.analyze(model, (torch.ones(3, 4),), tracer=tracer)
    assert report.layers["fc"].shortest == 1  # hand-derived: one Linear feeding the loss
    assert (model.step.item(), model.seen.item(), model.queue.abs().sum().item()) == (0, 0, 0)


class MomentumTeacher(nn.Module):
    """A teacher updated from the student in forward (MoCo, BYOL, DINO, a mean teacher),
    ``how``: by assigning ``.data``, in place through ``.data``, in place on the parameter,
    by ``lerp_``, by ``load_state_dict``; then the teacher called under ``no_grad``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.student, self.teacher = nn.Linear(4, 4), nn.Linear(4, 4)
        self.how = how

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self.how == "load-state-dict":
                self.teacher.load_state_dict(self.student.state_dict())
            pairs = zip(self.student.parameters(), self.teacher.parameters(), strict=True)
            for ps, pt in pairs:
                if self.how == "assign":
                    pt.data = 0.5 * pt.data + 0.5 * ps.data
                elif self.how == "data-in-place":
                    pt.data.mul_(0.5).add_(ps.data, alpha=0.5)
                elif self.how == "in-place":
                    pt.mul_(0.5).add_(ps, alpha=0.5)
                elif self.how == "lerp":
                    pt.lerp_(ps, 0.5)
            target = self.teacher(x)
        return self.student(x), target


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
@pytest.mark.parametrize("how", ["assign", "data-in-place", "in-place", "lerp", "load-state-dict"])
def test_what_forward_writes_into_parameters_is_not_kept(how: str, tracer: str) -> None:
    """Found by a new user: §1.8, but fx's trace ran a momentum update on the real
    parameters (met as no proxies through ``parameters()``): each analysis moved the
    teacher's weights toward the student's. By hand: student 1 (an output), teacher called
    under ``no_grad`` unreachable; every weight as it was."""
    model = MomentumTeacher(how)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        report = gpa.analyze(model, (torch.ones(3, 4),), tracer=tracer)
    except TraceError:  # export refuses a tensor made from .data (a constant it cannot lift)
        assert tracer == "export"
    else:
        assert report.layers["student"].shortest == 1
        assert not report.layers["teacher"].reachable
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class WritesItsWeights(nn.Module):
    """A forward the meta device cannot run (it branches on a value), writing into its own
    weights in place: an embedding renormalising the rows it looks up (``max_norm``),
    WGAN's weight clipping, a copy, a write through ``.data``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.emb, self.l1, self.head = (
            nn.Embedding(10, 4, max_norm=1.0),
            nn.Linear(4, 4),
            nn.Linear(4, 2),
        )
        self.how = how
        with torch.no_grad():
            self.emb.weight.mul_(10)  # rows of norm well above max_norm
            self.l1.weight.mul_(10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.how == "clamp":
                self.l1.weight.clamp_(-0.1, 0.1)
            elif self.how == "copy":
                self.l1.weight.copy_(torch.zeros(4, 4))
            elif self.how == "data":
                self.l1.weight.data.mul_(0)
        h = self.l1(self.emb(ids).mean(1))
        if h.abs().sum() >= 0:  # a branch on a value: run on real tensors
            h = h * 2
        return self.head(h)


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
@pytest.mark.parametrize("how", ["max-norm", "clamp", "copy", "data"])
def test_what_a_real_run_writes_into_parameters_is_not_kept(how: str, tracer: str) -> None:
    """Found by a new user: §1.8, but the autograd frontend's run on real tensors, whose
    parameters share their storage, kept what forward wrote into them (every looked-up row
    of the embedding renormalised to norm 1). By hand: head 1, l1 2, emb 3; every weight as
    it was."""
    model = WritesItsWeights(how)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = gpa.analyze(model, (torch.tensor([[1, 2, 3]]),), tracer=tracer)
    assert report.tracer == "autograd"
    assert [report.layers[n].shortest for n in ("emb", "l1", "head")] == [3, 2, 1]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class HiddenTeacher(nn.Module):
    """A mean teacher held out of torch's sight (``where``: in a list, a dict, or set
    with ``object.__setattr__``), moved toward the student in forward and called under
    ``no_grad`` in train mode (its norm's statistics updated too)."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        teacher = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        with torch.no_grad():
            teacher[0].weight.fill_(3.0)
        if where == "list":
            self._ema = [teacher]
        elif where == "dict":
            self._ema = {"teacher": teacher}
        elif where == "tuple":
            self._ema = [(teacher,)]
        elif where == "helper":
            self._ema = types.SimpleNamespace(teacher=teacher)
        else:  # "attribute"
            object.__setattr__(self, "_ema", teacher)
        self.where = where

    def teacher(self) -> nn.Module:
        return {
            "list": lambda: self._ema[0],
            "dict": lambda: self._ema["teacher"],
            "tuple": lambda: self._ema[0][0],
            "helper": lambda: self._ema.teacher,
        }.get(self.where, lambda: self._ema)()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = self.teacher()
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), self.student.parameters(), strict=True):
                pt.mul_(0.5).add_(ps, alpha=0.5)
            target = teacher(x)
        return self.student(x), target


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
@pytest.mark.parametrize("where", ["list", "dict", "tuple", "helper", "attribute"])
def test_a_teacher_held_out_of_sight_is_not_changed(where: str, tracer: str) -> None:
    """Found in the survey of research code: a teacher the model holds in a plain list
    (so that ``parameters()`` leaves it out; or in a tuple in it, or an object's
    attribute: a review) was updated by every frontend's run of
    forward — its weights and its norm's statistics — and stayed so (§1.8). By hand: the
    student's linear, through its norm (no layer), reaches the loss in 1; the teacher is
    no module of the model's, and no layer."""
    model = HiddenTeacher(where)
    teacher = model.teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    try:
        report = gpa.analyze(model, input_shape=(3, 4), tracer=tracer)
    except TraceError:  # fx cannot call a module that is not a submodule
        assert tracer == "fx"
    else:
        assert list(report.layers) == ["student.0"]
        assert report.layers["student.0"].shortest == 1
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class ReadsItsParameters(nn.Module):
    """a -> [b, if ``b``'s weight, read through ``named_parameters()``, says so] -> head;
    and a table made where the parameters live, cached on a plain object."""

    def __init__(self, test: str) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.test = test
        if test == "class":
            self.b.weight = Tagged(self.b.weight.detach().clone())
        self.b.weight.use_me = True
        self.cache = types.SimpleNamespace(table=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dict(self.b.named_parameters())["weight"]
        use = {
            "device": lambda: w.device.type == "cpu",
            "class": lambda: isinstance(w, Tagged),
            "attribute": lambda: getattr(w, "use_me", False),
            "values": lambda: bool(w.data.abs().sum() > 0),
        }[self.test]()
        if self.cache.table is None:
            self.cache.table = torch.linspace(0, 1, 4, device=next(self.parameters()).device)
        y = self.a(x) + self.cache.table
        return self.head(self.b(y) if use else y)


class Tagged(nn.Parameter):
    """A parameter of a class of the model's own."""


@pytest.mark.parametrize("test", ["device", "class", "attribute", "values"])
def test_fx_reads_the_parameters_forward_meets_as_they_are(test: str) -> None:
    """A review of a first mend of the above: fx's trace held stand-ins of the
    parameters on the meta device, so forward reading one through ``named_parameters()``
    — where it lives, its class, an attribute set on it, its values — took the other
    branch (``b`` uncalled, a wrong path), and a table made on its device and cached on a
    plain object stayed on meta (the model's next real call failed). The trace now reads
    them as they are. By hand: a -> b -> head (3), b -> head (2), head 1; the model runs
    after the analysis."""
    model, x = ReadsItsParameters(test), torch.ones(3, 4)
    report = gpa.analyze(model, (x,), tracer="fx")
    assert {n: r.shortest for n, r in report.layers.items()} == {"a": 3, "b": 2, "head": 1}
    assert model.cache.table is None or model.cache.table.device.type == "cpu"
    assert model(x).shape == (3, 2)


class Proxied:
    """A transparent proxy (as ``wrapt.ObjectProxy`` is): it passes for what it wraps."""

    def __init__(self, wrapped: Any) -> None:
        object.__setattr__(self, "_wrapped", wrapped)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._wrapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def __iter__(self) -> Any:
        return iter(self._wrapped)

    def __len__(self) -> int:
        return len(self._wrapped)

    def __getitem__(self, key: Any) -> Any:
        return self._wrapped[key]


class Shared(nn.Module):
    """Holds one list eight times in each of three levels of lists, and a list inside a
    dict behind a transparent proxy; forward fills both."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.leaf: list = [1]
        self.grid = [[[self.leaf] * 8] * 8] * 8
        self.config = Proxied({"inner": [1]})  # the list is held there only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.leaf.append(x)
        self.config["inner"].append(x)
        return self.fc(x)


def test_a_container_held_many_times_is_copied_once() -> None:
    """By hand: the grid's three levels of lists, the leaf and the proxied dict's list hold
    entries, each copied once (the proxy itself is looked into, not copied)."""
    from gpa.frontends.state import _containers

    model = Shared()
    filled, _ = _containers(model)
    held = [id(c) for c, _ in filled if c is not model._modules and c is not model._parameters]
    assert len(held) == len(set(held))
    copied = {id(c) for c, _ in filled}
    assert {id(model.leaf), id(model.config["inner"]), id(model.grid)} <= copied
    assert {id(model.grid[0]), id(model.grid[0][0])} <= copied


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_lists_held_many_times_or_behind_a_proxy_are_as_before(tracer: str) -> None:
    model = Shared()
    gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert model.leaf == [1] and model.grid[7][7][7] is model.leaf
    assert model.config["inner"] == [1]


class Clashing(nn.Module):
    """A child (or parameter) named ``name``, as a ``GraphModule`` names an attribute of its
    own, between ``stem`` and ``head``: a convolution, one inside a Sequential, or a weight
    a functional convolution reads; called or not."""

    def __init__(self, name: str, kind: str, called: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        if kind == "parameter":
            setattr(self, name, nn.Parameter(torch.randn(4, 4, 1, 1)))
        else:
            conv = nn.Conv2d(4, 4, 1)
            setattr(self, name, nn.Sequential(conv) if kind == "sequential" else conv)
        self.head = nn.Conv2d(4, 2, 1)
        self.name, self.kind, self.called = name, kind, called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.called:
            held = getattr(self, self.name)
            x = F.conv2d(x, held) if self.kind == "parameter" else held(x)
        return self.head(x)


_CLASHES = ["code", "graph", "meta", "_code", "recompile", "print_readable"]


@pytest.mark.parametrize("kind", ["module", "sequential", "parameter"])
@pytest.mark.parametrize("name", _CLASHES)
def test_a_model_holding_a_name_a_graph_module_uses(name: str, kind: str) -> None:
    """By hand: head 1, the clashing layer 2, stem 3 (stem 2 when it is not called). fx's
    and torch.export's traced modules cannot hold a module or parameter under a name their
    class uses itself (fx's property or method is found first): where theirs would have to,
    fx and export refuse naming it (no bare error), and auto moves on to autograd, which
    reads it. An uncalled module fx's graph does not hold: fx reads the model."""
    # (a root parameter names its layer itself, docs/semantics.md §2)
    layer = f"{name}.0" if kind == "sequential" else name
    called = {"head": 1, layer: 2, "stem": 3}
    for tracer in ("fx", "export"):
        with pytest.raises(TraceError, match=f"'{name}") as refused:
            gpa.analyze(Clashing(name, kind, True), input_shape=(1, 3, 6, 6), tracer=tracer)
        assert "autograd frontend reads it" in str(refused.value)
    for tracer in ("autograd", "auto"):
        report = gpa.analyze(Clashing(name, kind, True), input_shape=(1, 3, 6, 6), tracer=tracer)
        assert _reached(report) == called, tracer
    report = gpa.analyze(Clashing(name, kind, False), input_shape=(1, 3, 6, 6), tracer="fx")
    assert _reached(report) == {"head": 1, "stem": 2}
    with pytest.raises(TraceError, match="no frontend that gives channel segments"):
        gpa.analyze(Clashing(name, kind, True), input_shape=(1, 3, 6, 6), channels=True)


class ShapeBranch(nn.Module):
    """``stem``, a convolution named ``name``, ``head``; forward branches on a shape, which
    fx cannot follow and export can."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        setattr(self, name, nn.Conv2d(4, 4, 1))
        self.head = nn.Conv2d(4, 2, 1)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.shape[-1] > 4:
            x = x * 2
        return self.head(getattr(self, self.name)(x))


@pytest.mark.parametrize("name", ["validate_inputs", "_in_spec", "_out_spec", "range_constraints"])
def test_a_model_holding_a_name_the_unlifted_module_uses(name: str) -> None:
    """By hand: head 1, the convolution 2, stem 3. torch.export's unlifted module uses more
    names than fx's GraphModule: export refuses naming the one it cannot hold (no bare
    error), and auto, past fx (the shape branch) and export, reads it with autograd."""
    with pytest.raises(TraceError, match=f"'{name}' is a name torch.export"):
        gpa.analyze(ShapeBranch(name), input_shape=(1, 3, 6, 6), tracer="export")
    report = gpa.analyze(ShapeBranch(name), input_shape=(1, 3, 6, 6))
    assert _reached(report) == {"head": 1, name: 2, "stem": 3}


class StatelessClash(nn.Module):
    """An activation named ``code`` and a tensor attribute named ``meta``, neither used."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.code = nn.ReLU()
        self.meta = torch.zeros(2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_names_a_graph_module_uses_held_but_unused(tracer: str) -> None:
    """By hand: head 1, stem 2. What neither graph holds clashes with nothing: every
    frontend reads the model."""
    report = gpa.analyze(StatelessClash(), input_shape=(1, 3, 6, 6), tracer=tracer)
    assert _reached(report) == {"head": 1, "stem": 2}


def _reached(report: gpa.Report) -> dict[str, int]:
    return {n: r.shortest for n, r in report.layers.items() if r.reachable}


class TiedIntoLeaf(nn.Module):
    """``a`` is one convolution also held inside ``x``, declared a leaf; ``x`` runs first."""

    def __init__(self, tied_first: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        conv = nn.Conv2d(4, 4, 1)
        if tied_first:
            self.a, self.x = conv, nn.Sequential(conv, nn.ReLU())
        else:
            self.x, self.a = nn.Sequential(conv, nn.ReLU()), conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(self.x(self.stem(x)))


@pytest.mark.parametrize("tied_first", [True, False])
def test_a_module_tied_into_a_leaf(tied_first: bool) -> None:
    """By hand: a 1, x (the leaf: its convolution) 2, stem 3. The convolution held as
    ``a`` and as ``x.0`` goes by its first name (``named_modules``'s), as a parameter two
    modules hold does (``docs/semantics.md`` §2); fx and autograd agree."""
    tied = "a" if tied_first else "x.0"
    for tracer in ("fx", "autograd"):
        report = gpa.analyze(
            TiedIntoLeaf(tied_first), input_shape=(1, 3, 6, 6), tracer=tracer, leaf_modules=["x"]
        )
        shortest = {name: r.shortest for name, r in report.layers.items() if r.reachable}
        assert shortest == {tied: 1, "x": 2, "stem": 3}, tracer


class _Unaskable:
    """An object whose attributes cannot be listed outside a context (werkzeug's
    ``LocalProxy`` outside a request): asking for ``__dict__`` raises RuntimeError."""

    @property
    def __dict__(self):  # type: ignore[override]
        raise RuntimeError("working outside of a request context")


class HoldsUnaskable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.context = _Unaskable()
        self.samples = types.SimpleNamespace(items=list(range(200_000)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
def test_the_search_for_modules_out_of_sight_asks_nothing_that_raises(tracer: str) -> None:
    """Found by a review: the search for modules held out of torch's sight asked every
    plain object for its attributes — one raising another error than AttributeError
    crashed every frontend — and walked a dataset-like attribute's every item. By hand:
    a -> loss (1)."""
    report = gpa.analyze(HoldsUnaskable(), input_shape=(2, 4), tracer=tracer)
    assert report.layers["a"].shortest == 1
