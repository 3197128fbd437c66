"""Hand-derived expectations for gpa's gradient-path semantics (issue 2 §3, §8).

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md): a gradient path of a layer is a sequence of layers from
that layer to ``<loss>`` along which gradient flows; its length counts the layers on
it, the layer itself included; two routes between the same two layers that cross no
other layer are one path. None of these numbers was copied from gpa's output.

Most checks state a layer's full path histogram {length: count}; shortest, longest,
timestamps and num_paths follow from it (min key, max key, sorted keys, sum of counts).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa

IMG = (1, 3, 8, 8)
LOSS = "<loss>"


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling to (N, C): no layer."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def run(model, example, with_inputs: bool):
    """Analyse with example inputs (values decide gradient flow) or without any (op names do)."""
    return gpa.analyze(model, example) if with_inputs else gpa.analyze(model)


WITH_INPUTS = pytest.mark.parametrize("with_inputs", [True, False], ids=["inputs", "no-inputs"])


def expect(report, name: str, hist: dict[int, int], sources: tuple[str, ...], calls: int = 1):
    """Assert every path metric of one layer from its hand-derived histogram and sources."""
    rec = report.layers[name]
    assert rec.name == name
    assert rec.reachable, name
    assert rec.calls == calls, name
    assert dict(rec.path_histogram) == hist, name
    assert rec.shortest == min(hist), name
    assert rec.longest == max(hist), name
    assert tuple(rec.timestamps) == tuple(sorted(hist)), name
    assert rec.num_paths == sum(hist.values()), name
    assert sorted(rec.sources) == sorted(sources), name  # order: test_sources_order
    assert len(rec.sources) == len(set(rec.sources)), name


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


def check_reachability_with_autograd(report, model, *inputs):
    """Independent check of the hand derivation: run the model for real, backpropagate the
    sum of its outputs, and compare which layers' parameters got a gradient with the
    layers the report marks reachable."""
    model.zero_grad(set_to_none=True)
    loss = sum(t.sum() for t in _tensors(model(*inputs)) if t.requires_grad)
    loss.backward()
    got = set()
    for name in report.layers:
        try:
            params = list(model.get_submodule(name).parameters())
        except AttributeError:
            params = [model.get_parameter(name)]
        if any(p.grad is not None for p in params):
            got.add(name)
    assert got == {n for n, r in report.layers.items() if r.reachable}


def at(senders) -> tuple[str, ...]:
    """sources_at(t) as a sorted tuple (its order: see test_sources_order)."""
    return tuple(sorted(senders))


def expect_unreachable(report, name: str, calls: int = 1):
    rec = report.layers[name]
    assert not rec.reachable, name
    assert rec.calls == calls, name
    assert rec.shortest is None and rec.longest is None, name
    assert tuple(rec.timestamps) == (), name
    assert rec.num_paths == 0, name
    assert dict(rec.path_histogram) == {}, name
    assert tuple(rec.sources) == (), name
    assert name in report.network.unreachable


def expect_network(
    report, *, layers, max_shortest, min_shortest, mean_shortest, longest, unreachable=()
):
    n = report.network
    assert n.layers == layers
    assert n.max_shortest == max_shortest
    assert n.min_shortest == min_shortest
    assert n.mean_shortest == pytest.approx(mean_shortest, abs=1e-6)
    assert n.longest == longest
    assert sorted(n.unreachable) == sorted(unreachable)
    assert len(n.unreachable) == len(unreachable)


# ======================================================================================
# 1. Chain of N convs and a final linear


class Chain(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(n))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(pool(x))


@pytest.mark.parametrize("n", [1, 2, 5, 12])
@pytest.mark.parametrize("by_shape", [False, True])
def test_chain(n, by_shape):
    model = Chain(n)
    report = (
        gpa.analyze(model, input_shape=IMG) if by_shape else gpa.analyze(model, torch.randn(IMG))
    )
    names = [f"convs.{i}" for i in range(n)] + ["fc"]
    assert list(report.layers) == names
    assert [r.type for r in report.layers.values()] == ["Conv2d"] * n + ["Linear"]
    # The only route from conv i (1-based) crosses convs i..N (N-i+1 layers) and fc (1):
    # one path of length N-i+2. Its only sender is the next conv (or fc for conv N).
    for i in range(1, n + 1):
        nxt = f"convs.{i}" if i < n else "fc"
        expect(report, f"convs.{i - 1}", {n - i + 2: 1}, (nxt,))
        assert at(report.layers[f"convs.{i - 1}"].sources_at(n - i + 2)) == (nxt,)
        assert at(report.layers[f"convs.{i - 1}"].sources_at(n - i + 1)) == ()
    # fc feeds the loss directly: length 1
    expect(report, "fc", {1: 1}, (LOSS,))
    assert at(report.layers["fc"].sources_at(1)) == (LOSS,)
    # shortest lengths are 1..N+1, one each: mean (N+2)/2; the longest is conv 1's N+1
    expect_network(
        report,
        layers=n + 1,
        max_shortest=n + 1,
        min_shortest=1,
        mean_shortest=(n + 2) / 2,
        longest=n + 1,
    )


def test_chain_without_inputs():
    """Without example inputs the op-name analysis still gives the chain's numbers."""
    report = gpa.analyze(Chain(3))
    # conv i of 3: 3 - i + 2 -> 4, 3, 2; fc 1
    for i, length in zip(range(3), (4, 3, 2), strict=True):
        assert report.layers[f"convs.{i}"].shortest == length
        assert report.layers[f"convs.{i}"].longest == length
    assert report.layers["fc"].shortest == 1
    assert report.notes  # it says what was skipped
    assert report.inputs is None


# ======================================================================================
# 2. ResNet with B basic blocks


