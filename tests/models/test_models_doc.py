"""docs/models.md is what scripts/gen_models_doc.py generates now (regenerated in-process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # doc sync: regenerates docs/models.md

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "gen_models_doc", ROOT / "scripts" / "gen_models_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_models_doc_is_current() -> None:
    text = _script().render()
    current = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    assert current == text, "docs/models.md is stale: run python scripts/gen_models_doc.py"


def test_zoo_manifest_is_current() -> None:
    """gpa/models/manifest.json (what `gpa zoo` lists without importing torch) is the
    registry's own list."""
    current = (ROOT / "gpa" / "models" / "manifest.json").read_text(encoding="utf-8")
    assert current == _script().manifest_text(), "run python scripts/gen_models_doc.py"
