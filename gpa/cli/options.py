"""The command-line options shared by gpa's commands, each declared once.

Every command that analyses a model takes :func:`analysis_options`: one flag per field of
:class:`gpa.options.AnalysisOptions` (the click parameter is named after the field, so
:func:`analysis_settings` hands the ones given on the command line straight to it), plus
``-k`` for the target's factory and ``-q``. ``--format``, ``-o`` and ``--config`` have one
spelling everywhere; every command's default format is ``text``.

Nothing here imports torch: ``gpa --help`` stays quick.

Example:
    >>> parse_shape("1x3x224x224"), parse_kv("depth=18"), parse_kv("act=silu")
    ((1, 3, 224, 224), ('depth', 18), ('act', 'silu'))
"""

from __future__ import annotations

import ast
import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from gpa.errors import GpaError
from gpa.options import CountConvention, ParseError, Tracer, option_names, parse_shape

__all__ = [
    "ParseError",
    "analysis_options",
    "analysis_settings",
    "config_option",
    "configured",
    "depth_option",
    "emit",
    "format_option",
    "output_option",
    "parse_kv",
    "parse_shape",
    "progress_display",
    "writable_path",
]


def parse_kv(text: str) -> tuple[str, Any]:
    """Parse a ``key=value`` option into ``(key, value)``.

    The value is read as a Python literal (``3``, ``0.5``, ``True``, ``(1, 2)``, ``'a'``,
    ``None``) — ``true``, ``false`` and ``null`` too, as TOML, YAML and JSON write them —;
    anything else is kept as the raw string (``act=silu`` gives ``"silu"``).

    Example:
        >>> parse_kv("pretrained=false"), parse_kv("depth=18"), parse_kv("act=silu")
        (('pretrained', False), ('depth', 18), ('act', 'silu'))

    Raises:
        ParseError: there is no ``=`` or the key is not a Python identifier.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ParseError(f"invalid option {text!r}: expected key=value, e.g. depth=18")
    if not key.isidentifier():
        raise ParseError(f"invalid option {text!r}: {key!r} is not a valid keyword-argument name")
    if raw.strip() in _LOWER_CASE:  # (a string "false" is true: never what was meant)
        return key, _LOWER_CASE[raw.strip()]
    try:
        value: Any = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    return key, value


# ("none" stays a string: some libraries take it for "no norm" or "no activation")
_LOWER_CASE = {"true": True, "false": False, "null": None}


def _parsed(parse: Callable[[str], Any]) -> Callable[..., Any]:
    """A click callback applying ``parse`` to every value of a repeatable option."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
        try:
            return tuple(parse(v) for v in values)
        except ParseError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def _kwargs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    return dict(_parsed(parse_kv)(ctx, param, values))


# One declaration per AnalysisOptions field; the parameter name is the field's name.
_ANALYSIS = [
    click.option(
        "--input-shape",
        "input_shape",
        metavar="SHAPE",
        multiple=True,
        callback=_parsed(parse_shape),
        help="Shape of an input, e.g. 1,3,224,224 (repeat for several inputs).",
    ),
    click.option(
        "--outputs",
        "outputs",
        metavar="KEY",
        multiple=True,
        help=(
            "Output(s) feeding the loss: an index, a key, a field name or a dotted path "
            "such as policy.logits (repeatable)."
        ),
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
        "leaf_modules",
        metavar="CLASS_OR_NAME",
        multiple=True,
        help="Module class or qualified submodule name not to trace into (repeatable).",
    ),
    click.option(
        "--train/--eval",
        "train",
        default=True,
        help="Analyse in train mode (default) or eval mode.",
    ),
    click.option(
        "--tracer",
        type=click.Choice([t.value for t in Tracer]),
        default=Tracer.AUTO.value,
        show_default=True,
        help="fx: symbolic tracing; export: torch.export's graph (needs inputs); autograd: "
        "run the model once and read its autograd graph (needs inputs); auto: fx, else "
        "export, else autograd, with a note saying which ran and why.",
    ),
    click.option(
        "--channels/--no-channels",
        "channels",
        default=False,
        help="Also analyse channel segments (needs inputs; the fx or export frontend): "
        "per-segment paths and gradient combinations.",
    ),
    click.option(
        "--count-convention",
        type=click.Choice([c.value for c in CountConvention]),
        default=CountConvention.TORCH.value,
        show_default=True,
        help="Parameters counted: all (torch) or conv/linear weights only (darknet, Table 2).",
    ),
]

_MODEL = [
    click.option(
        "-k",
        "kwargs",
        metavar="KEY=VALUE",
        multiple=True,
        callback=_kwargs,
        help="Keyword argument for the model factory (repeatable; values are Python literals).",
    ),
    click.option(
        "-q", "--quiet", is_flag=True, help="No progress display (it only shows on a terminal)."
    ),
]


