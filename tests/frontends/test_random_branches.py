"""A forward that branches on random numbers (LayerDrop) is refused, not read as one of
its random architectures; random noise without a branch is read as before.

fx runs a model's Python on concrete values while it traces, and the autograd tracer on real
ones: ``if self.training and torch.rand([]) < p: continue`` skipped layers at random, and
fx reported them unreachable — a different answer at each call, in train mode (the
default). Export refuses such a branch itself (a data-dependent guard).

Hand derivation (eval mode, every block runs): ``x + l0(x)``, then ``+ l1``, ``+ l2``,
then ``head``: head 1; l2 -> head 2; l1 -> head around l2 (2) or through it (3); l0:
2, 3 (twice: through l1 or l2) and 4.
"""

from __future__ import annotations

import random
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from gpa.errors import TraceError
from gpa.frontends.randomness import PYTHON_DRAWS_NOTE
from tests.frontends.every_tracer import EVERY_TRACER
from tests.semantics import LOSS, expect

# Each decides from random numbers whether to skip a block.
DROPS = {
    "rand": lambda p: bool(torch.rand([]) < p),
    "bernoulli": lambda p: torch.bernoulli(torch.tensor(p)).item() == 1,
    "uniform_": lambda p: float(torch.empty(()).uniform_()) < p,
    "randint": lambda p: int(torch.randint(0, 2, ())) == 1,
    "fairseq": lambda p: bool(torch.empty(3).uniform_()[1] < p),  # LayerDropModuleList
    "poisson": lambda p: bool(torch.poisson(torch.tensor(p)) > 0),
    "dropout": lambda p: bool(F.dropout(torch.ones(()), p) > 0),
}
# Drawn where no torch function shows it: noted, not refused (a SpecAugment mask draws so).
PYTHON_DROPS = {
    "numpy": lambda p: bool(np.random.uniform(0, 1) < p),  # Wav2Vec2's adapter
    "python": lambda p: random.random() < p,  # MusicGen's
}


class LayerDrop(nn.Module):
    def __init__(self, how: str, p: float = 0.5) -> None:
        super().__init__()
        self.how, self.p = how, p
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.training and {**DROPS, **PYTHON_DROPS}[self.how](self.p):
                continue
            x = x + block(x)
        return self.head(x)


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
@pytest.mark.parametrize("how", list(DROPS))
def test_a_layer_drop_in_training_is_refused(how: str, tracer: str) -> None:
    with pytest.raises(TraceError, match="branches on random numbers .*test_random_branches"):
        gpa.analyze(LayerDrop(how), input_shape=(2, 4), tracer=tracer)


class ConfiguredLayerDrop(LayerDrop):
    """A Hugging Face model's layer drop: its probability in ``config`` (Wav2Vec2, HuBERT:
    ``layerdrop`` 0.1 by default)."""

    def __init__(self) -> None:
        super().__init__("rand", 0.1)
        self.config = types.SimpleNamespace(layerdrop=0.1, encoder_layerdrop=0.0, hidden=4)


def test_a_configured_layer_drop_says_which_setting_to_zero() -> None:
    """Found by a new user (Wav2Vec2 in train mode): the refusal said what to do in
    general; it now names the configuration's layer drop and the ``-k`` that turns it
    off. In eval mode every block runs (see test_in_eval_mode_every_block_runs)."""
    with pytest.raises(TraceError) as refused:
        gpa.analyze(ConfiguredLayerDrop(), input_shape=(2, 4), tracer="autograd")
    said = str(refused.value)
    assert "(its configuration's layerdrop=0.1: -k layerdrop=0 for a transformers: target)" in said
    assert "encoder_layerdrop" not in said  # (0: no draw)


def _expect_every_block(report: gpa.Report) -> None:
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "blocks.2", {2: 1}, ("head",))
    expect(report, "blocks.1", {2: 1, 3: 1}, ("blocks.2", "head"))
    expect(report, "blocks.0", {2: 1, 3: 2, 4: 1}, ("blocks.1", "blocks.2", "head"))


@EVERY_TRACER
@pytest.mark.parametrize("how", [*DROPS, *PYTHON_DROPS])
def test_in_eval_mode_every_block_runs(how: str, tracer: str) -> None:
    _expect_every_block(gpa.analyze(LayerDrop(how), input_shape=(2, 4), tracer=tracer, train=False))


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
@pytest.mark.parametrize("how", ["rand", "fairseq"])
def test_a_layer_drop_turned_off_is_read(how: str, tracer: str) -> None:
    """Hugging Face's BART and Whisper draw in training whatever their drop probability:
    ``torch.rand([]) < 0.0`` has one outcome (fairseq's ``probs[i] < 0.0`` too), every
    block runs."""
    _expect_every_block(gpa.analyze(LayerDrop(how, p=0.0), input_shape=(2, 4), tracer=tracer))