class BasicBlock(nn.Module):
    def __init__(self, c: int, detach: str = "none") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.detach = detach

    def branch(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        if self.detach == "identity":
            out = self.branch(x) + x.detach()
        elif self.detach == "input":
            out = x + self.branch(x.detach())
        else:
            out = x + self.branch(x)
        return F.relu(out)


class InplaceBlock(nn.Module):
    """torchvision's style: in-place ReLU and ``out += identity``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, blocks: int, detach: str = "none", inplace: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        block = InplaceBlock if inplace else lambda c: BasicBlock(c, detach)
        self.blocks = nn.Sequential(*(block(4) for _ in range(blocks)))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(pool(self.blocks(F.relu(self.stem(x)))))


def resnet_names(b: int) -> list[str]:
    names = ["stem"]
    for k in range(b):
        names += [f"blocks.{k}.conv1", f"blocks.{k}.conv2"]
    return [*names, "fc"]


@pytest.mark.parametrize("inplace", [False, True], ids=["functional", "inplace"])
@pytest.mark.parametrize("nblocks", [1, 2, 3, 5])
def test_resnet(nblocks, inplace):
    B = nblocks
    report = gpa.analyze(ResNet(B, inplace=inplace), torch.randn(IMG))
    assert list(report.layers) == resnet_names(B)

    def conv1(b):
        return f"blocks.{b - 1}.conv1"

    def conv2(b):
        return f"blocks.{b - 1}.conv2"

    # From the output of block b, the trunk crosses blocks b+1..B, each either through
    # its identity (0 layers) or through its two convs (2 layers), then fc (1 layer).
    # Choosing the branch in k of those B-b blocks gives a path of 1 + 2k layers after the
    # block, and there are C(B-b, k) such choices (2^(B-b) paths in all).
    expect(report, "fc", {1: 1}, (LOSS,))
    for b in range(1, B + 1):
        rest = B - b
        # conv2 of block b: itself + (1 + 2k). Its senders: fc (via the identities) and
        # conv1 of every later block (reached through identities without another layer).
        expect(
            report,
            conv2(b),
            {2 + 2 * k: math.comb(rest, k) for k in range(rest + 1)},
            ("fc", *(conv1(c) for c in range(b + 1, B + 1))),
        )
        # conv1 of block b: conv1, conv2, then the same trunk: 3 + 2k; sender: its conv2
        expect(
            report,
            conv1(b),
            {3 + 2 * k: math.comb(rest, k) for k in range(rest + 1)},
            (conv2(b),),
        )
        assert report.layers[conv1(b)].shortest == 3
        assert report.layers[conv1(b)].longest == 3 + 2 * rest
        assert report.layers[conv2(b)].shortest == 2
        assert report.layers[conv2(b)].longest == 2 + 2 * rest
    # stem: itself + all B blocks, each identity or branch, + fc: {2 + 2k: C(B, k)},
    # 2^B paths, shortest 2, longest 2B + 2; senders fc and every block's conv1.
    expect(
        report,
        "stem",
        {2 + 2 * k: math.comb(B, k) for k in range(B + 1)},
        ("fc", *(conv1(c) for c in range(1, B + 1))),
    )
    stem = report.layers["stem"]
    assert stem.num_paths == 2**B
    assert (stem.shortest, stem.longest) == (2, 2 * B + 2)
    # sources_at: fc (timestamp 1) delivers at round 2; conv1 of block c has timestamps
    # 3, 5, ..., 3 + 2(B-c), so it delivers at rounds 4, 6, ..., 4 + 2(B-c): at round
    # 2 + 2k (k >= 1) the senders are conv1 of blocks c with B - c >= k - 1.
    assert at(stem.sources_at(1)) == ()
    assert at(stem.sources_at(2)) == ("fc",)
    assert at(stem.sources_at(3)) == ()
    for k in range(1, B + 1):
        want = tuple(sorted(conv1(c) for c in range(1, B + 1) if B - c >= k - 1))
        assert at(stem.sources_at(2 + 2 * k)) == want
    # network: shortest values are stem 2, conv1s 3, conv2s 2, fc 1:
    # sum 2 + 5B + 1 over 2B + 2 layers; the longest path is the stem's 2B + 2
    expect_network(
        report,
        layers=2 * B + 2,
        max_shortest=3,
        min_shortest=1,
        mean_shortest=(5 * B + 3) / (2 * B + 2),
        longest=2 * B + 2,
    )


def test_resnet3_histograms_literal():
    """B = 3 written out (architectures.md §4.3 W2): S 2/8, a1 3/7, b1 2/6, a2 3/5, b2 2/4,
    a3 3/3, b3 2/2; S has {2:1, 4:3, 6:3, 8:1}, a1 {3:1, 5:2, 7:1}."""
    report = gpa.analyze(ResNet(3), input_shape=IMG)
    assert report.layers["stem"].path_histogram == {2: 1, 4: 3, 6: 3, 8: 1}
    assert report.layers["blocks.0.conv1"].path_histogram == {3: 1, 5: 2, 7: 1}
    got = {n: (r.shortest, r.longest) for n, r in report.layers.items()}
    assert got == {
        "stem": (2, 8),
        "blocks.0.conv1": (3, 7),
        "blocks.0.conv2": (2, 6),
        "blocks.1.conv1": (3, 5),
        "blocks.1.conv2": (2, 4),
        "blocks.2.conv1": (3, 3),
        "blocks.2.conv2": (2, 2),
        "fc": (1, 1),
    }


@pytest.mark.parametrize("nblocks", [1, 2, 4])
def test_resnet_identity_detached_is_plain(nblocks):
    B = nblocks
    report = gpa.analyze(ResNet(B, detach="identity"), torch.randn(IMG))
    # out = branch(x) + x.detach(): the identity carries no gradient, so the network is a
    # chain stem, (conv1, conv2) x B, fc of 2B + 2 layers: one path each, shortest = longest.
    chain = resnet_names(B)
    for pos, name in enumerate(chain):
        length = len(chain) - pos
        sender = chain[pos + 1] if pos + 1 < len(chain) else LOSS
        expect(report, name, {length: 1}, (sender,))
    expect_network(
        report,
        layers=2 * B + 2,
        max_shortest=2 * B + 2,
        min_shortest=1,
        mean_shortest=(2 * B + 3) / 2,
        longest=2 * B + 2,
    )


@pytest.mark.parametrize("nblocks", [1, 2, 4])
def test_resnet_block_input_detached(nblocks):
    B = nblocks
    report = gpa.analyze(ResNet(B, detach="input"), torch.randn(IMG))
    # out = x + branch(x.detach()): gradient leaves each block's output only through the
    # identities down to fc, never into a branch's input. So the stem reaches the loss
    # only through the identities and fc (2/2), conv2 of every block likewise (2/2, sender
    # fc), conv1 through its conv2 (3/3).
    expect(report, "stem", {2: 1}, ("fc",))
    for b in range(B):
        expect(report, f"blocks.{b}.conv2", {2: 1}, ("fc",))
        expect(report, f"blocks.{b}.conv1", {3: 1}, (f"blocks.{b}.conv2",))
    expect(report, "fc", {1: 1}, (LOSS,))
    expect_network(
        report,
        layers=2 * B + 2,
        max_shortest=3,
        min_shortest=1,
        mean_shortest=(2 + 5 * B + 1) / (2 * B + 2),
        longest=3,
    )


# ======================================================================================
# 3. No-grad blocks inside forward


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
# 4. DenseNet-like concatenation block


class DenseBlock(nn.Module):
    """x0 = stem(x); x1 = h1(x0); x2 = h2([x0,x1]); x3 = h3([x0,x1,x2]);
    t = trans([x0,x1,x2,x3]); fc(pool(t))."""

    def __init__(self) -> None:
        super().__init__()
        g = 2
        self.stem = nn.Conv2d(3, g, 3, padding=1)
        self.h1 = nn.Conv2d(g, g, 3, padding=1)
        self.h2 = nn.Conv2d(2 * g, g, 3, padding=1)
        self.h3 = nn.Conv2d(3 * g, g, 3, padding=1)
        self.trans = nn.Conv2d(4 * g, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        feats = [self.stem(x)]
        for h in (self.h1, self.h2, self.h3):
            feats.append(F.relu(h(torch.cat(feats, dim=1))))
        return self.fc(pool(self.trans(torch.cat(feats, dim=1))))


def test_dense_block():
    report = gpa.analyze(DenseBlock(), torch.randn(IMG))
    assert list(report.layers) == ["stem", "h1", "h2", "h3", "trans", "fc"]
    # fc 1; trans -> fc: 2; h3's output is read only by trans: h3-trans-fc, 3.
    expect(report, "fc", {1: 1}, (LOSS,))
    expect(report, "trans", {2: 1}, ("fc",))
    expect(report, "h3", {3: 1}, ("trans",))
    # h2's output is read by h3 and trans: h2 + h3's {3} -> 4, h2 + trans's {2} -> 3.
    expect(report, "h2", {3: 1, 4: 1}, ("h3", "trans"))
    # h1 read by h2, h3, trans: 1 + ({3,4} U {3} U {2}) -> {4,5}, {4}, {3}: {3:1, 4:2, 5:1}
    expect(report, "h1", {3: 1, 4: 2, 5: 1}, ("h2", "h3", "trans"))
    # stem read by h1, h2, h3, trans: 1 + h1's {3:1,4:2,5:1} -> {4:1,5:2,6:1};
    # + h2's {3:1,4:1} -> {4:1,5:1}; + h3's {3:1} -> {4:1}; + trans's {2:1} -> {3:1}.
    # Sum: {3:1, 4:3, 5:3, 6:1}, 8 paths.
    expect(report, "stem", {3: 1, 4: 3, 5: 3, 6: 1}, ("h1", "h2", "h3", "trans"))
    # sources_at(t): a sender delivers at t when it has timestamp t-1.
    # timestamps: trans {2}, h3 {3}, h2 {3,4}, h1 {3,4,5}.
    stem = report.layers["stem"]
    assert at(stem.sources_at(2)) == ()
    assert at(stem.sources_at(3)) == ("trans",)
    assert at(stem.sources_at(4)) == ("h1", "h2", "h3")
    assert at(stem.sources_at(5)) == ("h1", "h2")
    assert at(stem.sources_at(6)) == ("h1",)
    assert at(stem.sources_at(7)) == ()
    h1 = report.layers["h1"]
    assert at(h1.sources_at(3)) == ("trans",)
    assert at(h1.sources_at(4)) == ("h2", "h3")
    assert at(h1.sources_at(5)) == ("h2",)
    # shortest: stem 3, h1 3, h2 3, h3 3, trans 2, fc 1 -> max 3, mean 15/6; longest 6
    expect_network(report, layers=6, max_shortest=3, min_shortest=1, mean_shortest=2.5, longest=6)


def test_dense_block_graph():
    report = gpa.analyze(DenseBlock(), input_shape=IMG)
    g = report.graph
    assert isinstance(g, nx.DiGraph)
    assert set(g.nodes) == {"stem", "h1", "h2", "h3", "trans", "fc", LOSS}
    # forward-direction edges: each layer to each reader reached without another layer
    assert set(g.edges) == {
        ("stem", "h1"),
        ("stem", "h2"),
        ("stem", "h3"),
        ("stem", "trans"),
        ("h1", "h2"),
        ("h1", "h3"),
        ("h1", "trans"),
        ("h2", "h3"),
        ("h2", "trans"),
        ("h3", "trans"),
        ("trans", "fc"),
        ("fc", LOSS),
    }
    # networkx agrees with the record: 8 simple paths from the stem to the loss
    assert len(list(nx.all_simple_paths(g, "stem", LOSS))) == 8
    # the shortest route stem -> trans -> fc -> <loss> has 3 edges: one per layer on it
    assert nx.shortest_path_length(g, "stem", LOSS) == 3


# ======================================================================================
# 5. Unused layers


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l5 = nn.Linear(4, 2)
        self.never = nn.Linear(4, 4)  # defined, never called

    def forward(self, x):
        a = self.l1(x)
        dead = self.l2(self.l3(a))  # called, result unused  # noqa: F841
        return self.l5(a)


def test_unused_layers():
    model = Unused()
    report = gpa.analyze(model, torch.randn(2, 4))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # forward order of first calls; the never-called layer last (docs/semantics.md §2)
    assert list(report.layers) == ["l1", "l3", "l2", "l5", "never"]
    # l5 feeds the loss: 1. l1 -> l5: 2, one path; l3 (and l2) give it no gradient, so its
    # only source is l5.
    expect(report, "l5", {1: 1}, (LOSS,))
    expect(report, "l1", {2: 1}, ("l5",))
    # l2's result is discarded; l3 feeds only l2: both receive nothing.
    expect_unreachable(report, "l2")
    expect_unreachable(report, "l3")
    # never called: calls 0, unreachable
    expect_unreachable(report, "never", calls=0)
    expect_network(
        report,
        layers=5,
        max_shortest=2,
        min_shortest=1,
        mean_shortest=1.5,
        longest=2,
        unreachable=("l2", "l3", "never"),
    )


# ======================================================================================
# 6. Several outputs and outputs= selection


class Heads(nn.Module):
    """trunk -> h1 (out 0); trunk -> h2 -> h3 (out 1); trunk -> h4 (nested out)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 4)
        self.h1 = nn.Linear(4, 2)
        self.h2 = nn.Linear(4, 4)
        self.h3 = nn.Linear(4, 2)
        self.h4 = nn.Linear(4, 2)
        self.kind = kind

    def forward(self, x):
        a = F.relu(self.trunk(x))
        o1, o2 = self.h1(a), self.h3(self.h2(a))
        if self.kind == "tuple":
            return o1, o2
        if self.kind == "dict":
            return {"main": o1, "aux": o2}
        if self.kind == "twice":
            return o1, o1
        o3 = self.h4(a)
        return (o1, [o2, {"deep": o3}])  # nested


