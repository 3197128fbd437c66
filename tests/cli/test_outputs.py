"""``--outputs`` on the command line: namedtuple and dataclass fields, dotted paths into
a distribution (issue 13, kind 3).

The models are those of tests/core/test_outputs.py (which checks them against a real
backward pass): an actor-critic policy network returning ``Step(policy=Categorical,
value=tensor)`` and a net returning a nested dataclass; their numbers are derived by hand
in the comments.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from gpa.cli import main

POLICY = "tests.core.test_outputs:CategoricalPolicy"  # Step(Categorical(pi), v)
NET = "tests.core.test_outputs:DataclassNet"  # Heads(head, Aux(side, count))
SHAPE = ("--input-shape", "5,4")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def shortest(target: str, *flags: str) -> dict[str, int | None]:
    result = run("analyze", target, *SHAPE, "--format", "json", *flags)
    assert result.exit_code == 0, result.output
    return {layer["name"]: layer["shortest"] for layer in json.loads(result.stdout)["layers"]}


def test_policy_all_outputs() -> None:
    # pi 1 (the Categorical's logits), v 1, body 2
    assert shortest(POLICY) == {"body": 2, "pi": 1, "v": 1}


@pytest.mark.parametrize("key", ["policy", "0", "policy.logits"])
def test_policy_field(key: str) -> None:
    # the policy alone: v is unreachable
    assert shortest(POLICY, "--outputs", key) == {"body": 2, "pi": 1, "v": None}


@pytest.mark.parametrize("key", ["value", "1"])
def test_value_field(key: str) -> None:
    assert shortest(POLICY, "--outputs", key) == {"body": 2, "pi": None, "v": 1}


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_dataclass_fields(tracer: str) -> None:
    flags = ("--tracer", tracer)
    # head 1, side 1, trunk 2; aux.feats alone: head unreachable
    assert shortest(NET, *flags) == {"trunk": 2, "head": 1, "side": 1}
    expected = {"trunk": 2, "head": None, "side": 1}
    assert shortest(NET, *flags, "--outputs", "aux.feats") == expected


def test_an_unknown_output_lists_the_paths() -> None:
    result = run("analyze", POLICY, *SHAPE, "--outputs", "logits")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "error: outputs (--outputs): 'logits' is not among the model's outputs; available: "
        "'policy.logits', 'value'\n"
    )
