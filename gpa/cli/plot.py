"""``gpa plot TARGET... --kind KIND -o FILE``: the paper's figures for a model (gpa.plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from gpa.cli.options import (
    analysis_options,
    analysis_settings,
    depth_option,
    progress_display,
    writable_path,
)

__all__ = ["command"]


@click.command("plot")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@analysis_options
@click.option(
    "--kind",
    type=click.Choice(["timestamps", "sources", "profile", "histogram", "gradnorm", "duplication"]),
    default="timestamps",
    show_default=True,
    help="timestamps (Fig. 7), sources at a round (Fig. 8), profile along depth "
    "(several TARGETs overlaid), the path-length histogram of --layer, or, measured on "
    "real backward passes (gpa measure, default steps and batch size): gradnorm "
    "(gradient norm beside shortest path) and duplication (CKA heat map).",
)
@click.option("--layer", metavar="NAME", help="The layer of --kind histogram.")
@click.option(
    "--round",
    "t",
    type=click.IntRange(min=1),
    default=None,
    help="The round of --kind sources (default: the first round at which more than one "
    "layer receives gradient; at most the longest gradient path).",
)
@depth_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_path,
    help="Image file; .png, .svg or .pdf (default: KIND.png).",
)
@click.pass_context
def command(
    ctx: click.Context,
    targets: tuple[str, ...],
    kwargs: dict[str, Any],
    quiet: bool,
    kind: str,
    layer: str | None,
    t: int | None,
    depth: int | None,
    output: Path | None,
    **params: Any,
) -> None:
    """Draw the gradient paths of the model(s) named by TARGET as an image (see gpa.plot).

    Channel segments are analysed for --kind timestamps and sources unless --no-channels.
    """
    import gpa.plot
    from gpa.options import AnalysisOptions, Tracer

    output = output or Path(f"{kind}.png")
    gpa.plot.image_format(output)  # refuse a bad file name, or request, before analysing
    gpa.plot.check_request(kind, len(targets))
    given = ctx.get_parameter_source("channels") is not ParameterSource.DEFAULT
    settings = analysis_settings(ctx, params)
    options = AnalysisOptions(**settings)
    if not given:  # segments make timestamps and sources richer, where fx can give them
        wanted = kind in ("timestamps", "sources") and options.tracer is not Tracer.AUTOGRAD
        options = options.replace(channels=wanted)
    with progress_display(quiet) as progress:
        if kind in ("gradnorm", "duplication"):
            from gpa.measure import measure_target

            settings.pop("channels", None)  # measured per layer here
            reports = [measure_target(x, kwargs, progress=progress, **settings) for x in targets]
        else:
            reports = [_analyze(x, kwargs, options, not given, progress) for x in targets]
    fig = gpa.plot.draw(kind, reports, layer=layer, t=t, depth=depth)
    gpa.plot.save(fig, output)
    click.echo(f"wrote {output}")


def _analyze(
    target: str, kwargs: dict[str, Any], options: Any, optional: bool, progress: Any
) -> Any:
    """The report of ``target``; at layer level when channels were not asked for and no
    frontend that gives them can read the model."""
    from gpa.api import analyze_target
    from gpa.errors import TraceError

    try:
        return analyze_target(target, kwargs, options, progress=progress)
    except TraceError:
        if not (optional and options.channels):
            raise
    return analyze_target(target, kwargs, options.replace(channels=False), progress=progress)
