"""Mixture-of-experts weights are layers, whichever way the experts are applied.

``docs/semantics.md`` §2: a feature-mixing call reading a weight beside data is a layer.
A mixture of experts applies its expert bank ``w`` (``E × K × N``) to tokens in one of three
ways: expert by expert (``F.linear(x, w[e])``, ``e`` a Python number), all at once with
the weights its router picked (``bmm(x, w[idx])``, ``idx`` an integer tensor computed from
the router's output), or with a grouped product over the tokens sorted by expert
(``F.grouped_mm(x, w, offs=…)``, Hugging Face's default). The router's indices carry no
gradient: ``w[idx]`` is a weight picked by data, and the product a call of ``w``. fx and
export left it out (its operand had a layer's output among its ancestors), ``grouped_mm``
was no layer on any frontend, and the autograd frontend, reading autograd's edges only,
took a table's rows picked by data (``table[ids] @ w``) for a weight. Every frontend must
give the hand-derived records below, and a real backward the same reachability.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpa
from tests.frontends.every_tracer import EVERY_TRACER, layer_records
from tests.semantics import LOSS, check_reachability_with_autograd, expect

TOKENS, WIDTH, EXPERTS = 6, 8, 3


class Routed(nn.Module):
    """gate -> top-1 of its softmax -> (probability × expert(x)) -> head. ``how`` applies
    the chosen experts: ``index`` (``w[idx]``), ``index_select``, or ``loop`` (every
    expert on every token, weighted by its probability: ``F.linear(x, w[e])``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.gate = nn.Linear(WIDTH, EXPERTS)
        self.w = nn.Parameter(torch.randn(EXPERTS, WIDTH, WIDTH) / WIDTH)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.gate(x).softmax(-1)
        if self.how == "loop":
            mixed = sum(probs[:, e : e + 1] * F.linear(x, self.w[e]) for e in range(EXPERTS))
            return self.head(mixed)
        p, idx = probs.topk(1, -1)
        picked = self.w[idx[:, 0]] if self.how == "index" else self.w.index_select(0, idx[:, 0])
        return self.head(p * torch.bmm(x.unsqueeze(1), picked).squeeze(1))


@EVERY_TRACER
@pytest.mark.parametrize("how", ["index", "index_select", "loop"])
def test_experts_picked_by_the_router_are_a_layer(tracer: str, how: str) -> None:
    """By hand: head feeds the loss (1); gate reaches head through the probabilities (2);
    each call of w (one, or one per expert) feeds head (2)."""
    model, x = Routed(how), torch.randn(TOKENS, WIDTH)
    report = gpa.analyze(model, (x,), tracer=tracer)
    calls = EXPERTS if how == "loop" else 1
    assert list(report.layers) == ["gate", "w", "head"]
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "gate", {2: 1}, ("head",))
    expect(report, "w", {2: calls}, ("head",), calls=calls)
    check_reachability_with_autograd(report, model, x)


class Lookup(nn.Module):
    """Rows of a table picked by the input, then projected: ``table[ids] @ w.T``. The rows
    are data (an embedding's output, §2); ``w`` is the layer, ``table`` none."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, WIDTH))
        self.w = nn.Parameter(torch.randn(2, WIDTH))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids] @ self.w.T


@EVERY_TRACER
def test_rows_picked_by_data_beside_a_weight_are_data(tracer: str) -> None:
    model, ids = Lookup(), torch.randint(0, 10, (2, 5))
    report = gpa.analyze(model, (ids,), tracer=tracer)
    assert list(report.layers) == ["w"]
    expect(report, "w", {1: 1}, (LOSS,))


class Grouped(nn.Module):
    """a -> grouped product with the expert bank (tokens 0-2 to expert 0, 3-5 to expert
    1) -> head, as Hugging Face's mixtures of experts run by default."""

    def __init__(self, dtype: torch.dtype, transposed: bool = False) -> None:
        super().__init__()
        self.transposed = transposed
        self.a = nn.Linear(WIDTH, WIDTH, dtype=dtype)
        self.w = nn.Parameter(torch.randn(2, WIDTH, WIDTH, dtype=dtype))
        self.head = nn.Linear(WIDTH, 2, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offs = torch.tensor([3, TOKENS], dtype=torch.int32, device=x.device)
        grouped = F.grouped_mm if hasattr(F, "grouped_mm") else torch._grouped_mm
        bank = self.w.transpose(-2, -1) if self.transposed else self.w  # as Hugging Face
        return self.head(grouped(self.a(x), bank, offs=offs))


@EVERY_TRACER
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_grouped_product_with_the_expert_bank_is_a_layer(tracer, dtype, transposed) -> None:
    """By hand: a -> w -> head, one path each. torch's meta kernel (export's fake one too)
    takes bfloat16 alone, where the CPU runs float32: fx works the shape out by rule, and
    export is torch's limit there."""
    model, x = Grouped(dtype, transposed), torch.randn(TOKENS, WIDTH, dtype=dtype)
    if tracer == "export" and dtype == torch.float32:
        with pytest.raises(gpa.errors.TraceError, match="BF16"):
            gpa.analyze(model, (x,), tracer=tracer)
        return
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "w", {2: 1}, ("head",))
    expect(report, "a", {3: 1}, ("w",))
    check_reachability_with_autograd(report, model, x)


