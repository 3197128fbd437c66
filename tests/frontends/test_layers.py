"""What is a layer: module and functional layers, what is not one, leaf modules, layer types.

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md); none was copied from gpa's output. The conventions and the
helpers (``expect``, ``expect_network``, ``at`` ...) are in tests/semantics.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import gpa
from gpa.errors import TraceError
from tests.core.test_paths import ResNet
from tests.frontends.every_tracer import EVERY_TRACER, TRACERS, layer_records
from tests.semantics import (
    IMG,
    LOSS,
    WITH_INPUTS,
    check_reachability_with_autograd,
    expect,
    expect_network,
    expect_unreachable,
    pool,
    run,
)

# ======================================================================================
# Functional layers owned by a module


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


class FunctionalMLP(nn.Module):
    """Three weights applied with ``F.linear``: ``x -> w1 -> relu -> w2 -> relu -> w3``."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = (nn.Parameter(torch.randn(4, 4)) for _ in range(3))

    def forward(self, x):
        return F.linear(F.relu(F.linear(F.relu(F.linear(x, self.w1)), self.w2)), self.w3)


class ListedMLP(nn.Module):
    """The same MLP with its weights in an ``nn.ParameterList``."""

    def __init__(self) -> None:
        super().__init__()
        self.ws = nn.ParameterList([torch.randn(4, 4) for _ in range(3)])

    def forward(self, x):
        for i, w in enumerate(self.ws):
            x = F.linear(F.relu(x) if i else x, w)
        return x


class LoRALinear(nn.Module):
    """A frozen linear plus a low-rank update written by hand: ``base(x) + B(A(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4).requires_grad_(False)
        self.A, self.B = nn.Parameter(torch.randn(2, 4)), nn.Parameter(torch.zeros(4, 2))

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A), self.B)


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.head = inner, nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.inner(x))


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_weights_of_one_module_read_by_functional_layers_are_layers_of_their_own(tracer):
    """§2: several weights of one module that is no layer module, each read by a functional
    layer, are several layers (they were one record, its calls the three weights', its
    shortest path the last one's: max_shortest 2 instead of 4, as if the weights were
    shared). By hand, for the MLP and its list: head 1, then the weights 2, 3, 4 from the
    last to the first, one path each; for LoRA: head 1; base and B 2 (into head); A 3."""
    x = torch.randn(2, 4)
    for inner, names in ((FunctionalMLP(), ("w1", "w2", "w3")), (ListedMLP(), ("0", "1", "2"))):
        model = Wrapped(inner)
        report = gpa.analyze(model, (x,), tracer=tracer)
        first, second, third = (
            f"inner.{'ws.' if isinstance(inner, ListedMLP) else ''}{n}" for n in names
        )
        assert list(report.layers) == [first, second, third, "head"]
        holder = "ParameterList" if isinstance(inner, ListedMLP) else "FunctionalMLP"
        assert {r.type for n, r in report.layers.items() if n != "head"} == {holder}
        expect(report, third, {2: 1}, ("head",))
        expect(report, second, {3: 1}, (third,))
        expect(report, first, {4: 1}, (second,))
        assert report.network.max_shortest == 4
        check_reachability_with_autograd(report, model, x)
    model = Wrapped(LoRALinear())
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert list(report.layers) == ["inner.base", "inner.A", "inner.B", "head"]
    expect(report, "inner.base", {2: 1}, ("head",))
    expect(report, "inner.B", {2: 1}, ("head",))
    expect(report, "inner.A", {3: 1}, ("inner.B",))


def test_the_one_weight_of_a_custom_layer_is_named_by_its_module():
    """One weight of a module read by functional layers, even twice (weight sharing), is
    that module's record (MyConv above): by hand, mc's second call feeds head (2), its
    first call the second (3)."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mc, self.head = MyConv(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(pool(self.mc(F.relu(self.mc(x)))))

    report = gpa.analyze(Twice(), torch.randn(1, 3, 8, 8))
    assert list(report.layers) == ["mc", "head"]
    expect(report, "mc", {2: 1, 3: 1}, ("head", "mc"), calls=2)


