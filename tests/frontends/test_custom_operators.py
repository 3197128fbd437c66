"""Custom operators (``torch.library``) given weights beside data are noted, on every
frontend.

No frontend sees into an operator registered from outside torch
(``torchvision::deform_conv2d``; a stand-in for one of torch's own, such as Hugging
Face's ``transformers::grouped_mm_fallback``, is read as that one: see
``tests/frontends/test_hf_outputs.py``): gpa cannot tell whether it mixes
features, so it is no layer, and its weights are in no record. That used to pass in
silence; now each frontend notes it (``docs/semantics.md`` §2), and ``auto`` moves on from
fx and export to autograd, where the model's own code may call torch's operators instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpa
from tests.frontends.every_tracer import EVERY_TRACER
from tests.semantics import LOSS, check_reachability_with_autograd, expect


@torch.library.custom_op("gpatest::first_expert", mutates_args=())
def first_expert(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w[0]


@first_expert.register_fake
def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[2])


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    grad_w = torch.zeros_like(w)
    grad_w[0] = x.T @ grad
    return grad @ w[0].T, grad_w


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


first_expert.register_autograd(_backward, setup_context=_setup)

NOTE = (
    "'gpatest::first_expert' is a custom operator, which gpa cannot look into; it reads "
    "weights of {owner} beside data: they are in no layer here (if it mixes features, each "
    "path through a call of it is one layer short)"
)


class Bank(nn.Module):
    """a -> first_expert(·, w) -> head; ``transposed`` gives the operator ``w`` computed
    from the parameter (as Hugging Face transposes its expert bank)."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.transposed = transposed
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.w = nn.Parameter(torch.randn(2, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w.transpose(-2, -1) if self.transposed else self.w
        return self.head(first_expert(self.a(x), w))


@EVERY_TRACER
@pytest.mark.parametrize("transposed", [False, True])
def test_a_custom_operator_given_weights_beside_data_is_noted(tracer, transposed) -> None:
    """By hand, with the operator no layer: a -> head (2), head -> loss (1); w gets
    gradient (a real backward) but is in no record, which the note says."""
    model, x = Bank(transposed), torch.randn(3, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert list(report.layers) == ["a", "head"]
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("head",))
    check_reachability_with_autograd(report, model, x)
    model(x).sum().backward()
    assert model.w.grad is not None
    # the owner: the parameter's module (the root: its name) or, for a weight computed
    # from it under autograd, the module running
    owner = "w" if tracer in ("fx", "export") or not transposed else "the model"
    assert NOTE.format(owner=owner) in report.notes
    if tracer == "auto":
        assert report.tracer == "autograd"
        assert report.notes[0].startswith(
            "tracer auto used autograd: fx: cannot look into gpatest::first_expert "
            "(a custom operator given weights)"
        )


class WeightOnly(nn.Module):
    """The operator computes a weight from parameters alone, which a linear then uses."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 4, 4))
        self.basis = nn.Parameter(torch.randn(4, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x @ first_expert(self.basis, self.w))


@EVERY_TRACER
def test_a_custom_operator_given_weights_alone_makes_a_weight(tracer) -> None:
    """No data reaches the operator: it computes a weight, as any computation on
    parameters alone (§2); the product with x is then a layer of ``basis``, named by
    the first weight it reads. No note."""
    report = gpa.analyze(WeightOnly(), (torch.randn(3, 4),), tracer=tracer)
    assert not any("custom operator" in n for n in report.notes)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)


_LIBRARY = torch.library.Library("gpatest_composite", "DEF")
_LIBRARY.define("project(Tensor x, Tensor w) -> Tensor")
_LIBRARY.impl("project", lambda x, w: torch.nn.functional.linear(x, w), "CompositeImplicitAutograd")


class Composite(nn.Module):
    """pre -> project(·, w) -> head, ``project`` an operator made of torch's own (``linear``:
    autograd and export see its operations, fx the one call)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.ops.gpatest_composite.project(self.pre(x), self.w))


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
def test_a_custom_operator_made_of_torchs_own_is_read_through(tracer: str) -> None:
    """autograd records the linear inside: w is a layer (by hand pre 3, w 2, head 1), and
    no note says otherwise (it did, found by an adversarial review); fx cannot look in,
    notes it, and auto moves on."""
    report = gpa.analyze(Composite(), (torch.randn(3, 4),), tracer=tracer)
    expect(report, "w", {2: 1}, ("head",))
    expect(report, "pre", {3: 1}, ("w",))
    assert not any("'gpatest_composite::project' is a custom operator" in n for n in report.notes)


class PickedBank(Bank):
    """a -> first_expert(·, w[idx]) -> head, ``idx`` computed from a's output: the operator
    is given a weight picked by data (``docs/semantics.md`` §2), still a weight."""

    def __init__(self, pick: str) -> None:
        super().__init__()
        self.pick = pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        idx = (h[:2, 0] > 0).long()  # which of the two experts, by the data
        w = self.w[idx] if self.pick == "index" else self.w.index_select(0, idx)
        return self.head(first_expert(h, w * 2 if self.pick == "scaled" else w))


@EVERY_TRACER
@pytest.mark.parametrize("pick", ["index", "index_select", "scaled"])
def test_a_custom_operator_given_a_weight_picked_by_data_is_noted(tracer, pick) -> None:
    """As above, with the weight picked by the data: the autograd frontend took it for data
    and said nothing."""
    model, x = PickedBank(pick), torch.randn(3, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert list(report.layers) == ["a", "head"]
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("head",))
    assert NOTE.format(owner="w") in report.notes
    check_reachability_with_autograd(report, model, x)