def test_two_outputs_all():
    report = gpa.analyze(Heads("tuple"), torch.randn(2, 4))
    # h1 and h3 feed the loss: 1; h2 -> h3: 2; trunk -> h1 (2) and trunk -> h2 -> h3 (3);
    # h4 is never called.
    expect(report, "h1", {1: 1}, (LOSS,))
    expect(report, "h3", {1: 1}, (LOSS,))
    expect(report, "h2", {2: 1}, ("h3",))
    expect(report, "trunk", {2: 1, 3: 1}, ("h1", "h2"))
    expect_unreachable(report, "h4", calls=0)
    expect_network(
        report,
        layers=5,
        max_shortest=2,
        min_shortest=1,
        mean_shortest=6 / 4,
        longest=3,
        unreachable=("h4",),
    )


@pytest.mark.parametrize(("kind", "sel"), [("tuple", 0), ("dict", "main")])
def test_select_first_output(kind, sel):
    report = gpa.analyze(Heads(kind), torch.randn(2, 4), outputs=[sel])
    # only o1 = h1(trunk) feeds the loss: trunk 2 (one path), h1 1; h2, h3 get nothing
    expect(report, "h1", {1: 1}, (LOSS,))
    expect(report, "trunk", {2: 1}, ("h1",))
    expect_unreachable(report, "h2")
    expect_unreachable(report, "h3")
    assert report.network.max_shortest == 2
    assert report.network.longest == 2


@pytest.mark.parametrize(("kind", "sel"), [("tuple", 1), ("dict", "aux"), ("nested", "1.0")])
def test_select_second_output(kind, sel):
    report = gpa.analyze(Heads(kind), torch.randn(2, 4), outputs=[sel])
    # only o2 = h3(h2(trunk)): h3 1, h2 2, trunk 3; h1 (and h4) get nothing
    expect(report, "h3", {1: 1}, (LOSS,))
    expect(report, "h2", {2: 1}, ("h3",))
    expect(report, "trunk", {3: 1}, ("h2",))
    expect_unreachable(report, "h1")
    assert report.network.max_shortest == 3
    assert report.network.min_shortest == 1


def test_dict_outputs_all():
    # both dict values feed the loss: same as the tuple case
    report = gpa.analyze(Heads("dict"), torch.randn(2, 4))
    expect(report, "trunk", {2: 1, 3: 1}, ("h1", "h2"))
    expect(report, "h1", {1: 1}, (LOSS,))


def test_nested_outputs_flattened():
    report = gpa.analyze(Heads("nested"), torch.randn(2, 4))
    # o1, o2 and o3 (inside a list inside a tuple, and a dict inside that) all feed the loss:
    # trunk -> h1 (2), trunk -> h2 -> h3 (3), trunk -> h4 (2): {2: 2, 3: 1}
    expect(report, "trunk", {2: 2, 3: 1}, ("h1", "h2", "h4"))
    for head in ("h1", "h3", "h4"):
        expect(report, head, {1: 1}, (LOSS,))
    # the dotted path selects the innermost value only: trunk -> h4 -> loss
    only_deep = gpa.analyze(Heads("nested"), torch.randn(2, 4), outputs=["1.1.deep"])
    expect(only_deep, "trunk", {2: 1}, ("h4",))
    expect(only_deep, "h4", {1: 1}, (LOSS,))
    for other in ("h1", "h2", "h3"):
        expect_unreachable(only_deep, other)
    # "1" keeps everything below it: o2 and o3. trunk -> h2 -> h3 (3), trunk -> h4 (2)
    subtree = gpa.analyze(Heads("nested"), torch.randn(2, 4), outputs=[1])
    expect(subtree, "trunk", {2: 1, 3: 1}, ("h2", "h4"))
    expect_unreachable(subtree, "h1")


def test_same_output_returned_twice_is_one_path():
    report = gpa.analyze(Heads("twice"), torch.randn(2, 4))
    # (o1, o1): two routes from h1 to the loss crossing no other layer: one path
    expect(report, "h1", {1: 1}, (LOSS,))
    expect(report, "trunk", {2: 1}, ("h1",))
    # h2 -> h3 computed, result unused
    expect_unreachable(report, "h2")
    expect_unreachable(report, "h3")


# ======================================================================================
# 7. Weight sharing


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(pool(self.c(F.relu(self.c(self.stem(x))))))