class Projection(nn.Module):
    def __init__(self, w: nn.Parameter) -> None:
        super().__init__()
        self.w = w

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_weight_two_modules_hold_goes_by_its_first_name(tracer):
    """One parameter held by two modules that are no layer modules (SAM's shared
    positional embedding), read through the second: export named the record after the
    module it read it by, fx and autograd after the first. Every frontend now names it by
    the parameter's first name (as ``named_parameters`` does). By hand: a 2, head 1."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = nn.Parameter(torch.randn(4, 4))
            self.a, self.b, self.head = Projection(w), Projection(w), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.b(x))

    report = gpa.analyze(Shared(), (torch.randn(3, 4),), tracer=tracer)
    assert list(report.layers) == ["a", "head"]
    expect(report, "a", {2: 1}, ("head",))


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
# Not layers: BatchNorm, PReLU, layer scale, bias adds, positional embeddings, norms


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
# leaf_modules=


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


# ======================================================================================
# Attention and recurrent modules are single layers


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


# ======================================================================================
# The other layer types, functional calls on other modules' weights, buffers


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


# The feature-mixing functions of §2 under other names, each of data h (2, 4) by a weight
# W (4, 4); every one gives h @ W.T or h @ W, or a product of one row of each.
_MIXING_ELSEWHERE = {
    "linalg.matmul": lambda h, w: torch.linalg.matmul(h, w),
    "inner": lambda h, w: torch.inner(h, w),
    "Tensor.inner": lambda h, w: h.inner(w),
    "multi_dot": lambda h, w: torch.linalg.multi_dot([h, w]),
    "chain_matmul": lambda h, w: torch.chain_matmul(h, w),
    "dot": lambda h, w: torch.dot(h[0], w[0]).expand(2, 4),
    "Tensor.dot": lambda h, w: h[0].dot(w[0]).expand(2, 4),
    "vdot": lambda h, w: torch.vdot(h[0], w[0]).expand(2, 4),
    "Tensor.addbmm": lambda h, w: h.new_zeros(2, 4).addbmm(h[None], w[None]),
    "Tensor.__rmatmul__": lambda h, w: w.__rmatmul__(h),
}


class MixedElsewhere(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.W = nn.Parameter(torch.randn(4, 4))
        self.how = how

    def forward(self, x):
        return self.head(_MIXING_ELSEWHERE[self.how](self.pre(x), self.W))


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
@pytest.mark.parametrize("how", list(_MIXING_ELSEWHERE))
def test_feature_mixing_functions_under_other_names_are_layers(how, tracer):
    """Found by a new user: fx and export made no layer of ``torch.inner(h, W)``,
    ``torch.linalg.matmul`` (``torch.matmul`` under another name), ``multi_dot``,
    ``chain_matmul``, ``dot`` or ``vdot`` given a weight, and put ``pre`` one
    step too close; the autograd frontend, reading the mm or dot node backward runs, made
    one. By hand: chain pre -> W -> head, 3, 2, 1, one path each."""
    report = gpa.analyze(MixedElsewhere(how), torch.randn(2, 4), tracer=tracer)
    assert list(report.layers) == ["pre", "W", "head"]
    expect(report, "pre", {3: 1}, ("W",))
    expect(report, "W", {2: 1}, ("head",))
    expect(report, "head", {1: 1}, (LOSS,))


class MixedUnseen(MixedElsewhere):
    """``MixedElsewhere`` with the mixing call made under ``no_grad``."""

    def forward(self, x):
        with torch.no_grad():
            mixed = _MIXING_ELSEWHERE[self.how](self.pre(x), self.W)
        return self.head(mixed)


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
@pytest.mark.parametrize("how", list(_MIXING_ELSEWHERE))
def test_feature_mixing_functions_unseen_by_gradient_are_listed(how, tracer):
    """Found by a session: under ``no_grad`` the autograd frontend, which finds such a call
    by its function's name, missed ``torch.linalg.matmul`` (fx and export listed it), so
    ``W`` vanished from its report. By hand: ``pre`` and ``W`` are called once and reached
    by no gradient (§3); ``head`` is at 1."""
    report = gpa.analyze(MixedUnseen(how), torch.randn(2, 4), tracer=tracer)
    assert list(report.layers) == ["pre", "W", "head"]
    expect_unreachable(report, "pre")
    expect_unreachable(report, "W")
    expect(report, "head", {1: 1}, (LOSS,))


class Bagged(nn.Module):
    """``head(bag(w, i) + pre(x))``, the bag of rows of ``w`` made by ``how``: a layer
    function with several results, of which the model uses the first."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.w = nn.Parameter(torch.randn(10, 4))

    def forward(self, x, i):
        offsets = torch.tensor([0, 3])
        if self.how == "functional":
            bag = F.embedding_bag(i, self.w, offsets)
        elif self.how == "first result":
            bag = torch.embedding_bag(self.w, i, offsets, False, 1)[0]
        else:  # (fx cannot unpack a proxy: the other frontends read it)
            bag, *_ = torch.embedding_bag(self.w, i, offsets, False, 1)
        return self.head(bag + self.pre(x))


