"""Zoo-tier set-up: the libraries never reach the network, and the tests import
:mod:`catalog` (this directory) by name, as scripts/gen_coverage.py does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# ultralytics probes the network (a DNS lookup) when imported unless it is told it is
# offline; the Hugging Face hub must not be asked for anything either (models are built
# from configurations).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
