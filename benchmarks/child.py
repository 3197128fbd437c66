"""Run one benchmark function in a fresh Python process (so that its peak memory is its own).

Not a benchmark itself: the ``bench_*`` scripts import it (they run with this folder on
``sys.path``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def call_in_child(module: str, function: str, *args: object) -> dict:
    """``module.function(*args)`` (a script of this folder) in a new process: its result, a
    JSON-able dict, or ``{"error": <the last line it wrote to stderr>}``."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import {module} as m; "
        f"print(json.dumps(m.{function}(*{args!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])
