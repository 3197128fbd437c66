"""Every option of an analysis, in one frozen value: :class:`AnalysisOptions`.

:func:`gpa.analyze` builds it from its keyword arguments, :func:`gpa.analyze_target`,
``[tool.gpa]`` (:mod:`gpa.ci.config`), every CLI command (:mod:`gpa.cli.options`) and
:func:`gpa.testing.assert_gradient_paths` build the same value, so an option exists
everywhere or nowhere. Values are checked and normalised once, here: strings become
:class:`Tracer` / :class:`CountConvention`, shapes become tuples, a single output key
becomes a tuple of one; a bad value raises :class:`gpa.errors.GpaError` naming the option.

The option table of ``docs/semantics.md`` ("Options", before §1) and ``docs/ci.md`` lists every field with its
CLI flag and ``[tool.gpa]`` key; the key is the field's name and the flag is declared once in
:mod:`gpa.cli.options`.

This module does not import torch (the CLI builds options before it needs torch).

Example:
    >>> opts = AnalysisOptions(input_shape=(1, 3, 8, 8), tracer="fx", outputs=0)
    >>> opts.input_shape, opts.tracer, opts.outputs
    (((1, 3, 8, 8),), <Tracer.FX: 'fx'>, (0,))
    >>> AnalysisOptions(tracer="jit")
    Traceback (most recent call last):
        ...
    gpa.errors.GpaError: unknown tracer 'jit'; choose one of fx, export, autograd, auto
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gpa.errors import GpaError

__all__ = [
    "AnalysisOptions",
    "CountConvention",
    "OutputKey",
    "Shape",
    "Tracer",
    "option_names",
    "ParseError",
    "parse_shape",
    "parse_input_shapes",
]

OutputKey = int | str
Shape = tuple[int, ...]


class _Choice(str, Enum):
    """A string enumeration that prints as its value."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, what: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(c.value for c in cls)
            raise GpaError(f"unknown {what} {value!r}; choose one of {choices}") from None


class Tracer(_Choice):
    """The frontend that turns a model into a gradient graph (``docs/semantics.md`` §1.6).

    ``AUTO`` (the default) uses fx where it can trace the model, else ``torch.export``,
    else the autograd tracer, saying which ran and why in the report's notes.
    """

    FX = "fx"
    EXPORT = "export"
    AUTOGRAD = "autograd"
    AUTO = "auto"


class CountConvention(_Choice):
    """How parameters are counted (``docs/semantics.md`` §9): all, or conv/linear weights."""

    TORCH = "torch"
    DARKNET = "darknet"


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    )


