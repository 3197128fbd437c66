"""Registry of the named model factories of :mod:`gpa.models`.

A factory is registered with :func:`register`; the decorator records a one-line
description, the paper section it illustrates, its default input shape and its
knobs (the factory's keyword parameters and their defaults, read from the
signature). The wrapped factory rejects unknown knobs with a :class:`ZooError`
naming them, and sets ``model.input_shape`` on the model it returns.

Example:
    >>> from gpa.models import build, describe
    >>> describe("resnet").knobs["blocks"]
    3
    >>> build("resnet", blocks=2).input_shape
    (1, 3, 64, 64)
"""

from __future__ import annotations

import difflib
import functools
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from torch import nn

from gpa.errors import TargetError

__all__ = [
    "TOY_INPUT",
    "ModelInfo",
    "ZooError",
    "build",
    "describe",
    "entries",
    "knob_bool",
    "knob_choice",
    "knob_int",
    "knob_ratio",
    "manifest",
    "names",
    "register",
]

#: Default input shape of the small ("toy") families.
TOY_INPUT: tuple[int, int, int, int] = (1, 3, 64, 64)

F = TypeVar("F", bound=Callable[..., nn.Module])


class ZooError(TargetError, ValueError):
    """An unknown model name, an unknown knob or an invalid knob value.

    It is a :class:`ValueError` and, for the CLI, a :class:`gpa.errors.TargetError`
    (a user mistake: exit code 2).
    """


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one entry of the zoo.

    Attributes:
        name: the public entry name, e.g. ``"resnet"``.
        description: one line saying what the model is.
        section: the part of the paper (or of the reference) the model illustrates.
        family: the module of :mod:`gpa.models` defining it, e.g. ``"residual"`` for the
            entry ``"resnet"``.
        input_shape: the default input shape ``(1, 3, H, W)`` of a model built with default knobs.
        knobs: read-only mapping knob name -> default value, in signature order.
        factory: the registered factory (call it with knobs as keyword arguments).
    """

    name: str
    description: str
    section: str
    family: str
    input_shape: tuple[int, ...]
    knobs: MappingProxyType[str, Any]
    factory: Callable[..., nn.Module] = field(repr=False, compare=False)

    def summary(self) -> str:
        """One line: name, knobs with defaults, description and section."""
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.knobs.items())
        return f"{self.name}({knobs}): {self.description} [{self.section}]"


_REGISTRY: dict[str, ModelInfo] = {}


def register(
    *,
    description: str,
    section: str,
    input_shape: tuple[int, ...] = TOY_INPUT,
    name: str | None = None,
) -> Callable[[F], F]:
    """Register a model factory under ``name`` (default: the function's name).

    Every parameter of the factory is a knob and must have a default, so the factory
    can be called with no argument. The returned wrapper keeps the signature,
    raises :class:`ZooError` for unknown keyword arguments (naming them) and sets
    ``model.input_shape = input_shape`` unless the factory already set one.

    Example (in a family module)::

        @register(description="a chain of 3x3 convs", section="Table 1")
        def plainnet(depth: int = 6, width: int = 16) -> nn.Module: ...
    """

    def decorate(fn: F) -> F:
        entry = name or fn.__name__
        if entry in _REGISTRY:
            raise RuntimeError(f"model {entry!r} is registered twice")
        if entry in _package_names():  # gpa.models.NAME would be that, not the factory
            raise RuntimeError(
                f"model {entry!r} is named as a module or function of gpa.models, which "
                "would hide it: choose another name"
            )
        sig = inspect.signature(fn)
        for p in sig.parameters.values():
            if p.default is inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"knob {p.name!r} of model factory {entry!r} needs a default value")

        @functools.wraps(fn)
        def factory(*args: Any, **kwargs: Any) -> nn.Module:
            unknown = [k for k in kwargs if k not in sig.parameters]
            if unknown:
                raise ZooError(
                    f"unknown knob{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(repr(k) for k in unknown)} for model {entry!r}; "
                    f"its knobs are: {', '.join(sig.parameters) or '(none)'}"
                )
            try:
                model = fn(*args, **kwargs)
            except ZooError as err:
                raise ZooError(f"{entry}: {err}") from None
            if getattr(model, "input_shape", None) is None:
                model.input_shape = tuple(input_shape)
            model.zoo_entry = entry  # reports name it after the entry, not its class
            return model

        _REGISTRY[entry] = ModelInfo(
            name=entry,
            description=description,
            section=section,
            family=fn.__module__.rsplit(".", 1)[-1],
            input_shape=tuple(input_shape),
            knobs=MappingProxyType({k: p.default for k, p in sig.parameters.items()}),
            factory=factory,
        )
        return factory  # type: ignore[return-value]

    return decorate


@functools.cache
def _package_names() -> frozenset[str]:
    """The submodules of :mod:`gpa.models` and the registry functions it re-exports."""
    here = Path(__file__).parent
    return frozenset(m.name for m in pkgutil.iter_modules([str(here)])) | frozenset(__all__)


def names() -> list[str]:
    """Names of all registered entries, in registration (paper) order.

    Entries whose name starts with an underscore are private and not listed.
    """
    return [n for n in _REGISTRY if not n.startswith("_")]


def describe(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of entry ``name``; :class:`ZooError` if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ZooError(
            f"unknown model {name!r}{hint} (known models: {', '.join(names())})"
        ) from None


def entries() -> list[ModelInfo]:
    """The :class:`ModelInfo` of every public entry, in :func:`names` order (``gpa zoo``'s rows).

    Example:
        >>> info = entries()[0]
        >>> info.name, dict(info.knobs), info.input_shape
        ('plainnet', {'depth': 6, 'width': 16, 'num_classes': 10}, (1, 3, 64, 64))
    """
    return [_REGISTRY[n] for n in names()]


def build(name: str, **knobs: Any) -> nn.Module:
    """Build entry ``name`` with the given knobs (all others keep their defaults).

    Raises :class:`ZooError` (a ``ValueError``) for an unknown name, an unknown knob
    or an invalid knob value.

    Example:
        >>> m = build("plainnet", depth=4)
        >>> m.input_shape
        (1, 3, 64, 64)
    """
    return describe(name).factory(**knobs)


# --- knob validation helpers (used by the factories) ---------------------------------------


def knob_int(knob: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; :class:`ZooError` otherwise (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ZooError(f"knob {knob!r} must be an integer >= {minimum}, got {value!r}")
    return value


def knob_choice(knob: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; :class:`ZooError` otherwise."""
    if value not in choices:
        raise ZooError(
            f"knob {knob!r} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )
    return value


def knob_ratio(knob: str, value: Any) -> float:
    """``value`` as a float in (0, 1]; :class:`ZooError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ZooError(f"knob {knob!r} must be a number in (0, 1], got {value!r}")
    return float(value)


def knob_bool(knob: str, value: Any) -> bool:
    """``value`` if it is a bool; :class:`ZooError` otherwise."""
    if not isinstance(value, bool):
        raise ZooError(f"knob {knob!r} must be True or False, got {value!r}")
    return value


def manifest() -> list[dict[str, Any]]:
    """Every entry as plain data (name, description, section, knobs, input shape), in
    registration order: what ``gpa zoo`` lists. ``gpa/models/manifest.json`` holds it so
    that ``gpa zoo`` starts without importing torch (``scripts/gen_models_doc.py`` writes
    it; a test keeps it current).

    Example:
        >>> [e["input_shape"] for e in manifest() if e["name"] == "resnet"]
        [[1, 3, 64, 64]]
    """
    return [
        {
            "name": e.name,
            "description": e.description,
            "section": e.section,
            "knobs": dict(e.knobs),
            "input_shape": list(e.input_shape),
        }
        for e in entries()
    ]
