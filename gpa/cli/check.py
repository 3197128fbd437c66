"""``gpa check [TARGET]...``: hold models to gradient-path rules and a baseline (docs/ci.md)."""

from __future__ import annotations

import sys
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


@click.command("check")
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@analysis_options
@click.option(
    "--max-shortest",
    type=click.IntRange(min=1),
    help="Fail if a layer's shortest gradient path exceeds N.",
)
@click.option(
    "--max-longest",
    type=click.IntRange(min=1),
    help="Fail if a layer's longest gradient path exceeds N.",
)
@click.option(
    "--no-unreachable", is_flag=True, default=None, help="Fail if a layer receives no gradient."
)
@click.option(
    "--allow-unreachable",
    "allowed",
    metavar="PATTERN",
    multiple=True,
    help="Layers (a glob, repeatable) --no-unreachable lets receive no gradient, e.g. "
    "'*.dfl.*' (a YOLO head's DFL, called in inference only).",
)
@click.option(
    "--max-mean-shortest",
    type=float,
    callback=lambda ctx, param, value: _mean_limit(value),
    help="Fail if the mean shortest gradient path exceeds X.",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Fail on regressions against this baseline file.",
)
@click.option(
    "--write-baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Record the models' metrics in this baseline file.",
)
@config_option
@format_option("json", "junit", "github", "sarif")
@output_option
@click.option("-v", "--verbose", is_flag=True, help="Text: show every rule, not only failures.")
@click.option(
    "--exit-zero", is_flag=True, help="Exit 0 even when rules fail (a model in error still 2)."
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Pass when no rule is configured (by default that is an error: it checks nothing).",
)
@click.pass_context
def command(
    ctx: click.Context,
    targets: tuple[str, ...],
    kwargs: dict[str, Any],
    quiet: bool,
    max_shortest: int | None,
    max_longest: int | None,
    no_unreachable: bool | None,
    allowed: tuple[str, ...],
    max_mean_shortest: float | None,
    baseline: Path | None,
    write_baseline: Path | None,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    verbose: bool,
    exit_zero: bool,
    allow_empty: bool,
    **params: Any,
) -> None:
    """Check gradient-path rules; exit 1 if one fails, 2 if a model cannot be analysed.

    Without TARGET, checks every model of [tool.gpa.models] in the nearest
    pyproject.toml (or --config FILE); a TARGET may also name such a model.
    Command-line options override the configuration. See docs/ci.md.
    """
    from gpa.ci.baseline import read_baseline
    from gpa.ci.baseline import write_baseline as write
    from gpa.ci.check import check_models, plan_models
    from gpa.ci.config import ModelSettings, read_config
    from gpa.ci.formats import format_run
    from gpa.ci.rules import LayerLimit, Rules
    from gpa.errors import GpaError

    config = read_config(config_path)
    overrides = ModelSettings(
        kwargs=kwargs,
        options=analysis_settings(ctx, params),
        rules=Rules(
            max_shortest=max_shortest,
            max_longest=max_longest,
            no_unreachable=no_unreachable,
            max_mean_shortest=max_mean_shortest,
            layers=tuple(LayerLimit(p, allow_unreachable=True) for p in allowed),
        ),
    )
    specs = plan_models(targets, config, overrides)
    if baseline is None and write_baseline is None and config is not None:
        baseline = config.baseline
    checks_nothing = baseline is None and write_baseline is None
    if checks_nothing and not allow_empty and all(s.settings.rules.is_empty for s in specs):
        names = ", ".join(s.name for s in specs)
        raise GpaError(
            f"no rules configured for {names}: gpa check would check nothing. Set rules "
            "(--max-shortest, --no-unreachable …, or in [tool.gpa]; see docs/ci.md), give a "
            "--baseline, or pass --allow-empty to only analyse the models"
        )
    with progress_display(quiet) as progress:
        run = check_models(specs, read_baseline(baseline) if baseline else None, progress=progress)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    emit(format_run(run, fmt, color=color, verbose=verbose), output)
    if fmt != "text" or output is not None:
        for m in run.models:
            if m.error is not None:
                click.echo(f"error: {m.name}: {m.error}", err=True)
    if write_baseline is not None:
        if run.errors:
            click.echo(f"error: baseline {write_baseline} not written: a model failed", err=True)
        else:
            write(write_baseline, run.snapshots())
    ctx.exit(0 if exit_zero and run.exit_code == 1 else run.exit_code)


def _mean_limit(value: float | None) -> float | None:
    """--max-mean-shortest as ``[tool.gpa]`` takes it (:func:`gpa.ci.config.mean_limit`)."""
    from gpa.ci.config import mean_limit

    return None if value is None else mean_limit(value, "--max-mean-shortest")
