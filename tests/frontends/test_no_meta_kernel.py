"""Operations torch cannot run on the meta device (no meta kernel: their result's shape
depends on the values) are a frontend's limit, not inputs that do not fit the model.

fx and export compute shapes on the meta device; such an operation used to stop them with
"input shapes do not fit", and `auto` stopped there too although the autograd tracer, which
runs the model on real inputs when the meta device refuses it, reads the model. Now fx and
export raise a TraceError naming the operation, and `auto` moves on to autograd.

Likewise an operation of export's graph that fails on the meta device although export ran
it (a view the meta value's layout does not allow) is export's limit: read as the reshape it
stands for, else a TraceError on which `auto` moves on.

Hand derivation, for every model here: ``a`` feeds ``b`` and, through the operation without
a meta kernel (no layer), the loss; ``b`` feeds the loss. So ``b`` has one path, of length
1, and ``a`` two, of lengths 2 (through ``b``) and 1 (around it).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpa
from gpa.errors import ShapeError, TraceError
from tests.frontends.every_tracer import auto_after_fx_refuses
from tests.semantics import LOSS, check_reachability_with_autograd, expect

# Each computes, from y (2 × 4), a value whose shape depends on y's values.
DATA_SHAPED = {
    "masked_select": lambda y: torch.masked_select(y, y > 0),
    "boolean-mask-index": lambda y: y[y > 0],
    "nonzero-index": lambda y: y.flatten()[torch.nonzero(y.flatten() > 0).flatten()],
    "unique": lambda y: torch.unique(y, return_inverse=True)[0] * 1.0,
    "repeat_interleave": lambda y: y.repeat_interleave((y[:, 0] > 0).long() + 1, dim=0),
    "item": lambda y: y * (y.sum().item() > 0),
}


class DataShaped(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y) + DATA_SHAPED[self.how](y).sum()


def _paths(report: gpa.Report) -> dict[str, tuple[int, int, int]]:
    return {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()}


@pytest.mark.parametrize("how", list(DATA_SHAPED))
def test_auto_moves_on_to_autograd(how: str) -> None:
    report = gpa.analyze(DataShaped(how), input_shape=(2, 4))
    assert report.tracer == "autograd"
    assert _paths(report) == {"a": (1, 2, 2), "b": (1, 1, 1)}
    (note,) = [n for n in report.notes if n.startswith("tracer auto used autograd")]
    assert "cannot run on the meta device" in note


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("how", list(DATA_SHAPED))
def test_fx_and_export_say_it_is_their_limit(how: str, tracer: str) -> None:
    with pytest.raises(TraceError) as raised:
        gpa.analyze(DataShaped(how), input_shape=(2, 4), tracer=tracer)
    assert not isinstance(raised.value, ShapeError)
    message = str(raised.value)
    if "cannot run on the meta device" in message:  # gpa's shape pass met it
        assert "--tracer autograd" in message
    else:  # torch.export itself refused the data-dependent shape first
        assert tracer == "export"


def test_inputs_that_do_not_fit_are_still_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="do not fit layer 'a'"):
        gpa.analyze(DataShaped("masked_select"), input_shape=(2, 5), tracer="fx")


def _scaled_by_its_sign(y: torch.Tensor) -> torch.Tensor:
    return y * float(y.sum().item() > 0)


torch.fx.wrap("_scaled_by_its_sign")  # fx records it whole; the meta pass runs it


class Pruner(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * float(y.sum().item() > 0)


class ReadsAValue(nn.Module):
    """The value read inside a wrapped function, or inside a module declared a leaf."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.a, self.b, self.p = nn.Linear(4, 4), nn.Linear(4, 2), Pruner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        read = _scaled_by_its_sign(y) if self.where == "wrapped" else self.p(y)
        return self.b(y) + read.sum()


@pytest.mark.parametrize("where", ["wrapped", "leaf"])
def test_a_value_read_where_fx_cannot_see_it_moves_auto_on(where: str) -> None:
    leaves = {"leaf_modules": ["p"]} if where == "leaf" else {}
    report = auto_after_fx_refuses(
        ReadsAValue(where), "cannot run on the meta device", input_shape=(2, 4), **leaves
    )
    assert _paths(report) == {"a": (1, 2, 2), "b": (1, 1, 1)}


