"""Models whose forward calls torch.func's transforms (``torch.vmap``, ``jvp``, ``grad``)
are read by the autograd frontend; fx and export refuse them, and ``auto`` moves on.

Before, export's graph (which holds a transform as calls switching a transform level on
and off, ``_vmap_increment_nesting`` …) crashed gpa's gradient-flow pass with a plain
RuntimeError, in ``auto`` too, and left the level on: every later analysis in the process
failed. The autograd frontend blamed the model ("raised AttributeError in module 'a'")
inside ``grad`` and ``jvp``, where its own bookkeeping ran inside the transform.

Hand derivation, with a: Linear(4, 4) and b: Linear(4, 2):
- ``h = vmap(a, relu)(x); b(h) + h[:, :2]``: a reaches the loss through b (2) and past it
  through the slice (1); b: 1.
- ``vmap(a, in_dims=1, out_dims=1)`` then b: a 2 (through b), b 1.
- ``y, t = jvp(relu(a(.)), x, ones); b(y + t)``: the primal and the tangent both depend on
  a's weight and meet before b: one path of 2; b 1.
- ``g = grad(sum(relu(a(.))))(x); b(g + x)``: g is a's weight (transposed) times relu's
  mask, so the loss reaches a's weight through b: 2; b 1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpa
from gpa.errors import TraceError
from tests.semantics import LOSS, check_reachability_with_autograd, expect


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)


class Vmapped(_TwoLayers):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.vmap(lambda row: self.a(row).relu())(x)
        return self.b(h) + h[:, :2]


class VmappedModule(_TwoLayers):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.func.vmap(self.a, in_dims=1, out_dims=1)(x)
        return self.b(h.transpose(0, 1))


class NestedVmaps(_TwoLayers):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.vmap(torch.vmap(lambda row: self.a(row).relu()))(x)
        return self.b(h).sum(1) + h[..., :2].sum(1)


class Jvp(_TwoLayers):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, t = torch.func.jvp(lambda r: self.a(r).relu(), (x,), (torch.ones_like(x),))
        return self.b(y + t)


class Grad(_TwoLayers):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.func.grad(lambda r: self.a(r).relu().sum())(x)
        return self.b(g + x)


# model, input shape, a's hand-derived histogram and sources (b: one path of 1, from the loss)
CASES = {
    "vmap": (Vmapped, (3, 4), {1: 1, 2: 1}, ("b", LOSS)),
    "vmap-module": (VmappedModule, (4, 3), {2: 1}, ("b",)),
    "nested-vmap": (NestedVmaps, (2, 3, 4), {1: 1, 2: 1}, ("b", LOSS)),
    "jvp": (Jvp, (3, 4), {2: 1}, ("b",)),
    "grad": (Grad, (4,), {2: 1}, ("b",)),
}


def _not_inside_a_transform() -> bool:
    """Whether no torch.func transform level is left on (a tensor can require grad)."""
    torch.zeros(2).requires_grad_(True)
    return torch._C._functorch.maybe_current_level() is None


@pytest.mark.parametrize("tracer", ["auto", "autograd"])
@pytest.mark.parametrize("case", CASES)
def test_a_torch_func_transform_is_read_by_the_autograd_frontend(case: str, tracer: str) -> None:
    make, shape, a_paths, a_sources = CASES[case]
    torch.manual_seed(0)
    model, x = make(), torch.randn(shape)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert report.tracer == "autograd"
    expect(report, "a", a_paths, a_sources)
    expect(report, "b", {1: 1}, (LOSS,))
    check_reachability_with_autograd(report, model, x)
    assert _not_inside_a_transform()


@pytest.mark.slow  # (export takes seconds)
@pytest.mark.parametrize("case", CASES)
def test_fx_and_export_refuse_a_torch_func_transform(case: str) -> None:
    make, shape, _, _ = CASES[case]
    model, x = make(), torch.randn(shape)
    for tracer in ("fx", "export"):
        with pytest.raises(TraceError) as info:
            gpa.analyze(model, (x,), tracer=tracer)
        assert "auto moves on" in str(info.value) or "--tracer auto" in str(info.value)
        assert _not_inside_a_transform(), tracer
    # the next analysis in the process is not inside a transform left on
    assert gpa.analyze(nn.Linear(2, 2), (torch.randn(1, 2),), tracer="autograd").layers


@pytest.mark.slow
def test_exports_refusal_names_the_transform_and_the_line() -> None:
    with pytest.raises(TraceError) as info:
        gpa.analyze(Vmapped(), (torch.randn(3, 4),), tracer="export")
    message = str(info.value)
    assert "Vmapped calls a torch.func transform" in message
    assert "_vmap_increment_nesting" in message
    assert f"{__file__.rsplit('/', 1)[-1]}, line" in message
    assert "--tracer autograd reads the run (auto moves on)" in message