def test_weight_sharing_merges_calls():
    report = gpa.analyze(Shared(), torch.randn(IMG))
    assert list(report.layers) == ["stem", "c", "fc"]
    # calls: stem, c#1, c#2, fc. Second call c#2 -> fc: path (c, fc), length 2.
    # First call c#1 -> c#2 -> fc: path (c, c, fc), length 3. Merged: {2: 1, 3: 1}.
    # Senders: of c#1 the second call of c, of c#2 fc -> ("c", "fc").
    expect(report, "c", {2: 1, 3: 1}, ("c", "fc"), calls=2)
    c = report.layers["c"]
    assert at(c.sources_at(2)) == ("fc",)  # fc has timestamp 1
    assert at(c.sources_at(3)) == ("c",)  # c has timestamp 2
    # stem -> c#1 -> c#2 -> fc: 4, one path
    expect(report, "stem", {4: 1}, ("c",))
    expect(report, "fc", {1: 1}, (LOSS,))
    # shortest: stem 4, c 2, fc 1 -> mean 7/3; longest 4
    expect_network(report, layers=3, max_shortest=4, min_shortest=1, mean_shortest=7 / 3, longest=4)


class TiedLM(nn.Module):
    def __init__(self, tie: str) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lin = nn.Linear(8, 8)
        self.tie = tie

    def forward(self, idx):
        h = F.gelu(self.lin(self.emb(idx)))
        if self.tie == "flinear":
            return F.linear(h, self.emb.weight)
        return h @ self.emb.weight.t()


@pytest.mark.parametrize("by_shape", [False, True])
@pytest.mark.parametrize("tie", ["flinear", "matmul_t"])
def test_tied_embedding(tie, by_shape):
    # by shape: an input read directly by an embedding is made int64
    model = TiedLM(tie)
    ids = torch.zeros(2, 5, dtype=torch.long)
    report = gpa.analyze(model, input_shape=(2, 5)) if by_shape else gpa.analyze(model, ids)
    assert list(report.layers) == ["emb", "lin"]
    # emb is called as a module (lookup) and functionally (output projection with its
    # weight): one record, 2 calls. Projection -> loss: (emb), length 1. Lookup -> lin ->
    # projection: (emb, lin, emb), length 3. Merged {1: 1, 3: 1}; senders <loss> and lin.
    expect(report, "emb", {1: 1, 3: 1}, (LOSS, "lin"), calls=2)
    assert report.layers["emb"].type == "Embedding"
    # lin -> projection (emb) -> loss: 2
    expect(report, "lin", {2: 1}, ("emb",))
    expect_network(report, layers=2, max_shortest=2, min_shortest=1, mean_shortest=1.5, longest=3)


# ======================================================================================
# 8. Functional layers owned by a module


class MyConv(nn.Module):
    """A conv written with F.conv2d and its own weight."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


class WSConv2d(nn.Conv2d):
    """Weight-standardized conv: the weight is normalized from the parameter first."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mc = MyConv(3, 4)
        self.ws = WSConv2d(4, 4, 3, padding=1)
        self.proj = nn.Parameter(torch.randn(4, 6))  # a parameter on the root module
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = self.ws(F.relu(self.mc(x)))
        v = pool(y)
        v = v / v.norm(dim=1, keepdim=True)  # two routes into the next layer: one path
        return self.head(v @ self.proj)


def test_functional_layers():
    report = gpa.analyze(Functional(), torch.randn(IMG))
    # four layers in a chain: mc (F.conv2d with its own weight), ws (F.conv2d with a weight
    # computed from the parameter), proj (matmul with a root parameter: named after it),
    # head. Lengths 4, 3, 2, 1, one path each: the norm's second route from ws's output to
    # proj crosses no layer, so it is the same path.
    assert list(report.layers) == ["mc", "ws", "proj", "head"]
    expect(report, "mc", {4: 1}, ("ws",))
    expect(report, "ws", {3: 1}, ("proj",))
    expect(report, "proj", {2: 1}, ("head",))
    expect(report, "head", {1: 1}, (LOSS,))
    assert report.layers["mc"].type == "MyConv"  # the owning module's class
    assert report.layers["ws"].type == "WSConv2d"
    expect_network(report, layers=4, max_shortest=4, min_shortest=1, mean_shortest=2.5, longest=4)


class NormBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)

    def forward(self, x):
        a = self.l1(x)
        a = a / a.norm(dim=-1, keepdim=True)
        b = self.l2(a + a)  # a + a: still one route-pair between l1 and l2
        return b * b.sigmoid()


def test_x_over_norm_does_not_double():
    report = gpa.analyze(NormBetween(), torch.randn(2, 4))
    # every route from l1 to the loss crosses exactly l2: one path (l1, l2), length 2;
    # b * sigmoid(b) gives l2 two routes to the loss: one path (l2), length 1.
    expect(report, "l1", {2: 1}, ("l2",))
    expect(report, "l2", {1: 1}, (LOSS,))


# ======================================================================================
# 9. Not layers: BatchNorm, PReLU, layer scale, bias adds, positional embeddings, norms


class NotLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.PReLU(4)
        self.gamma = nn.Parameter(torch.ones(1, 4, 1, 1))  # layer scale
        self.bias = nn.Parameter(torch.zeros(1, 4, 1, 1))  # bias add
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.pos = nn.Parameter(torch.zeros(1, 4, 8, 8))  # positional embedding
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.act(self.bn(self.c1(x))) * self.gamma + self.bias
        y = self.gn(self.c2(y)) + self.pos
        return self.fc(self.ln(pool(y)))


def test_norms_prelu_layer_scale_are_not_layers():
    report = gpa.analyze(NotLayers(), torch.randn(IMG))
    # only c1, c2, fc are layers; everything between passes gradient without a hop:
    # c1 -> c2 -> fc: 3, c2: 2, fc: 1.
    assert list(report.layers) == ["c1", "c2", "fc"]
    expect(report, "c1", {3: 1}, ("c2",))
    expect(report, "c2", {2: 1}, ("fc",))
    expect(report, "fc", {1: 1}, (LOSS,))
    expect_network(report, layers=3, max_shortest=3, min_shortest=1, mean_shortest=2.0, longest=3)


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(pool(x))


def test_layer_types_override():
    model = ConvBN()
    # default: conv1 -> conv2 -> fc: 3, 2, 1
    default = gpa.analyze(model, torch.randn(IMG))
    assert list(default.layers) == ["conv1", "conv2", "fc"]
    expect(default, "conv1", {3: 1}, ("conv2",))
    # BatchNorm2d counted too: conv1 -> bn1 -> conv2 -> bn2 -> fc: conv1 5, bn1 4, conv2 3,
    # bn2 2, fc 1 (every conv's length grows by the BNs above it)
    with_bn = gpa.analyze(
        model, torch.randn(IMG), layer_types=[nn.Conv2d, nn.Linear, nn.BatchNorm2d]
    )
    assert list(with_bn.layers) == ["conv1", "bn1", "conv2", "bn2", "fc"]
    expect(with_bn, "conv1", {5: 1}, ("bn1",))
    expect(with_bn, "bn1", {4: 1}, ("conv2",))
    expect(with_bn, "conv2", {3: 1}, ("bn2",))
    expect(with_bn, "bn2", {2: 1}, ("fc",))
    expect(with_bn, "fc", {1: 1}, (LOSS,))
    assert with_bn.layers["bn1"].type == "BatchNorm2d"
    expect_network(with_bn, layers=5, max_shortest=5, min_shortest=1, mean_shortest=3.0, longest=5)
    # only Conv2d: fc is no layer, so conv2 feeds the loss without a hop: conv1 2, conv2 1
    convs = gpa.analyze(model, torch.randn(IMG), layer_types=[nn.Conv2d])
    assert list(convs.layers) == ["conv1", "conv2"]
    expect(convs, "conv1", {2: 1}, ("conv2",))
    expect(convs, "conv2", {1: 1}, (LOSS,))


# ======================================================================================
# 10. leaf_modules=


class TwoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv_b(F.relu(self.bn(self.conv_a(x))))


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class LeafNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = Swish()
        self.blk = TwoConv()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(pool(self.blk(self.act(self.stem(x)))))


