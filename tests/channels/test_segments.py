"""Channel segments (docs/semantics.md §8) on small models with hand-derived answers.

Conventions of the expectations below: a segment is written
``(start, stop, shortest, longest, path_histogram)``; a source
``(sender, (a, b), rounds)`` plus the extra keys of its JSON form. Every number is derived
by hand in the comment above it: a channel-level path is the sequence of
(layer, segment) nodes it crosses, and a sender that mixes its input channels (a plain
convolution, a linear) continues through every segment of its own output.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
import gpa.models
from gpa.core.paths import bits
from gpa.core.serialize import source_dict
from gpa.errors import GpaError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def analyze(model: nn.Module, shape, **kw):
    return gpa.analyze(model, input_shape=shape, channels=True, **kw)


def segments(report, name: str) -> list[tuple]:
    """(start, stop, shortest, longest, histogram) per segment of layer ``name``."""
    return [
        (s.start, s.stop, s.paths.shortest, s.paths.longest, s.paths.histogram)
        if s.paths
        else (s.start, s.stop, None, None, {})
        for s in report.layers[name].segments
    ]


def sources(report, name: str) -> list[list[dict]]:
    """The JSON sources of each segment of ``name``, as sets of comparable tuples."""
    return [
        sorted(
            (
                d["from"],
                tuple(d["channels"]),
                tuple(d["rounds"]),
                *(
                    (k, tuple(v) if isinstance(v, list) else v)
                    for k, v in d.items()
                    if k not in ("from", "channels", "rounds")
                ),
            )
            for d in map(source_dict, s.sources)
        )
        for s in report.layers[name].segments
    ]


def conv(ci: int, co: int, k: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(ci, co, k, padding=k // 2, groups=groups)


def pool_fc(x: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    return fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


IMG = (1, 3, 4, 4)


# ----------------------------------------------------------------- PRN (W5)


@pytest.mark.slow  # over 1 s
def test_prn_zoo_is_w5():
    """Reference W5: ``prn()`` (3 masked blocks of 16 channels, identity on channels 0..8).

    Layer-level paths of a block output's channels: S.A 2/8, S.B 4/8, b1.A 2/6, b1.B 4/6,
    b2.A 2/4, b2.B 4/4, b3 2/2 (its halves agree, so one segment). Histograms by hand:
    fc {1:1}; b3 {2:1}; a3 -> b3: {3:1}; b2.A -> fc, a3: {2:1, 4:1}; b2.B -> a3: {4:1};
    a2 -> b2.A, b2.B: {3:1, 5:2}; b1.A -> fc, a2, a3: {2:1, 4:2, 6:2}; b1.B -> a2:
    {4:1, 6:2}; a1 -> b1.A, b1.B: {3:1, 5:3, 7:4}; S.A -> fc, a1, a2, a3:
    {2:1, 4:3, 6:5, 8:4}; S.B -> a1: {4:1, 6:3, 8:4}.
    """
    model = gpa.models.build("prn")
    report = analyze(model, model.input_shape)
    b = "stages.0.blocks.{}.conv{}.conv"
    assert segments(report, "stem.conv") == [
        (0, 8, 2, 8, {2: 1, 4: 3, 6: 5, 8: 4}),
        (8, 16, 4, 8, {4: 1, 6: 3, 8: 4}),
    ]
    assert segments(report, b.format(0, 1)) == [(0, 16, 3, 7, {3: 1, 5: 3, 7: 4})]
    assert segments(report, b.format(0, 2)) == [
        (0, 8, 2, 6, {2: 1, 4: 2, 6: 2}),
        (8, 16, 4, 6, {4: 1, 6: 2}),
    ]
    assert segments(report, b.format(1, 1)) == [(0, 16, 3, 5, {3: 1, 5: 2})]
    assert segments(report, b.format(1, 2)) == [(0, 8, 2, 4, {2: 1, 4: 1}), (8, 16, 4, 4, {4: 1})]
    assert segments(report, b.format(2, 1)) == [(0, 16, 3, 3, {3: 1})]
    assert segments(report, b.format(2, 2)) == [(0, 16, 2, 2, {2: 1})]
    assert segments(report, "fc") == [(0, 10, 1, 1, {1: 1})]
    # S.A: the identity carries it to fc (round 2) and into every block's conv1; S.B
    # reaches only block 1's conv1, through its input channels 8..16.
    a = [b.format(i, 1) for i in range(3)]
    assert sources(report, "stem.conv") == [
        sorted(
            [
                ("fc", (0, 8), (2,)),
                (a[0], (0, 8), (4, 6, 8)),
                (a[1], (0, 8), (4, 6)),
                (a[2], (0, 8), (4,)),
            ]
        ),
        [(a[0], (8, 16), (4, 6, 8))],
    ]
    # Layer records stay the layer-level ones: union of the segments' lengths.
    stem = report.layers["stem.conv"]
    assert (stem.shortest, stem.longest, stem.timestamps) == (2, 8, (2, 4, 6, 8))


class Residual2(nn.Module):
    """Stem S (3->4), two residual blocks a_k, b_k (4->4), GAP, fc (4->2).

    ``masked``: PRN's masked residual, the identity added onto channels 0..2 only.
    """

    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.masked = masked
        self.S = conv(3, 4)
        self.a1, self.b1, self.a2, self.b2 = (conv(4, 4, 3) for _ in range(4))
        self.fc = nn.Linear(4, 2)

    def add(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.masked:
            return torch.cat([f[:, :2] + x[:, :2], f[:, 2:]], 1)
        return f + x

    def forward(self, x):
        x = self.S(x)
        x = self.add(self.b1(torch.relu(self.a1(x))), x)
        x = self.add(self.b2(torch.relu(self.a2(x))), x)
        return pool_fc(x, self.fc)


def test_prn_block_halves_get_different_timestamps():
    """Masked 2-block toy. b1.A (0..2) -> fc (round 2) and a2 (round 4): {2:1, 4:1};
    b1.B (2..4) -> a2 only: {4:1}. S.A -> fc, a1 (a1: {3:1, 5:2}), a2 ({3:1}):
    {2:1, 4:2, 6:2}; S.B -> a1: {4:1, 6:2}."""
    report = analyze(Residual2(masked=True), IMG)
    assert segments(report, "b1") == [(0, 2, 2, 4, {2: 1, 4: 1}), (2, 4, 4, 4, {4: 1})]
    assert segments(report, "S") == [(0, 2, 2, 6, {2: 1, 4: 2, 6: 2}), (2, 4, 4, 6, {4: 1, 6: 2})]
    assert segments(report, "a1") == [(0, 4, 3, 5, {3: 1, 5: 2})]
    assert segments(report, "b2") == [(0, 4, 2, 2, {2: 1})]
    assert sources(report, "b1") == [
        [("a2", (0, 2), (4,)), ("fc", (0, 2), (2,))],
        [("a2", (2, 4), (4,))],
    ]


def test_gradient_combinations_resnet_vs_prn():
    """Combinations (set of (round, sender, part)) of the 2-block toys, by hand.

    ResNet, one segment per layer, all distinct: fc {(1, loss)}, b2 {(2, fc)},
    a2 {(3, b2)}, b1 {(2, fc), (4, a2)}, a1 {(3, b1), (5, b1)},
    S {(2, fc), (4, a1), (6, a1), (4, a2)}: 6.
    PRN: the same layers, with S and b1 split in two differing halves: 8.
    """
    resnet = analyze(Residual2(masked=False), IMG)
    prn = analyze(Residual2(masked=True), IMG)
    assert resnet.network.gradient_combinations == 6
    assert prn.network.gradient_combinations == 8
    assert {n: r.gradient_combinations for n, r in resnet.layers.items()} == dict.fromkeys(
        ["S", "a1", "b1", "a2", "b2", "fc"], 1
    )
    assert {n: r.gradient_combinations for n, r in prn.layers.items()} == {
        "S": 2,
        "a1": 1,
        "b1": 2,
        "a2": 1,
        "b2": 1,
        "fc": 1,
    }
    assert resnet.to_dict()["network"]["gradient_combinations"] == 6


def test_plain_network_has_no_combinations_field_without_channels():
    report = gpa.analyze(Residual2(masked=True), input_shape=IMG)
    assert report.network.gradient_combinations is None
    assert "gradient_combinations" not in report.to_dict()["network"]
    assert "segments" not in report.to_dict()["layers"][0]


# ---------------------------------------------------------- asymmetric residual


class Asymmetric(nn.Module):
    """S (3->cs), a (cs->4), b (4->4); y = b(a(x)) + shortcut on the common channels; fc."""

    def __init__(self, cs: int) -> None:
        super().__init__()
        self.cs = cs
        self.S, self.a, self.b = conv(3, cs), conv(cs, 4), conv(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.S(x)
        f = self.b(self.a(x))
        # narrower shortcut: onto the block's first channels; wider: only its first 4 added
        narrow = self.cs < 4
        y = torch.cat([f[:, : self.cs] + x, f[:, self.cs :]], 1) if narrow else f + x[:, :4]
        return pool_fc(y, self.fc)


def test_asymmetric_shortcut_narrower():
    """cs = 2: both channels of S reach fc (inputs 0..2) and a: one segment, 2/4, 2 paths."""
    report = analyze(Asymmetric(2), IMG)
    assert segments(report, "S") == [(0, 2, 2, 4, {2: 1, 4: 1})]
    assert sources(report, "S") == [[("a", (0, 2), (4,)), ("fc", (0, 2), (2,))]]
    assert segments(report, "b") == [(0, 4, 2, 2, {2: 1})]
    assert sources(report, "b") == [[("fc", (0, 4), (2,))]]


def test_asymmetric_shortcut_wider():
    """cs = 6: S channels 0..4 reach fc (2) and a (4); channels 4..6 reach a only."""
    report = analyze(Asymmetric(6), IMG)
    assert segments(report, "S") == [(0, 4, 2, 4, {2: 1, 4: 1}), (4, 6, 4, 4, {4: 1})]
    assert sources(report, "S") == [
        [("a", (0, 4), (4,)), ("fc", (0, 4), (2,))],
        [("a", (4, 6), (4,))],
    ]
    assert report.layers["S"].gradient_combinations == 2


# -------------------------------------------------------------- DenseNet / ResNet


class Dense(nn.Module):
    """S (3->2); H1 (2->2) on S; H2 on cat(S, H1); H3 on cat(S, H1, H2); returns cat of all.

    ``residual=True`` replaces the concatenations by additions (a ResNet of 1x1 blocks).
    """

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.S = conv(3, 2)
        w = (2, 2, 2) if residual else (2, 4, 6)
        self.H1, self.H2, self.H3 = (conv(c, 2) for c in w)

    def forward(self, x):
        s = self.S(x)
        if self.residual:
            x1 = s + self.H1(s)
            x2 = x1 + self.H2(x1)
            return x2 + self.H3(x2)
        h1 = self.H1(s)
        h2 = self.H2(torch.cat([s, h1], 1))
        h3 = self.H3(torch.cat([s, h1, h2], 1))
        return torch.cat([s, h1, h2, h3], 1)


def test_densenet_layers_get_different_parts_of_the_loss():
    """At round 1 each layer receives the loss's channels of its own concat slot:
    S [0,2], H1 [2,4], H2 [4,6], H3 [6,8]. Later rounds: H3 has timestamps {1}, H2 {1,2},
    H1 {1,2,3}; so H2 gets H3 at 2; H1 gets H2 at 2,3 and H3 at 2; S gets H1 at 2,3,4,
    H2 at 2,3, H3 at 2. Paths: H3 1, H2 2, H1 4, S 8."""
    report = analyze(Dense(residual=False), IMG)
    assert segments(report, "H3") == [(0, 2, 1, 1, {1: 1})]
    assert segments(report, "H2") == [(0, 2, 1, 2, {1: 1, 2: 1})]
    assert segments(report, "H1") == [(0, 2, 1, 3, {1: 1, 2: 2, 3: 1})]
    assert segments(report, "S") == [(0, 2, 1, 4, {1: 1, 2: 3, 3: 3, 4: 1})]
    assert sources(report, "H3") == [[("<loss>", (6, 8), (1,))]]
    assert sources(report, "H2") == [[("<loss>", (4, 6), (1,)), ("H3", (4, 6), (2,))]]
    assert sources(report, "H1") == [
        [("<loss>", (2, 4), (1,)), ("H2", (2, 4), (2, 3)), ("H3", (2, 4), (2,))]
    ]
    assert sources(report, "S") == [
        [
            ("<loss>", (0, 2), (1,)),
            ("H1", (0, 2), (2, 3, 4)),
            ("H2", (0, 2), (2, 3)),
            ("H3", (0, 2), (2,)),
        ]
    ]
    at_round_1 = {
        name: [src for src in sources(report, name)[0] if 1 in src[2]] for name in report.layers
    }
    assert {n: [s[1] for s in v] for n, v in at_round_1.items()} == {
        "S": [(0, 2)],
        "H1": [(2, 4)],
        "H2": [(4, 6)],
        "H3": [(6, 8)],
    }
    # every layer its own combination
    assert report.network.gradient_combinations == 4


def test_resnet_layers_get_the_same_part_of_the_loss():
    """Additions instead: every layer receives the loss's channels [0, 2] at round 1."""
    report = analyze(Dense(residual=True), IMG)
    for name in ("S", "H1", "H2", "H3"):
        assert len(report.layers[name].segments) == 1
        first = [src for src in sources(report, name)[0] if src[0] == "<loss>"]
        assert first == [("<loss>", (0, 2), (1,))]