class ParseError(GpaError, ValueError):
    """A command-line value (shape, ``key=value``) could not be parsed."""


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse a tensor shape such as ``"1,3,224,224"`` (or ``"1x3x224x224"``).

    Surrounding brackets and spaces are allowed. Every dimension must be a positive integer.

    Raises:
        ParseError: the text is not a shape; the message says what is wrong.
    """
    stripped = text.strip().strip("()[]").strip()
    if not stripped:
        raise ParseError(f"invalid shape {text!r}: expected comma-separated sizes like 1,3,224,224")
    parts = [p.strip() for p in re.split(r"[,xX]", stripped)]
    if parts and parts[-1] == "" and len(parts) > 1:  # trailing comma: "(8,)"
        parts = parts[:-1]
    dims: list[int] = []
    for part in parts:
        if not re.fullmatch(r"[+]?\d+", part):
            raise ParseError(
                f"invalid shape {text!r}: {part!r} is not a whole number; "
                "expected comma-separated sizes like 1,3,224,224"
            )
        value = int(part)
        if value <= 0:
            raise ParseError(f"invalid shape {text!r}: sizes must be positive, got {value}")
        dims.append(value)
    return tuple(dims)


def parse_input_shapes(value: Any) -> tuple[Shape, ...]:
    """One shape or a sequence of shapes, as a tuple of shapes; a shape may be written as
    ``--input-shape`` takes it (``"1,3,8,8"``, see :func:`parse_shape`); anything else is
    a GpaError.

    Example:
        >>> parse_input_shapes((1, 3, 8, 8)), parse_input_shapes([[1, 4], [1, 2]])
        (((1, 3, 8, 8),), ((1, 4), (1, 2)))
        >>> parse_input_shapes("1,3,8,8"), parse_input_shapes(["1x4", (1, 2)])
        (((1, 3, 8, 8),), ((1, 4), (1, 2)))
    """
    if isinstance(value, str):
        return (parse_shape(value),)
    if _is_shape(value):
        return (tuple(int(d) for d in value),)
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, str) or _is_shape(v) for v in value)
    ):
        return tuple(parse_shape(v) if isinstance(v, str) else tuple(map(int, v)) for v in value)
    raise GpaError(
        f"input_shape must be a shape of positive sizes, e.g. (1, 3, 224, 224), or a list of "
        f"shapes, got {value!r}"
    )


def _example_inputs(value: Any) -> tuple | None:
    import torch

    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)):
        return tuple(value)
    raise GpaError(
        "example_inputs must be a tensor or a tuple of forward's arguments, "
        f"got {type(value).__name__}"
        + (
            " (arguments by name are bound to forward's positions by gpa.analyze, "
            "gpa.measure and gpa.count, which know the model)"
            if isinstance(value, Mapping)
            else ""
        )
    )


def _outputs(value: Any) -> tuple[OutputKey, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, str)) and not isinstance(v, bool) for v in value
    ):
        if not value:
            raise GpaError("outputs selects no output: name one or more, or leave it unset for all")
        return tuple(value)
    raise GpaError(
        f"outputs must be an index or key, or a list of them (e.g. [0, 'logits']), got {value!r}"
    )


def _module_entries(name: str, allowed: str) -> Callable[[Any], tuple | None]:
    """A checker for lists of ``nn.Module`` classes or of names (resolved against the model)."""

    def check(value: Any) -> tuple | None:
        from torch import nn

        if value is None:
            return None
        if isinstance(value, (str, type)):  # one entry
            value = (value,)
        entries = (
            None
            if isinstance(value, (str, type, bytes)) or not isinstance(value, Iterable)
            else tuple(value)
        )
        if entries is None or not all(
            isinstance(e, str) or (isinstance(e, type) and issubclass(e, nn.Module))
            for e in entries
        ):
            raise GpaError(f"{name} must be a list of {allowed}, got {value!r}")
        return entries

    return check


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise GpaError(f"{name} must be true or false, got {value!r}")
        return value

    return check


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "example_inputs": _example_inputs,
    "input_shape": lambda v: None if v is None else parse_input_shapes(v),
    "outputs": _outputs,
    "layer_types": _module_entries("layer_types", "nn.Module classes or class names"),
    "leaf_modules": _module_entries(
        "leaf_modules", "nn.Module classes, class names or qualified submodule names"
    ),
    "train": _flag("train"),
    "tracer": lambda v: Tracer.parse(v, "tracer"),
    "channels": _flag("channels"),
    "count_convention": lambda v: CountConvention.parse(v, "count convention"),
}


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse a model: every option of :func:`gpa.analyze`, checked once.

    Attributes:
        example_inputs: forward's positional arguments (a tuple; a single tensor is
            wrapped). Only shapes and dtypes are used by the fx tracer; the autograd
            tracer runs the model on them (on the meta device when it can).
        input_shape: instead of ``example_inputs``, one shape per positional input
            (float32 zeros, or int64 for an input read by an embedding).
        outputs: the returned values that feed the loss, by index, key or dotted path
            (``"1.logits"``); ``None``: all of them (``docs/semantics.md`` §1.5).
        layer_types: module classes (or class names) counted as layers, replacing
            the default set (§2); ``None``: the default set.
        leaf_modules: module classes, class names or qualified submodule names not to
            trace into (§1.1).
        train: analyse in train mode (default) or eval mode.
        tracer: :class:`Tracer` (default ``auto``).
        channels: also analyse channel segments (§8); needs inputs and an fx graph.
        count_convention: :class:`CountConvention` of the parameter counts (§9).

    Raises:
        GpaError: a value of the wrong type or an unknown choice; both
            ``example_inputs`` and ``input_shape``.
    """

    example_inputs: tuple | None = field(default=None, compare=False, repr=False)
    input_shape: tuple[Shape, ...] | None = None
    outputs: tuple[OutputKey, ...] | None = None
    layer_types: tuple | None = None
    leaf_modules: tuple | None = None
    train: bool = True
    tracer: Tracer = Tracer.AUTO
    channels: bool = False
    count_convention: CountConvention = CountConvention.TORCH

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(getattr(self, name)))
        if self.example_inputs is not None and self.input_shape is not None:
            raise GpaError("give either example_inputs or input_shape, not both")

    @classmethod
    def of(cls, **options: Any) -> AnalysisOptions:
        """The options named by keyword; an unknown name is a GpaError (not a TypeError).

        Example:
            >>> AnalysisOptions.of(tracer="fx").tracer
            <Tracer.FX: 'fx'>
            >>> AnalysisOptions.of(tracr="fx")
            Traceback (most recent call last):
                ...
            gpa.errors.GpaError: unknown option 'tracr' (did you mean 'tracer'?); the options are: example_inputs, input_shape, outputs, layer_types, leaf_modules, train, tracer, channels, count_convention
        """
        known = option_names(settable=False)
        for name in options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise GpaError(
                    f"unknown option {name!r}{hint}; the options are: {', '.join(known)}"
                )
        return cls(**options)

    @property
    def has_inputs(self) -> bool:
        """Whether example inputs or input shapes are set."""
        return self.example_inputs is not None or self.input_shape is not None

    @property
    def input_count(self) -> int:
        """How many positional inputs ``forward`` is given (0 without inputs)."""
        given = self.example_inputs if self.example_inputs is not None else self.input_shape
        return len(given or ())

    def replace(self, **changes: Any) -> AnalysisOptions:
        """A copy with ``changes`` applied (checked like the constructor's arguments)."""
        return dataclasses.replace(self, **changes)

    def overridden_by(self, changes: Mapping[str, Any]) -> AnalysisOptions:
        """A copy where the options of ``changes`` that are not None replace these."""
        return self.replace(**{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """How the model is read, as JSON: every field by its ``[tool.gpa]`` key, but the
        inputs (a report records their shapes and dtypes); None where unset. Classes are
        named ``module.QualifiedName`` (:func:`gpa.names.class_path`), outputs as text
        (``1`` and ``"1"`` select the same one); the lists are sorted, each entry once, as
        their order does not matter. Record options whose class names are resolved
        (:func:`gpa.frontends.modules.resolve_options`), so that ``"Linear"`` and
        ``nn.Linear`` are one setting.

        A report and a baseline record it (``docs/semantics.md`` §7), so that numbers
        read under other settings are not compared unawares (``docs/ci.md``).

        Example:
            >>> AnalysisOptions(outputs=[1, 0, "1"], train=False).to_dict()
            {'outputs': ['0', '1'], 'layer_types': None, 'leaf_modules': None, 'train': False, 'tracer': 'auto', 'channels': False, 'count_convention': 'torch'}
        """
        from gpa.names import class_path

        def plain(name: str, value: Any) -> Any:
            if name in ("outputs", "layer_types", "leaf_modules") and value is not None:
                return sorted({class_path(v) if isinstance(v, type) else str(v) for v in value})
            return value.value if isinstance(value, Enum) else value

        return {n: plain(n, getattr(self, n)) for n in option_names() if n != "input_shape"}


def option_names(*, settable: bool = True) -> tuple[str, ...]:
    """The names of :class:`AnalysisOptions`' fields; ``settable``: those a configuration file
    or the command line can set (not ``example_inputs``, which only Python can give)."""
    names = tuple(f.name for f in dataclasses.fields(AnalysisOptions))
    return tuple(n for n in names if n != "example_inputs") if settable else names
