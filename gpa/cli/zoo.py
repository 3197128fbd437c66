"""``gpa zoo``: the reference models of :mod:`gpa.models` and their knobs."""

from __future__ import annotations

import json

import click

from gpa.cli.options import emit, format_option

__all__ = ["command"]


@click.command("zoo")
@format_option("json")
def command(fmt: str) -> None:
    """List the reference models of gpa.models (analyse one with gpa analyze gpa.models:NAME).

    Each entry: its one-line description, the paper section it illustrates, its
    knobs (-k KNOB=VALUE) with their defaults, and its default input shape.
    """
    from gpa.models import entries

    rows = entries()
    if fmt == "json":
        data = [
            {
                "name": e.name,
                "description": e.description,
                "section": e.section,
                "knobs": dict(e.knobs),
                "input_shape": list(e.input_shape),
            }
            for e in rows
        ]
        emit(json.dumps(data, indent=2), None)
        return
    lines = []
    for e in rows:
        knobs = ", ".join(f"{k}={v!r}" for k, v in e.knobs.items()) or "-"
        shape = "x".join(str(d) for d in e.input_shape)
        lines += [
            f"{e.name}: {e.description}",
            f"    section: {e.section}",
            f"    knobs: {knobs}   input: {shape}",
        ]
    emit("\n".join(lines), None)