def test_densenet_transition_parts():
    """With a transition T (8->2) on the concat, round 1 is T's: S [0,2], H1 [2,4] …"""

    class WithT(Dense):
        def __init__(self):
            super().__init__(residual=False)
            self.T = conv(8, 2)

        def forward(self, x):
            return self.T(super().forward(x))

    report = analyze(WithT(), IMG)
    for name, part in {"S": (0, 2), "H1": (2, 4), "H2": (4, 6), "H3": (6, 8)}.items():
        (srcs,) = sources(report, name)
        assert [s for s in srcs if s[0] == "T"] == [("T", part, (2,))]


# ---------------------------------------------------------------------- CSP


class CSP(nn.Module):
    """S (3->4); split into p1, p2; a, b (2->2) on p2 with a residual; T on cat(p1, r)."""

    def __init__(self, split: str) -> None:
        super().__init__()
        self.split = split
        self.S = conv(3, 4)
        if split == "convs":
            self.P1, self.P2 = conv(4, 2), conv(4, 2)
        self.a, self.b = conv(2, 2, 3), conv(2, 2, 3)
        self.T = conv(4, 4)

    def forward(self, x):
        x = self.S(x)
        if self.split == "chunk":
            p1, p2 = x.chunk(2, 1)
        elif self.split == "slice":
            p1, p2 = x[:, :2], x[:, 2:]
        else:
            p1, p2 = self.P1(x), self.P2(x)
        r = p2 + self.b(self.a(p2))
        return self.T(torch.cat([p1, r], 1))


