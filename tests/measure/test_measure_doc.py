"""docs/measurement.md is what scripts/gen_measure_doc.py generates now (regenerated here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # doc sync: measures seven zoo models (~40 s on 2 cores)
def test_measurement_doc_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_measure_doc", ROOT / "scripts" / "gen_measure_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (ROOT / "docs" / "measurement.md").read_text(encoding="utf-8")
    assert current == module.render(), "run python scripts/gen_measure_doc.py"