class Noisy(nn.Module):
    """Random noise that decides nothing: dropout, a drop-path mask, added noise."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            keep = x.new_empty(x.shape[0], 1).bernoulli_(0.5) / 0.5  # timm's drop path
            x = x + F.dropout(block(x), 0.1) * keep + 0.01 * torch.randn_like(x)
        return self.head(x)


@EVERY_TRACER
def test_random_noise_without_a_branch_is_read(tracer: str) -> None:
    _expect_every_block(gpa.analyze(Noisy(), input_shape=(2, 4), tracer=tracer))


class Checked(nn.Module):
    """Noise joined to the data, then a check on the data: a branch on the data, which the
    autograd tracer reads for these inputs (``how``: noise added, a VAE's sample, a
    drop-path mask)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.how == "noise":
            h = h + 0.1 * torch.randn_like(h)
        elif self.how == "sample":
            h = h + torch.randn_like(h) * torch.exp(0.5 * self.b(x))
        else:  # "drop_path"
            h = h * (x.new_empty(x.shape[0], 1).bernoulli_(0.9) / 0.9)
        assert torch.isfinite(h).all() and float(h.abs().max()) >= 0
        return self.c(h)


@pytest.mark.parametrize("how", ["noise", "sample", "drop_path"])
def test_noise_joined_to_the_data_then_checked_is_read(how: str) -> None:
    """fx and export refuse the check itself (a branch on values); auto reads it with
    autograd, as before the random branches were watched. By hand: a -> c -> loss (2),
    c (1); with the VAE's sample, b -> (the noise's scale) -> c (2)."""
    report = gpa.analyze(Checked(how), input_shape=(2, 4))
    assert report.tracer == "autograd"
    reached = {n: (r.shortest, r.longest) for n, r in report.layers.items() if r.reachable}
    expected = {"a": (2, 2), "c": (1, 1)} | ({"b": (2, 2)} if how == "sample" else {})
    assert reached == expected


@EVERY_TRACER
@pytest.mark.parametrize("how", list(PYTHON_DROPS))
def test_draws_from_python_or_numpy_are_noted(how: str, tracer: str) -> None:
    """Export baked them in as constants, fx and autograd read whichever blocks ran: a
    note says the report may be one draw (they may as well mask data, as Wav2Vec2's
    SpecAugment does, which is no reason to refuse). Eval mode draws nothing."""
    report = gpa.analyze(LayerDrop(how), input_shape=(2, 4), tracer=tracer)
    assert PYTHON_DRAWS_NOTE in report.notes
    evaluated = gpa.analyze(LayerDrop(how), input_shape=(2, 4), tracer=tracer, train=False)
    assert PYTHON_DRAWS_NOTE not in evaluated.notes
    _expect_every_block(evaluated)


class OneSizeDrawn(nn.Module):
    """torchvision's detection transform in training: a size drawn among its sizes
    (``torch_choice``), drawn even when there is one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.sizes = nn.Conv2d(3, 4, 3), nn.Linear(4, 2), (16,)

    def choice(self, sizes):
        return sizes[int(torch.empty(1).uniform_(0.0, float(len(sizes))).item())]

    def forward(self, x):
        s = self.choice(self.sizes)
        x = F.interpolate(x, size=(s, s))
        return self.fc(self.conv(x).mean((2, 3)))


def test_a_choice_among_one_value_says_how_to_fix_it() -> None:
    """Found by a survey: torchvision's detection models in training were refused with
    "set the drop probability to 0 (one choice left)", which cannot be done there. The
    message says what can; done, the model is read (by hand: fc 1, conv 2)."""
    model, x = OneSizeDrawn(), torch.randn(1, 3, 20, 20)
    with pytest.raises(TraceError, match=r"torch_choice = lambda sizes: sizes\[0\]"):
        gpa.analyze(model, (x,), tracer="autograd")
    model.choice = lambda sizes: sizes[0]
    report = gpa.analyze(model, (x,), tracer="autograd")
    assert (report.layers["fc"].shortest, report.layers["conv"].shortest) == (1, 2)
