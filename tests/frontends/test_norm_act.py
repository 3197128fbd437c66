"""Norm-activation modules kept whole by the fx tracer (``gpa.frontends.fx.norm_act``).

A subclass of ``nn.BatchNorm2d`` that runs batch norm then activations (timm's
``BatchNormAct2d``, written anew here) is recorded as one call once the first call of its
kind is judged — records must not change: every report is held against the export and
autograd frontends, which never keep a module whole, and against hand-derived paths. Each
way a ``forward`` can be more than a norm and activations (gradient stopped, channels
moved, shape changed, the input written, a value kept for a later reader, another module's
tensor read) is a kind the tracer must trace into; each is shown to change a record had it
been kept whole (``leaf_modules=`` forces that), so the comparison can tell.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from gpa.core.graph import LOSS
from gpa.errors import TraceError
from gpa.frontends.fx import fx_gradient_graph
from gpa.options import AnalysisOptions
from tests.semantics import expect

SHAPE = (2, 3, 8, 8)


class BatchNormAct(nn.BatchNorm2d):
    """Batch norm, then a dropout and an activation: an assertion on the input's rank, the
    batches counted in train mode, ``F.batch_norm`` on the module's own tensors."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = act()

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, "expected a 4D input")
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))


class Block(nn.Module):
    """Two branches of conv + norm-act, added, then concatenated with the input and mixed."""

    def __init__(self, c: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 1)
        self.bn_a = norm(c)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.bn_b = norm(c)
        self.mix = nn.Conv2d(2 * c, c, 1)
        self.bn_mix = BatchNormAct(c, nn.LeakyReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_a(self.a(x)) + self.bn_b(self.b(x))
        return self.bn_mix(self.mix(torch.cat([y, x], 1)))


class Net(nn.Module):
    """A stem and three blocks: several norm-act modules of each kind."""

    def __init__(self, norm: type[nn.Module] = BatchNormAct) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = BatchNormAct(4)
        self.blocks = nn.Sequential(*(Block(4, norm) for _ in range(3)))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.bn(self.stem(x))))


def _record(report: gpa.Report) -> dict:
    """The report's JSON without what names the frontend."""
    data = json.loads(report.to_json())
    for key in ("tracer", "options", "notes"):
        data.pop(key, None)
    return data


def _kept_whole(model: nn.Module, **options) -> list[str]:
    """The modules the fx graph calls as single calls that fx's own policy traces into."""
    graph = fx_gradient_graph(model, AnalysisOptions(input_shape=SHAPE, **options))
    return [
        str(n.target)
        for n in graph.traced.graph.nodes
        if n.op == "call_module" and isinstance(graph.traced.get_submodule(n.target), BatchNormAct)
    ]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_later_calls_of_a_kind_are_kept_whole(train):
    # kinds: BatchNormAct(4) with ReLU (stem's and the branches'), with LeakyReLU (mixes)
    kept = _kept_whole(Net(), train=train)
    first = {"bn", "blocks.0.bn_mix"}  # the first call of each kind is traced into
    every = {"bn"} | {f"blocks.{i}.{n}" for i in range(3) for n in ("bn_a", "bn_b", "bn_mix")}
    assert sorted(kept) == sorted(every - first)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_records_equal_those_of_export(train, channels):
    model = Net()
    options = dict(input_shape=SHAPE, train=train, channels=channels)
    fx_report = gpa.analyze(model, tracer="fx", **options)
    assert _record(fx_report) == _record(gpa.analyze(model, tracer="export", **options))


def test_records_equal_those_of_autograd():
    model = Net()
    fx_report = gpa.analyze(model, tracer="fx", input_shape=SHAPE)
    assert _record(fx_report) == _record(gpa.analyze(model, tracer="autograd", input_shape=SHAPE))


def _segments(report: gpa.Report, name: str) -> list[tuple]:
    return [
        (s.start, s.stop, *((x.sender, x.channels, x.group) for x in s.sources))
        for s in report.layers[name].segments
    ]


def test_paths_and_channels_through_kept_modules_by_hand():
    # conv, norm-act, depthwise conv, norm-act, conv in two groups: the second norm-act is
    # kept whole; through each norm a channel stays at its position, so each channel of
    # "0" reaches its own group of "2", and "2"'s halves reach "4"'s two groups
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        BatchNormAct(4),
        nn.Conv2d(4, 4, 1, groups=4),
        BatchNormAct(4),
        nn.Conv2d(4, 4, 1, groups=2),
    )
    assert _kept_whole(model) == ["3"]
    report = gpa.analyze(model, input_shape=SHAPE, channels=True)
    expect(report, "4", {1: 1}, (LOSS,))
    expect(report, "2", {2: 1}, ("4",))
    expect(report, "0", {3: 1}, ("2",))
    assert _segments(report, "0") == [(c, c + 1, ("2", (c, c + 1), (c,))) for c in range(4)]
    assert _segments(report, "2") == [(0, 2, ("4", (0, 2), (0,))), (2, 4, ("4", (2, 4), (1,)))]


# ------------------------------------------------------- kinds traced into


class NoGradAct(BatchNormAct):
    """The activation under ``no_grad``: no gradient reaches the layers before."""

    def forward(self, x):
        x = self.norm(x)
        with torch.no_grad():
            return self.act(x)


class Detached(BatchNormAct):
    def forward(self, x):
        return self.act(self.norm(x)).detach()


