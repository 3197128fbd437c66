"""``gpa zoo``: the reference models of :mod:`gpa.models` and their knobs.

The list comes from ``gpa/models/manifest.json`` (written with docs/models.md by
``scripts/gen_models_doc.py``), so that listing the zoo does not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from gpa.cli.options import emit, format_option, output_option

__all__ = ["command"]

MANIFEST = Path(__file__).resolve().parent.parent / "models" / "manifest.json"

PAPER = (
    'C.-Y. Wang, H.-Y. M. Liao, I-H. Yeh, "Designing Network Design Strategies Through '
    'Gradient Path Analysis", 2023'
)


def _entries() -> list[dict[str, Any]]:
    if MANIFEST.exists():
        return json.loads(MANIFEST.read_text(encoding="utf-8"))
    from gpa.models import manifest  # an installation without the file: build the list

    return manifest()


@click.command("zoo")
@format_option("json")
@output_option
def command(fmt: str, output: Path | None) -> None:
    """List the reference models of gpa.models (analyse one with gpa analyze NAME).

    Each entry: its one-line description, the section of the paper (Wang, Liao, Yeh,
    2023) it illustrates, its knobs (-k KNOB=VALUE) with their defaults, and its default
    input shape.
    """
    rows = _entries()
    if fmt == "json":
        emit(json.dumps(rows, indent=2), output)
        return
    lines = [f"The architectures of {PAPER}; sections are the paper's.", ""]
    for e in rows:
        knobs = ", ".join(f"{k}={v!r}" for k, v in e["knobs"].items()) or "-"
        shape = "x".join(str(d) for d in e["input_shape"])
        lines += [
            f"{e['name']}: {e['description']}",
            f"    section: {e['section']}",
            f"    knobs: {knobs}   input: {shape}",
        ]
    emit("\n".join(lines), output)
