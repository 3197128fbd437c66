"""``gpa scale NAME --knob K --values ...``: how a family's paths grow with its depth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from gpa.cli.options import (
    ParseError,
    analysis_options,
    analysis_settings,
    config_option,
    configured,
    emit,
    format_option,
    output_option,
    parse_kv,
    progress_display,
)

__all__ = ["command"]


@click.command("scale")
@click.argument("name")
@click.option("--knob", required=True, help="The knob to vary, e.g. depth or blocks.")
@click.option(
    "--values",
    required=True,
    metavar="V1,V2,...",
    help="Comma-separated values of the knob (Python literals), e.g. 4,8,16,32,64.",
)
@analysis_options
@config_option
@format_option("json")
@output_option
@click.pass_context
def command(
    ctx: click.Context,
    name: str,
    knob: str,
    values: str,
    kwargs: dict[str, Any],
    quiet: bool,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    **params: Any,
) -> None:
    """Fit how model NAME's gradient paths and parameters grow as KNOB grows.

    NAME is a zoo entry (gpa zoo), a TARGET naming a factory whose keyword
    argument KNOB is varied, or a model of [tool.gpa.models] whose target is one. Builds NAME at every value (other knobs fixed with
    -k), analyses it, and fits
    max_shortest, longest and parameters against N = number of layers: O(1),
    O(log N), O(N), O(N log N) or O(N²) (criterion: docs/semantics.md, "Scaling").
    """
    from gpa.growth import scaling

    try:
        parsed = [parse_kv(f"{knob}={v.strip()}")[1] for v in values.split(",") if v.strip()]
    except ParseError as exc:
        raise click.BadParameter(str(exc), param_hint="--values") from None
    spec = configured(name, kwargs, analysis_settings(ctx, params), config_path)
    options = spec.settings.analysis_options()
    # --knob varies what a configuration fixes (the command line wins); fixed by -k too
    # is refused by scaling
    fixed = {k: v for k, v in spec.settings.kwargs.items() if k != knob or k in kwargs}
    with progress_display(quiet) as progress:
        result = scaling(spec.target, knob, parsed, options=options, progress=progress, **fixed)
    result = dataclasses.replace(result, model=spec.named(result.model))
    emit(json.dumps(result.to_dict(), indent=2) if fmt == "json" else str(result), output)
