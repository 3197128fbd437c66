"""The ``gpa`` command line.

Commands are thin: they parse options, call the library (:mod:`gpa.load`,
:func:`gpa.analyze`, :mod:`gpa.format`) and print. Exit codes:

* 0: success;
* 2: a usage error, or any :class:`gpa.errors.GpaError` (a problem with the
  user's target, model or inputs): ``error: <message>`` on stderr, no traceback;
* 1: any other exception, which is a bug in gpa: a short notice and the
  traceback on stderr.

Heavy imports (torch) happen inside the commands so ``gpa --help`` is quick.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from gpa import __version__
from gpa.errors import GpaError

__all__ = ["main"]


class UserError(click.ClickException):
    """A :class:`GpaError` surfaced on the command line (exit code 2)."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``error: <message>`` to stderr."""
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)


class InternalError(click.ClickException):
    """An unexpected exception: a bug in gpa (exit code 1)."""

    exit_code = 1

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def show(self, file: IO[Any] | None = None) -> None:
        """Print a short notice and the full traceback to stderr."""
        out = file or sys.stderr
        click.echo(
            f"internal error: gpa {__version__} failed unexpectedly. This is a bug in gpa; "
            "please report it with the traceback below.",
            file=out,
        )
        click.echo(self.details.rstrip("\n"), file=out)


