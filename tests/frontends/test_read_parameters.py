"""A layer whose parameter is read but not used (issue 13, kind 5).

RT-DETR passes ``self.denoising_class_embed.weight`` to a helper that returns early
outside training: forward reads the parameter, nothing computes with it, no gradient
reaches it. Such a layer is a layer forward never uses: listed with ``calls: 0`` and
unreachable (docs/semantics.md §2), like a layer never called, under every frontend. A
layer whose weight takes part in the computation without a call of its module (a
positional embedding's weight added to activations) is no layer in that use and stays
out of the report, as before. Expected values are derived by hand in the comments.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpa
from tests.frontends.every_tracer import EVERY_TRACER, layer_records
from tests.semantics import LOSS, check_reachability_with_autograd, expect, expect_unreachable


def denoising_group(targets: list | None, class_embed: torch.Tensor) -> torch.Tensor | None:
    """RT-DETR's helper in short: nothing to do without targets."""
    if targets is None:
        return None
    return class_embed[targets[0]]


class Decoder(nn.Module):
    """enc -> (+ positional embedding) -> head; ``read`` says how ``spare`` is read."""

    def __init__(self, read: str) -> None:
        super().__init__()
        self.read = read
        self.enc = nn.Linear(4, 4)
        self.spare = nn.Embedding(5, 4)
        self.pos = nn.Embedding(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        if self.read == "helper":  # passed to a function that ignores it
            denoising_group(None, self.spare.weight)
        elif self.read == "shape":  # read for its shape alone
            h = h[:, : self.spare.weight.shape[1]]
        elif self.read == "dead":  # computed with, the result thrown away
            _ = self.spare.weight * 2
        elif self.read == "no_grad":  # a statistic of it, computed without gradient
            with torch.no_grad():
                scale = self.spare.weight.norm()
            h = h / scale
        return self.head(h + self.pos.weight[:1])  # pos: a positional embedding, no layer


READS = pytest.mark.parametrize("read", ["helper", "shape", "dead", "no_grad"])


@EVERY_TRACER
@READS
def test_a_parameter_read_but_not_used_is_a_layer_never_called(read: str, tracer: str) -> None:
    model = Decoder(read)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    # enc -> head: 2 and 1. spare: no call, no gradient: calls 0, unreachable, listed
    # last. pos: its weight is added to activations (no layer, §2), so it is not listed.
    assert list(report.layers) == ["enc", "head", "spare"]
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "enc", {2: 1}, ("head",))
    expect_unreachable(report, "spare", calls=0)  # also: the network lists it unreachable
    assert report.network.layers == 3 and report.network.max_shortest == 2
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


@READS
def test_without_inputs_too(read: str) -> None:
    without = gpa.analyze(Decoder(read), tracer="fx")
    assert layer_records(without) == layer_records(gpa.analyze(Decoder(read), input_shape=(2, 4)))


class DeadFunctional(nn.Module):
    """A functional layer on ``proj``'s weight whose result is thrown away."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _ = F.linear(x, self.proj.weight)
        return self.head(x)


@EVERY_TRACER
def test_a_functional_layer_whose_result_is_unused_is_called_once(tracer: str) -> None:
    report = gpa.analyze(DeadFunctional(), input_shape=(2, 4), tracer=tracer)
    # proj is called (functionally) once, and its result reaches nothing: one record,
    # calls 1, unreachable; never also listed as a layer never called.
    assert list(report.layers) == ["proj", "head"]
    expect_unreachable(report, "proj", calls=1)


class TiedUncalled(nn.Module):
    """``spare`` holds ``enc``'s weight (tied) and is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.spare, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.spare.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))


@EVERY_TRACER
def test_an_uncalled_module_tied_to_a_called_one_is_not_listed(tracer: str) -> None:
    """§2: a module whose weight is tied to a called layer's is no layer of its own when
    not called. fx and export said so; the autograd frontend listed it with calls 0."""
    report = gpa.analyze(TiedUncalled(), input_shape=(2, 4), tracer=tracer)
    assert list(report.layers) == ["enc", "head"]
    expect(report, "enc", {2: 1}, ("head",))
    assert report.network.unreachable == ()


