"""Helpers of the tests that analyse one model with every frontend (issue 13's kinds of
model code: checkpointing, complex and low-precision weights, scripted parts, parameters
read but not used).

Each model is analysed by every frontend (fx, export, autograd, and auto, which picks one),
and each report is held against the same hand-derived values (``tests/semantics.py``:
``expect`` …) and a real backward pass (``check_reachability_with_autograd``).
"""

from __future__ import annotations

from typing import Any

import pytest

import gpa
from gpa.errors import TraceError

#: The frontends a model can be analysed with, ``auto`` last.
TRACERS = ("fx", "export", "autograd", "auto")

#: Parametrisation over :data:`TRACERS` (export, which takes seconds, in the slow tier).
EVERY_TRACER = pytest.mark.parametrize(
    "tracer", [pytest.param(t, marks=pytest.mark.slow) if t == "export" else t for t in TRACERS]
)

# What a report says about a layer, every field but parameters and FLOPs.
_FIELDS = ("type", "calls", "shortest", "longest", "timestamps", "num_paths", "path_histogram")


def layer_records(report: Any) -> dict[str, tuple]:
    """Per layer, in forward order, what its record says (sources in their order)."""
    return {
        name: (*(getattr(r, f) for f in _FIELDS), tuple(r.sources))
        for name, r in report.layers.items()
    }


def auto_after_fx_refuses(model: Any, match: str, **options: Any) -> Any:
    """The report ``auto`` gives ``model`` after fx refused it with a ``TraceError``
    matching ``match`` (a frontend's limit: auto must move on to export or autograd)."""
    with pytest.raises(TraceError, match=match):
        gpa.analyze(model, tracer="fx", **options)
    report = gpa.analyze(model, **options)
    assert report.tracer in ("export", "autograd")
    return report