def analysis_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every analysis option, ``-k`` and ``-q`` to ``command``."""
    for option in reversed([*_MODEL, *_ANALYSIS]):
        command = option(command)
    return command


def analysis_settings(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """Take the analysis options out of ``params`` (a command's keyword arguments) and
    return those given on the command line, by :class:`~gpa.options.AnalysisOptions` field.

    ``-k`` and ``-q`` stay in ``params``.
    """
    given = {}
    for name in option_names():
        value = params.pop(name)
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
            given[name] = value
    return given


#: How ``gpa measure`` runs its steps: by ``gpa measure`` and ``gpa plot``'s measured kinds.
_MEASURE = [
    click.option(
        "--steps",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="Forward/backward steps measured.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Items per synthetic batch (dim 0 of every input)  [default: 32; the target "
        "file's example_batches keep their own]",
    ),
    click.option(
        "--device",
        type=click.Choice(["cpu", "cuda", "mps"]),
        default=None,
        help="Where the steps run (default: where the model is built, the CPU).",
    ),
    click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the loss directions, the synthetic inputs and dropout.",
    ),
]

#: Their names, as the command's keyword arguments.
MEASURE_NAMES = ("steps", "batch_size", "device", "seed")


def measure_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options of how measured steps run (``--steps``, ``--batch-size``,
    ``--device``, ``--seed``) to ``command``."""
    for option in reversed(_MEASURE):
        command = option(command)
    return command


def measure_settings(ctx: click.Context, params: dict[str, Any]) -> tuple[dict[str, Any], list]:
    """Take the measure options out of ``params``: all of them by name, and the names of
    those given on the command line (``--steps`` …)."""
    settings = {name: params.pop(name) for name in MEASURE_NAMES}
    given = [
        f"--{name.replace('_', '-')}"
        for name in MEASURE_NAMES
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    ]
    return settings, given


wide_option = click.option(
    "--wide", is_flag=True, help="Every column, nothing wrapped (for piping)."
)


def columns_option(names: Sequence[str], example: str) -> Callable[..., Any]:
    """``--columns``: which columns of the text table, of ``names``, in the order given
    (``example``: a value to show in the help)."""
    return click.option(
        "--columns",
        metavar="NAMES",
        help="Comma-separated columns of the text table, in the order given, e.g. "
        f"{example} (of: {', '.join(names)}).",
    )


def chosen_columns(columns: str | None, names: Sequence[str]) -> list[str] | None:
    """The columns ``--columns`` gives, in its order (None where it is not given).

    Raises:
        click.BadParameter: a column not among ``names`` (exit 2).
    """
    if not columns:
        return None
    chosen = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise click.BadParameter(
            f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(names)}",
            param_hint="--columns",
        )
    return chosen


def table_only(fmt: str, given: Mapping[str, bool]) -> None:
    """Refuse the options of ``given`` (flag -> whether it was given) that shape the text
    table when ``fmt`` is another format, which holds every layer and column.

    Raises:
        click.BadParameter: such an option with another ``--format`` (exit 2).
    """
    shaping = [flag for flag, set_ in given.items() if set_]
    if shaping and fmt != "text":
        raise click.BadParameter(
            f"{', '.join(shaping)} shape{'s' if len(shaping) == 1 else ''} the text table; "
            f"--format {fmt} holds every layer and column",
            param_hint=shaping[0],
        )


def format_option(*choices: str) -> Callable[..., Any]:
    """``--format``, with ``text`` first and the default."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", *choices]),
        default="text",
        show_default=True,
        help="Output format.",
    )


def writable_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse an output file in a missing directory before any analysis runs (exit 2)."""
    if value is not None and not value.resolve().parent.is_dir():
        raise GpaError(f"cannot write {value}: the directory {value.parent} does not exist")
    return value


output_option = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_path,
    help="Write the output to this file instead of standard output.",
)


def emit(text: str, output: Path | None) -> None:
    """Print ``text`` (ending it with a newline), or write it to the file ``output``.

    Raises:
        GpaError: the file cannot be written.
    """
    if not text.endswith("\n"):
        text += "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise GpaError(f"cannot write {output}: {exc.strerror or exc}") from None


depth_option = click.option(
    "--depth",
    type=click.IntRange(min=0),
    help="Group layers by their module path's first N parts (0: every layer; default: "
    "grouped only for large models).",
)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with a [tool.gpa] table (default: the nearest pyproject.toml that has one).",
)


def configured(
    target: str,
    kwargs: dict[str, Any],
    settings: dict[str, Any],
    config_path: Path | None,
) -> Any:
    """The :class:`~gpa.ci.config.ModelSpec` of a command's TARGET: a model of
    ``[tool.gpa.models]`` by name, any other TARGET with the ``[tool.gpa]`` defaults, the
    command line (``-k`` ``kwargs``, the analysis ``settings`` given) over both — alike on
    every analysing command (``docs/ci.md``)."""
    from gpa.ci.config import ModelSettings, model_spec, read_config

    overrides = ModelSettings(kwargs=kwargs, options=settings)
    return model_spec(target, read_config(config_path), overrides)


@contextlib.contextmanager
def progress_display(quiet: bool) -> Iterator[Callable[[str], None] | None]:
    """A phase display on standard error when it is a terminal (and not ``--quiet``)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console

    with Console(stderr=True).status("gpa: starting") as status:
        yield lambda phase: status.update(f"gpa: {phase}…")
