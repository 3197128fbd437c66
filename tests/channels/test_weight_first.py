"""Output channels of a functional layer computing ``W @ x`` with the weight first
(docs/semantics.md §8): the weight's rows, on the result's second-to-last axis.

Hugging Face's ``batched_mm`` expert bank computes ``bmm(W[experts], x.unsqueeze(-1))``:
a result ``(tokens, out, 1)`` whose last axis has size 1. The channel analysis read the
output channels off the last axis, as for ``x @ W``, and gave such a layer one channel
(Mixtral's ``gate_up_proj``: one segment ``(0, 1)`` instead of 32 channels). A layer's
*input* channels were already read off ``x``'s second-to-last axis.

Expected values by hand: each model sends the first half of the weight's rows to the loss
through one layer (``near``), the other half through two (``far1``, ``far2``), so the
weight has two segments, of 2 and 3 hops; ``a`` feeds the weight.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpa


class RowsSplit(nn.Module):
    """``w @ a(x).T``: w's 6 rows are its output channels, on axis 0 of (6, N)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(6, 4))
        self.near, self.far1, self.far2 = nn.Linear(3, 2), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.w @ self.a(x).T  # (6, N)
        return self.near(y[:3].T) + self.far2(self.far1(y[3:].T))


class DetachedRows(RowsSplit):
    """RowsSplit with its weight read without gradient (``w.detach()``): still a weight
    (§2: computed from parameters alone), its rows the output channels (the second
    version took it for data: a review)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.w.detach() @ self.a(x).T  # (6, N)
        return self.near(y[:3].T) + self.far2(self.far1(y[3:].T))


class Bank(nn.Module):
    """``bmm(w[experts], a(x).unsqueeze(-1))`` as Hugging Face's batched_mm bank: w is
    (experts, out=6, in=4); the result (tokens, 6, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(3, 6, 4))
        self.register_buffer("experts", torch.tensor([0, 1, 2, 0, 1]))
        self.near, self.far1, self.far2 = nn.Linear(3, 2), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.bmm(self.w[self.experts], self.a(x).unsqueeze(-1)).squeeze(-1)  # (5, 6)
        return self.near(y[:, :3]) + self.far2(self.far1(y[:, 3:]))


class DataFirst(nn.Module):
    """``a(x) @ w`` with w (in=4, out=6): the output channels stay on the last axis."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(4, 6))
        self.near, self.far1, self.far2 = nn.Linear(3, 2), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) @ self.w  # (N, 6)
        return self.near(y[:, :3]) + self.far2(self.far1(y[:, 3:]))


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("model", [RowsSplit, DetachedRows, Bank, DataFirst])
def test_the_weight_rows_are_the_output_channels(model: type[nn.Module], tracer: str) -> None:
    torch.manual_seed(0)
    report = gpa.analyze(model(), (torch.randn(5, 4),), tracer=tracer, channels=True)
    w = report.layers["w"]
    assert (w.shortest, w.longest) == (2, 3)
    assert [(s.start, s.stop, s.paths.shortest, s.paths.longest) for s in w.segments] == [
        (0, 3, 2, 2),
        (3, 6, 3, 3),
    ]
    assert {x.sender for s in w.segments for x in s.sources} == {"near", "far1"}
    a = report.layers["a"]
    assert (a.shortest, a.longest) == (3, 4)
    # a's 4 output channels are w's input channels, all of them read by every row
    assert [(s.start, s.stop) for s in a.segments] == [(0, 4)]
    assert {x.sender for s in a.segments for x in s.sources} == {"w"}


def test_the_rows_as_autograd_sees_them() -> None:
    """Independent check of the hand derivation: the gradient of ``near``'s output alone
    reaches the first three rows of the bank's weight, ``far2``'s the other three."""
    torch.manual_seed(0)
    model, x = Bank(), torch.randn(5, 4)
    y = torch.bmm(model.w[model.experts], model.a(x).unsqueeze(-1)).squeeze(-1)
    (near,) = torch.autograd.grad(model.near(y[:, :3]).sum(), model.w, retain_graph=True)
    (far,) = torch.autograd.grad(model.far2(model.far1(y[:, 3:])).sum(), model.w)
    rows = lambda g: sorted({int(r) for r in g.abs().sum((0, 2)).nonzero()})  # noqa: E731
    assert rows(near) == [0, 1, 2] and rows(far) == [3, 4, 5]


class NoGradientFirst(nn.Module):
    """``d @ w`` with w (in=4, out=6) and ``d`` data carrying no gradient: ``x.detach()``
    or a comparison's mask. The first version took any operand whose gradient reaches no
    model input for a weight, so w's 5 tokens became its channels (a review)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.w = nn.Parameter(torch.randn(4, 6))
        self.near, self.far1, self.far2 = nn.Linear(3, 2), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.detach() if self.how == "detach" else (x > 0).float()
        y = d @ self.w  # (N, 6)
        return self.near(y[:, :3]) + self.far2(self.far1(y[:, 3:]))


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("how", ["detach", "mask"])
def test_data_without_gradient_first_is_no_weight(how: str, tracer: str) -> None:
    torch.manual_seed(0)
    model = NoGradientFirst(how)
    report = gpa.analyze(model, (torch.randn(5, 4),), tracer=tracer, channels=True)
    w = report.layers["w"]
    assert [(s.start, s.stop, s.paths.shortest, s.paths.longest) for s in w.segments] == [
        (0, 3, 2, 2),
        (3, 6, 3, 3),
    ]
