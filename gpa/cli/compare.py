"""``gpa compare A B``: two models, baselines or saved reports side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gpa.cli.options import (
    analysis_options,
    analysis_settings,
    config_option,
    emit,
    format_option,
    output_option,
    progress_display,
)

__all__ = ["command"]


@click.command("compare")
@click.argument("a")
@click.argument("b")
@analysis_options
@config_option
@format_option("json")
@output_option
@click.pass_context
def command(
    ctx: click.Context,
    a: str,
    b: str,
    kwargs: dict[str, Any],
    quiet: bool,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    **params: Any,
) -> None:
    """Compare two models side by side: network metrics and per-layer paths.

    A and B are TARGETs, models of [tool.gpa.models], baseline files
    (base.json, or base.json:MODEL) or saved `gpa analyze --format json` reports.
    Options apply to both sides; with --channels the gradient combinations are compared too.
    """
    from gpa.ci.compare import compare, format_comparison, load_side, saved_side
    from gpa.ci.config import ModelSettings, read_config
    from gpa.errors import GpaError

    config = read_config(config_path)
    settings = ModelSettings(kwargs=kwargs, options=analysis_settings(ctx, params))
    sides = []
    with progress_display(quiet) as progress:
        for label, arg in zip("AB", (a, b), strict=True):
            try:
                sides.append(load_side(arg, settings, config, progress=progress))
            except GpaError as exc:  # which side, when both name the same file
                raise GpaError(f"{label} ({arg}): {exc}") from None
    given = [*(f"-k {k}" for k in settings.kwargs), *settings.options]
    notes = []
    for label, arg, side in zip("AB", (a, b), sides, strict=True):
        # a side saved at channel level took --channels already
        ignored = [g for g in given if g != "channels" or side.combinations is None]
        if ignored and saved_side(arg) is not None:
            notes.append(
                f"{label} ({arg}) is compared as saved: the options given "
                f"({', '.join(ignored)}) do not apply to it"
            )
    comparison = compare(*sides, names=(a, b), notes=notes)
    emit(comparison.to_json() if fmt == "json" else format_comparison(comparison), output)