@pytest.mark.parametrize(
    ("how", "channels", "tracer"),
    [
        (how, channels, tracer)
        for how in ("functional", "first result", "unpacked")
        for channels in (False, True)
        for tracer in TRACERS
        # fx cannot unpack a proxy (its own error); channels follow an fx graph
        if not (tracer == "fx" and how == "unpacked") and not (channels and tracer == "autograd")
    ],
)
def test_a_layer_function_with_several_results_passes_gradient_through_its_call(
    how, channels, tracer
):
    """Found by a session: ``torch.embedding_bag`` returns four tensors; one result of a
    function with several results came straight from the inputs it reads, so under export
    (which records ``F.embedding_bag`` so) and fx the bag's layer ``w`` was reached by no
    gradient. A layer call's results come from the call, as a module's do (§2). By hand:
    ``w`` and ``pre`` at 2 (one path each, through ``head``), ``head`` at 1."""
    x, i = torch.randn(2, 4), torch.tensor([1, 2, 3, 4, 5, 6])
    report = gpa.analyze(Bagged(how), (x, i), tracer=tracer, channels=channels)
    assert list(report.layers) == ["w", "pre", "head"]
    expect(report, "w", {2: 1}, ("head",))
    expect(report, "pre", {2: 1}, ("head",))
    expect(report, "head", {1: 1}, (LOSS,))


class Scaled(nn.Module):
    """``head(inner(pre(x), s))`` with ``s`` a 0-d parameter: a layer scale; ``no_grad``:
    the scale computed without gradient beside ``head(pre(x))``."""

    def __init__(self, no_grad: bool = False) -> None:
        super().__init__()
        self.no_grad = no_grad
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.s = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        h = self.pre(x)
        if not self.no_grad:
            return self.head(torch.inner(h, self.s))
        with torch.no_grad():
            scaled = torch.inner(h, self.s)
        return self.head(h).sum() + scaled.sum()


@EVERY_TRACER
@pytest.mark.parametrize("no_grad", [False, True])
def test_inner_of_a_number_is_no_layer(tracer, no_grad):
    """Found by a review: ``torch.inner`` of a 0-d operand is documented as ``mul``, a
    scale that mixes nothing (§2), as autograd records it; fx and export made ``s`` a
    layer; under ``no_grad`` (found by a later session) autograd did. By hand: pre -> head
    (2)."""
    report = gpa.analyze(Scaled(no_grad), torch.randn(3, 4), tracer=tracer)
    assert list(report.layers) == ["pre", "head"]
    expect(report, "pre", {2: 1}, ("head",))