@pytest.mark.parametrize("split", ["chunk", "slice"])
def test_csp_channel_split(split):
    """S.A (0..2) crosses the stage: T [0,2] at round 2, one path. S.B (2..4) enters the
    block as a's inputs 0..2 (round 4: a -> b -> T) and reaches T [2,4] through the
    residual (round 2): 2/4, two paths. Layer-level S is 2/4 with 2 paths."""
    report = analyze(CSP(split), IMG)
    assert segments(report, "S") == [(0, 2, 2, 2, {2: 1}), (2, 4, 2, 4, {2: 1, 4: 1})]
    assert sources(report, "S") == [
        [("T", (0, 2), (2,))],
        [("T", (2, 4), (2,)), ("a", (0, 2), (4,))],
    ]
    assert report.layers["S"].num_paths == 2
    assert report.layers["S"].gradient_combinations == 2
    assert segments(report, "b") == [(0, 2, 2, 2, {2: 1})]
    assert sources(report, "b") == [[("T", (2, 4), (2,))]]


def test_csp_conv_split():
    """Two 1x1 convs: S mixes into both (one segment); P1 reaches T [0,2] only (2/2),
    P2 reaches T [2,4] and a (2/4)."""
    report = analyze(CSP("convs"), IMG)
    assert segments(report, "S") == [(0, 4, 3, 5, {3: 2, 5: 1})]
    assert sources(report, "P1") == [[("T", (0, 2), (2,))]]
    assert sources(report, "P2") == [[("T", (2, 4), (2,)), ("a", (0, 2), (4,))]]
    assert segments(report, "P1") == [(0, 2, 2, 2, {2: 1})]
    assert segments(report, "P2") == [(0, 2, 2, 4, {2: 1, 4: 1})]


