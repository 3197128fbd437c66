"""The scripts in benchmarks/ still import (and bench_core still runs) against the package.

They are not part of the package, so nothing else imports them: an API move in gpa/ would
leave them broken unnoticed. Nothing here is timed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


def load(path: Path) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:  # as when run as a script: its helpers import
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_are_found() -> None:
    assert {p.name for p in SCRIPTS} >= {
        "bench_core.py",
        "bench_channels.py",
        "bench_counts.py",
        "bench_scale.py",
        "bench_peers.py",
        "bench_residual.py",
    }


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_imports(path: Path) -> None:
    module = load(path)
    assert callable(module.main)
    assert module.__doc__ and "Run:" in module.__doc__


@pytest.mark.slow
def test_bench_core_runs_its_quick_settings(capsys: pytest.CaptureFixture[str]) -> None:
    load(BENCHMARKS / "bench_core.py").main(["--quick", "--repeat", "1", "--no-torchview"])
    out = capsys.readouterr().out
    assert "a/(t+v)" in out
    # the whole call under every tracer, export beside fx and autograd, one row per model
    (row,) = [line for line in out.splitlines() if line.startswith("csp ")]
    assert len(row.split()) == 3 + 4 + 3
    for tracer in ("fx s", "export s", "autograd s", "auto s", "export/fx", "autograd/fx"):
        assert tracer in out


@pytest.mark.slow
def test_bench_peers_runs_its_quick_settings(capsys: pytest.CaptureFixture[str]) -> None:
    load(BENCHMARKS / "bench_peers.py").main(["--quick", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "| gpa.models:csp |" in out
    assert "goal channels / layer <= 3.0:" in out


@pytest.mark.slow
def test_bench_residual_runs_small_depths(capsys: pytest.CaptureFixture[str]) -> None:
    load(BENCHMARKS / "bench_residual.py").main(["--layers", "20", "40", "--channels", "20"])
    out = capsys.readouterr().out
    assert "| 20 |" in out and "| 40 |" in out
    assert "growth 20 -> 40 layers" in out
    assert "channels=True, 20 layers:" in out and "failed" not in out