class _Group(click.Group):
    """A group that maps exceptions to gpa's exit codes (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpaError as exc:
            raise UserError(str(exc)) from exc
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            raise InternalError(exc) from exc


def _shape_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    from gpa.load import parse_shape

    try:
        return [parse_shape(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _kv_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    from gpa.load import parse_kv

    kwargs: dict[str, Any] = {}
    try:
        for value in values:
            key, parsed = parse_kv(value)
            kwargs[key] = parsed
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return kwargs


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str], None] | None]:
    """A phase display on standard error when it is a terminal (and not ``--quiet``)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console

    with Console(stderr=True).status("gpa: starting") as status:
        yield lambda phase: status.update(f"gpa: {phase}…")


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say how to load and analyse a model (shared by several commands)."""
    for option in reversed(_MODEL_OPTIONS):
        command = option(command)
    return command


_MODEL_OPTIONS = [
    click.option(
        "-k",
        "kwargs",
        metavar="KEY=VALUE",
        multiple=True,
        callback=_kv_option,
        help="Keyword argument for the model factory (repeatable; values are Python literals).",
    ),
    click.option(
        "--input-shape",
        "input_shapes",
        metavar="SHAPE",
        multiple=True,
        callback=_shape_option,
        help="Shape of an input, e.g. 1,3,224,224 (repeat for several inputs).",
    ),
    click.option(
        "--outputs",
        metavar="IDX_OR_KEY",
        multiple=True,
        help="Output(s) feeding the loss: an index, a dict key or a dotted path (repeatable).",
    ),
    click.option(
        "--layer-type",
        "layer_types",
        metavar="CLASS",
        multiple=True,
        help="Module class counted as a layer, replacing the default set (repeatable).",
    ),
    click.option(
        "--leaf",
        "leaves",
        metavar="CLASS_OR_NAME",
        multiple=True,
        help="Module class or qualified submodule name not to trace into (repeatable).",
    ),
    click.option("--eval", "eval_mode", is_flag=True, help="Trace in eval mode (default: train)."),
]


count_convention_option = click.option(
    "--count-convention",
    type=click.Choice(["torch", "darknet"]),
    default="torch",
    show_default=True,
    help="Parameters counted: all (torch) or conv/linear weights only (darknet, Table 2).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="gpa", message="%(prog)s %(version)s"
)
def main() -> None:
    """gpa: gradient-path analysis for PyTorch models.

    For every layer: the shortest and longest gradient path to the loss, the
    rounds at which gradient reaches it, how many paths there are and where
    its gradient comes from.
    """


@main.command()
@click.argument("target")
@model_options
@count_convention_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--tracer",
    type=click.Choice(["fx", "autograd", "auto"]),
    default="fx",
    show_default=True,
    help="fx: symbolic tracing; autograd: run the model once and read its autograd graph "
    "(needs inputs); auto: fx, else autograd when fx cannot trace the model.",
)
@click.option(
    "--channels",
    is_flag=True,
    help="Also analyse channel segments (needs inputs): per-segment paths, gradient combinations.",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress display (it only shows on a terminal)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the output to this file instead of standard output.",
)
def analyze(
    target: str,
    kwargs: dict[str, Any],
    input_shapes: list[tuple[int, ...]],
    outputs: tuple[str, ...],
    layer_types: tuple[str, ...],
    leaves: tuple[str, ...],
    eval_mode: bool,
    count_convention: str,
    fmt: str,
    tracer: str,
    channels: bool,
    quiet: bool,
    output: Path | None,
) -> None:
    """Analyse the gradient paths of the model named by TARGET.

    TARGET is a Python file (nets/mine.py, nets/mine.py:build) or an import
    spec (package.module:attr). Without :attr the file's model is the first
    of model, build_model, get_model, create_model.

    Inputs: --input-shape, else example_inputs or input_shape defined next to
    the model. With none, the analyses that need no shapes still run.
    """
    from gpa.api import analyze_target
    from gpa.format import format_csv, format_table

    with _progress(quiet) as progress:
        report = analyze_target(
            target,
            kwargs,
            input_shape=list(input_shapes) or None,
            outputs=outputs,
            layer_types=layer_types,
            leaf_modules=leaves,
            train=not eval_mode,
            count_convention=count_convention,
            channels=channels,
            tracer=tracer,
            progress=progress,
        )

    if fmt == "json":
        text = report.to_json()
    elif fmt == "csv":
        text = format_csv(report)
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
    else:
        color = output is None and sys.stdout.isatty()
        text = format_table(report, color=color)
    if not text.endswith("\n"):
        text += "\n"
    _emit(text, output)


def _emit(text: str, output: Path | None) -> None:
    """Print ``text``, or write it to ``output``."""
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None


def _cli_model_options(
    kwargs: dict[str, Any],
    input_shapes: list[tuple[int, ...]],
    outputs: tuple[str, ...],
    layer_types: tuple[str, ...],
    leaves: tuple[str, ...],
    eval_mode: bool,
    **rules: Any,
) -> Any:
    """The :class:`gpa.config.ModelOptions` set on the command line (unset ones stay None)."""
    from gpa.config import ModelOptions
    from gpa.rules import Rules

    return ModelOptions(
        kwargs=kwargs,
        input_shape=tuple(input_shapes) or None,
        outputs=outputs or None,
        layer_types=layer_types or None,
        leaf_modules=leaves or None,
        eval=True if eval_mode else None,
        rules=Rules(**rules),
    )


def _config(path: Path | None) -> Any:
    from gpa.config import find_config, load_config

    found = path or find_config()
    return load_config(found) if found else None


_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with a [tool.gpa] table (default: the nearest pyproject.toml that has one).",
)
_output_option = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the output to this file instead of standard output.",
)


@main.command()
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@model_options
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
    "--max-mean-shortest", type=float, help="Fail if the mean shortest gradient path exceeds X."
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
@_config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "junit", "github"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@_output_option
@click.pass_context
def check(
    ctx: click.Context,
    targets: tuple[str, ...],
    max_shortest: int | None,
    max_longest: int | None,
    no_unreachable: bool | None,
    max_mean_shortest: float | None,
    baseline: Path | None,
    write_baseline: Path | None,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    **model: Any,
) -> None:
    """Check gradient-path rules; exit 1 if one fails, 2 if a model cannot be analysed.

    Without TARGET, checks every model of [tool.gpa.models] in the nearest
    pyproject.toml (or --config FILE); a TARGET may also name such a model.
    Command-line options override the configuration. See docs/ci.md.
    """
    from gpa.baseline import read_baseline
    from gpa.baseline import write_baseline as write
    from gpa.check import check_models, plan_models
    from gpa.check_format import format_run

    config = _config(config_path)
    overrides = _cli_model_options(
        **model,
        max_shortest=max_shortest,
        max_longest=max_longest,
        no_unreachable=no_unreachable,
        max_mean_shortest=max_mean_shortest,
    )
    specs = plan_models(targets, config, overrides)
    if baseline is None and write_baseline is None and config is not None:
        baseline = config.baseline
    run = check_models(specs, read_baseline(baseline) if baseline else None)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    _emit(format_run(run, fmt, color=color), output)
    if fmt != "text" or output is not None:
        for m in run.models:
            if m.error is not None:
                click.echo(f"error: {m.name}: {m.error}", err=True)
    if write_baseline is not None:
        if run.errors:
            click.echo(f"error: baseline {write_baseline} not written: a model failed", err=True)
        else:
            write(write_baseline, run.snapshots())
    ctx.exit(run.exit_code)


@main.command()
@click.argument("a")
@click.argument("b")
@model_options
@_config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--channels",
    is_flag=True,
    help="Analyse models at channel level too: compares their gradient combinations.",
)
@_output_option
def compare(
    a: str,
    b: str,
    config_path: Path | None,
    fmt: str,
    channels: bool,
    output: Path | None,
    **model: Any,
) -> None:
    """Compare two models side by side: network metrics and per-layer paths.

    A and B are TARGETs, models of [tool.gpa.models], baseline files
    (base.json, or base.json:MODEL) or saved `gpa analyze --format json` reports.
    Model options apply to both sides.
    """
    from gpa.compare import compare as compare_sides
    from gpa.compare import format_comparison, load_side

    config = _config(config_path)
    options = _cli_model_options(**model)
    comparison = compare_sides(
        load_side(a, options, config, channels=channels),
        load_side(b, options, config, channels=channels),
        names=(a, b),
    )
    _emit(comparison.to_json() if fmt == "json" else format_comparison(comparison), output)


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def zoo(fmt: str) -> None:
    """List the reference models of gpa.models (analyse one with gpa analyze gpa.models:NAME).

    Each entry: its one-line description, the paper section it illustrates, its
    knobs (-k KNOB=VALUE) with their defaults, and its default input shape.
    """
    import json

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
        _emit(json.dumps(data, indent=2) + "\n", None)
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
    _emit("\n".join(lines) + "\n", None)


@main.command()
@click.argument("name")
@click.option("--knob", required=True, help="The knob to vary, e.g. depth or blocks.")
@click.option(
    "--values",
    required=True,
    metavar="V1,V2,...",
    help="Comma-separated values of the knob (Python literals), e.g. 4,8,16,32,64.",
)
@click.option(
    "-k",
    "kwargs",
    metavar="KEY=VALUE",
    multiple=True,
    callback=_kv_option,
    help="Another knob held fixed (repeatable; values are Python literals).",
)
@count_convention_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def scale(
    name: str,
    knob: str,
    values: str,
    kwargs: dict[str, Any],
    count_convention: str,
    fmt: str,
) -> None:
    """Fit how zoo model NAME's gradient paths and parameters grow as KNOB grows.

    Builds NAME at every value, analyses it, and fits max_shortest, longest and
    parameters against N = number of layers: O(1), O(log N), O(N), O(N log N)
    or O(N²) (criterion: docs/semantics.md, "Scaling").
    """
    import json

    from gpa.load import parse_kv
    from gpa.scaling import scaling

    try:
        parsed = [parse_kv(f"{knob}={v.strip()}")[1] for v in values.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--values") from None
    result = scaling(name, knob, parsed, count_convention=count_convention, **kwargs)
    text = json.dumps(result.to_dict(), indent=2) + "\n" if fmt == "json" else str(result)
    _emit(text, None)


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@model_options
@click.option(
    "--kind",
    type=click.Choice(["timestamps", "sources", "profile", "histogram"]),
    default="timestamps",
    show_default=True,
    help="timestamps (Fig. 7), sources at a round (Fig. 8), profile along depth "
    "(several TARGETs overlaid), or the path-length histogram of --layer.",
)
@click.option("--layer", metavar="NAME", help="The layer of --kind histogram.")
@click.option(
    "--round",
    "t",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="The round of --kind sources.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    help="Collapse layers by this module depth (default: only beyond 48 layers).",
)
@click.option(
    "--channels/--no-channels",
    default=None,
    help="Analyse channel segments (default: on for timestamps and sources).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Image file; .png, .svg or .pdf (default: KIND.png).",
)
def plot(
    targets: tuple[str, ...],
    kwargs: dict[str, Any],
    input_shapes: list[tuple[int, ...]],
    outputs: tuple[str, ...],
    layer_types: tuple[str, ...],
    leaves: tuple[str, ...],
    eval_mode: bool,
    kind: str,
    layer: str | None,
    t: int,
    depth: int | None,
    channels: bool | None,
    output: Path | None,
) -> None:
    """Draw the gradient paths of the model(s) named by TARGET as an image (see gpa.plot)."""
    import gpa.plot
    from gpa.api import analyze_target

    output = output or Path(f"{kind}.png")
    gpa.plot.image_format(output)  # refuse a bad file name before analysing
    if channels is None:
        channels = kind in ("timestamps", "sources")
    reports = [
        analyze_target(
            target,
            kwargs,
            input_shape=input_shapes,
            outputs=outputs,
            layer_types=layer_types,
            leaf_modules=leaves,
            train=not eval_mode,
            channels=channels,
        )
        for target in targets
    ]
    fig = gpa.plot.draw(kind, reports, layer=layer, t=t, depth=depth)
    gpa.plot.save(fig, output)
    click.echo(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    main()