# ------------------------------------------------------- groups, shuffles


class Grouped(nn.Module):
    def __init__(self, c: int, groups: int, k: int = 1, shuffle: bool = False) -> None:
        super().__init__()
        self.shuffle, self.groups = shuffle, groups
        self.S = conv(3, c)
        self.G = conv(c, c, k, groups)

    def forward(self, x):
        x = self.S(x)
        if self.shuffle:
            n, c, h, w = x.shape
            x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.G(x)


def test_grouped_conv_splits_producer_into_groups():
    """groups = 2 over 4 channels: S 0..2 feed group 0, S 2..4 group 1; both 2/2."""
    report = analyze(Grouped(4, 2), IMG)
    assert segments(report, "S") == [(0, 2, 2, 2, {2: 1}), (2, 4, 2, 2, {2: 1})]
    assert sources(report, "S") == [
        [("G", (0, 2), (2,), ("group", (0,)))],
        [("G", (2, 4), (2,), ("group", (1,)))],
    ]
    assert report.layers["S"].gradient_combinations == 2


def test_depthwise_conv():
    """groups = channels = 3: one segment per channel, each its own group."""
    report = analyze(Grouped(3, 3, k=3), IMG)
    assert segments(report, "S") == [(c, c + 1, 2, 2, {2: 1}) for c in range(3)]
    assert sources(report, "S") == [[("G", (c, c + 1), (2,), ("group", (c,)))] for c in range(3)]
    assert report.layers["S"].gradient_combinations == 3


def test_channel_shuffle_before_grouped_conv():
    """ShuffleNet's shuffle with 2 groups of 2: channel i = 2g + k moves to position
    2k + g, so S channels 0, 1, 2, 3 land on G's inputs 0, 2, 1, 3; G's group 0 is
    inputs 0..2. The segments alternate: 0 -> group 0, 1 -> group 1, 2 -> group 0,
    3 -> group 1."""
    report = analyze(Grouped(4, 2, shuffle=True), IMG)
    assert segments(report, "S") == [(c, c + 1, 2, 2, {2: 1}) for c in range(4)]
    assert sources(report, "S") == [
        [("G", (0, 1), (2,), ("group", (0,)))],
        [("G", (2, 3), (2,), ("group", (1,)))],
        [("G", (1, 2), (2,), ("group", (0,)))],
        [("G", (3, 4), (2,), ("group", (1,)))],
    ]


