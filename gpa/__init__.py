"""gpa: gradient-path analysis for PyTorch models.

The public names are imported on first use, so that ``import gpa`` (and ``gpa --help``)
does not import torch.

>>> import gpa, torch.nn as nn
>>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), input_shape=(1, 4))
>>> report.network.max_shortest
2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0.dev0"

# public name -> the module defining it
_EXPORTS = {
    "analyze": "gpa.api",
    "analyze_target": "gpa.api",
    "AnalysisOptions": "gpa.options",
    "Tracer": "gpa.options",
    "CountConvention": "gpa.options",
    "scaling": "gpa.growth",
    "count": "gpa.frontends.counts",
    "Report": "gpa.core.report",
    "LayerRecord": "gpa.core.report",
    "NetworkSummary": "gpa.core.report",
    "GpaError": "gpa.errors",
    "measure": "gpa.measure",
    "Measurement": "gpa.measure.measurement",
}

__all__ = [
    "AnalysisOptions",
    "CountConvention",
    "GpaError",
    "LayerRecord",
    "Measurement",
    "NetworkSummary",
    "Report",
    "Tracer",
    "__version__",
    "analyze",
    "analyze_target",
    "count",
    "measure",
    "scaling",
]

if TYPE_CHECKING:  # pragma: no cover
    from gpa.api import analyze, analyze_target
    from gpa.core.report import LayerRecord, NetworkSummary, Report
    from gpa.errors import GpaError
    from gpa.frontends.counts import count
    from gpa.growth import scaling
    from gpa.measure import measure
    from gpa.measure.measurement import Measurement
    from gpa.options import AnalysisOptions, CountConvention, Tracer


# submodules the docs use as ``gpa.<name>.…`` after ``import gpa`` alone (imported on
# first use too: ``gpa.plot`` imports matplotlib)
_SUBMODULES = ("plot", "models", "testing", "compare")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"gpa.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