def test_leaf_modules():
    model = LeafNet()
    # traced through: stem -> blk.conv_a -> blk.conv_b -> fc: 4, 3, 2, 1
    plain = gpa.analyze(model, torch.randn(IMG))
    assert list(plain.layers) == ["stem", "blk.conv_a", "blk.conv_b", "fc"]
    expect(plain, "stem", {4: 1}, ("blk.conv_a",))
    expect(plain, "blk.conv_b", {2: 1}, ("fc",))
    # TwoConv as a leaf: one layer "blk" (it contains convs): stem -> blk -> fc: 3, 2, 1.
    # Swish as a leaf contains no layer: still not a layer.
    for leaves in ([TwoConv, Swish], ["blk", "act"]):
        rep = gpa.analyze(model, torch.randn(IMG), leaf_modules=leaves)
        assert list(rep.layers) == ["stem", "blk", "fc"]
        assert rep.layers["blk"].type == "TwoConv"
        expect(rep, "stem", {3: 1}, ("blk",))
        expect(rep, "blk", {2: 1}, ("fc",))
        expect(rep, "fc", {1: 1}, (LOSS,))
        expect_network(rep, layers=3, max_shortest=3, min_shortest=1, mean_shortest=2.0, longest=3)


# ======================================================================================
# 11. Integer / bool side branches


class IntSide(nn.Module):
    """a = l1(x); s = l2(x); s only becomes an integer or bool value used to index/mask a."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 5)
        self.l2 = nn.Linear(4, 5)
        width = {"argmax": 1, "index": 1, "max_indices": 1, "topk_indices": 2}
        self.head = nn.Linear(width.get(kind, 5), 2)
        self.kind = kind

    def forward(self, x):
        a, s = self.l1(x), self.l2(x)
        if self.kind == "argmax":
            v = torch.gather(a, 1, s.argmax(dim=1, keepdim=True))
        elif self.kind == "compare":
            v = a * (s > 0).float()
        elif self.kind == "index":
            v = a[torch.arange(a.size(0)), s.argmax(dim=1)].unsqueeze(1)
        elif self.kind == "long":
            v = torch.gather(a, 1, s.long().clamp(0, 4))
        elif self.kind == "to_int64":
            v = torch.gather(a, 1, s.to(torch.int64).clamp(0, 4))
        elif self.kind == "max_indices":
            _, idx = s.max(dim=1, keepdim=True)
            v = torch.gather(a, 1, idx)
        elif self.kind == "topk_indices":
            v = torch.gather(a, 1, s.topk(2, dim=1).indices)
        elif self.kind == "sort_indices":
            _, idx = s.sort(dim=1)
            v = torch.gather(a, 1, idx)
        else:
            v = torch.where(s > s.mean(), a, torch.zeros_like(a))
        return self.head(v)


INT_KINDS = [
    "argmax",
    "index",
    "compare",
    "long",
    "to_int64",
    "max_indices",
    "topk_indices",
    "sort_indices",
    "where",
]


@pytest.mark.parametrize("kind", INT_KINDS)
@WITH_INPUTS
def test_integer_side_branch(kind, with_inputs):
    model = IntSide(kind)
    report = run(model, torch.randn(2, 4), with_inputs)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # gradient reaches a (l1) through gather / mul / where; s only yields integers or bools:
    # l2 is unreachable. head 1, l1 -> head 2.
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "l1", {2: 1}, ("head",))
    expect_unreachable(report, "l2")
    expect_network(
        report,
        layers=3,
        max_shortest=2,
        min_shortest=1,
        mean_shortest=1.5,
        longest=2,
        unreachable=("l2",),
    )


class ArgmaxEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 6)
        self.table = nn.Embedding(6, 4)
        self.l1 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        idx = self.score(x).argmax(dim=1)  # an integer index into the table
        return self.head(self.table(idx) + self.l1(x))


def test_argmax_as_embedding_index():
    report = gpa.analyze(ArgmaxEmbedding(), torch.randn(2, 4))
    # table's weight gets gradient (table -> head: 2); score only produces the index: unreachable
    expect(report, "table", {2: 1}, ("head",))
    expect(report, "l1", {2: 1}, ("head",))
    expect(report, "head", {1: 1}, (LOSS,))
    expect_unreachable(report, "score")


# ======================================================================================
# 12. Shape-only arguments and values without gradient


SHAPE_OPS = {
    "expand_as": lambda a, b: b.expand_as(a),
    "zeros_like": lambda a, b: b + torch.zeros_like(a),
    "ones_like": lambda a, b: b * torch.ones_like(a),
    "randn_like": lambda a, b: b + torch.randn_like(a),
    "full_like": lambda a, b: b + torch.full_like(a, 2.0),
    "new_zeros": lambda a, b: b + a.new_zeros(a.shape),
    "new_ones_size": lambda a, b: b + a.new_ones(a.size()),
    "view_as": lambda a, b: b.reshape(-1).view_as(a),
    "reshape_as": lambda a, b: b.reshape(-1).reshape_as(a),
    "type_as": lambda a, b: b.type_as(a),
    "to_other": lambda a, b: b.to(a),
    "size": lambda a, b: b.view(a.size(0), -1),
    "shape": lambda a, b: b.reshape(a.shape[0], a.shape[1]),
    "new_empty_bernoulli": lambda a, b: b * a.new_empty(a.shape).bernoulli_(0.5),
    "empty_like_bernoulli": lambda a, b: b * torch.empty_like(a).bernoulli_(0.5) * 2.0,
}


class ShapeOnly(nn.Module):
    """a = l1(x); b = l2(a); z = op(a, b) where a gives only its shape (or a no-grad mask);
    out = l3(z)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 1 if op == "expand_as" else 4)
        self.l3 = nn.Linear(4, 3)
        self.op = op

    def forward(self, x):
        a = self.l1(x)
        b = self.l2(a)
        return self.l3(SHAPE_OPS[self.op](a, b))


@pytest.mark.parametrize("op", sorted(SHAPE_OPS))
@WITH_INPUTS
def test_shape_only_arguments_add_no_edge(op, with_inputs):
    model = ShapeOnly(op)
    report = run(model, torch.randn(2, 4), with_inputs)
    # a reaches l3 only through l2; its direct use in op gives no gradient. If it did,
    # l1 would have a second path l1-l3 (length 2). So: l1 -> l2 -> l3, one path of 3;
    # l2 -> l3: 2; l3: 1.
    expect(report, "l1", {3: 1}, ("l2",))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l3", {1: 1}, (LOSS,))
    assert report.graph.has_edge("l1", "l2")
    assert not report.graph.has_edge("l1", "l3")
    # real autograd agrees that op(a, b) passes no gradient to a
    a = torch.randn(2, 4, requires_grad=True)
    b = torch.randn(2, 1 if op == "expand_as" else 4, requires_grad=True)
    grad_a, grad_b = torch.autograd.grad(SHAPE_OPS[op](a, b).sum(), [a, b], allow_unused=True)
    assert grad_a is None and grad_b is not None


# ======================================================================================
# 13. Detach


class Detached(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 2)
        self.how = how

    def forward(self, x):
        a = self.l1(x)
        if self.how == "method":
            skip = a.detach()
        elif self.how == "function":
            skip = torch.detach(a)
        else:
            skip = a.data
        return self.l3(self.l2(a) + skip)


@pytest.mark.parametrize("how", ["method", "function", "data"])
@WITH_INPUTS
def test_detach(how, with_inputs):
    model = Detached(how)
    report = run(model, torch.randn(2, 4), with_inputs)
    check_reachability_with_autograd(report, model, torch.randn(2, 4))
    # the skip carries no gradient: l1 reaches the loss only through l2:
    # l1-l2-l3 (3), not also l1-l3 (2). l2 2, l3 1.
    expect(report, "l1", {3: 1}, ("l2",))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l3", {1: 1}, (LOSS,))
    expect_network(report, layers=3, max_shortest=3, min_shortest=1, mean_shortest=2.0, longest=3)


# ======================================================================================
# 14. Train vs eval: an auxiliary head returned only in training


class AuxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 2)
        self.aux = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        a = F.relu(self.l1(x))
        main = self.l3(self.drop(self.l2(a)))
        if self.training:
            return main, self.aux(a)
        return main


def test_train_mode_has_aux_head():
    model = AuxNet().eval()
    report = gpa.analyze(model, torch.randn(2, 4))  # train=True by default
    assert model.training is False  # the model's own mode is restored
    assert list(report.layers) == ["l1", "l2", "l3", "aux"]
    # l3 1, aux 1, l2 -> l3: 2, l1: via l2 (l1-l2-l3, 3) and via aux (l1-aux, 2)
    expect(report, "l3", {1: 1}, (LOSS,))
    expect(report, "aux", {1: 1}, (LOSS,))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l1", {2: 1, 3: 1}, ("aux", "l2"))
    assert at(report.layers["l1"].sources_at(2)) == ("aux",)
    assert at(report.layers["l1"].sources_at(3)) == ("l2",)
    # shortest: 2, 2, 1, 1 -> mean 1.5
    expect_network(report, layers=4, max_shortest=2, min_shortest=1, mean_shortest=1.5, longest=3)


