"""Calls of custom autograd Functions: seen while a frontend traces.

A subclass of ``torch.autograd.Function`` (a straight-through estimator, a gradient
reversal, a memory-saving activation) gives its result a gradient of its own making:
autograd runs ``forward`` under ``no_grad`` and links the result to every tensor argument
that requires grad, through ``backward``. A tracer reading ``forward``'s operations reads
the wrong thing (``round(x)``, ``(x > 0).float()``: no gradient at all), so the frontends
take each call whole (fx) or refuse (export), as ``docs/semantics.md`` §1.2 says.
torch's own Functions (a re-entrant activation checkpoint) are not custom.

Example:
    >>> import torch
    >>> class Twice(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         return 2 * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         return 2 * g
    >>> seen = []
    >>> def note(function, args, kwargs):
    ...     seen.append(function.__name__)
    ...     return run_function(function, args, kwargs)
    >>> with custom_function_calls(note):
    ...     y = Twice.apply(torch.ones(2))
    >>> seen, y
    (['Twice'], tensor([2., 2.]))
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.autograd.function import _SingleLevelFunction

__all__ = ["called_function", "custom_function_calls", "function_call", "run_function"]

#: ``handle(function, args, kwargs)``: what a call of ``function.apply(*args, **kwargs)`` gives.
Handler = Callable[[type[torch.autograd.Function], tuple, dict], Any]


def run_function(function: type[torch.autograd.Function], args: tuple, kwargs: dict) -> Any:
    """``function.apply(*args, **kwargs)`` as torch runs it, past what
    :func:`custom_function_calls` puts in its way (for its handlers)."""
    return super(_SingleLevelFunction, function).apply(*args, **kwargs)  # type: ignore[misc]


@contextlib.contextmanager
def custom_function_calls(handle: Handler) -> Iterator[None]:
    """While it lasts, ``handle`` answers each call of a custom autograd Function (one
    defined outside torch) made in any thread, also through an ``apply`` bound before
    (``reverse = GradReverse.apply``); torch's own run as they are.

    ``Function.apply`` hands every call to its base class's ``apply`` (torch's C++ code),
    after binding default arguments: that base, ``torch.autograd.function.
    _SingleLevelFunction``, is given an ``apply`` of gpa's for as long as this lasts."""

    def apply(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
        if (cls.__module__ or "").partition(".")[0] == "torch":
            return run_function(cls, args, kwargs)
        return handle(cls, args, kwargs)

    _SingleLevelFunction.apply = classmethod(apply)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        del _SingleLevelFunction.apply


@functools.cache
def function_call(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """A function calling ``function.apply``, named after ``function``: the target of the
    node fx records for a call of it (one per Function, so its calls look alike).

    Example:
        >>> class Twice(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         return 2 * x
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         return 2 * g
        >>> call = function_call(Twice)
        >>> call.__name__, call(torch.ones(2))
        ('Twice', tensor([2., 2.]))
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return function.apply(*args, **kwargs)

    call.__name__, call.__module__ = function.__name__, function.__module__
    call.__qualname__ = f"{function.__qualname__}.apply"
    call.autograd_function = function  # type: ignore[attr-defined]
    return call


def called_function(target: Any) -> type[torch.autograd.Function] | None:
    """The custom autograd Function a :func:`function_call` target calls, else None."""
    return getattr(target, "autograd_function", None) if callable(target) else None
