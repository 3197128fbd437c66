"""``gpa explain TARGET LAYER``: one shortest and one longest gradient path of a layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from gpa.cli.options import (
    analysis_options,
    analysis_settings,
    config_option,
    configured,
    emit,
    format_option,
    output_option,
    progress_display,
)

__all__ = ["command"]


@click.command("explain")
@click.argument("target")
@click.argument("layer")
@analysis_options
@config_option
@format_option("json")
@output_option
@click.pass_context
def command(
    ctx: click.Context,
    target: str,
    layer: str,
    kwargs: dict[str, Any],
    quiet: bool,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    **params: Any,
) -> None:
    """Show why LAYER's gradient paths are as short or as long as they are.

    Prints one shortest and one longest gradient path from LAYER to the loss, each
    layer with its module type and the source line that made the call, and the layer
    attaining the network's max_shortest. Among equal paths the choice is fixed
    (docs/semantics.md §4).
    """
    from gpa.ci.check import analyze_spec
    from gpa.render.explain import explanation, format_explanation

    spec = configured(target, kwargs, analysis_settings(ctx, params), config_path)
    with progress_display(quiet) as progress:
        report = analyze_spec(spec, progress=progress)
    data = explanation(report, layer)
    emit(json.dumps(data, indent=2) if fmt == "json" else format_explanation(data), output)
