"""Channel segments of layers whose module comes from outside ``torch.nn`` (docs/semantics.md §8).

The export frontend cannot hand such a call back as its module (its forward may be anything):
it keeps the call's ATen operations as one fused call. Its channel axis and groups are still
the module's — a convolution's channels on axis 1, a depthwise one's in groups of one — as
under fx, which calls the module itself. timm's ``Conv2dSame`` (every ``tf_*`` model: pads
by the input's size, then convolves) and NFNet's weight-standardised convolutions are such
layers; the export frontend used to read their channels off the last axis (a spatial size:
a 4-channel stem got one segment 0..5) and their groups as 1.

A leaf module is one layer: it mixes its channels (its ``groups``, if it has one, may
count a shuffle's groups or heads); a leaf returning tokens (B, N, C) after its
convolution has its channels on the last axis, not on axis 1.

Expected segments are derived by hand: a layer feeding a depthwise convolution has one
segment per channel, each sent back by that channel of the depthwise layer only.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa


class SameConv2d(nn.Conv2d):
    """TensorFlow's "same" padding: padded by the input's size, then convolved (timm's
    ``Conv2dSame``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s, d in zip(
            x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads = [total // 2, total - total // 2, *pads]
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StdConv1d(nn.Conv1d):
    """A weight-standardised convolution (as NFNet's and BiT's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2), keepdim=True)) / (w.std((1, 2), keepdim=True) + 1e-5)
        return F.conv1d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledLinear(nn.Linear):
    """A linear layer whose weight is scaled per output feature in forward."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.scale = nn.Parameter(torch.ones(n_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class Depthwise(nn.Module):
    """A user's block, declared a leaf: one layer call holding a depthwise convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class ShuffleUnit(nn.Module):
    """A leaf whose ``groups`` is its shuffle's, around a dense convolution (every output
    channel reads every input channel): no grouping of the layer's channels."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.conv(x).view(b, self.groups, c // self.groups, h, w)
        return y.transpose(1, 2).reshape(b, c, h, w)


class Heads(nn.Module):
    """A leaf keeping a head count as ``groups`` that divides no channel count it has."""

    def __init__(self) -> None:
        super().__init__()
        self.groups = 3
        self.conv = nn.Conv2d(10, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PatchEmbed(nn.Module):
    """A leaf returning tokens (B, N, C) after its convolution, as a ViT's patch embedding."""

    def __init__(self, n_in: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(n_in, width, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Chain(nn.Module):
    """``head(mid(first(x)))``, with ``between`` applied to ``first``'s result."""

    def __init__(self, first: nn.Module, mid: nn.Module, head: nn.Module, between=None) -> None:
        super().__init__()
        self.first, self.mid, self.head = first, mid, head
        self.between = between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        if self.between is not None:
            y = self.between(y)
        return self.head(self.mid(y))


def _per_channel(n: int) -> list[tuple[int, int, str, tuple[int, int]]]:
    """n one-channel segments, channel c sent back by channel c of ``mid`` only."""
    return [(c, c + 1, "mid", (c, c + 1)) for c in range(n)]


# name -> (model, input shape, options, first's segments as (start, stop, sender, channels))
CASES = {
    # 9×9 input: 5×5 after the stem, 3×3 after the depthwise layer (sizes no channel count has)
    "same-padding-depthwise": (
        lambda: Chain(
            SameConv2d(3, 4, 3, stride=2),
            SameConv2d(4, 4, 3, stride=2, groups=4),
            nn.Conv2d(4, 2, 1),
        ),
        (1, 3, 9, 9),
        {},
        _per_channel(4),
    ),
    "weight-standardised-1d": (
        lambda: Chain(
            StdConv1d(3, 4, 3),
            StdConv1d(4, 4, 3, padding=1, groups=4),
            nn.Conv1d(4, 2, 1),
        ),
        (1, 3, 7),
        {},
        _per_channel(4),
    ),
    # as one layer the leaf mixes its channels (it has no groups of its own): every stem
    # channel is sent back by every channel of it, under both frontends
    "leaf-holding-a-depthwise-conv": (
        lambda: Chain(nn.Conv2d(3, 4, 3, stride=2), Depthwise(4), nn.Conv2d(4, 2, 1)),
        (1, 3, 11, 11),
        {"leaf_modules": ["mid"]},
        [(0, 4, "mid", (0, 4))],
    ),
    # as one layer the leaf mixes its channels, whatever its ``groups`` (a shuffle's) says
    "leaf-with-a-shuffles-groups": (
        lambda: Chain(nn.Conv2d(3, 4, 1), ShuffleUnit(4, 2), nn.Conv2d(4, 2, 1)),
        (1, 3, 5, 5),
        {"leaf_modules": [ShuffleUnit]},
        [(0, 4, "mid", (0, 4))],
    ),
    "leaf-with-a-head-count-as-groups": (
        lambda: Chain(nn.Conv2d(3, 10, 1), Heads(), nn.Conv2d(4, 2, 1)),
        (1, 3, 5, 5),
        {"leaf_modules": ["mid"]},
        [(0, 10, "mid", (0, 10))],
    ),
    # mid's 6 channels on the last axis, after 16 tokens (an 8×8 input in 2×2 patches)
    "leaf-returning-tokens": (
        lambda: Chain(nn.Conv2d(3, 4, 1), PatchEmbed(4, 6), nn.Linear(6, 2)),
        (1, 3, 8, 8),
        {"leaf_modules": [PatchEmbed]},
        [(0, 4, "mid", (0, 4))],
    ),
    # tokens × features: half the features read by mid, the other half by none
    "scaled-linear-sliced": (
        lambda: Chain(
            ScaledLinear(3, 4), nn.Linear(2, 3), nn.Linear(3, 2), between=lambda y: y[..., :2]
        ),
        (1, 5, 3),
        {},
        [(0, 2, "mid", (0, 2)), (2, 4, None, None)],
    ),
}


def _first_segments(report) -> list[tuple]:
    record = report.layers["first"]
    out = []
    for g in record.segments:
        (source,) = g.sources or (None,)
        out.append(
            (g.start, g.stop, getattr(source, "sender", None), getattr(source, "channels", None))
        )
    return out


def _channel_records(report) -> list[tuple]:
    return [
        (name, r.gradient_combinations, r.channel_fallbacks, r.segments)
        for name, r in report.layers.items()
    ]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_segments_by_hand(case: str, tracer: str) -> None:
    build, shape, options, expected = CASES[case]
    model = build()
    report = gpa.analyze(model, input_shape=shape, tracer=tracer, channels=True, **options)
    assert report.tracer == tracer
    assert _first_segments(report) == expected
    for name, record in report.layers.items():  # segments tile the layer's own channels
        segments = record.segments
        assert segments[0].start == 0 and segments[-1].stop == _width(model.get_submodule(name))
        assert all(a.stop == b.start for a, b in zip(segments, segments[1:], strict=False))


def _width(module: nn.Module) -> int:
    """A layer's output channels (a leaf: its last convolution's)."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    layer = last[-1]
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@pytest.mark.parametrize("case", list(CASES))
def test_fx_and_export_agree(case: str) -> None:
    build, shape, options, _ = CASES[case]
    model = build()
    fx, export = (
        gpa.analyze(model, input_shape=shape, tracer=t, channels=True, **options)
        for t in ("fx", "export")
    )
    assert list(fx.layers) == list(export.layers) == ["first", "mid", "head"]
    assert _channel_records(fx) == _channel_records(export)