class Chained(nn.Module):
    """Three matrices multiplied at once, two of them weights (``how``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.W1, self.W2 = nn.Parameter(torch.randn(4, 2)), nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        h = self.pre(x)
        if self.how == "multi_dot":
            return self.head(torch.linalg.multi_dot([h, self.W1, self.W2]))
        return self.head(torch.chain_matmul(h, self.W1, self.W2))


@pytest.mark.filterwarnings("ignore:.*chain_matmul is deprecated")
@pytest.mark.parametrize("how", ["multi_dot", "chain_matmul"])
def test_three_matrices_at_once_are_read_in_torchs_order(how):
    """Found by a review: fx and export read ``multi_dot([h, W1, W2])`` as one call of
    W1 (W2 missing, pre one step too close); torch picks the order by the sizes. fx and
    export refuse (auto moves on to autograd, which follows the run). By hand, as torch
    multiplies (h @ W1) @ W2 here: pre -> W1 -> W2 -> head: 4, 3, 2, 1."""
    model, x = Chained(how), torch.randn(3, 4)
    for tracer in ("fx", "export"):
        with pytest.raises(TraceError, match="multiplies 3 matrices at once"):
            gpa.analyze(model, x, tracer=tracer)
    report = gpa.analyze(model, x)
    assert report.tracer == "autograd"
    expect(report, "pre", {4: 1}, ("W1",))
    expect(report, "W1", {3: 1}, ("W2",))
    expect(report, "W2", {2: 1}, ("head",))


def _factored(h, a, b):
    """The factors applied in a function fx records whole (traced into by value, §1.1)."""
    if h.shape[-1] != a.shape[0]:  # a branch on a shape: fx alone cannot trace it
        raise ValueError("the factors do not fit")
    return torch.einsum("bi,ir,ro->bo", h, a, b)


torch.fx.wrap("_factored")


class LowRankFactors(nn.Module):
    """Two factors of a weight, applied by one ``einsum`` of three operands (``how``: the
    data first, its output implicit, the operands in a list)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.A, self.B = nn.Parameter(torch.randn(4, 2)), nn.Parameter(torch.randn(2, 4))

    def forward(self, h):
        if self.how == "implicit":
            return torch.einsum("bi,ir,ro", h, self.A, self.B)
        if self.how == "list":
            return torch.einsum("bi,ir,ro->bo", [h, self.A, self.B])
        if self.how == "ellipsis":
            return torch.einsum("...i,ir,ro->...o", h, self.A, self.B)
        if self.how == "aten":
            return torch.ops.aten.einsum("bi,ir,ro->bo", [h, self.A, self.B])
        if self.how == "wrapped":
            return _factored(h, self.A, self.B)
        return torch.einsum("bi,ir,ro->bo", h, self.A, self.B)


class FactoredNet(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.pre, self.lr, self.head = nn.Linear(4, 4), LowRankFactors(how), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lr(self.pre(x)))


@EVERY_TRACER
@pytest.mark.parametrize("how", ["data_first", "implicit", "list", "ellipsis", "aten", "wrapped"])
def test_an_einsum_of_two_factors_is_a_call_of_each_in_turn(how, tracer):
    """Found by a new user: fx and export read ``einsum("bi,ir,ro->bo", h, A, B)`` as one
    call of ``lr`` (pre at 3); autograd reads the contractions torch makes, left to right:
    ``h`` meets ``A`` (a call of lr.A), the result meets ``B`` (a call of lr.B), as
    ``(h @ A) @ B`` written out. By hand: head 1, lr.B 2, lr.A 3, pre 4, one path each;
    every frontend as the autograd frontend. A review found three forms left whole: an
    ellipsis, ATen's ``einsum`` called in the model's code, and the call inside a function
    fx keeps whole (traced into by value)."""
    model = FactoredNet(how)
    report = gpa.analyze(model, torch.randn(2, 4), tracer=tracer)
    assert list(report.layers) == ["pre", "lr.A", "lr.B", "head"]
    expect(report, "pre", {4: 1}, ("lr.A",))
    expect(report, "lr.A", {3: 1}, ("lr.B",))
    expect(report, "lr.B", {2: 1}, ("head",))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