def _apply(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    return layer(x)


torch.fx.wrap("_apply")


class HandsAModule(nn.Module):
    """A wrapped function given a module: the meta pass meets its real weights."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_apply(x, self.a))


def test_a_module_handed_to_a_wrapped_function_moves_auto_on() -> None:
    # hand derivation: a -> b -> loss
    report = auto_after_fx_refuses(
        HandsAModule(), "cannot run on the meta device", input_shape=(2, 4)
    )
    assert _paths(report) == {"a": (2, 2, 1), "b": (1, 1, 1)}


def _exported_view(size: list[int]) -> torch.fx.GraphModule:
    """ATen's graph of ``y.transpose(1, 2).contiguous().view(size)`` as export records it
    when ``y`` was laid out heads-inner in its run (the CPU's attention kernel): the
    ``contiguous()`` of a tensor contiguous there is dropped."""
    g = torch.fx.Graph()
    y = g.placeholder("y")
    t = g.call_function(torch.ops.aten.transpose.int, (y, 1, 2))
    g.output(g.call_function(torch.ops.aten.view.default, (t, size)))
    return torch.fx.GraphModule(nn.Module(), g)


def test_an_exported_view_the_meta_strides_do_not_allow_is_read_as_the_reshape() -> None:
    """Hugging Face BART under export stopped with "input shapes do not fit operation
    'view_4'": on the meta device the attention's result is laid out contiguously, so the
    view export kept cannot be taken there. Its shape and elements are a reshape's: the flow
    pass reads it so, and gradient still reaches the input."""
    from gpa.frontends.fx.flow import FLOW, GradientFlow

    gm = _exported_view([1, 16, -1])
    y = torch.empty(1, 2, 16, 32, device="meta", requires_grad=True)
    flow = GradientFlow(gm)
    flow.run(y)
    view = [n for n in gm.graph.nodes if n.target is torch.ops.aten.view.default][0]
    assert flow.env[view].shape == (1, 16, 64)
    assert [m.target for m in view.meta[FLOW].grad_from] == [torch.ops.aten.transpose.int]
    with pytest.raises(ShapeError, match="view"):  # a view that fits no layout: as before
        GradientFlow(_exported_view([1, 15, -1])).run(y)


def test_an_exported_graph_that_does_not_run_on_meta_moves_auto_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Export ran the model on the example inputs, so an operation of its graph failing on
    the meta device is this frontend's limit: a TraceError, and auto moves on to
    autograd (it stopped there)."""
    import gpa.frontends.export as export
    from gpa.frontends.fx.flow import GradientFlow

    class FailsOnMeta(GradientFlow):
        """Runs, instead of export's graph, a view that fits no layout (gpa raises)."""

        def run(self, *args: object) -> None:
            y = torch.empty(1, 2, 16, 32, device="meta")
            GradientFlow(_exported_view([1, 15, -1])).run(y)

    monkeypatch.setattr(export, "GradientFlow", FailsOnMeta)
    with pytest.raises(TraceError, match="export's graph of DataShaped does not run on the meta"):
        gpa.analyze(DataShaped("masked_select"), input_shape=(2, 4), tracer="export")
    # fx cannot read it (masked_select has no meta kernel), export's graph fails: autograd
    report = gpa.analyze(DataShaped("masked_select"), input_shape=(2, 4))
    assert report.tracer == "autograd"
    assert "export: export's graph of DataShaped does not run on the meta" in report.notes[0]
    assert (report.layers["a"].timestamps, report.layers["b"].timestamps) == ((1, 2), (1,))


class Head(nn.Module):
    """Picks its input's positive values (a shape of the values, as Ultralytics' Detect
    head's ``item()`` in eval)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + torch.masked_select(y, y > 0).sum()


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_the_limit_names_the_modules_own_type(tracer: str) -> None:
    """Export's graph holds plain modules in the model's place: its message named
    Ultralytics' ``Detect`` head "(Module)"."""
    model = nn.Sequential(nn.Linear(4, 4), Head())
    with pytest.raises(TraceError, match=r"operation '\w+' in module '1' \(Head\) cannot run"):
        gpa.analyze(model, input_shape=(2, 4), tracer=tracer)


class _ReadsAValue(nn.Module):
    """A block scaling its layer's output by a value read from its input (``.item()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * x.abs().max().item()


class _ValueBlockNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.scale, self.b = nn.Linear(4, 4), _ReadsAValue(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.scale(self.a(x)))


@pytest.mark.parametrize("leaf", ["scale", _ReadsAValue], ids=["name", "class"])
def test_a_leaf_export_cannot_run_on_the_meta_device_is_named(leaf) -> None:
    """Export's stand-in for the leaf's call was named in the refusal (`operation
    '_gpa_call_0' in module '_gpa_call_0'`: a new-user review, yolov8n's Detect declared a
    leaf); the message names the model's module. auto reads it with autograd. By hand: b
    1, the leaf scale 2 (one call), a 3."""
    model, x = _ValueBlockNet(), torch.randn(2, 4)
    with pytest.raises(TraceError) as raised:
        gpa.analyze(model, (x,), tracer="export", leaf_modules=[leaf])
    message = str(raised.value)
    assert message.startswith("the call of module 'scale' (_ReadsAValue) cannot run on the meta")
    assert "_gpa_call" not in message
    report = gpa.analyze(model, (x,), leaf_modules=[leaf])
    assert report.tracer == "autograd"
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "scale", {2: 1}, ("b",))
    expect(report, "a", {3: 1}, ("scale",))
    check_reachability_with_autograd(report, model, x)
