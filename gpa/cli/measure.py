"""``gpa measure TARGET``: measured gradients per layer next to the gradient paths."""

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
    emit,
    format_option,
    measure_options,
    output_option,
    progress_display,
    table_only,
    wide_option,
)
from gpa.columns import MEASURED_COLUMNS

__all__ = ["command"]


@click.command("measure")
@click.argument("target")
@analysis_options
@measure_options
@config_option
@format_option("json", "csv", "html")
@output_option
@columns_option(MEASURED_COLUMNS, "weight_grad_norm,relative_norm,most_similar")
@wide_option
@click.pass_context
def command(
    ctx: click.Context,
    target: str,
    kwargs: dict[str, Any],
    quiet: bool,
    steps: int,
    batch_size: int | None,
    device: str | None,
    seed: int,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    columns: str | None,
    wide: bool,
    **params: Any,
) -> None:
    """Measure the gradients the layers of the model named by TARGET receive.

    Runs --steps training steps (train mode, or eval mode with --eval; no optimizer
    step) on synthetic batches
    shaped like the target's inputs, or on the file's example_batches (its
    forward_inputs(batch) says what of a batch forward takes: batch[0] of (inputs,
    targets)), with gpa's virtual loss (fixed random directions into the outputs) or the
    file's loss_fn(outputs, batch).
    Per layer: weight-gradient norm (mean and std over steps), received-gradient norm,
    ratio to the network median, and the most similar layer by linear CKA of the
    received gradients; next to the structural shortest/longest path and gradient
    combination (docs/semantics.md, "Measured gradients").
    """
    from gpa.measure import measure_target
    from gpa.measure.render import format_csv, format_page, format_table

    chosen = chosen_columns(columns, MEASURED_COLUMNS)
    table_only(fmt, {"--columns": bool(columns), "--wide": wide})
    spec = configured(target, kwargs, analysis_settings(ctx, params), config_path)
    with progress_display(quiet) as progress:
        m = measure_target(
            spec.target,
            dict(spec.settings.kwargs),
            progress=progress,
            steps=steps,
            batch_size=batch_size,
            device=device,
            seed=seed,
            **spec.settings.options,
        )
    m.model = spec.named(m.model)
    if fmt == "json":
        text = m.to_json()
    elif fmt == "csv":
        text = format_csv(m)
        for note in m.notes:
            click.echo(f"note: {note}", err=True)
    elif fmt == "html":
        text = format_page(m)
    else:
        color = output is None and sys.stdout.isatty()
        width = _EVERY_COLUMN if wide else None
        text = format_table(m, color=color, width=width, columns=chosen)
    emit(text, output)


#: A width every column fits in (``--wide``: for piping).
_EVERY_COLUMN = 10_000