class ScaledThenMixed(nn.Module):
    """``einsum("bi,i,ij->bj", h, s, A)``: h scaled by s, then mixed by A."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(3, 2)
        self.s, self.A = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return self.head(torch.einsum("bi,i,ij->bj", self.pre(x), self.s, self.A))


@EVERY_TRACER
def test_an_einsum_step_summing_nothing_across_is_no_layer(tracer):
    """Found by a review: the first contraction, ``"bi,i->bi"``, sums nothing the two
    share — torch multiplies, a scale (§2: a weight times data is no layer), as autograd
    records it (a mul) —, yet fx and export made s a layer. By hand: pre -> A -> head (3),
    A 2; s no layer."""
    report = gpa.analyze(ScaledThenMixed(), torch.randn(2, 4), tracer=tracer)
    assert list(report.layers) == ["pre", "A", "head"]
    expect(report, "pre", {3: 1}, ("A",))
    expect(report, "A", {2: 1}, ("head",))


class BilinearForm(nn.Module):
    """``h1ᵀ W h2`` by one ``einsum``: ``h1`` meets ``W`` first, ``h2`` the result."""

    def __init__(self) -> None:
        super().__init__()
        self.p1, self.p2, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(1, 2)
        self.W = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        form = torch.einsum("bi,ij,bj->b", self.p1(x), self.W, self.p2(x))
        return self.head(form[:, None])


@EVERY_TRACER
def test_the_operand_an_einsum_meets_after_its_weight_does_not_cross_it(tracer):
    """The data an ``einsum`` of three operands meets after the weight's contraction is
    multiplied by its result, not mixed by the weight: p1 -> W -> head (3), W 2, p2 ->
    head (2), as the autograd frontend reads the run."""
    model = BilinearForm()
    report = gpa.analyze(model, torch.randn(3, 4), tracer=tracer)
    expect(report, "p1", {3: 1}, ("W",))
    expect(report, "W", {2: 1}, ("head",))
    expect(report, "p2", {2: 1}, ("head",))
    assert layer_records(report) == layer_records(
        gpa.analyze(model, torch.randn(3, 4), tracer="autograd")
    )


def _biased(function: str, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``function`` (a feature-mixing function adding a bias) of ``h`` (2×4), the mixed
    operand ``w`` (4×4, a parameter or data) and the bias ``b`` (4)."""
    if function == "linear":
        return F.linear(h, w, b)
    if function == "addmm":
        return torch.addmm(b, h, w)
    if function == "addmv":
        return torch.addmv(b[:2], h, w[0])
    if function == "baddbmm":
        return torch.baddbmm(b, h[None], w[None])
    return F.conv1d(h[..., None], w[..., None], b)  # conv1d


class Biased(nn.Module):
    """``pre(x)`` mixed by ``function`` with a bias ``b`` it only adds; ``how``:
    ``no_grad`` (the call without gradient, beside ``head(pre(x))``), ``bias detached``
    (the weight trained), ``beside data`` (the bias, detached, beside a product of data)."""

    def __init__(self, function: str, how: str) -> None:
        super().__init__()
        self.function, self.how = function, how
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.w, self.b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        h = self.pre(x)
        if self.how == "no_grad":
            with torch.no_grad():
                mixed = _biased(self.function, h, self.w, self.b)
        elif self.how == "bias detached":
            mixed = _biased(self.function, h, self.w, self.b.detach())
        else:
            mixed = _biased(self.function, h, h.T @ h, self.b.detach())
        return self.head(h).sum() + mixed.sum()


@pytest.mark.parametrize("how", ["no_grad", "bias detached", "beside data"])
@pytest.mark.parametrize("function", ["linear", "addmm", "addmv", "baddbmm", "conv1d"])
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_the_bias_a_call_only_adds_is_no_weight_in_any_mode(tracer, function, how):
    """Found by a review: where autograd records no edge to a weight (the call under
    ``no_grad``, a detached operand), the autograd frontend read every operand, the bias
    a call only adds too: under ``no_grad`` it named ``addmm(b, h, w)``'s layer ``b``;
    with the bias detached it took ``b`` for the weight (``pre`` one layer off its
    source); beside a product of data it made the bias a layer. §2: the bias a call adds
    (``F.linear``'s, a convolution's, ``addmm``'s ``input``) makes no layer. By hand:
    ``no_grad``: ``w`` called once, reached by no gradient, ``pre`` at 2 through
    ``head``; ``bias detached``: ``w`` and ``head`` at 1, ``pre`` at 2 through each;
    ``beside data``: no layer but ``pre`` and ``head``, ``pre`` at 1 (the product) and 2
    (``head``)."""
    report = gpa.analyze(Biased(function, how), torch.randn(2, 4), tracer=tracer)
    if how == "beside data":
        assert list(report.layers) == ["pre", "head"]
        expect(report, "pre", {1: 1, 2: 1}, ("head", LOSS))
        return
    assert list(report.layers) == ["pre", "w", "head"]
    if how == "no_grad":
        expect_unreachable(report, "w")
        expect(report, "pre", {2: 1}, ("head",))
    else:
        expect(report, "w", {1: 1}, (LOSS,))
        expect(report, "pre", {2: 2}, ("w", "head"))