def test_channel_shuffle_eight_channels_exact_parts():
    """Shuffle with 2 groups of 4: channel i = 4g + k moves to position 2k + g, so S
    channels 0..8 land on G's inputs 0, 2, 4, 6, 1, 3, 5, 7 (group 0: inputs 0..4).
    Every input channel of a group receives the same gradient (all of the group's
    outputs), so by §8 ("the same group of a grouped convolution") channels 0-1 and 4-5
    (group 0) and 2-3 and 6-7 (group 1) form the segments [0,2) [2,4) [4,6) [6,8)
    (issue 13, kind 6). Their inputs are scattered in the group, so each source names the
    group's whole input range rather than a range that would claim another segment's
    inputs."""
    report = analyze(Grouped(8, 2, shuffle=True), IMG)
    assert segments(report, "S") == [(c, c + 2, 2, 2, {2: 1}) for c in (0, 2, 4, 6)]
    assert sources(report, "S") == [
        [("G", (4 * g, 4 * g + 4), (2,), ("group", (g,)))] for g in (0, 1, 0, 1)
    ]
    # two parts of G's gradient (group 0, group 1), each received by two segments
    assert report.layers["S"].gradient_combinations == 2


class TwiceIntoGroups(nn.Module):
    """S's 3 channels concatenated with themselves into a grouped convolution G."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.S, self.G = conv(3, 3), conv(6, 6, 1, groups)

    def forward(self, x):
        y = self.S(x)
        return self.G(torch.cat([y, y], 1))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_a_tensor_twice_into_groups_continues_group_by_group(tracer):
    """Channel c reaches G's inputs c and c + 3. With 2 groups of 3 inputs, every channel's
    first input is in group 0 and its second in group 1, each following the channel
    before: one segment, two parts (§8: the same input channels shifted along with the
    channel). It was cut into one segment per channel, its channels each reaching two
    groups (found by the per-channel brute force of test_properties)."""
    report = analyze(TwiceIntoGroups(2), IMG, tracer=tracer)
    # one path S -> G -> loss: both parts reach G's one segment (paths are node sequences)
    assert segments(report, "S") == [(0, 3, 2, 2, {2: 1})]
    assert sources(report, "S") == [
        [("G", (0, 3), (2,), ("group", (0,))), ("G", (3, 6), (2,), ("group", (1,)))]
    ]
    assert report.layers["S"].gradient_combinations == 1


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_a_tensor_twice_into_groups_is_cut_where_a_run_changes_group(tracer):
    """With 3 groups of 2 inputs: channel 0 reaches groups 0 and 1 (inputs 0, 3), channel
    1 groups 0 and 2 (inputs 1, 4), channel 2 groups 1 and 2 (inputs 2, 5): the runs of
    channel 1 follow channel 0's, but its second lies in another group; channel 2's first
    run leaves group 0. Three segments."""
    report = analyze(TwiceIntoGroups(3), IMG, tracer=tracer)
    assert segments(report, "S") == [(c, c + 1, 2, 2, {2: 1}) for c in range(3)]
    assert sources(report, "S") == [
        [("G", (0, 1), (2,), ("group", (0,))), ("G", (3, 4), (2,), ("group", (1,)))],
        [("G", (1, 2), (2,), ("group", (0,))), ("G", (4, 5), (2,), ("group", (2,)))],
        [("G", (2, 3), (2,), ("group", (1,))), ("G", (5, 6), (2,), ("group", (2,)))],
    ]


class ShuffleIntoGroups(nn.Module):
    """Issue 13's example: a = Conv2d(3, 8, 1), ShuffleNet's shuffle (2 groups) written
    with view/transpose/reshape, b = Conv2d(8, 8, 1, groups=2), head = Conv2d(8, 2, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1, groups=2), conv(8, 2)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, 4, h, w).transpose(1, 2).reshape(n, 8, h, w)
        return self.head(self.b(y))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_shuffle_written_out_into_grouped_conv(tracer):
    """Channel 4g + k lands on b's input 2k + g: channels 0, 1, 4, 5 on inputs 0, 2, 1, 3
    (group 0), channels 2, 3, 6, 7 on inputs 4, 6, 5, 7 (group 1). Segments [0,2) [2,4)
    [4,6) [6,8), each three rounds from the loss (a -> b -> head -> loss), one path."""
    report = gpa.analyze(ShuffleIntoGroups(), input_shape=IMG, channels=True, tracer=tracer)
    assert segments(report, "a") == [(c, c + 2, 3, 3, {3: 1}) for c in (0, 2, 4, 6)]
    assert [dict(src[3:])["group"] for (src,) in sources(report, "a")] == [(0,), (1,), (0,), (1,)]


