"""The growth-class fit of :mod:`gpa.scaling` on data of known growth (hand-made formulas)."""

from __future__ import annotations

import math
import textwrap

import pytest

import gpa
from gpa.errors import GpaError
from gpa.growth import fit_growth

NS = [4, 8, 16, 32, 64]


@pytest.mark.parametrize(
    ("formula", "growth"),
    [
        (lambda n: 7, "O(1)"),
        (lambda n: 3 + 2 * math.log2(n), "O(log N)"),
        (lambda n: 5 + 3 * n, "O(N)"),
        (lambda n: 100 + n * math.log(n), "O(N log N)"),
        (lambda n: 2 * n * n + 9 * n, "O(N²)"),
        (lambda n: math.floor(math.log2(n)) + 2, "O(log N)"),
    ],
)
def test_known_growth(formula, growth: str) -> None:
    assert fit_growth(NS, [formula(n) for n in NS]).growth == growth


def test_exact_linear_fit_coefficients() -> None:
    fit = fit_growth(NS, [5 + 3 * n for n in NS])
    assert (round(fit.a, 9), round(fit.b, 9)) == (5, 3)
    assert fit.r2["O(N)"] == pytest.approx(1.0)


def test_simpler_class_wins_a_tie_within_tolerance() -> None:
    # linear data: N log N fits almost as well over this range, but O(N) is simpler
    fit = fit_growth(NS, [n for n in NS])
    assert fit.r2["O(N log N)"] > 0.99 and fit.growth == "O(N)"


def test_decreasing_data_fit_no_growth_class() -> None:
    fit = fit_growth(NS, [100 - n for n in NS])
    assert fit.growth == "none" and fit.r2 == {}


def test_too_few_points() -> None:
    with pytest.raises(GpaError, match="at least 3"):
        fit_growth([4, 4, 8], [1, 2, 3])


def test_scaling_result_layout() -> None:
    result = gpa.scaling("plainnet", "depth", [1, 2, 3], width=4)
    data = result.to_dict()
    assert set(data) == {
        "model",
        "knob",
        "fixed",
        "n",
        "count_convention",
        "points",
        "fits",
        "notes",
    }
    assert data["fixed"] == {"width": 4} and data["n"] == "layers"
    assert [p["tracer"] for p in data["points"]] == ["fx"] * 3 and data["notes"] == []
    assert set(data["fits"]) == {"max_shortest", "longest", "params"}
    # reference §0 Conv = conv without bias + BN: stem 3->4 (108 + 8), depth 3x3 convs 4->4
    # (144 + 8 each), linear 4->10 with bias (50)
    assert [p.params for p in result.points] == [116 + 152 * d + 50 for d in (1, 2, 3)]
    assert "growth: max_shortest O(N)" in str(result)


def test_varied_knob_cannot_also_be_fixed() -> None:
    with pytest.raises(GpaError, match="being varied"):
        gpa.scaling("plainnet", "depth", [1, 2, 3], depth=4)


def test_a_scaling_study_keeps_what_its_analyses_noted(tmp_path, monkeypatch) -> None:
    """Found by a surface audit: ``gpa scale`` (text and JSON) said nothing of the notes of
    the models it analysed — the frontend auto chose, the inputs chosen … —, where every
    analysing command keeps them. Each note once (the study repeats them per model), and
    each point's frontend."""
    (tmp_path / "branching.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def build(depth):
                class Net(nn.Module):
                    def __init__(self):
                        super().__init__()
                        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(depth))

                    def forward(self, x):
                        for layer in self.layers:
                            x = layer(x)
                            x = x if bool(x.sum() > -1e9) else -x  # fx cannot trace it
                        return x

                net = Net()
                net.input_shape = (2, 4)
                return net
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    result = gpa.scaling("branching.py:build", "depth", [1, 2, 3])
    assert {p.tracer for p in result.points} == {"autograd"}  # (export refuses it too)
    said = [n for n in result.notes if n.startswith("tracer auto used")]
    assert len(said) == 1  # (once, though three models were analysed)
    assert result.to_dict()["notes"] == list(result.notes)
    assert "notes:\n  - tracer auto used" in str(result)