class FrozenFactors(nn.Module):
    """``pre(x)`` and two weights of one module in an ``einsum`` of three operands
    (``order``: where the data stands), the weights frozen by ``how``: ``detached`` (each
    weight ``.detach()``-ed, gradient still flows through the data) or ``no_grad`` (the
    whole call run without gradient, beside ``head(pre(x))``)."""

    def __init__(self, how: str, equation: str, data_at: int, shapes: tuple) -> None:
        super().__init__()
        self.how, self.equation, self.data_at = how, equation, data_at
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.A, self.B = (nn.Parameter(torch.randn(*shape)) for shape in shapes)

    def forward(self, x):
        h = self.pre(x)
        weights = [self.A, self.B]
        if self.how == "detached":
            weights = [w.detach() for w in weights]
        operands = [*weights[: self.data_at], h, *weights[self.data_at :]]
        if self.how == "no_grad":
            with torch.no_grad():
                mixed = torch.einsum(self.equation, *operands)
            return self.head(h).sum() + mixed.sum()
        return torch.einsum(self.equation, *operands).sum()


# equation, where the data stands, the weights' shapes, the layers by hand (in call order)
_FROZEN_FACTORS = {
    "low rank": ("bi,ir,ro->bo", 0, ((4, 2), (2, 3)), ["A", "B"]),
    "scaled, then mixed": ("bi,i,io->bo", 0, ((4,), (4, 3)), ["B"]),
    "mixed, then scaled": ("bi,io,o->bo", 0, ((4, 3), (3,)), ["A"]),
    "mixed twice to a number": ("bi,ir,r->b", 0, ((4, 2), (2,)), ["A", "B"]),
    "weights first": ("ir,ro,bi->bo", 2, ((4, 2), (2, 3)), ["A"]),
}


@pytest.mark.parametrize("how", ["detached", "no_grad", "trained"])
@pytest.mark.parametrize("case", list(_FROZEN_FACTORS))
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_an_einsum_of_frozen_factors_is_a_call_of_each_in_turn(case, how, tracer):
    """Found by a session: with its weights frozen (``.detach()``, or the call under
    ``no_grad``), the autograd frontend read an ``einsum`` of three operands as one call
    naming every weight — ``"bi,ir,ro->bo"`` detached gave ``A`` two calls at 1 and no
    ``B`` (fx and export: ``A`` at 2, ``B`` at 1) —, and took the scale ``s`` of
    ``"bi,i,io->bo"`` for a layer; trained, it named the weight ``A @ B`` of
    ``"ir,ro,bi->bo"`` by ``B``, the order torch's kernel reads them in, where §2 names a
    weight of one module's parameters by the first the call reads (``A``).

    By hand, as the contractions torch makes, left to right (§2): a step meeting data and a
    weight and summing across is a call of the weight; a step summing nothing (``"bi,i"``)
    is a product; weights meeting alone (``"ir,ro"``) make one weight. Gradient flows
    through the data (trained, detached): the last call at 1, the one before at 2, ``pre``
    one further; under ``no_grad`` the calls are listed, reached by no gradient, and
    ``pre`` is at 2 through ``head``."""
    equation, data_at, shapes, layers = _FROZEN_FACTORS[case]
    model = FrozenFactors(how, equation, data_at, shapes)
    report = gpa.analyze(model, torch.randn(2, 4), tracer=tracer)
    if how == "no_grad":
        assert list(report.layers) == ["pre", *layers, "head"]
        for name in layers:
            expect_unreachable(report, name)
        expect(report, "pre", {2: 1}, ("head",))
        return
    assert list(report.layers) == ["pre", *layers, "head"]
    expect_unreachable(report, "head", calls=0)
    chain = [*layers[::-1], "pre"]  # nearest the loss first
    for at, name in enumerate(chain, start=1):
        expect(report, name, {at: 1}, (chain[at - 2],) if at > 1 else (LOSS,))
    if how == "trained":  # (a frozen weight gets no gradient of its own to check by)
        check_reachability_with_autograd(report, model, torch.randn(2, 4))