def test_channel_shuffle_module():
    """nn.ChannelShuffle(2) is the same permutation."""

    class Shuffled(Grouped):
        def __init__(self):
            super().__init__(4, 2)
            self.shuffle_op = nn.ChannelShuffle(2)

        def forward(self, x):
            return self.G(self.shuffle_op(self.S(x)))

    report = analyze(Shuffled(), IMG)
    groups = [dict(src[3:])["group"] for (src,) in sources(report, "S")]
    assert groups == [(0,), (1,), (0,), (1,)]


# ------------------------------------------------------------------ transformer


class Attention(nn.Module):
    """E (8->8) then a fused qkv projection (8->24) chunked into q, k, v; proj (8->8).

    ``heads`` > 1 uses ``scaled_dot_product_attention`` on a (batch, heads, tokens, d)
    layout built with view/transpose; 1 a hand-written softmax attention.
    """

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.E, self.qkv, self.proj = nn.Linear(8, 8), nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        x = self.E(x)
        q, k, v = self.qkv(x).chunk(3, -1)
        if self.heads == 1:
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1)
            o = weights @ v
        else:
            b, t, _ = x.shape

            def split(z):
                return z.view(b, t, self.heads, 8 // self.heads).transpose(1, 2)

            o = F.scaled_dot_product_attention(split(q), split(k), split(v))
            o = o.transpose(1, 2).reshape(b, t, 8)
        return self.proj(o)


def test_transformer_qkv_one_head():
    """q and k (channels 0..16 of qkv) reach proj only through the attention weights:
    every channel reaches every input of proj ("mixed"); they have the same record, so
    they form one segment. v (16..24) reaches proj channel to channel (input c - 16).
    All of qkv's paths have length 2; E's 3 (one per segment of qkv)."""
    report = analyze(Attention(1), (2, 5, 8))
    assert segments(report, "qkv") == [(0, 16, 2, 2, {2: 1}), (16, 24, 2, 2, {2: 1})]
    assert sources(report, "qkv") == [
        [("proj", (0, 8), (2,), ("mixed", True))],
        [("proj", (0, 8), (2,))],
    ]
    assert segments(report, "E") == [(0, 8, 3, 3, {3: 2})]
    assert report.layers["qkv"].gradient_combinations == 2
    assert segments(report, "proj") == [(0, 8, 1, 1, {1: 1})]


def test_transformer_qkv_two_heads():
    """Two heads of 4 channels through ``scaled_dot_product_attention``: a head's
    outputs (proj's inputs 0..4 for head 0, 4..8 for head 1) depend on that head's q and
    k channels alone, all of them ("mixed"): q's 0..4 and k's 8..12 reach proj's 0..4,
    q's 4..8 and k's 12..16 proj's 4..8; v (16..24) reaches proj channel to channel. The
    rule mixed the heads (every q and k channel reached every proj input, one segment
    0..16), where a real backward gives head 1's outputs nothing from q's channels 0..4
    (tests/channels/test_routes_against_autograd.py, ``ATTENTION``). Five segments of
    qkv, so E has five paths of length 3; three combinations: the two heads' mixed
    sources and v's."""
    report = analyze(Attention(2), (2, 5, 8))
    assert segments(report, "qkv") == [
        (0, 4, 2, 2, {2: 1}),
        (4, 8, 2, 2, {2: 1}),
        (8, 12, 2, 2, {2: 1}),
        (12, 16, 2, 2, {2: 1}),
        (16, 24, 2, 2, {2: 1}),
    ]
    head = [("proj", (0, 4), (2,), ("mixed", True))], [("proj", (4, 8), (2,), ("mixed", True))]
    assert sources(report, "qkv") == [*head, *head, [("proj", (0, 8), (2,))]]
    assert segments(report, "E") == [(0, 8, 3, 3, {3: 5})]
    assert report.layers["qkv"].gradient_combinations == 3
    assert segments(report, "proj") == [(0, 8, 1, 1, {1: 1})]


# ------------------------------------------------------------------ flatten


def test_flatten_before_linear_is_one_segment():
    """S (3->2) on 4x4, flattened: channel c feeds fc inputs 16c .. 16c + 15."""

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.S, self.fc = conv(3, 2), nn.Linear(32, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.S(x), 1))

    report = analyze(Flat(), IMG)
    assert segments(report, "S") == [(0, 2, 2, 2, {2: 1})]
    assert sources(report, "S") == [[("fc", (0, 32), (2,))]]


# ------------------------------------------------- networks without partial ops


ONE_SEGMENT_ZOO = [
    ("plainnet", {}),
    ("resnet", {}),
    ("resnet", {"bottleneck": True}),
    ("resnet_stopgrad", {}),
    ("densenet", {}),
    ("sparsenet", {}),
    ("vovnet", {}),
    ("elan", {}),
]


