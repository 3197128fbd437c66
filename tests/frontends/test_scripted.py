"""TorchScript submodules of an eager model (issue 13, kind 4).

gpa cannot look inside compiled code, so a scripted (``torch.jit.script``) or traced
(``torch.jit.trace``) submodule is one call, like a leaf module: one layer when it contains
a layer module. fx keeps it whole, the autograd frontend watches its calls (TorchScript
modules take no hooks), and export, which cannot read it, refuses with a message naming
it, so that ``auto`` falls back. Expected values are derived by hand in the comments;
the conventions and helpers are in tests/semantics.py.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gpa
from gpa.cli import main
from gpa.errors import GpaError
from tests.frontends.every_tracer import layer_records
from tests.semantics import LOSS, check_reachability_with_autograd, expect, expect_unreachable

IMG = (1, 3, 8, 8)
READERS = pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.[a-z_]*` is deprecated")


class Block(nn.Module):
    """A residual block with two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(torch.relu(self.a(x)))


def scripted(kind: str) -> nn.Module:
    if kind == "traced":
        return torch.jit.trace(Block(), torch.zeros(1, 8, 8, 8))
    return torch.jit.script(Block())


class Net(nn.Module):
    """stem -> a TorchScript block (``calls`` times) -> pooling -> fc; an unused one."""

    def __init__(self, kind: str = "script", calls: int = 1) -> None:
        super().__init__()
        self.calls = calls
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = scripted(kind)
        self.spare = torch.jit.script(Block())  # never called
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for _ in range(self.calls):
            x = self.block(x)
        return self.fc(x.mean((2, 3)))


@READERS
@pytest.mark.parametrize("kind", ["script", "traced"])
def test_a_scripted_block_is_one_layer(kind: str, tracer: str) -> None:
    model = Net(kind)
    report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
    # block is one call (its residual is inside it): stem -> block -> fc, lengths 3, 2, 1.
    # It is named by its module and typed by the class it was compiled from.
    assert [(n, r.type) for n, r in report.layers.items()] == [
        ("stem", "Conv2d"),
        ("block", "Block"),
        ("fc", "Linear"),
        ("spare.a", "Conv2d"),
        ("spare.b", "Conv2d"),
    ]
    expect(report, "fc", {1: 1}, (LOSS,))
    expect(report, "block", {2: 1}, ("fc",))
    expect(report, "stem", {3: 1}, ("block",))
    # spare is never called: its layers are layers never called (calls 0, unreachable)
    expect_unreachable(report, "spare.a", calls=0)
    expect_unreachable(report, "spare.b", calls=0)
    assert report.layers["block"].params == sum(p.numel() for p in model.block.parameters())
    assert any("'block' is a TorchScript module (Block)" in n for n in report.notes)
    check_reachability_with_autograd(report, model, torch.randn(IMG))


@READERS
def test_a_scripted_block_used_twice(tracer: str) -> None:
    model = Net(calls=2)
    report = gpa.analyze(model, input_shape=IMG, tracer=tracer)
    # calls stem, block#1, block#2, fc. block#2 -> fc: 2; block#1 -> block#2 -> fc: 3;
    # merged {2: 1, 3: 1}, senders fc (of #2) and block itself (of #1). stem: 4.
    expect(report, "block", {2: 1, 3: 1}, ("block", "fc"), calls=2)
    expect(report, "stem", {4: 1}, ("block",))
    expect(report, "fc", {1: 1}, (LOSS,))
    check_reachability_with_autograd(report, model, torch.randn(IMG))


def test_without_inputs_fx_reads_it_too() -> None:
    assert layer_records(gpa.analyze(Net(), tracer="fx")) == layer_records(
        gpa.analyze(Net(), input_shape=IMG, tracer="fx")
    )


def test_a_scripted_module_without_layers_passes_gradient() -> None:
    model = nn.Sequential(nn.Linear(4, 4), torch.jit.script(nn.GELU()), nn.Linear(4, 2))
    for tracer in ("fx", "autograd"):
        report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
        # the scripted GELU is no layer: 0 -> 2, lengths 2 and 1
        assert list(report.layers) == ["0", "2"]
        expect(report, "0", {2: 1}, ("2",))


def test_export_names_the_scripted_module_and_what_helps() -> None:
    with pytest.raises(GpaError) as caught:
        gpa.analyze(Net(), input_shape=IMG, tracer="export")
    message = str(caught.value)
    assert message.startswith("torch.export cannot read 'block', a TorchScript module (Block)")
    assert "--tracer fx or autograd" in message
    assert "site-packages" not in message and "forward_1" not in message


class Branchy(Net):
    """fx cannot trace its data-dependent branch, export cannot read its scripted block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        if x.mean() > 0:  # a data-dependent branch: only autograd can follow it
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_auto_falls_back_to_autograd() -> None:
    report = gpa.analyze(Branchy(), torch.ones(IMG))
    assert report.tracer == "autograd"
    assert "export: torch.export cannot read 'block'" in report.notes[0]
    expect(report, "stem", {3: 1}, ("block",))


def test_a_scripted_model_is_refused_clearly() -> None:
    with pytest.raises(GpaError, match=r"^Net is a TorchScript module .* analyse the nn.Module"):
        gpa.analyze(torch.jit.script(Net()), input_shape=IMG)


def test_cli_exit_2_names_the_scripted_module() -> None:
    target = f"{__name__}:Net"
    args = ["analyze", target, "--input-shape", "1,3,8,8", "--tracer", "export"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2
    assert "'block', a TorchScript module (Block)" in result.stderr
    assert "Traceback" not in result.stderr
    result = CliRunner().invoke(main, args[:-2], catch_exceptions=False)  # auto: fx reads it
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("convention", ["torch", "darknet"])
def test_scripted_weight_layers_are_counted_as_their_eager_classes(convention: str) -> None:
    """A scripted convolution had no FLOPs ("not counted for layers of type Conv2d (only
    conv, … are)") and no darknet parameters (found by a new-user review). By hand, a 3×3
    conv 3 -> 4 on 8×8 (4·6·6 outputs of 3·3·3 multiply-adds) then a linear 6 -> 2 on
    1×4×6 rows (4·6·2 outputs of 6): FLOPs 2·(144·27) + 2·(48·6) = 7776 + 576 = 8352;
    parameters 112 + 14 (torch) or 108 + 12 (darknet: weights only)."""
    layers = [nn.Conv2d(3, 4, 3), nn.Linear(6, 2)]
    eager = nn.Sequential(*layers)
    scripted_model = nn.Sequential(*map(torch.jit.script, layers))
    for model in (eager, scripted_model):
        report = gpa.analyze(model, input_shape=(1, 3, 8, 8), count_convention=convention)
        assert report.network.flops == 8352
        assert report.network.params == (126 if convention == "torch" else 120)
        assert not [n for n in report.notes if "FLOPs were not counted" in n]