def _spelled(case: str, h: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The ``einsum`` of :data:`_SPELLINGS`'s ``case`` on ``h`` (2×4) and two weights."""
    if case == "ellipsis summed":  # h.T @ A
        return torch.einsum("...i,...j->ij", h, A)
    if case == "ellipsis summed, then mixed":
        return torch.einsum("...i,...j,jk->ik", h, A, B)
    if case == "implicit outer product":
        return torch.einsum("bi,j", h, A)
    if case == "implicit elementwise product":
        return torch.einsum("...,...", h, A)
    if case == "sublists":
        return torch.einsum(h, [0, 1], A, [1, 2], B, [2, 3], [0, 3])
    if case == "rank 1":  # (torch sums a subscript of size 1 by a mul)
        return torch.einsum("bi,ir,ro->bo", h, A, B)
    # re-entrant: given ``h`` computed from parameters, it passes gradient on (§1.7)
    return checkpoint(lambda t: torch.einsum("bi,ir,ro->bo", t, A, B), h, use_reentrant=True)


# case -> the weights' shapes, the layers by hand (in call order)
_SPELLINGS = {
    "ellipsis summed": (((2, 3), (1,)), ["A"]),
    "ellipsis summed, then mixed": (((2, 3), (3, 2)), ["A", "B"]),
    "implicit outer product": (((3,), (1,)), []),
    "implicit elementwise product": (((4,), (1,)), []),
    "sublists": (((4, 2), (2, 3)), ["A", "B"]),
    "rank 1": (((4, 1), (1, 3)), ["A", "B"]),
    "checkpointed": (((4, 2), (2, 3)), ["A", "B"]),
}


class Spelled(nn.Module):
    def __init__(self, case: str) -> None:
        super().__init__()
        self.case, shapes = case, _SPELLINGS[case][0]
        self.pre = nn.Linear(4, 4)
        self.A, self.B = (nn.Parameter(torch.randn(*shape)) for shape in shapes)

    def forward(self, x):
        return _spelled(self.case, self.pre(x), self.A, self.B).sum()


@pytest.mark.parametrize("case", list(_SPELLINGS))
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_an_einsum_is_read_alike_however_it_is_spelled(case, tracer):
    """Found by a review: an ellipsis the output drops is summed (``"...i,...j->ij"`` is
    ``h.T @ A``: a call of ``A``), yet fx and export read no layer; an implicit output
    keeps every subscript met once (``"bi,j"`` is an outer product: no layer), yet fx and
    export read a call of the weight; fx read the sublist form (``einsum(h, [0, 1], A,
    [1, 2], ...)``) as two operands, and failed on an ``einsum`` of three inside a
    re-entrant checkpoint; autograd read no call of ``B`` in a rank-1 ``"bi,ir,ro->bo"``
    (torch sums the ``r`` of size 1 by a mul, where ``(h @ A) @ B`` records a matrix
    product). By hand, as the contractions torch makes, left to right (§2):
    the last call at 1, the one before at 2, ``pre`` one further; with no call, ``pre`` at
    1."""
    model = Spelled(case)
    layers = _SPELLINGS[case][1]
    report = gpa.analyze(model, torch.randn(2, 4), tracer=tracer)
    assert [n for n, r in report.layers.items() if r.calls] == ["pre", *layers]
    chain = [*layers[::-1], "pre"]  # nearest the loss first
    for at, name in enumerate(chain, start=1):
        expect(report, name, {at: 1}, (chain[at - 2],) if at > 1 else (LOSS,))
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


class NamedByFirst(nn.Module):
    """A weight made of parameters by an ``einsum``, applied to ``pre(x)``; ``held``: of
    the root module (a weight named by a parameter) or of the submodules ``a`` and ``b``."""

    def __init__(self, how: str, held: str) -> None:
        super().__init__()
        self.how, self.pre = how, nn.Linear(4, 4)
        if held == "root":
            self.A, self.B = nn.Parameter(torch.randn(4, 2)), nn.Parameter(torch.randn(2, 3))
        else:
            self.a, self.b = nn.Linear(4, 2, bias=False), nn.Linear(2, 3, bias=False)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self, "A"):
            return self.A, self.B
        return self.a.weight.T, self.b.weight.T

    def forward(self, x):
        h = self.pre(x)
        A, B = self.weights()
        if self.how == "read first":
            return torch.einsum("ir,ro,bi->bo", A, B, h).sum()
        if self.how == "first detached":
            return torch.einsum("ir,ro,bi->bo", A.detach(), B, h).sum()
        # made from B then A, then detached
        return torch.einsum("bi,io->bo", h, torch.einsum("ro,ir->io", B, A).detach()).sum()