def test_every_frontend_gives_one_record_for_routed_experts() -> None:
    """The records, sources and types included, are the same on every frontend."""
    model, x = Routed("index"), torch.randn(TOKENS, WIDTH)
    records = [
        layer_records(gpa.analyze(model, (x,), tracer=t)) for t in ("fx", "export", "autograd")
    ]
    assert records[0] == records[1] == records[2]


class Branching(nn.Module):
    """Experts as modules, each run on the tokens routed to it, if any (``how`` asks:
    ``mask.any()``, or the size of the tokens picked, ``len``, ``numel``, ``shape``): a
    branch on data, which fx and export refuse; autograd runs it once."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.gate = nn.Linear(WIDTH, EXPERTS)
        self.experts = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(EXPERTS))
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, idx = self.gate(x).softmax(-1).topk(1, -1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            mask = idx[:, 0] == e
            tokens = torch.where(mask)[0]
            if not self._routed(mask, tokens):  # the branch on data
                continue
            out = out.index_add(0, tokens, p[mask] * expert(x[tokens]))
        return self.head(out)

    def _routed(self, mask: torch.Tensor, tokens: torch.Tensor) -> bool:
        if self.how == "any":
            return bool(mask.any())
        if self.how == "len":
            return len(tokens) > 0
        if self.how == "numel":
            return tokens.numel() > 0
        return tokens.shape[0] > 0


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
@pytest.mark.parametrize("how", ["any", "len", "numel", "shape"])
def test_routing_that_branches_on_data_is_noted(tracer: str, how: str) -> None:
    """Which experts run depends on the input: where the run skipped one, the report says
    so, naming the line, and its unreachable experts are those a real backward on that
    input gives no gradient (input zeros route every token to one expert). Where every
    expert ran, nothing was skipped: no note (a mask check on the data, as Hugging Face
    makes, gets none either)."""
    model = Branching(how)
    for x in (torch.zeros(TOKENS, WIDTH), torch.randn(64, WIDTH)):
        report = gpa.analyze(model, (x,), tracer=tracer)
        assert report.tracer == "autograd"
        check_reachability_with_autograd(report, model, x)
        routed = set(model.gate(x).argmax(-1).tolist())
        skipped = {f"experts.{e}" for e in range(EXPERTS) if e not in routed}
        assert set(report.network.unreachable) == skipped
        notes = [n for n in report.notes if "into Python values" in n]
        assert len(notes) == (1 if skipped else 0)
        if skipped:
            assert f"({__file__}, line " in notes[0] and "for these inputs only" in notes[0]
    routed_alike = gpa.analyze(Routed("index"), (torch.randn(TOKENS, WIDTH),), tracer="autograd")
    assert not any("into Python values" in n for n in routed_alike.notes)


class EmbeddedTokens(nn.Module):
    """Tokens from a functional embedding (``F.embedding(ids, table)``: a layer of
    ``table``), routed to the experts ``w[idx]``: a layer's output is data."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, WIDTH))
        self.wg = nn.Parameter(torch.randn(EXPERTS, WIDTH))
        self.w = nn.Parameter(torch.randn(EXPERTS, WIDTH, WIDTH) / WIDTH)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = F.embedding(ids, self.table)
        p, idx = F.linear(h, self.wg).softmax(-1).topk(1, -1)
        return self.head(p * torch.bmm(h.unsqueeze(1), self.w[idx[:, 0]]).squeeze(1))