class HoldsReadParameter(nn.Module):
    """``body``, a position table added to its output, ``head``; ``spare`` never called.
    ``where``: the table on the block (a ViT's ``pos_embed``) or on a child of it that
    also holds ``spare`` (peft's wrapper holding the original head beside its copy)."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.holder = nn.Module()
        table = nn.Parameter(torch.zeros(4))
        if where == "block":
            self.pos, self.spare = table, nn.Linear(4, 2)
        else:
            self.holder.pos, self.holder.spare = table, nn.Linear(4, 2)
        self.where = where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos if self.where == "block" else self.holder.pos
        return self.head(self.body(x) + pos)


@EVERY_TRACER
@pytest.mark.parametrize("where", ["block", "child"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_an_uncalled_layer_beside_a_parameter_read_is_listed(
    tracer: str, where: str, wrapped: bool
) -> None:
    """§2, by hand: head 1 (from the loss), body 2 through it; ``spare`` never called:
    ``calls: 0``, unreachable. The module holding the table added to the data is no call
    its children are part of; the layers inside a module called whole are (below). It
    went unlisted under every frontend where forward read a parameter of a module around
    it."""
    model = HoldsReadParameter(where)
    model = nn.Sequential(model) if wrapped else model
    prefix = "0." if wrapped else ""
    spare = prefix + ("spare" if where == "block" else "holder.spare")
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer)
    assert sorted(report.layers) == sorted([f"{prefix}body", f"{prefix}head", spare])
    expect(report, f"{prefix}head", {1: 1}, (LOSS,))
    expect(report, f"{prefix}body", {2: 1}, (f"{prefix}head",))
    expect_unreachable(report, spare, calls=0)


class LeafHoldingSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@EVERY_TRACER
def test_the_layers_inside_a_leaf_are_its_call(tracer: str) -> None:
    """By hand: the leaf ``0`` (one call holding a layer) 2, head 1; its unused ``spare``
    is part of that call, not listed."""
    model = nn.Sequential(LeafHoldingSpare(), nn.Linear(4, 2))
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, leaf_modules=["0"])
    assert sorted(report.layers) == ["0", "1"]
    expect(report, "1", {1: 1}, (LOSS,))
    expect(report, "0", {2: 1}, ("1",))


class Experts(nn.Module):
    """A leaf holding weights it uses functionally and no layer module (as Hugging Face's
    expert banks): ``how`` says how it is called and what it returns."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.w1 = nn.Parameter(torch.randn(4, 4))
        self.w2 = nn.Parameter(torch.randn(4, 4))

    def forward(self, u: torch.Tensor, v: torch.Tensor | None = None):
        if self.how == "two-outputs":
            return F.linear(u, self.w1), F.linear(u, self.w2)
        y = F.linear(F.silu(F.linear(u, self.w1)), self.w2)
        return y + v if v is not None else y


class AroundExperts(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.c, self.moe, self.b = (
            nn.Linear(4, 4),
            nn.Linear(4, 4),
            Experts(how),
            nn.Linear(4, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.how == "residual":
            return self.b(h + self.moe(h))
        if self.how == "two-inputs":
            return self.b(self.moe(h, self.c(x)))
        if self.how == "twice":
            return self.b(self.moe(self.moe(h)) + self.c(x))
        p, q = self.moe(h)
        return self.b(p * q + self.c(x))


@EVERY_TRACER
@pytest.mark.parametrize("how", ["residual", "two-inputs", "twice", "two-outputs"])
@pytest.mark.parametrize("leaf", ["class", "name"])
def test_a_leaf_holding_weights_but_no_layer_is_one_call_and_no_layer(
    tracer: str, how: str, leaf: str
) -> None:
    """Found by a review against autograd (Jamba with its MoE block a leaf): export looked
    inside a leaf holding no layer module and made layers of its functional weights
    (``moe.w1``, ``moe.w2``), so ``a`` had paths of 2 and 4 where fx and autograd, as
    §1.1 says (a leaf is one call), give 2. By hand: the leaf is no layer (§2), gradient
    crosses it from each tensor argument to each result; ``a`` and ``c`` reach ``b`` in
    one step (2), ``b`` the loss (1)."""
    model = AroundExperts(how)
    leaves = [Experts] if leaf == "class" else ["moe"]
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, leaf_modules=leaves)
    called = ["a", "b"] if how == "residual" else ["a", "c", "b"]
    assert sorted(report.layers) == sorted(called + (["c"] if how == "residual" else []))
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("b",))
    if how != "residual":
        expect(report, "c", {2: 1}, ("b",))
    else:
        expect_unreachable(report, "c", calls=0)


@pytest.mark.parametrize("how", ["residual", "two-inputs", "two-outputs"])
def test_a_leaf_holding_no_layer_has_the_same_channels_under_fx_and_export(how: str) -> None:
    """The leaf is one call with channels too: fx and export give the same records and
    segments (the call mixes its channels, as any module call without a rule)."""
    x = torch.randn(2, 4)
    reports = [
        gpa.analyze(AroundExperts(how), (x,), tracer=t, leaf_modules=[Experts], channels=True)
        for t in ("fx", "export")
    ]
    assert layer_records(reports[0]) == layer_records(reports[1])
    segments = [
        {n: [(s.start, s.stop, [str(x) for x in s.sources]) for s in r.segments] for n, r in
         report.layers.items()}
        for report in reports
    ]  # fmt: skip
    assert segments[0] == segments[1]


class SharedIntoLeaf(nn.Module):
    """``shared`` is one linear layer registered first here and called only inside the
    leaf ``blk`` (as ``blk.inner``); ``gain`` (optional) is a parameter forward reads."""

    def __init__(self, gain: bool) -> None:
        super().__init__()
        if gain:
            self.gain = nn.Parameter(torch.ones(4))
        self.shared = nn.Linear(4, 4)
        self.blk = LeafHoldingSpare()
        self.blk.inner = self.shared
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blk(x)
        return self.head(y * self.gain if hasattr(self, "gain") else y)


@EVERY_TRACER
@pytest.mark.parametrize("gain", [False, True])
def test_a_layer_called_inside_a_leaf_under_another_name_is_its_call(
    tracer: str, gain: bool
) -> None:
    """By hand: head 1, the leaf ``0.blk`` 2. ``0.shared`` is the leaf's ``inner``, called
    in its call (a real run calls it once): not listed under its first name as never
    called, nor a reason for fx to refuse."""
    model = nn.Sequential(SharedIntoLeaf(gain))
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, leaf_modules=[LeafHoldingSpare])
    assert sorted(report.layers) == ["0.blk", "0.head"]
    expect(report, "0.head", {1: 1}, (LOSS,))
    expect(report, "0.blk", {2: 1}, ("0.head",))
    assert report.network.unreachable == ()