# (how, held) -> the layers by hand
_NAMED_BY_FIRST = {
    ("read first", "root"): ["A"],
    ("first detached", "root"): ["A"],
    ("made, then detached", "root"): ["B"],
    ("read first", "modules"): ["a", "b"],
    ("first detached", "modules"): ["b"],
    ("made, then detached", "modules"): ["b", "a"],
}


@pytest.mark.parametrize(("how", "held"), list(_NAMED_BY_FIRST))
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_weight_made_of_several_parameters_is_named_as_its_call_reads_them(how, held, tracer):
    """Found by a session and its review: the autograd frontend named the weight ``A @ B``
    of ``einsum("ir,ro,bi->bo", A, B, h)`` by ``B`` (the order torch's kernel reads them
    in), with ``A`` detached by ``B`` as well, and a weight made from ``B`` and ``A``, then
    detached, by ``A``. By hand (§2): one module's parameters make one call, named by the
    first its call reads (a detached part too, being the module's own); several modules'
    make a call of each that gradient reaches, in the order read (a detached part of
    another module's is no one's; where no part carries gradient, every module's). The
    weight's call is at 1, and ``pre`` at 2, with one path through each record the call is
    one of (§2)."""
    model = NamedByFirst(how, held)
    report = gpa.analyze(model, torch.randn(2, 4), tracer=tracer)
    layers = _NAMED_BY_FIRST[how, held]
    assert [n for n, r in report.layers.items() if r.calls] == ["pre", *layers]
    for name in layers:
        expect(report, name, {1: 1}, (LOSS,))
    expect(report, "pre", {2: len(layers)}, tuple(layers))


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


class _Fresh(dict):
    """Parameters made anew at each walk, as peft's LoRA on ``nn.MultiheadAttention``
    gives them (its weights are made at each access); each kept alive, so each has an
    identity of its own."""

    made: list = []

    def items(self) -> Any:
        for name, p in super().items():
            made = nn.Parameter(p.detach())
            self.made.append(made)
            yield name, made


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


class _Freed(dict):
    """Parameters made anew at each walk and dropped at once (their identities reused)."""

    def items(self) -> Any:
        for name, p in super().items():
            yield name, nn.Parameter(p.detach())


def test_parameters_made_anew_at_each_walk_are_no_tied_ones() -> None:
    """Two walks of the parameters met objects the first had not seen: a bare KeyError on
    every frontend that reads tied weights (found by a new-user review with peft)."""
    from gpa.frontends.modules import with_tied

    fresh = nn.Linear(4, 4)
    fresh._parameters = _Fresh(fresh._parameters)
    model = nn.Sequential(fresh, nn.Linear(4, 2))
    assert with_tied(model, {"0"}) == {"0"}
    # freed at once, a new one takes an old one's identity: no tie either (an adversarial
    # review: the unused layer vanished from the report, tied to a called one)
    _Fresh.made.clear()
    model = _WithUnused()
    for layer in (model.a, model.unused):
        layer._parameters = _Freed(layer._parameters)
    assert with_tied(model, {"a"}) == {"a"}
    report = gpa.analyze(model, input_shape=(2, 4), tracer="autograd")
    assert not report.layers["unused"].reachable
    assert not [n for n in report.notes if "tied" in n]
