"""The README's examples are real: its CLI output and Python results are what gpa prints.

These keep the documentation in sync; the numbers themselves are the worked example W2
(stem 2/8 with histogram {2: 1, 4: 3, 6: 3, 8: 1}, conv1 3/…, conv2 2/…, fc 1), which
tests/core/test_paths.py derives by hand.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpa.cli import main

pytestmark = pytest.mark.slow  # doc sync: the README's examples

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(after: str, fence: str) -> str:
    start = README.index(after)
    body = README.index(f"```{fence}\n", start) + len(fence) + 4
    return README[body : README.index("```", body)]


def test_cli_example_output(monkeypatch) -> None:
    block = _block("## 30 seconds with the CLI", "console")
    command, *expected = block.splitlines()
    assert command == "$ gpa analyze examples/tiny_resnet.py"
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, command.split()[2:])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == expected


def test_python_example_prints_what_the_readme_says() -> None:
    block = _block("## 30 seconds with Python", "python")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), {})
    claimed = [m.group(1) for m in re.finditer(r"^# (.*)$", block, re.MULTILINE)]
    assert printed.getvalue().splitlines() == claimed


def test_explain_example_output(monkeypatch) -> None:
    block = _block("## Why is a path long?", "console")
    command, *expected = block.splitlines()
    assert command == "$ gpa explain examples/tiny_resnet.py blocks.1.conv1"
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, command.split()[2:])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == expected
