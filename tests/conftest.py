"""Test-suite set-up: the zoo tier is opt-in; tests/data is not collected.

Markers (registered in pyproject.toml):

* ``slow``: subprocess, notebook, property (hypothesis) and doc-sync tests, and tests that
  take more than about a second. ``python -m pytest -m "not slow"`` is the fast tier a
  developer runs; ``python -m pytest`` (README, ``.ci/run``) runs everything.
* ``zoo``: the torchvision/timm tier of tests/zoo, run by ``.ci/zoo`` with ``-m zoo``. It
  is deselected here unless the ``-m`` expression names it, so that any other selection
  (``-m "not slow"``, ``-k``, none) leaves it out.

Property tests (hypothesis) draw the same examples on every run, so a gate's verdict does
not depend on luck; ``HYPOTHESIS_PROFILE=explore`` draws fresh ones to look for new
counterexamples.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import settings

settings.register_profile("gate", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))

# Target files for the CLI and loader tests; some fail to import on purpose.
collect_ignore = ["data"]


@pytest.fixture(autouse=True)
def _terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables fit the terminal (COLUMNS first): tests render at a fixed 120 columns,
    whatever terminal runs them (subprocesses inherit it); width tests set their own."""
    monkeypatch.setenv("COLUMNS", "120")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if re.search(r"\bzoo\b", config.getoption("markexpr") or ""):
        return
    zoo = [item for item in items if item.get_closest_marker("zoo")]
    if zoo:
        config.hook.pytest_deselected(items=zoo)
        items[:] = [item for item in items if not item.get_closest_marker("zoo")]