def test_eval_mode_drops_aux_head():
    model = AuxNet().train()
    report = gpa.analyze(model, torch.randn(2, 4), train=False)
    assert model.training is True
    # eval: main only: l1-l2-l3 chain 3, 2, 1; aux is never called -> calls 0, unreachable,
    # listed after the called layers
    assert list(report.layers) == ["l1", "l2", "l3", "aux"]
    expect(report, "l1", {3: 1}, ("l2",))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l3", {1: 1}, (LOSS,))
    expect_unreachable(report, "aux", calls=0)
    expect_network(
        report,
        layers=4,
        max_shortest=3,
        min_shortest=1,
        mean_shortest=2.0,
        longest=3,
        unreachable=("aux",),
    )


# ======================================================================================
# 15. Attention and recurrent modules are single layers; several inputs


class SeqNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.mha(x, x, x)
        out, _ = self.lstm(h + x)
        return self.fc(out[:, -1])


def test_attention_and_lstm_are_single_layers():
    report = gpa.analyze(SeqNet(), torch.randn(2, 5, 8))
    # mha.in_proj / mha.out_proj and the LSTM's weights are not separate layers.
    assert list(report.layers) == ["mha", "lstm", "fc"]
    assert report.layers["mha"].type == "MultiheadAttention"
    # mha -> lstm -> fc: 3; lstm 2; fc 1 (x's skip around mha adds no layer)
    expect(report, "mha", {3: 1}, ("lstm",))
    expect(report, "lstm", {2: 1}, ("fc",))
    expect(report, "fc", {1: 1}, (LOSS,))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(6, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x, y):
        return self.c(self.a(x) + self.b(y))


@pytest.mark.parametrize("by_shape", [True, False])
def test_two_inputs(by_shape):
    if by_shape:
        report = gpa.analyze(TwoInputs(), input_shape=[(2, 4), (2, 6)])
    else:
        report = gpa.analyze(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 6)))
    # a -> c and b -> c: 2 each; c 1
    expect(report, "a", {2: 1}, ("c",))
    expect(report, "b", {2: 1}, ("c",))
    expect(report, "c", {1: 1}, (LOSS,))
    assert report.inputs == [
        {"shape": [2, 4], "dtype": "float32"},
        {"shape": [2, 6], "dtype": "float32"},
    ]


# ======================================================================================
# 16. Report serialisation

TOP_KEYS = {"gpa_version", "model", "tracer", "inputs", "network", "layers", "notes"}
NETWORK_KEYS = {
    "layers",
    "max_shortest",
    "min_shortest",
    "mean_shortest",
    "longest",
    "unreachable",
    "params",
    "flops",
    "count_convention",
}
LAYER_KEYS = {
    "name",
    "type",
    "calls",
    "shortest",
    "longest",
    "timestamps",
    "num_paths",
    "path_histogram",
    "sources",
    "params",
    "flops",
}


def test_to_dict_and_json():
    report = gpa.analyze(NoGradNet("no_grad"), torch.randn(IMG))
    d = report.to_dict()
    assert set(d) == TOP_KEYS
    data = json.loads(report.to_json())
    assert set(data) == TOP_KEYS
    assert data["gpa_version"] == gpa.__version__
    assert data["inputs"] == [{"shape": list(IMG), "dtype": "float32"}]
    assert set(data["network"]) == NETWORK_KEYS
    assert [layer["name"] for layer in data["layers"]] == ["c1", "c4", "c2", "c3", "fc"]
    for layer in data["layers"]:
        assert set(layer) == LAYER_KEYS
    by_name = {layer["name"]: layer for layer in data["layers"]}
    c1 = dict(by_name["c1"])
    counted = {k: c1.pop(k) for k in ("params", "flops")}
    assert counted["params"] == 3 * 4 * 3 * 3 + 4  # Conv2d(3, 4, 3): weight and bias
    # values as derived in test_no_grad_block
    assert c1 == {
        "name": "c1",
        "type": "Conv2d",
        "calls": 1,
        "shortest": 3,
        "longest": 3,
        "timestamps": [3],
        "num_paths": 1,
        "path_histogram": {"3": 1},
        "sources": ["c3"],
    }
    assert by_name["c2"]["shortest"] is None
    assert by_name["c2"]["num_paths"] == 0
    assert by_name["c2"]["path_histogram"] == {}
    assert by_name["c2"]["sources"] == []
    assert data["network"]["layers"] == 5
    assert sorted(data["network"]["unreachable"]) == ["c2", "c4"]
    assert data["network"]["max_shortest"] == 3
    # to_dict and to_json carry the same content
    assert json.loads(json.dumps(d)) == data


def test_json_byte_identical_across_runs():
    first = gpa.analyze(ResNet(2), torch.randn(IMG)).to_json()
    again = gpa.analyze(ResNet(2), torch.randn(IMG)).to_json()
    model = DenseBlock()
    third = gpa.analyze(model, input_shape=IMG).to_json()
    fourth = gpa.analyze(model, input_shape=IMG).to_json()
    assert first == again
    assert third == fourth
    assert json.loads(first)["layers"][0]["path_histogram"] == {"2": 1, "4": 2, "6": 1}


_JSON_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
import gpa, test_semantics as t
for model in (t.ResNet(2), t.DenseBlock(), t.NoGradNet("no_grad"), t.Shared()):
    print(gpa.analyze(model, torch.randn(t.IMG)).to_json())
"""


def test_json_byte_identical_across_processes():
    # separate interpreters with different string-hash seeds: no set/dict-order leaks
    script = _JSON_SCRIPT.format(tests=str(Path(__file__).parent))
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    assert outs[0].count('"gpa_version"') == 4


def test_str_is_a_table_of_layers():
    text = str(gpa.analyze(DenseBlock(), torch.randn(IMG)))
    for name in ("stem", "h1", "h2", "h3", "trans", "fc"):
        assert name in text


class ShapeOfLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)

    def forward(self, x):
        a = self.l1(x)
        return self.l2(x).view(a.shape[0], -1)


def test_layer_used_only_for_its_shape_is_unreachable():
    report = gpa.analyze(ShapeOfLayer(), torch.randn(2, 4))
    # l1's output gives only its shape: no gradient; l2 feeds the loss: 1
    expect_unreachable(report, "l1")
    expect(report, "l2", {1: 1}, (LOSS,))


# ======================================================================================
# 17. In-place operations, non-tensor outputs


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


class NonTensorOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 2)

    def forward(self, x):
        return {"logits": self.l2(self.l1(x)), "extra": None, "n": x.shape[0]}


def test_non_tensor_outputs_are_ignored():
    report = gpa.analyze(NonTensorOutputs(), torch.randn(2, 4))
    # only the logits tensor feeds the loss: l1 2, l2 1
    expect(report, "l1", {2: 1}, ("l2",))
    expect(report, "l2", {1: 1}, (LOSS,))


# ======================================================================================
# 18. The other layer types, functional calls on other modules' weights, buffers


class LayerZoo(nn.Module):
    """A chain through one module of each remaining layer type."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 3, padding=1)
        self.ct = nn.ConvTranspose2d(4, 4, 1)
        self.c3 = nn.Conv3d(4, 4, 1)
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.cell = nn.LSTMCell(6, 6)
        self.bil = nn.Bilinear(6, 6, 5)
        self.rnncell = nn.RNNCell(5, 5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):  # x: (2, 3, 8)
        h = self.ct(self.c1(x).unsqueeze(-1))  # (2, 4, 8, 1)
        h = self.c3(h.unsqueeze(-1)).flatten(2).transpose(1, 2)  # (2, 8, 4)
        out, _ = self.gru(h)
        h1, _ = self.cell(out[:, -1])
        return self.fc(self.rnncell(self.bil(h1, h1)))


