"""Gradient paths of worked examples: chains, residual and dense blocks, shared weights.

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md); none was copied from gpa's output. The conventions and the
helpers (``expect``, ``expect_network``, ``at`` ...) are in tests/semantics.py.
"""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from tests.frontends.test_inputs_outputs import AuxNet
from tests.semantics import IMG, LOSS, at, expect, expect_network, pool

# ======================================================================================
# Chain of N convs and a final linear


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
# ResNet with B basic blocks


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
# DenseNet-like concatenation block


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
# Weight sharing


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


# ======================================================================================
# Two common blocks: squeeze-and-excitation gating and a transformer block


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


# ======================================================================================
# Exact path counts beyond 64 bits; the order of sources


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
