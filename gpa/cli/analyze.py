"""``gpa analyze TARGET``: the gradient paths of one model, as text, JSON, CSV or HTML."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from gpa.cli.options import (
    analysis_options,
    analysis_settings,
    config_option,
    configured,
    depth_option,
    emit,
    format_option,
    output_option,
    progress_display,
    wide_option,
)

__all__ = ["command"]


@click.command("analyze")
@click.argument("target")
@analysis_options
@config_option
@format_option("json", "csv", "html", "dot", "graphml", "node-link")
@output_option
@click.option(
    "--columns",
    metavar="NAMES",
    help="Comma-separated columns of the text table, in the order given, e.g. "
    "shortest,longest,timestamps "
    "(of: type, calls, shortest, longest, timestamps, paths, params, flops, sources, "
    "segments, combos).",
)
@wide_option
@depth_option
@click.pass_context
def command(
    ctx: click.Context,
    target: str,
    kwargs: dict[str, Any],
    quiet: bool,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    columns: str | None,
    wide: bool,
    depth: int | None,
    **params: Any,
) -> None:
    """Analyse the gradient paths of the model named by TARGET.

    TARGET is a Python file (nets/mine.py, nets/mine.py:build), an import
    spec (package.module:attr) or a library model built without weights
    (torchvision:resnet50, timm:cspdarknet53, yolov8n.yaml, transformers:bert;
    -k options go to its constructor or configuration), or a model of [tool.gpa.models]
    by name; the [tool.gpa] settings apply, the command line over them. Without :attr
    the file's model is the first of model, build_model, get_model, create_model.

    Inputs: --input-shape, else example_inputs or input_shape defined next to
    the model, else the model's input_shape or (PyTorch Lightning's)
    example_input_array attribute. With none, the analyses that need no shapes
    still run.

    Formats: text (a table fitted to the terminal), json (the report), csv (one row
    per layer), html (one self-contained page: summary, sortable table, figures, each
    layer's paths on click; -o report.html), and the layer-level gradient graph as dot,
    graphml or node-link.
    """
    from gpa.ci.check import analyze_spec
    from gpa.render.graph import FORMATS as GRAPH_FORMATS
    from gpa.render.graph import export_graph
    from gpa.render.text import CHANNEL_COLUMNS, COLUMNS, format_csv, format_table

    spec = configured(target, kwargs, analysis_settings(ctx, params), config_path)
    options = spec.settings.analysis_options()
    chosen = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    unknown = [c for c in chosen or () if c not in COLUMNS]
    if unknown:
        raise click.BadParameter(
            f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(COLUMNS)}",
            param_hint="--columns",
        )
    if chosen and depth:
        raise click.BadParameter(
            "--columns are those of the per-layer table: give --depth 0 or leave --depth out",
            param_hint="--columns",
        )
    per_channel = [c for c in chosen or () if c in CHANNEL_COLUMNS]
    if per_channel and not options.channels:
        raise click.BadParameter(
            f"column(s) {', '.join(per_channel)} come from the channel analysis: add --channels",
            param_hint="--columns",
        )
    shaping = [
        flag
        for flag, given in (
            ("--columns", columns),
            ("--wide", wide),
            ("--depth", depth is not None),
        )
        if given
    ]
    if shaping and fmt != "text":
        raise click.BadParameter(
            f"{', '.join(shaping)} shape{'s' if len(shaping) == 1 else ''} the text table; "
            f"--format {fmt} holds every layer and column",
            param_hint=shaping[0],
        )
    with progress_display(quiet) as progress:
        report = analyze_spec(spec, progress=progress)
    if fmt == "json":
        text = report.to_json()
    elif fmt == "html":
        from gpa.render.html import report_page

        text = report_page(report)
    elif fmt in GRAPH_FORMATS:
        text = export_graph(report, fmt)
    elif fmt == "csv":
        text = format_csv(report)
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
    else:
        text = format_table(
            report,
            color=output is None and sys.stdout.isatty(),
            columns=chosen,
            wide=wide,
            depth=depth,
        )
    emit(text, output)