class Flipped(BatchNormAct):
    """Channels in reverse order after the norm."""

    def forward(self, x):
        return self.act(self.norm(x)).flip(1)


class Pooled(BatchNormAct):
    """A smaller result than its input."""

    def forward(self, x):
        return F.max_pool2d(self.act(self.norm(x)), 2)


class Halved(BatchNormAct):
    """Half the channels carry no gradient."""

    def forward(self, x):
        x = self.norm(x)
        return torch.cat([self.act(x[:, :2]), x[:, 2:].detach()], 1)


class ZeroesItsInput(BatchNormAct):
    """Zeroes its input in place before the norm: the caller's tensor loses its gradient."""

    def forward(self, x):
        return self.act(self.norm(x.zero_()))


class KeepsAValue(BatchNormAct):
    """Keeps the value before the activation for the caller to read."""

    def forward(self, x):
        self.before = self.norm(x)
        return self.act(self.before)


class ReadsAnotherModule(BatchNormAct):
    """Convolves with the weight of a module that is not its child (``peer``, set by the
    model): a call of that layer."""

    def forward(self, x):
        y = self.act(self.norm(x))
        return y + F.conv2d(y, self.peer.weight).mean(1, keepdim=True)


class Chain(nn.Module):
    """stem, norm, c1, norm, c2, and ``side`` reading the value the second norm keeps."""

    def __init__(self, norm: type[BatchNormAct]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.n0 = norm(4)
        self.c1 = nn.Conv2d(4, 4, 1)
        self.n1 = norm(4)
        self.c2 = nn.Conv2d(4, 2, 1)
        self.side = nn.Conv2d(4, 2, 1)
        for n in (self.n0, self.n1):
            n.__dict__["peer"] = self.side  # read by ReadsAnotherModule, not a child

    def forward(self, x):
        z = self.c1(self.n0(self.stem(x)))
        out = self.c2(self.n1(z)).sum((2, 3))  # any size (Pooled's)
        kept = self.n1.__dict__.get("before")
        return out if kept is None else out + self.side(kept).sum((2, 3))


ODD = [
    NoGradAct, Detached, Flipped, Pooled, Halved, ZeroesItsInput, KeepsAValue, ReadsAnotherModule
]  # fmt: skip


@pytest.mark.parametrize("norm", ODD, ids=lambda c: c.__name__)
def test_other_forwards_are_traced_into(norm):
    assert _kept_whole(Chain(norm)) == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The tensor attributes")  # export on KeepsAValue
@pytest.mark.parametrize("norm", ODD, ids=lambda c: c.__name__)
def test_other_forwards_give_the_records_of_export(norm):
    model = Chain(norm)
    options = dict(input_shape=SHAPE, channels=True)
    fx_report = gpa.analyze(model, tracer="fx", **options)
    export_report = gpa.analyze(model, tracer="export", **options)
    assert _record(fx_report) == _record(export_report)
    # had the tracer kept the second one whole, a record would differ: the test can tell
    if norm is KeepsAValue:  # side's input is kept only inside n1: fx's trace would leave
        # it uncalled, and the run calls it (docs/semantics.md §1.1): fx refuses
        with pytest.raises(TraceError, match="'side' is called when it runs"):
            gpa.analyze(model, tracer="fx", leaf_modules=["n1"], **options)
        return
    whole = gpa.analyze(model, tracer="fx", leaf_modules=["n1"], **options)
    assert _record(whole) != _record(export_report)


# ------------------------------------- state the call shares with its caller (the review)

SWITCH = {"detach": False}


class Collects(BatchNormAct):
    """Appends its result to a list it shares with the model (features for an extra loss)."""

    def __init__(self, channels: int, store: list) -> None:
        super().__init__(channels)
        self.store = store

    def forward(self, x):
        y = super().forward(x)
        self.store.append(y)
        return y


class Switched(BatchNormAct):
    """Reads a global switch the model turns on around one call."""

    def forward(self, x):
        return super().forward(x.detach() if SWITCH["detach"] else x)


class KeepsOnChild(BatchNormAct):
    """Keeps its result on its activation module for the model to read."""

    def forward(self, x):
        y = super().forward(x)
        self.act.kept = y
        return y


class Shares(nn.Module):
    """Three convolutions, each followed by one of three norm-acts of one kind, and an
    extra head reading what the norm-acts share."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.features: list = []
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 4, 4, 1) for i in range(3))
        if case == "collects":
            norms = [Collects(4, self.features) for _ in range(3)]
        else:
            norms = [(Switched if case == "switched" else KeepsOnChild)(4) for _ in range(3)]
        self.norms = nn.ModuleList(norms)
        self.extra = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        self.features.clear()
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if self.case == "switched" and i == 2:
                SWITCH["detach"] = True
                try:
                    x = norm(conv(x))
                finally:
                    SWITCH["detach"] = False
            else:
                x = norm(conv(x))
        if self.case == "collects":
            return x + self.extra(sum(self.features))
        if self.case == "keeps-on-child":
            return x + self.extra(self.norms[1].act.kept)
        return x


@pytest.mark.slow
@pytest.mark.parametrize("case", ["collects", "switched", "keeps-on-child"])
def test_state_shared_with_the_caller_keeps_calls_traced_into(case):
    model = Shares(case)
    assert _kept_whole(model) == []
    fx_report = gpa.analyze(model, input_shape=SHAPE, tracer="fx")
    assert _record(fx_report) == _record(gpa.analyze(model, input_shape=SHAPE, tracer="export"))