def _same_as_layer(report):
    for record in report.layers.values():
        assert record.segments is not None
        assert len(record.segments) == 1, record.name
        (seg,) = record.segments
        if not record.reachable:
            assert seg.paths is None
            continue
        p = seg.paths
        assert (p.shortest, p.longest, p.timestamps, p.num_paths, p.histogram) == (
            record.shortest,
            record.longest,
            record.timestamps,
            record.num_paths,
            record.path_histogram,
        ), record.name
        assert record.gradient_combinations == 1


@pytest.mark.slow  # a sweep over zoo entries with channel analysis
@pytest.mark.parametrize(("name", "knobs"), ONE_SEGMENT_ZOO)
def test_zoo_without_partial_ops_one_segment_per_layer(name, knobs):
    model = gpa.models.build(name, **knobs)
    _same_as_layer(analyze(model, model.input_shape))


def test_semantics_models_one_segment_per_layer():
    from tests.core.test_paths import Chain, DenseBlock, ResNet

    for model, shape in [
        (Chain(4), None),
        (ResNet(3), None),
        (DenseBlock(), None),
    ]:
        shape = shape or getattr(model, "input_shape", None) or (1, 3, 8, 8)
        _same_as_layer(analyze(model, shape))


# --------------------------------------------------------------- fallbacks


class _Opaque(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.flip(1) * 2

    @staticmethod
    def backward(ctx, g):
        return g.flip(1) * 2


@torch.fx.wrap
def opaque(x):
    return _Opaque.apply(x)


class Fallback(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.S, self.T = conv(3, 4), conv(4, 2)

    def forward(self, x):
        x = self.S(x)
        x = x.cumsum(1) if self.how == "cumsum" else opaque(x)
        return self.T(x)


@pytest.mark.parametrize(("how", "op"), [("cumsum", "cumsum"), ("custom", "_Opaque")])
def test_fallback_is_reported(how, op):
    """An op gpa cannot route: S's channels are taken to reach every input of T (mixed).
    The wrapped ``opaque`` is traced into; the custom autograd Function it applies is one
    call (semantics §1.2), named after the Function."""
    report = analyze(Fallback(how), IMG)
    record = report.layers["S"]
    assert any(op in f for f in record.channel_fallbacks), record.channel_fallbacks
    assert any(op in f for f in record.to_dict()["channel_fallback"])
    assert sources(report, "S") == [[("T", (0, 4), (2,), ("mixed", True))]]
    assert "channel_fallback" not in report.to_dict()["layers"][1]


def test_channels_without_inputs_is_an_error():
    with pytest.raises(GpaError, match="example inputs"):
        gpa.analyze(Fallback("cumsum"), channels=True)


# ---------------------------------------------------------------------- CLI


def _cli(tmp_path, *args):
    from click.testing import CliRunner

    from gpa.cli import main

    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))\n"
    )
    return CliRunner().invoke(main, ["analyze", str(tmp_path / "net.py"), *args])


def test_cli_channels_json_layout(tmp_path):
    """--channels adds §8's fields: per layer segments and gradient_combinations, per
    network gradient_combinations. The chain: "0" reaches "2" (all 4 inputs, round 2)."""
    result = _cli(tmp_path, "--channels", "--input-shape", "1,3,4,4", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["network"]["gradient_combinations"] == 2
    first = data["layers"][0]
    assert first["gradient_combinations"] == 1
    assert first["segments"] == [
        {
            "channels": [0, 4],
            "shortest": 2,
            "longest": 2,
            "timestamps": [2],
            "num_paths": 1,
            "path_histogram": {"2": 1},
            "sources": [{"from": "2", "channels": [0, 4], "rounds": [2]}],
        }
    ]
    assert data["layers"][1]["segments"][0]["sources"] == [
        {"from": "<loss>", "channels": [0, 2], "rounds": [1]}
    ]


def test_cli_channels_table(tmp_path):
    result = _cli(tmp_path, "--channels", "--input-shape", "1,3,4,4")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("layer "))
    assert header.split()[-2:] == ["segments", "combos"]
    assert "gradient_combinations: 2" in result.output
    plain = _cli(tmp_path, "--input-shape", "1,3,4,4")
    assert "combos" not in plain.output and "gradient_combinations" not in plain.output


def test_cli_channels_without_inputs(tmp_path):
    result = _cli(tmp_path, "--channels")
    assert result.exit_code == 2
    assert "channel analysis needs example inputs" in result.output
    assert "Traceback" not in result.output


