"""docs/measurement.md is what scripts/gen_measure_doc.py generates now (regenerated here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_measure_doc", ROOT / "scripts" / "gen_measure_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # doc sync: measures seven zoo models (~40 s on 2 cores)
def test_measurement_doc_is_current() -> None:
    module = _generator()
    current = (ROOT / "docs" / "measurement.md").read_text(encoding="utf-8")
    fresh = module.render()
    assert module.is_current(current, fresh), "run python scripts/gen_measure_doc.py"


def test_figures_are_compared_up_to_their_last_place() -> None:
    module = _generator()
    assert module.is_current("a | 0.575 | 1.00 |", "a | 0.577 | 0.99 |")
    assert not module.is_current("a | 0.575 |", "a | 0.578 |")  # three units apart
    assert not module.is_current("a | 0.575 |", "b | 0.575 |")  # other text
    assert not module.is_current("a | 0.575 |", "a | 0.575 | 0.1 |")  # another figure
    assert not module.is_current("a | 0.57 |", "a | 0.575 |")  # another precision
