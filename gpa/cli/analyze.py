"""``gpa analyze TARGET``: the gradient paths of one model, as text, JSON, CSV or HTML."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from gpa.cli.options import (
    analysis_options,
    analysis_settings,
    chosen_columns,
    columns_option,
    config_option,
    configured,
    depth_option,
    emit,
    format_option,
    output_option,
    progress_display,
    table_only,
    wide_option,
)
from gpa.columns import LAYER_COLUMNS

__all__ = ["command"]


@click.command("analyze")
@click.argument("target")
@analysis_options
@config_option
@format_option("json", "csv", "html", "dot", "graphml", "node-link")
@output_option
@columns_option(LAYER_COLUMNS, "shortest,longest,timestamps")
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
    from gpa.render.text import CHANNEL_COLUMNS, format_csv, format_table

    spec = configured(target, kwargs, analysis_settings(ctx, params), config_path)
    options = spec.settings.analysis_options()
    chosen = chosen_columns(columns, LAYER_COLUMNS)
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
    table_only(fmt, {"--columns": bool(columns), "--wide": wide, "--depth": depth is not None})
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
