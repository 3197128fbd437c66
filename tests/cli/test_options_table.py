"""The analysis options exist on every surface, declared once, documented in one table.

docs/semantics.md's "Options" table is the contract; this test holds it against
:class:`gpa.AnalysisOptions`, the click declarations of every analysing command and the
``[tool.gpa]`` parser.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpa.ci.config import parse_config
from gpa.cli import main
from gpa.cli.options import _ANALYSIS
from gpa.options import option_names

SEMANTICS = Path(__file__).resolve().parents[2] / "docs" / "semantics.md"
ANALYSING = ["analyze", "check", "plot", "compare", "scale"]


def table_rows() -> list[tuple[str, list[str]]]:
    text = SEMANTICS.read_text(encoding="utf-8")
    start = text.index("| option (Python keyword")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = line.split("|")[1:-1]
        rows.append((re.findall(r"`(\w+)`", cells[0])[0], re.findall(r"--[\w-]+", cells[1])))
    return rows


def test_the_table_lists_every_option_once() -> None:
    names = [name for name, _ in table_rows()]
    assert names == list(option_names(settable=False))


def test_each_option_has_one_click_declaration_named_after_it() -> None:
    declared = [option(lambda: None).__click_params__[0].name for option in _ANALYSIS]
    assert sorted(declared) == sorted(option_names())


@pytest.mark.parametrize("command", ANALYSING)
def test_every_analysing_command_takes_every_flag_of_the_table(command: str) -> None:
    flags = {opt for p in main.commands[command].params for opt in (*p.opts, *p.secondary_opts)}
    for name, documented in table_rows():
        assert set(documented) <= flags, (command, name)
    assert {"-k", "-q"} <= flags


def test_every_settable_option_is_a_tool_gpa_key() -> None:
    samples = {
        "input_shape": [1, 3, 8, 8],
        "outputs": ["logits"],
        "layer_types": ["Conv2d"],
        "leaf_modules": "Bottleneck",
        "train": False,
        "tracer": "autograd",
        "channels": True,
        "count_convention": "darknet",
    }
    assert set(samples) == set(option_names())
    config = parse_config({**samples, "models": {"m": {"target": "m.py", **samples}}})
    options = config.models["m"].settings.analysis_options()
    assert options.input_shape == ((1, 3, 8, 8),)
    assert options.leaf_modules == ("Bottleneck",)
    assert str(options.tracer) == "autograd" and str(options.count_convention) == "darknet"
    assert options.channels and not options.train
