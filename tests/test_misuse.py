"""Wrongly typed library arguments and models whose outputs carry no gradient: clear answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpa
from gpa.errors import GpaError, NoGradientError

NET = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"example_inputs": 0}, "example_inputs must be a tensor"),
        ({"input_shape": (1, 4), "outputs": torch.zeros(1)}, "outputs must be an index or key"),
        ({"input_shape": (1, 4), "leaf_modules": torch.zeros(2)}, "leaf_modules must be a list"),
        ({"input_shape": (1, 4), "layer_types": [3]}, "layer_types must be a list"),
        ({"input_shape": (1, 4), "leaf_modules": [3]}, "leaf_modules must be a list"),
    ],
)
def test_wrong_argument_types_are_gpa_errors(options: dict, message: str) -> None:
    with pytest.raises(GpaError, match=message):
        gpa.analyze(NET, **options)


def test_a_single_output_key_selects_that_output() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.a(x), self.b(x)

    # outputs=1 is outputs=[1]: only b feeds the loss; a is unreachable
    report = gpa.analyze(Two(), input_shape=(1, 4), outputs=1)
    assert report.network.unreachable == ("a",)
    assert report.layers["b"].shortest == 1


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x):
        return self.a(x).detach()


def test_no_gradient_carrying_output_is_an_error() -> None:
    # nothing to analyse: an error (issue 13), not an all-unreachable report
    with pytest.raises(NoGradientError, match="returns no tensor that gradient can flow back"):
        gpa.analyze(Detached(), input_shape=(1, 4))
    # a model with a gradient-carrying output gets no such note
    assert not any("returns no tensor" in n for n in gpa.analyze(NET, input_shape=(1, 4)).notes)


class PassesOn(nn.Module):
    """Returns its input as it is, its input doubled, and a layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x):
        return x, x * 2, self.a(x)


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
@pytest.mark.parametrize("selected", [0, 1])
def test_outputs_reaching_no_layer_are_read_alike_and_said(selected: int, tracer: str) -> None:
    """Found by a new user (``create_feature_extractor(..., {"x": "inp"})`` with
    ``outputs=["inp"]``): fx and export reported every layer unreachable, without a word,
    where autograd refused the input returned as it is (``x * 2`` it read as fx does).
    Every frontend now reads them alike — gradient reaches the input alone, so a is
    unreachable — and a note says that no layer is reached. By hand: output 2 reaches
    a (1), and then there is no note."""
    report = gpa.analyze(PassesOn(), input_shape=(1, 4), outputs=selected, tracer=tracer)
    assert report.layers["a"].shortest is None
    assert any(n.startswith("no layer is reached from the selected outputs") for n in report.notes)
    reached = gpa.analyze(PassesOn(), input_shape=(1, 4), outputs=2, tracer=tracer)
    assert reached.layers["a"].shortest == 1
    assert not any(n.startswith("no layer is reached") for n in reached.notes)
