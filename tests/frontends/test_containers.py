"""Modules held in torch's containers without ``forward`` (``nn.Module`` itself,
``nn.ModuleList``, ``nn.ModuleDict``), and models fx has traced already (a ``GraphModule``,
which holds the path to every module it calls in plain ``nn.Module`` containers: what
``torch.fx.symbolic_trace`` and torchvision's ``create_feature_extractor`` give).

Such a container is called never: the modules inside it are called one by one. Export
took one for a leaf of torch.nn and reported a ``GraphModule``'s ``block`` as one layer of
type ``Module`` (a traced ResNet-18: 6 layers instead of 21). Expected values by hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpa
from tests.frontends.every_tracer import EVERY_TRACER
from tests.semantics import LOSS, expect


class Net(nn.Module):
    """stem -> (stem + block(stem)) -> head; block = conv, ReLU, conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.block(x))


def _expect_net(report: gpa.Report, block: str) -> None:
    """head 1; block's second conv 2, its first 3; stem 2 (the sum) and 4 (through the
    block)."""
    assert sorted(report.layers) == sorted(["stem", f"{block}0", f"{block}2", "head"])
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, f"{block}2", {2: 1}, ("head",))
    expect(report, f"{block}0", {3: 1}, (f"{block}2",))
    expect(report, "stem", {2: 1, 4: 1}, ("head", f"{block}0"))


@EVERY_TRACER
def test_a_model_fx_traced_already(tracer: str) -> None:
    """``symbolic_trace(Net())``: its ``block`` is a plain ``nn.Module`` holding the convs."""
    traced = torch.fx.symbolic_trace(Net())
    assert type(traced.block) is nn.Module
    _expect_net(gpa.analyze(traced, input_shape=(1, 3, 8, 8), tracer=tracer), "block.")


class Held(nn.Module):
    """Net's layers held in an ``nn.Module``, an ``nn.ModuleList`` and an ``nn.ModuleDict``."""

    def __init__(self) -> None:
        super().__init__()
        net = Net()
        self.parts = nn.Module()
        self.parts.stem = net.stem
        self.block = nn.ModuleList([net.block[0], nn.ReLU(), net.block[2]])
        self.heads = nn.ModuleDict({"head": net.head})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.parts.stem(x)
        y = x
        for module in self.block:
            y = module(y)
        return self.heads["head"](x + y)


@EVERY_TRACER
def test_layers_held_in_containers_without_forward(tracer: str) -> None:
    report = gpa.analyze(Held(), input_shape=(1, 3, 8, 8), tracer=tracer)
    renamed = {"parts.stem": "stem", "heads.head": "head"}
    assert sorted(renamed.get(n, n) for n in report.layers) == sorted(
        ["stem", "block.0", "block.2", "head"]
    )
    expect(report, "heads.head", {1: 1}, (LOSS,))
    expect(report, "block.2", {2: 1}, ("heads.head",))
    expect(report, "block.0", {3: 1}, ("block.2",))
    expect(report, "parts.stem", {2: 1, 4: 1}, ("heads.head", "block.0"))


class Iterated(Net):
    """Net, its ``block`` (an ``nn.Sequential``) run module by module, never called whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = x
        for module in self.block:
            y = module(y)
        return self.head(x + y)


_NOT_CALLED = "leaf module(s) block never called as one call"


@EVERY_TRACER
@pytest.mark.parametrize("model", ["traced", "list", "iterated"])
def test_a_leaf_never_called_as_one_call_is_noted(tracer: str, model: str) -> None:
    """``--leaf block`` on a model that never calls ``block`` (a ``GraphModule``'s
    container, an ``nn.ModuleList``, an ``nn.Sequential`` iterated): there is no call to
    read as one, so its layers are read one by one — by hand as in ``Net`` — and a note
    says the leaf asked for was not read. Export made up a call of the ``GraphModule``'s
    container (``stem`` 3 instead of 2 and 4, ``block`` one layer); every frontend left
    the option unheeded without a word."""
    built = {"traced": lambda: torch.fx.symbolic_trace(Net()), "list": Held, "iterated": Iterated}
    report = gpa.analyze(
        built[model](), input_shape=(1, 3, 8, 8), tracer=tracer, leaf_modules=["block"]
    )
    assert {"block.0", "block.2"} <= set(report.layers)
    expect(report, "block.2", {2: 1}, ("heads.head" if model == "list" else "head",))
    expect(report, "block.0", {3: 1}, ("block.2",))
    assert sum(n.startswith(_NOT_CALLED) for n in report.notes) == 1


@EVERY_TRACER
def test_a_leaf_called_as_one_call_is_not_noted(tracer: str) -> None:
    """``Net`` calls ``block``: with ``--leaf block`` it is one layer (head 1, block 2,
    stem 2 and 3), and no note."""
    report = gpa.analyze(Net(), input_shape=(1, 3, 8, 8), tracer=tracer, leaf_modules=["block"])
    assert sorted(report.layers) == ["block", "head", "stem"]
    expect(report, "block", {2: 1}, ("head",))
    expect(report, "stem", {2: 1, 3: 1}, ("head", "block"))
    assert not any(n.startswith(_NOT_CALLED) for n in report.notes)
