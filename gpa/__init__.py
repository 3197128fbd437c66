"""gpa: gradient-path analysis for PyTorch models.

>>> import gpa, torch.nn as nn
>>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), input_shape=(1, 4))
>>> report.network.max_shortest
2
"""

__version__ = "0.1.0"

from gpa.api import analyze  # noqa: E402
from gpa.report import LayerRecord, NetworkSummary, Report  # noqa: E402
from gpa.scaling import scaling  # noqa: E402

__all__ = ["analyze", "scaling", "Report", "LayerRecord", "NetworkSummary", "__version__"]
