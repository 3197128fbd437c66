"""Operations torch cannot run on the meta device (no meta kernel: their result's shape
depends on the values) are a frontend's limit, not inputs that do not fit the model.

fx and export compute shapes on the meta device; such an operation used to stop them with
"input shapes do not fit", and `auto` stopped there too although the autograd tracer, which
runs the model on real inputs when the meta device refuses it, reads the model. Now fx and
export raise a TraceError naming the operation, and `auto` moves on to autograd.

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

# Each computes, from y (2 × 4), a value whose shape depends on y's values.
DATA_SHAPED = {
    "masked_select": lambda y: torch.masked_select(y, y > 0),
    "boolean-mask-index": lambda y: y[y > 0],
    "nonzero-index": lambda y: y.flatten()[torch.nonzero(y.flatten() > 0).flatten()],
    "unique": lambda y: torch.unique(y, return_inverse=True)[0] * 1.0,
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