def test_layer_type_zoo_chain():
    report = gpa.analyze(LayerZoo(), torch.randn(2, 3, 8))
    chain = ["c1", "ct", "c3", "gru", "cell", "bil", "rnncell", "fc"]
    assert list(report.layers) == chain
    assert [r.type for r in report.layers.values()] == [
        "Conv1d",
        "ConvTranspose2d",
        "Conv3d",
        "GRU",
        "LSTMCell",
        "Bilinear",
        "RNNCell",
        "Linear",
    ]
    # a chain of 8 layers: the i-th (0-based) has 8 - i, one path (bil reads h1 twice:
    # two routes from cell to bil crossing no other layer, one path)
    for i, name in enumerate(chain):
        sender = chain[i + 1] if i + 1 < len(chain) else LOSS
        expect(report, name, {8 - i: 1}, (sender,))


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids):
        return self.fc(self.bag(ids))


def test_embedding_bag():
    report = gpa.analyze(Bag(), torch.zeros(2, 3, dtype=torch.long))
    # bag -> fc: 2; fc 1
    expect(report, "bag", {2: 1}, ("fc",))
    assert report.layers["bag"].type == "EmbeddingBag"
    expect(report, "fc", {1: 1}, (LOSS,))


class BorrowedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.register_buffer("dct", torch.randn(4, 4))  # a buffer: no layer
        self.frozen = nn.Parameter(torch.randn(4, 4), requires_grad=False)
        self.fc = nn.Linear(4, 2)  # only its weight and bias are used, functionally

    def forward(self, x):
        h = (self.l1(x) @ self.dct) @ self.frozen
        return F.linear(h, self.fc.weight, self.fc.bias)


def test_functional_use_of_module_weights_and_buffers():
    report = gpa.analyze(BorrowedWeights(), torch.randn(2, 4))
    # @ dct: a buffer operand, not a layer. @ frozen: a parameter (frozen parameters still
    # count): layer "frozen". F.linear with fc's weight: layer "fc" (type Linear, 1 call).
    # Chain l1 -> frozen -> fc: 3, 2, 1.
    assert list(report.layers) == ["l1", "frozen", "fc"]
    expect(report, "l1", {3: 1}, ("frozen",))
    expect(report, "frozen", {2: 1}, ("fc",))
    expect(report, "fc", {1: 1}, (LOSS,))
    assert report.layers["fc"].type == "Linear"


class Latents(nn.Module):
    """Learned queries expanded to the batch and multiplied with the features."""

    def __init__(self) -> None:
        super().__init__()
        self.l_in = nn.Linear(4, 4)
        self.latents = nn.Parameter(torch.randn(3, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):  # x: (2, 5, 4)
        h = self.l_in(x)
        q = self.latents.expand(x.size(0), -1, -1)  # x gives only the batch size
        att = torch.bmm(q, h.transpose(1, 2)).softmax(-1)  # a layer: latents
        out = torch.bmm(att, h)  # no parameter operand: not a layer
        return self.fc(out.mean(1))


def test_expanded_parameter_operand():
    report = gpa.analyze(Latents(), torch.randn(2, 5, 4))
    # q is computed from the parameter alone (x contributes only its size), so the first
    # bmm is the layer "latents"; the second bmm mixes two activations: no layer.
    # fc 1; latents -> (att, second bmm) -> fc: 2; l_in feeds latents (3) and the second
    # bmm directly, i.e. fc without another layer (2).
    assert list(report.layers) == ["l_in", "latents", "fc"]
    expect(report, "latents", {2: 1}, ("fc",))
    expect(report, "l_in", {2: 1, 3: 1}, ("fc", "latents"))
    expect(report, "fc", {1: 1}, (LOSS,))


class WeightNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wn = nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.wn(x))


def test_weight_norm_parametrization():
    report = gpa.analyze(WeightNormed(), torch.randn(2, 4))
    # the weight-normed Linear is still one Linear layer: wn 2, fc 1
    assert list(report.layers) == ["wn", "fc"]
    expect(report, "wn", {2: 1}, ("fc",))
    expect(report, "fc", {1: 1}, (LOSS,))


class Encoder(nn.Module):
    def __init__(self, stacked: bool) -> None:
        super().__init__()
        self.l_in = nn.Linear(8, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False) if stacked else layer
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.enc(self.l_in(x)).mean(1))


@pytest.mark.parametrize("stacked", [False, True])
def test_torch_leaf_containing_layers_is_one_layer(stacked):
    report = gpa.analyze(Encoder(stacked), torch.randn(2, 5, 8))
    # torch.nn.TransformerEncoder(Layer) is an fx leaf containing Linear/attention layers:
    # one layer "enc". l_in -> enc -> fc: 3, 2, 1.
    assert list(report.layers) == ["l_in", "enc", "fc"]
    assert report.layers["enc"].type == (
        "TransformerEncoder" if stacked else "TransformerEncoderLayer"
    )
    expect(report, "l_in", {3: 1}, ("enc",))
    expect(report, "enc", {2: 1}, ("fc",))
    expect(report, "fc", {1: 1}, (LOSS,))


class MoreFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))  # root parameter used by F.embedding
        self.fc1 = nn.Linear(4, 4)  # used only through addmm with its weight and bias
        self.td = nn.Parameter(torch.randn(4, 4))
        self.pruned = nn.Linear(4, 4)  # used only with its weight times a mask buffer
        self.register_buffer("mask", torch.ones(4, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, ids):
        h = F.embedding(ids, self.table).mean(1)  # (2, 4)
        h = torch.addmm(self.fc1.bias, h, self.fc1.weight.t())
        h = torch.tensordot(h, self.td, dims=1)
        h = F.linear(h, self.pruned.weight * self.mask)  # parameter and buffer only
        return self.fc(h)


def test_more_functional_layers():
    report = gpa.analyze(MoreFunctional(), torch.zeros(2, 3, dtype=torch.long))
    # a chain of five layers: table (F.embedding), fc1 (addmm), td (tensordot), pruned
    # (F.linear with a weight computed from a parameter and a buffer), fc: 5, 4, 3, 2, 1
    chain = ["table", "fc1", "td", "pruned", "fc"]
    assert list(report.layers) == chain
    for i, name in enumerate(chain):
        sender = chain[i + 1] if i + 1 < len(chain) else LOSS
        expect(report, name, {5 - i: 1}, (sender,))
    assert report.layers["fc1"].type == "Linear"
    assert report.layers["pruned"].type == "Linear"


class DeepResidual(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.res = nn.ModuleList(nn.Linear(4, 4) for _ in range(depth))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.stem(x)
        for layer in self.res:
            y = y + layer(y)
        return self.fc(y)


def test_exact_path_counts_beyond_64_bits():
    depth = 70
    report = gpa.analyze(DeepResidual(depth), input_shape=(2, 4))
    # each residual step is identity (0 layers) or the layer (1): the stem has 2^70 paths,
    # C(70, k) of length 2 + k (stem, k residual layers, fc)
    stem = report.layers["stem"]
    assert stem.num_paths == 2**70
    assert dict(stem.path_histogram) == {2 + k: math.comb(depth, k) for k in range(depth + 1)}
    assert (stem.shortest, stem.longest) == (2, depth + 2)
    # res.i: itself + the remaining depth-1-i steps + fc: {2 + k: C(depth-1-i, k)}
    expect(
        report,
        "res.0",
        {2 + k: math.comb(depth - 1, k) for k in range(depth)},
        ("fc", *(f"res.{j}" for j in range(1, depth))),
    )
    data = json.loads(report.to_json())
    assert data["layers"][0]["num_paths"] == 2**70
    assert data["layers"][0]["path_histogram"]["37"] == math.comb(70, 35)


class Recurrent(nn.Module):
    """One root parameter applied three times in a loop (ALBERT-style sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        for _ in range(3):
            x = torch.tanh(F.linear(x, self.w))
        return x


def test_functional_weight_sharing_in_a_loop():
    report = gpa.analyze(Recurrent(), torch.randn(2, 4))
    # calls w1 -> w2 -> w3 -> loss: w3 has (w) 1, w2 (w, w) 2, w1 (w, w, w) 3.
    # One record: {1: 1, 2: 1, 3: 1}, senders <loss> (for w3) and w (for w1, w2).
    expect(report, "w", {1: 1, 2: 1, 3: 1}, (LOSS, "w"), calls=3)
    assert at(report.layers["w"].sources_at(1)) == (LOSS,)
    assert at(report.layers["w"].sources_at(2)) == ("w",)
    assert at(report.layers["w"].sources_at(3)) == ("w",)
    expect_network(report, layers=1, max_shortest=1, min_shortest=1, mean_shortest=1.0, longest=3)


class Trident(nn.Module):
    """One conv's weight in two branches with different dilations (TridentNet-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        s = self.stem(x)
        wide = F.conv2d(s, self.conv.weight, self.conv.bias, padding=2, dilation=2)
        return self.fc(pool(self.conv(s) + wide))


def test_module_and_functional_calls_of_one_weight():
    report = gpa.analyze(Trident(), torch.randn(IMG))
    # conv: a module call and a functional call with its weight: 2 calls, each with the
    # path (conv call, fc): {2: 2}. stem -> either call -> fc: two paths of 3.
    assert list(report.layers) == ["stem", "conv", "fc"]
    expect(report, "conv", {2: 2}, ("fc",), calls=2)
    expect(report, "stem", {3: 2}, ("conv",))
    expect(report, "fc", {1: 1}, (LOSS,))


def test_nested_leaf_by_name():
    # blocks.0 of a 2-block ResNet as a leaf: one opaque layer (its identity is hidden).
    report = gpa.analyze(ResNet(2), torch.randn(IMG), leaf_modules=["blocks.0"])
    assert list(report.layers) == ["stem", "blocks.0", "blocks.1.conv1", "blocks.1.conv2", "fc"]
    assert report.layers["blocks.0"].type == "BasicBlock"
    # block 2 as before: conv2 2 (fc), conv1 3 (conv2).
    expect(report, "blocks.1.conv2", {2: 1}, ("fc",))
    expect(report, "blocks.1.conv1", {3: 1}, ("blocks.1.conv2",))
    # blocks.0's output: block 2's identity -> fc (2) or its convs -> fc (4)
    expect(report, "blocks.0", {2: 1, 4: 1}, ("fc", "blocks.1.conv1"))
    # the stem reaches the loss only through the leaf: 1 + {2, 4} -> {3, 5}
    expect(report, "stem", {3: 1, 5: 1}, ("blocks.0",))


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


class AllDetached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)

    def forward(self, x):
        return self.l1(x).detach()


def test_no_reachable_layer():
    report = gpa.analyze(AllDetached(), torch.randn(2, 4))
    # the only output is detached: l1 gets nothing; the shortest/longest summaries are over
    # an empty set of reachable layers: None (null in JSON)
    expect_unreachable(report, "l1")
    expect_network(
        report,
        layers=1,
        max_shortest=None,
        min_shortest=None,
        mean_shortest=None,
        longest=None,
        unreachable=("l1",),
    )
    assert json.loads(report.to_json())["network"]["max_shortest"] is None


def test_sources_order():
    """docs/semantics.md §4: sources are listed in forward order (the senders' order of first
    call), ``<loss>`` last; sources_at(t) is a sub-sequence of them."""
    dense = gpa.analyze(DenseBlock(), torch.randn(IMG))
    assert tuple(dense.layers["stem"].sources) == ("h1", "h2", "h3", "trans")
    assert tuple(dense.layers["stem"].sources_at(4)) == ("h1", "h2", "h3")
    resnet = gpa.analyze(ResNet(3), torch.randn(IMG))
    assert tuple(resnet.layers["stem"].sources) == (
        "blocks.0.conv1",
        "blocks.1.conv1",
        "blocks.2.conv1",
        "fc",
    )
    tied = gpa.analyze(TiedLM("flinear"), torch.zeros(2, 5, dtype=torch.long))
    assert tuple(tied.layers["emb"].sources) == ("lin", LOSS)
    aux = gpa.analyze(AuxNet(), torch.randn(2, 4))
    assert tuple(aux.layers["l1"].sources) == ("l2", "aux")


class LowRank(nn.Module):
    """A weight factorized as A @ B, then applied to the features."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(4, 2))
        self.B = nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        return x @ (self.A @ self.B)


class LowRankNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.lr = LowRank()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.lr(self.l1(x)))


@WITH_INPUTS
def test_weight_computed_by_matmul_of_parameters(with_inputs):
    report = run(LowRankNet(), torch.randn(2, 4), with_inputs)
    # A @ B mixes no features: both operands are parameters, it only computes the weight
    # (an op that transforms a weight: no layer, no call). x @ W is the one layer call of
    # lr. Chain l1 -> lr -> fc: 3, 2, 1, one path each.
    assert list(report.layers) == ["l1", "lr", "fc"]
    expect(report, "lr", {2: 1}, ("fc",), calls=1)
    expect(report, "l1", {3: 1}, ("lr",))
    expect(report, "fc", {1: 1}, (LOSS,))


# ======================================================================================
# 19. Two common blocks: squeeze-and-excitation gating and a transformer block


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, 2)
        self.fc2 = nn.Linear(2, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(pool(x)))))
        return x * s[:, :, None, None]


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.se = SE(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(pool(self.c2(self.se(self.c1(x)))))


def test_squeeze_excitation_gating():
    report = gpa.analyze(SENet(), torch.randn(IMG))
    # fc 1; c2 -> fc: 2; the gate multiplies c1's output, so fc2 -> (mul) -> c2: 3;
    # fc1 -> fc2: 4. c1's output reaches c2 through the multiplication (3) and fc1 (5).
    assert list(report.layers) == ["c1", "se.fc1", "se.fc2", "c2", "fc"]
    expect(report, "fc", {1: 1}, (LOSS,))
    expect(report, "c2", {2: 1}, ("fc",))
    expect(report, "se.fc2", {3: 1}, ("c2",))
    expect(report, "se.fc1", {4: 1}, ("se.fc2",))
    expect(report, "c1", {3: 1, 5: 1}, ("c2", "se.fc1"))
    # shortest 3, 4, 3, 2, 1: max 4 (fc1), mean 13/5; longest 5 (c1)
    expect_network(
        report, layers=5, max_shortest=4, min_shortest=1, mean_shortest=13 / 5, longest=5
    )


class TransformerBlock(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(6, d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.ln2 = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):  # x: (2, 5, 6)
        h = self.inp(x)
        u = self.ln1(h)
        att = (self.q(u) @ self.k(u).transpose(1, 2) * 8**-0.5).softmax(-1)
        a = h + self.proj(att @ self.v(u))
        o = a + self.fc2(F.gelu(self.fc1(self.ln2(a))))
        return self.head(o.mean(1))


def test_transformer_block():
    report = gpa.analyze(TransformerBlock(), torch.randn(2, 5, 6))
    assert list(report.layers) == ["inp", "q", "k", "v", "proj", "fc1", "fc2", "head"]
    # head 1. fc2 -> (residual) -> head: 2. fc1 -> fc2: 3.
    # a is read by fc1 (then fc2, head: 3 layers) and by the residual (head: 1 layer).
    # proj -> a: {1 + 3, 1 + 1} = {2: 1, 4: 1}, sources fc1, head.
    # q, k, v: the two activation-activation matmuls are no layers, so each reaches proj
    # directly: 1 + {2, 4} = {3: 1, 5: 1}.
    # inp -> q, k, v (1 + {3, 5} each) and -> a (1 + {3, 1}): {2: 1, 4: 4, 6: 3}.
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "fc2", {2: 1}, ("head",))
    expect(report, "fc1", {3: 1}, ("fc2",))
    expect(report, "proj", {2: 1, 4: 1}, ("fc1", "head"))
    for name in ("q", "k", "v"):
        expect(report, name, {3: 1, 5: 1}, ("proj",))
    expect(report, "inp", {2: 1, 4: 4, 6: 3}, ("q", "k", "v", "fc1", "head"))
    # shortest: inp 2, q/k/v 3, proj 2, fc1 3, fc2 2, head 1 -> sum 19 over 8
    expect_network(
        report, layers=8, max_shortest=3, min_shortest=1, mean_shortest=19 / 8, longest=6
    )
