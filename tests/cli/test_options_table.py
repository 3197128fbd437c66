"""The analysis options exist on every surface, declared once, documented in one table.

docs/semantics.md's "Options" table is the contract; this test holds it against
:class:`gpa.AnalysisOptions`, the click declarations of every analysing command and the
``[tool.gpa]`` parser.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpa.ci.config import parse_config
from gpa.cli import main
from gpa.cli.options import _ANALYSIS
from gpa.options import option_names

SEMANTICS = Path(__file__).resolve().parents[2] / "docs" / "semantics.md"
ANALYSING = ["analyze", "check", "plot", "compare", "scale", "explain", "measure"]


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


@pytest.mark.parametrize("command", ANALYSING)
def test_every_analysing_command_reads_tool_gpa(command: str) -> None:
    flags = {opt for p in main.commands[command].params for opt in p.opts}
    assert "--config" in flags


NET = """
import torch
from torch import nn

def build(width=4, depth=1):
    hidden = [nn.Linear(width, width) for _ in range(depth - 1)]
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), *hidden, nn.Linear(width, 2))
"""

PYPROJECT = """
[tool.gpa]
input_shape = [5, 3]          # every model: a batch of 5
tracer = "autograd"

[tool.gpa.models.wide]
target = "net.py:build"
kwargs = { width = 6 }
"""


@pytest.mark.parametrize(
    ("args", "width"),
    [
        (["analyze", "wide", "--format", "json"], 6),  # a configured model by name
        (["analyze", "net.py:build", "--format", "json"], 4),  # any TARGET: the defaults
        (["analyze", "wide", "-k", "width=7", "--format", "json"], 7),  # -k over the table
    ],
)
def test_analyze_applies_tool_gpa_as_check_does(tmp_path, monkeypatch, args, width) -> None:
    """Found by a review of the YOLO line: ``gpa analyze`` ignored ``[tool.gpa]`` (640x640
    where ``gpa check`` used the configured 160x160) and did not know configured names.
    By hand: Linear(3, width) then Linear(width, 2): params 3 * width + width + 2 * width + 2."""
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tracer"] == "autograd"
    assert report["inputs"] == [{"shape": [5, 3], "dtype": "float32"}]
    assert report["network"]["params"] == 6 * width + 2


@pytest.mark.parametrize(
    "args",
    [
        ["explain", "wide", "0"],
        ["plot", "wide", "--kind", "histogram", "--layer", "0", "-o", "h.png"],
        ["measure", "wide", "--steps", "1", "--batch-size", "4"],
        ["scale", "wide", "--knob", "depth", "--values", "1,2,3"],
        ["compare", "wide", "net.py:build"],
        ["check", "wide", "--allow-empty"],
    ],
)
def test_every_analysing_command_knows_configured_models(tmp_path, monkeypatch, args) -> None:
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_compare_applies_the_defaults_to_a_target(tmp_path, monkeypatch) -> None:
    """``gpa compare`` analysed a TARGET without the ``[tool.gpa]`` defaults, unlike a
    configured model beside it."""
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compare", "net.py:build", "wide", "--format", "json"])
    assert result.exit_code == 0, result.output
    # by hand, at the configured batch of 5: 2 * 5 * (3 * 4 + 4 * 2) and 2 * 5 * (3 * 6 + 6 * 2)
    assert json.loads(result.output)["network"]["flops"] == [200, 300]