class DroppedToken(nn.Module):
    """SAM's mask decoder in small: one MLP per mask token, stacked, multiplied with the
    image features, and the first mask dropped (``masks[:, 1:]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(nn.Linear(4, 3) for _ in range(3))
        self.image = nn.Linear(4, 3)

    def forward(self, tokens, pixels):
        hyper = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(self.mlps)], 1)
        masks = hyper @ self.image(pixels).transpose(1, 2)  # (batch, token, pixel)
        return masks[:, 1:]


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_a_layer_whose_channels_all_reach_nothing_is_named(tracer) -> None:
    """Found by a review on SAM: the layer level reads the slice of the stack as the whole
    stack (semantics §3) and counts mlps.0 reachable; its channels, followed with their
    positions, reach nothing — as a real backward says (zero gradient). A note says so."""
    model = DroppedToken()
    inputs = (torch.randn(2, 3, 4), torch.randn(2, 5, 4))
    report = gpa.analyze(model, inputs, channels=True, tracer=tracer)
    assert report.layers["mlps.0"].reachable  # the whole tensor is read (§3)
    assert [s.paths for s in report.layers["mlps.0"].segments] == [None]
    assert all(s.paths is not None for s in report.layers["mlps.1"].segments)
    (note,) = [n for n in report.notes if "none of their channels reaches the loss" in n]
    assert note.startswith("mlps.0: ")
    model(*inputs).sum().backward()
    assert model.mlps[0].weight.grad.abs().sum() == 0
    assert model.mlps[1].weight.grad.abs().sum() > 0
    at_layer_level = gpa.analyze(model, inputs, tracer=tracer)
    assert not any("none of their channels" in n for n in at_layer_level.notes)


class ShuffledAway(nn.Module):
    """A CSP split, a channel shuffle (ShuffleNet's), and every other channel kept: the
    half that skipped ``dw`` lands on the channels the slice drops."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, 1)
        y = torch.cat([self.dw(b), a], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y[:, ::2])


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_rounds_a_layer_is_reached_at_by_no_channel_are_named(tracer) -> None:
    """Found by a new user: with channels, stem's record said shortest 2 (stem -> head,
    the whole tensor read through the slice: §3) and nothing said that no channel takes
    that route. By hand: after the shuffle, y = (dw0, a0, dw1, a1, …) and y[:, ::2] keeps
    dw's four: stem's channels 0–3 (a) reach nothing, 4–7 reach the loss through dw alone
    (3); a real backward agrees (zero gradient on stem's channels 0–3). The record stays
    the whole tensor's, {2, 3}; a note names stem and round 2."""
    model, x = ShuffledAway(), torch.randn(2, 3, 6, 6)
    report = gpa.analyze(model, (x,), channels=True, tracer=tracer)
    stem = report.layers["stem"]
    assert stem.timestamps == (2, 3)
    assert [(s.start, s.stop, s.paths and s.paths.timestamps) for s in stem.segments] == [
        (0, 4, None),
        *((c, c + 1, (3,)) for c in range(4, 8)),
    ]
    (note,) = [n for n in report.notes if "by no channel" in n]
    assert note.startswith("stem (2): reached at these rounds as whole tensors only")
    assert not any("none of their channels reaches" in n for n in report.notes)
    kept = []

    def keep(module, inputs, output) -> None:
        output.retain_grad()
        kept.append(output)

    hook = model.stem.register_forward_hook(keep)
    model(x).sum().backward()
    hook.remove()
    reached = kept[0].grad.abs().sum((0, 2, 3)) > 0
    assert reached.tolist() == [False] * 4 + [True] * 4
    at_layer_level = gpa.analyze(model, (x,), tracer=tracer)
    assert not any("by no channel" in n for n in at_layer_level.notes)


class CalledTwiceCutOnce(nn.Module):
    """``a`` called twice: its first call's channels 0..2 go through ``b`` (a slice), 2..4
    straight into the second call; the second call's output reaches ``out`` whole."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 4), nn.Linear(2, 2), nn.Linear(4, 4)

    def forward(self, x):
        y = self.a(x)
        return self.out(self.a(torch.cat([self.b(y[:, :2]), y[:, 2:]], 1)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_a_layer_called_twice_cut_by_one_call_narrows_the_others_sources(tracer) -> None:
    """Found by a review against autograd (timm's CoaT shares its position convolutions):
    merging the calls cut the second call's segment [0, 4) at 2 but kept its source
    ``out [0, 4]`` on both halves, which reads as channel 1 reaching out's inputs 2..4 —
    autograd gives channel c to out's input c alone. By hand: out at 1; the second call of
    a reaches out (2), b reaches a (3); the first call's 0..2 reach b (4), its 2..4 the
    second call (3). So a's [0, 2) get out [0, 2) at 2 and b [0, 2) at 4, its [2, 4) out
    [2, 4) at 2 and a [2, 4) at 3."""
    model, x = CalledTwiceCutOnce(), torch.randn(3, 4)
    report = gpa.analyze(model, (x,), channels=True, tracer=tracer)
    found = [
        (s.start, s.stop, [(q.sender, q.channels, bits(q.rounds), q.mixed) for q in s.sources])
        for s in report.layers["a"].segments
    ]
    assert found == [
        (0, 2, [("out", (0, 2), (2,), False), ("b", (0, 2), (4,), False)]),
        (2, 4, [("out", (2, 4), (2,), False), ("a", (2, 4), (3,), False)]),
    ]
