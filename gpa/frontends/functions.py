"""Calls of custom autograd Functions: seen while a frontend traces.

A subclass of ``torch.autograd.Function`` (a straight-through estimator, a gradient
reversal, a memory-saving activation) gives its result a gradient of its own making:
autograd runs ``forward`` under ``no_grad`` and links the result to every tensor argument
that requires grad, through ``backward``. A tracer reading ``forward``'s operations reads
the wrong thing (``round(x)``, ``(x > 0).float()``: no gradient at all), so the frontends
take each call whole (fx) or refuse (export), as ``docs/semantics.md`` §1.2 says.
torch's own Functions (a re-entrant activation checkpoint) are not custom.

Two ways in, both while :func:`custom_function_calls` lasts: ``Function.apply`` looked up
at the call (``GradReverse.apply(x)``) goes to a handler, which may answer for the call;
``forward`` run any other way (an ``apply`` bound before, ``grl = GradReverse.apply``:
torch's C++ ``apply`` looks ``forward`` up on the class) is reported as unseen.

Example:
    >>> import torch
    >>> class Twice(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         return 2 * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         return 2 * g
    >>> bound, seen = Twice.apply, []
    >>> def note(function, args, kwargs):
    ...     seen.append(function.__name__)
    ...     return run_function(function, args, kwargs)
    >>> with custom_function_calls(note, lambda f, a, k: seen.append(f"unseen {f.__name__}")):
    ...     y, z = Twice.apply(torch.ones(2)), bound(torch.ones(2))
    >>> seen, y
    (['Twice', 'unseen Twice'], tensor([2., 2.]))
    >>> call = function_call(Twice)  # what fx records, named after the Function
    >>> call.__name__, called_function(call) is Twice, call(torch.ones(2))
    ('Twice', True, tensor([2., 2.]))
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["called_function", "custom_function_calls", "function_call", "run_function"]

# ``Function.apply``: a classmethod calling torch's C++ ``apply`` (torch 2.13) or that
# C++ method itself (2.14); either way the C++ code looks ``forward`` up on the class
_APPLY = torch.autograd.Function.__dict__["apply"]
_THROUGH = contextvars.ContextVar("gpa_function_run_through", default=False)

#: ``handle(function, args, kwargs)``: what a call of ``function.apply(*args, **kwargs)`` gives.
Handler = Callable[[type[torch.autograd.Function], tuple, dict], Any]


def run_function(function: type[torch.autograd.Function], args: tuple, kwargs: dict) -> Any:
    """``function.apply(*args, **kwargs)`` as torch runs it, past what
    :func:`custom_function_calls` puts in its way (for its handlers)."""
    token = _THROUGH.set(True)
    try:
        return _APPLY.__get__(None, function)(*args, **kwargs)
    finally:
        _THROUGH.reset(token)


def _of_torch(function: type) -> bool:
    return (function.__module__ or "").partition(".")[0] == "torch"


def _custom_functions() -> list[type[torch.autograd.Function]]:
    """Every subclass of ``torch.autograd.Function`` defined outside torch, so far."""
    found, stack = [], [torch.autograd.Function]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if not _of_torch(sub):
                found.append(sub)
    return found


@contextlib.contextmanager
def custom_function_calls(handle: Handler, unseen: Handler) -> Iterator[None]:
    """While it lasts, ``handle`` answers each call of a custom autograd Function (one
    defined outside torch) made through ``Function.apply`` looked up at the call, in any
    thread; torch's own run as they are. ``unseen`` is told of each run of a custom
    Function's ``forward`` that did not come that way (through an ``apply`` bound before),
    before it runs. ``Function.apply`` and the ``forward`` of every custom Function are
    replaced, on their classes, and put back after."""

    def apply(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
        if _of_torch(cls):
            return _APPLY.__get__(None, cls)(*args, **kwargs)
        return handle(cls, args, kwargs)

    def watched(cls: type, forward: Callable[..., Any]) -> staticmethod:
        @functools.wraps(forward)
        def run(*args: Any, **kwargs: Any) -> Any:  # ctx first, unless setup_context takes it
            if not _THROUGH.get():
                unseen(cls, args, kwargs)
            return forward(*args, **kwargs)

        return staticmethod(run)

    forwards = {
        cls: cls.__dict__["forward"]
        for cls in _custom_functions()
        if isinstance(cls.__dict__.get("forward"), staticmethod)
    }
    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign,assignment]
    for cls, forward in forwards.items():
        cls.forward = watched(cls, forward.__func__)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.autograd.Function.apply = _APPLY  # type: ignore[method-assign]
        for cls, forward in forwards.items():
            cls.forward = forward  # type: ignore[method-assign]


@functools.cache
def function_call(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """A function calling ``function.apply``, named after ``function``: the target of the
    node fx records for a call of it (one per Function, so its calls look alike; see the
    module's example)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return function.apply(*args, **kwargs)

    call.__name__, call.__module__ = function.__name__, function.__module__
    call.__qualname__ = f"{function.__qualname__}.apply"
    call.autograd_function = function  # type: ignore[attr-defined]
    return call


def called_function(target: Any) -> type[torch.autograd.Function] | None:
    """The custom autograd Function a :func:`function_call` target calls, else None."""
    return getattr(target, "autograd_function", None) if callable(target) else None
