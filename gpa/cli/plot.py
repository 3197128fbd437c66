"""``gpa plot TARGET... --kind KIND -o FILE``: the paper's figures for a model (gpa.plot)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from gpa.cli.options import (
    analysis_options,
    analysis_settings,
    config_option,
    configured,
    depth_option,
    measure_options,
    measure_settings,
    progress_display,
    writable_path,
)

__all__ = ["command"]


@click.command("plot")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@analysis_options
@config_option
@click.option(
    "--kind",
    type=click.Choice(["timestamps", "sources", "profile", "histogram", "gradnorm", "duplication"]),
    default="timestamps",
    show_default=True,
    help="timestamps (Fig. 7), sources at a round (Fig. 8), profile along depth "
    "(several TARGETs overlaid), the path-length histogram of --layer, or, measured on "
    "real backward passes (gpa measure; --steps, --batch-size, --device, --seed): gradnorm "
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
@measure_options
@click.pass_context
def command(
    ctx: click.Context,
    targets: tuple[str, ...],
    kwargs: dict[str, Any],
    quiet: bool,
    config_path: Path | None,
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

    output = output or Path(f"{kind}.png")
    gpa.plot.image_format(output)  # refuse a bad file name, or request, before analysing
    gpa.plot.check_request(kind, len(targets))
    settings = analysis_settings(ctx, params)
    measured, given = measure_settings(ctx, params)
    if given and kind not in _MEASURED:
        raise click.UsageError(
            f"{', '.join(given)}: how measured steps run, for --kind "
            f"{' or '.join(_MEASURED)} (gpa measure's options)"
        )
    specs = [configured(x, kwargs, settings, config_path) for x in targets]
    with progress_display(quiet) as progress:
        if kind in _MEASURED:
            from gpa.measure import measure_target

            reports = [
                measure_target(
                    s.target,
                    dict(s.settings.kwargs),
                    progress=progress,
                    **measured,
                    # (channels are measured per layer here)
                    **{k: v for k, v in s.settings.options.items() if k != "channels"},
                )
                for s in specs
            ]
        else:
            reports = [_analyze(s, kind, progress) for s in specs]
    fig = gpa.plot.draw(kind, reports, layer=layer, t=t, depth=depth)
    gpa.plot.save(fig, output)
    click.echo(f"wrote {output}")


#: The kinds drawn from measured steps (``gpa measure``).
_MEASURED = ("gradnorm", "duplication")


def _analyze(spec: Any, kind: str, progress: Any) -> Any:
    """The report of ``spec``'s model; with channel segments for timestamps and sources
    unless channels were set (on the command line or in ``[tool.gpa]``), at layer level
    when none was set and no frontend that gives them can read the model."""
    from gpa.ci.check import analyze_spec
    from gpa.errors import TraceError
    from gpa.options import Tracer

    settings = spec.settings
    # segments make timestamps and sources richer, where fx or export can give them
    if "channels" not in settings.options and kind in ("timestamps", "sources"):
        if settings.analysis_options().tracer is Tracer.AUTOGRAD:
            why = "the autograd tracer gives none"
        else:
            segmented = replace(settings, options={**settings.options, "channels": True})
            try:
                return analyze_spec(replace(spec, settings=segmented), progress=progress)
            except TraceError:
                why = "no frontend that gives them reads the model"
        # (said, not silent: --channels asks for them, and fails where they cannot be had)
        click.echo(f"note: {spec.name}: drawn without channel segments ({why})", err=True)
    return analyze_spec(spec, progress=progress)
