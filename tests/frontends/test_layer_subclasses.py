"""Subclasses of layer types defined outside torch.nn are one layer per call (semantics §2),
under every frontend, whatever their forward does inside.

Whisper's positional embedding subclasses nn.Embedding and indexes its weight instead of
calling F.embedding; a LoRA linear subclasses nn.Linear and adds two small linears of its
own; a weight-standardised convolution computes its weight before F.conv2d. Each is a
layer module: each call is one layer, its submodules are part of the call. Expected values
by hand in the comments; reachability is checked against a real backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gpa
from tests.frontends.every_tracer import EVERY_TRACER
from tests.semantics import LOSS, check_reachability_with_autograd, expect


class Positional(nn.Embedding):
    """Whisper's WhisperPositionalEmbedding in short: the first n rows of the weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight[: x.shape[1]]


class LoRALinear(nn.Linear):
    def __init__(self, d: int) -> None:
        super().__init__(d, d)
        self.lora_a, self.lora_b = nn.Linear(d, 2, bias=False), nn.Linear(2, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.lora_b(self.lora_a(x))


class StdConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Net(nn.Module):
    """x -> stem (StdConv) -> pool -> (+ pos) -> proj (LoRALinear) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = StdConv(3, 8, 3, padding=1)
        self.pos = Positional(4, 8)
        self.proj = LoRALinear(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).flatten(2).transpose(1, 2)[:, :4]  # (n, 4 tokens, 8)
        h = h + self.pos(h)
        return self.head(self.proj(h))


@EVERY_TRACER
def test_layer_subclasses_are_one_layer_each(tracer) -> None:
    model, x = Net(), torch.randn(1, 3, 4, 4)
    report = gpa.analyze(model, x, tracer=tracer)
    check_reachability_with_autograd(report, model, x)
    # four layers, lora_a / lora_b inside proj's call; pos is called (one call)
    assert list(report.layers) == ["stem", "pos", "proj", "head"]
    assert [r.type for r in report.layers.values()] == [
        "StdConv",
        "Positional",
        "LoRALinear",
        "Linear",
    ]
    # head 1; proj 2; stem and pos both feed the add before proj: 3
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "proj", {2: 1}, ("head",))
    expect(report, "stem", {3: 1}, ("proj",))
    expect(report, "pos", {3: 1}, ("proj",))
