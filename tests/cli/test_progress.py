"""Progress feedback: phases reported to a callback; the CLI shows them only on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import gpa

ROOT = Path(__file__).resolve().parents[2]


def test_phases_are_reported_in_order() -> None:
    seen: list[str] = []
    gpa.analyze(
        nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),
        input_shape=(1, 4),
        channels=True,
        progress=seen.append,
    )
    assert seen == [
        "tracing and propagating shapes",
        "channel segments",
        "parameters and FLOPs",
        "gradient paths",
    ]


def _run(*args: str, terminal: bool) -> str:
    """Standard error of `gpa analyze` run with stderr on a pseudo-terminal or a pipe."""
    command = [sys.executable, "-m", "gpa", "analyze", "examples/tiny_resnet.py", *args]
    if not terminal:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        return done.stderr
    leader, follower = pty.openpty()
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=follower) as proc:
        proc.wait(timeout=120)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # subprocesses
def test_cli_is_quiet_when_stderr_is_not_a_terminal() -> None:
    assert _run(terminal=False) == ""


@pytest.mark.slow  # subprocesses
def test_cli_shows_phases_on_a_terminal_unless_quiet() -> None:
    assert "gpa:" in _run(terminal=True)
    assert "gpa:" not in _run("--quiet", terminal=True)