@EVERY_TRACER
def test_experts_applied_to_a_functional_layers_output_are_a_layer(tracer: str) -> None:
    """By hand: head 1; wg (through the probabilities) and w each 2; table feeds both, 3.
    fx and export took the embedding's output for a weight (found by an adversarial
    review): w was missing and table's path one short."""
    model, ids = EmbeddedTokens(), torch.randint(0, 10, (TOKENS,))
    report = gpa.analyze(model, (ids,), tracer=tracer)
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "wg", {2: 1}, ("head",))
    expect(report, "w", {2: 1}, ("head",))
    expect(report, "table", {3: 2}, ("wg", "w"))


@torch.fx.wrap
def _project(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(h, torch.Tensor):  # a type check: fx cannot trace it by value
        return F.linear(h, w)
    return h


class WrappedRows(nn.Module):
    """Rows of a table picked by the input, given with a weight to a function fx keeps
    whole: the rows are data, so the function reads a weight beside data."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, WIDTH))
        self.w = nn.Parameter(torch.randn(WIDTH, WIDTH))
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(_project(self.table[ids], self.w))


def test_a_wrapped_function_given_rows_picked_by_data_and_a_weight_is_looked_into() -> None:
    """fx notes the function and auto moves on to autograd, which sees the layer w (2)."""
    fx_report = gpa.analyze(WrappedRows(), (torch.randint(0, 10, (TOKENS,)),), tracer="fx")
    assert any("'_project' is a function fx keeps whole" in n for n in fx_report.notes)
    report = gpa.analyze(WrappedRows(), (torch.randint(0, 10, (TOKENS,)),))
    assert report.tracer == "autograd"
    expect(report, "w", {2: 1}, ("head",))


class LoopedBank(nn.Module):
    """A fused expert bank run expert by expert over the experts the router hit, as
    Hugging Face's ``experts_implementation="eager"``: ``w[e]`` for each ``e`` of the
    data's ``idx.unique()`` (``picks="loop"``); or gathered once for every token
    (``picks="gather"``, ``w[idx]``), beside a check of the data in Python."""

    def __init__(self, picks: str) -> None:
        super().__init__()
        self.picks = picks
        self.gate = nn.Linear(WIDTH, EXPERTS)
        self.w = nn.Parameter(torch.randn(EXPERTS, WIDTH, WIDTH) / WIDTH)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.gate(x).argmax(-1)
        if self.picks == "gather":
            if bool((idx >= 0).all()):  # a check of the data that skips nothing
                pass
            return self.head(torch.bmm(self.w[idx], x.unsqueeze(-1)).squeeze(-1))
        out = torch.zeros_like(x)
        for e in idx.unique():  # the experts hit: a loop over the data's values
            tokens = torch.where(idx == e)[0]
            out = out.index_add(0, tokens, F.linear(x[tokens], self.w[e]))
        return self.head(out)


@pytest.mark.parametrize("picks", ["loop", "gather"])
def test_a_bank_looped_over_the_experts_hit_is_noted(picks: str) -> None:
    """Looped, the bank's calls are the experts hit (a real run's count), which the data
    decides: the routing note says so, though no module was skipped (it did not). Gathered
    once, the bank is one call whatever the data: no note, though the run checked the
    data in Python."""
    model = LoopedBank(picks)
    for x in (torch.zeros(TOKENS, WIDTH), torch.randn(64, WIDTH)):
        report = gpa.analyze(model, (x,), tracer="autograd")
        hit = len(set(model.gate(x).argmax(-1).tolist()))
        assert report.layers["w"].calls == (hit if picks == "loop" else 1)
        notes = [n for n in report.notes if "into Python values" in n]
        assert len(notes) == (1 if picks == "loop" and hit > 1 else 0)


class SlicedLookup(nn.Module):
    """An embedding's rows sliced at fixed positions, beside a check of the mask in Python
    (Hugging Face's masking utilities; Llama's ``rotate_half`` slices so)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 8), nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.all():
            pass
        return self.fc(self.emb(ids)[..., :4])


def test_a_slice_of_a_lookup_beside_a_mask_check_gets_no_routing_note() -> None:
    """The first version of the looped-bank note took the slice for a weight indexed by
    the data (a review: Llama, BART and Mixtral given an attention mask got the note).
    By hand: fc 1, emb 2."""
    ids, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)
    report = gpa.analyze(SlicedLookup(), (ids, mask), tracer="autograd")
    assert {n: (r.shortest, r.longest) for n, r in report.layers.items()} == {
        "emb": (2, 2),
        "fc": (1, 1),
    }
    assert not any("into Python values" in n for n in report.notes)
