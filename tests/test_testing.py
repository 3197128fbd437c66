"""Tests of :func:`gpa.testing.assert_gradient_paths`.

Model: ``nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)``: a chain of three layers
``0``, ``2``, ``4`` with shortest = longest = 3, 2, 1 (mean 2). ``Detached`` adds a layer
whose output is detached and one that is never called.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpa.ci.config import parse_config
from gpa.errors import GpaError
from gpa.testing import assert_gradient_paths


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.side(x).detach())


def test_passes_and_returns_the_report() -> None:
    report = assert_gradient_paths(
        mlp(),
        input_shape=(1, 4),
        max_shortest=3,
        max_longest=3,
        no_unreachable=True,
        max_mean_shortest=2.0,
        layers={"4": {"max_shortest": 1}},
    )
    assert report.network.max_shortest == 3


def test_example_inputs_are_accepted() -> None:
    assert_gradient_paths(mlp(), torch.zeros(2, 4), max_shortest=3)


def test_message_lists_every_violation() -> None:
    with pytest.raises(AssertionError) as info:
        assert_gradient_paths(
            mlp(),
            input_shape=(1, 4),
            max_shortest=1,
            max_longest=2,
            max_mean_shortest=1.5,
            layers={"2": {"max_longest": 1}},
        )
    assert str(info.value) == (
        "Sequential breaks 4 gradient-path rules:\n"
        "  max-shortest 1: 2 layers exceed it: 0 (3), 2 (2)\n"
        "  max-longest 2: 1 layer exceeds it: 0 (3)\n"
        "  max-mean-shortest 1.5: mean_shortest 2.0 exceeds it\n"
        "  layers[2].max-longest 1: 1 layer exceeds it: 2 (2)"
    )


def test_unreachable_layers() -> None:
    # side: detached output, unreachable; unused: never called, listed last
    with pytest.raises(AssertionError) as info:
        assert_gradient_paths(Detached(), input_shape=(1, 4), no_unreachable=True)
    assert str(info.value) == (
        "Detached breaks 1 gradient-path rule:\n"
        "  no-unreachable: 2 layers receive no gradient: side, unused"
    )
    # without the rule the same model passes
    assert_gradient_paths(Detached(), input_shape=(1, 4), max_shortest=1)


def test_pattern_matching_nothing_is_a_violation() -> None:
    with pytest.raises(AssertionError, match=r"layers\[head\.\*\]\.max-shortest 2: the pattern"):
        assert_gradient_paths(mlp(), input_shape=(1, 4), layers={"head.*": {"max_shortest": 2}})


def test_model_errors_are_not_assertion_errors() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(GpaError):
        assert_gradient_paths(Branchy(), input_shape=(1, 4), max_shortest=1, tracer="fx")


@pytest.mark.slow  # a pytest subprocess
def test_pytest_shows_the_users_assertion_not_gpas_lines(tmp_path) -> None:
    """Issue 15 §6: a failing assert_gradient_paths in a user's test shows the user's line
    and the differing values; gpa's own source is hidden from the traceback."""
    import subprocess
    import sys

    (tmp_path / "test_user.py").write_text(
        "import torch.nn as nn\n"
        "from gpa.testing import assert_gradient_paths\n"
        "def test_chain():\n"
        "    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))\n"
        "    assert_gradient_paths(net, input_shape=(1, 4), max_shortest=2)  # the user's line\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "the user's line" in done.stdout
    # the first layer of a 3-layer chain: shortest 3 > 2
    assert "max-shortest 2: 1 layer exceeds it: 0 (3)" in done.stdout
    assert "gpa/testing.py" not in done.stdout and "raise AssertionError" not in done.stdout


@pytest.mark.parametrize(
    ("rule", "value", "message"),
    [
        ("max_shortest", 0, "{at}.max_shortest: expected a positive integer, got 0"),
        ("max_longest", 2.5, "{at}.max_longest: expected a positive integer, got 2.5"),
        ("no_unreachable", "yes", "{at}.no_unreachable: expected true or false, got 'yes'"),
        ("max_mean_shortest", "2", "{at}.max_mean_shortest: expected a number, got '2'"),
        # NaN: no mean compares greater, so the rule could never fail
        ("max_mean_shortest", float("nan"), "{at}.max_mean_shortest: expected a finite number"),
        # below 1: no mean of path lengths is so small, so the rule could never pass
        ("max_mean_shortest", -1, "{at}.max_mean_shortest: expected a finite number of at le"),
        ("max_mean_shortest", 0.5, "{at}.max_mean_shortest: expected a finite number of at le"),
        ("layers", {"4": {"max_shortst": 1}}, "unknown key 'max_shortst' in {at}.layers.4 .*mean"),
    ],
)
def test_rules_are_checked_as_gpa_check_checks_them(rule: str, value: object, message: str) -> None:
    """``max_shortest=0`` ran as a rule and a misspelt pattern key raised a bare TypeError,
    where ``[tool.gpa]`` and the command line refuse both (found by a surface review)."""
    with pytest.raises(GpaError, match=message.format(at="assert_gradient_paths")):
        assert_gradient_paths(mlp(), input_shape=(1, 4), **{rule: value})
    with pytest.raises(GpaError, match=message.format(at=r"tool\.gpa")):
        parse_config({rule: value})


@pytest.mark.parametrize(
    "rules",
    [{}, {"no_unreachable": False}, {"layers": {"head.*": {"allow_unreachable": True}}}],
)
def test_no_rule_is_refused_as_gpa_check_refuses_an_empty_gate(rules: dict) -> None:
    """With no rule (or only ones that judge nothing: a flag left off, a pattern that only
    spares) the call asserted nothing and passed; ``gpa check`` refuses such a gate."""
    with pytest.raises(GpaError, match="no rule given, so it would assert nothing"):
        assert_gradient_paths(mlp(), input_shape=(1, 4), **rules)
