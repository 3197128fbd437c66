"""Objects that hold the model a user means: data-parallel wrappers, averaged copies,
``torch.compile``'s wrapper, an engine object (Ultralytics' ``YOLO``).

:func:`unwrap_wrappers` finds the model inside (``docs/semantics.md`` §1), with a note per
wrapper; :func:`wrappers_unwrapped` also carries the wrappers' hooks onto it for the
block; :func:`functional_run` calls any of them with a given state; the module ``torch.compile`` wrapped is :func:`gpa.frontends.modules.compiled`.

Example:
    >>> import torch.nn as nn
    >>> inner = nn.Linear(2, 2)
    >>> model, notes = unwrap_wrappers(nn.DataParallel(inner))
    >>> model is inner, len(notes)
    (True, 1)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from gpa.frontends.hooks import carries_hooks_of_its_own, is_users_hook
from gpa.frontends.modules import PARALLEL, compiled
from gpa.frontends.state import TRACING

__all__ = [
    "ENGINES",
    "functional_run",
    "unwrap_wrappers",
    "wrappers_unwrapped",
]


#: Classes, by defining module and name (matched along a class's MRO, so nothing is
#: imported), whose objects are modules only to hold the network they run, with the
#: attribute holding it. Ultralytics' engine object (``YOLO("yolov8n.yaml")``) is called on
#: images (``predict``) and its ``train`` runs a training loop: the network is its
#: ``.model``.
ENGINES = {("ultralytics.engine.model", "Model"): "model"}


def _held_by_engine(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The attribute of :data:`ENGINES` holding the network ``module`` runs, and that
    network; None for any other module (or an engine holding no module: a path, an
    exported model's runtime)."""
    for cls in type(module).__mro__:
        attribute = ENGINES.get((cls.__module__, cls.__qualname__))
        if attribute is not None:
            held = getattr(module, attribute, None)
            return (attribute, held) if isinstance(held, nn.Module) else None
    return None


def functional_run(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    args: Any,
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """``torch.func.functional_call(module, state, args, kwargs)`` for any module:
    one torch's stateless API refuses — a data-parallel wrapper (a subclass of one with a
    forward of its own is a model), a TorchScript module, whose state its parent swaps —
    is called through a module holding it.

    Example:
        >>> m = nn.DataParallel(nn.Linear(2, 1, bias=False))
        >>> functional_run(m, {"module.weight": torch.ones(1, 2)}, (torch.ones(1, 2),))
        tensor([[2.]])
    """
    if isinstance(module, (*PARALLEL, torch.jit.ScriptModule)):
        module, state = _Holder(module), {f"held.{k}": v for k, v in state.items()}
    return torch.func.functional_call(module, dict(state), args, kwargs)


class _Holder(nn.Module):
    """A module whose forward calls the one it holds (not a copy: its state is swapped)."""

    def __init__(self, held: nn.Module) -> None:
        super().__init__()
        self.held = held

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.held(*args, **kwargs)


def unwrap_wrappers(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model a data-parallel wrapper, an averaged copy (``AveragedModel``: SWA, EMA),
    ``torch.compile`` or an engine object (:data:`ENGINES`: Ultralytics' ``YOLO``) holds
    (wrapped in each other or not), with a note per wrapper saying so; else ``model``.
    Each but the engine calls the module it holds as it is; the engine's network is what
    its ``predict`` and ``train`` run.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap_wrappers(nn.DataParallel(inner))[0] is inner
        True
    """
    inner, chain = _wrapper_chain(model)
    return inner, _unwrapped_notes(chain)


def _unwrapped_notes(chain: list[tuple[nn.Module, str, str]]) -> list[str]:
    """A note per wrapper of ``chain`` (:func:`_wrapper_chain`) saying what was analysed."""
    return [
        f"analysed the module {kind} wraps (its .{prefix}): layer names are relative to "
        f"it; the wrapper's state_dict puts '{prefix}.' in front of each"
        for _, kind, prefix in chain
    ]


def _wrapper_chain(model: nn.Module) -> tuple[nn.Module, list[tuple[nn.Module, str, str]]]:
    """The module the wrappers around ``model`` hold (``model`` itself if none) and the
    wrappers, outermost first, each with its kind and the attribute holding what it wraps."""
    chain = []
    while True:
        engine = _held_by_engine(model)
        if engine is not None:
            kind, (prefix, inner) = type(model).__name__, engine
        elif _defines_its_own_call(model):  # (a subclass calling its module otherwise)
            break
        elif isinstance(model, (*PARALLEL, torch.optim.swa_utils.AveragedModel)):
            kind, inner, prefix = type(model).__name__, model.module, "module"
        elif (held := compiled(model)) is not None:
            kind, inner, prefix = "torch.compile", held, "_orig_mod"
        else:
            break
        chain.append((model, kind, prefix))
        model = inner
    return model, chain


def _defines_its_own_call(module: nn.Module) -> bool:
    """Whether the class of ``module`` defines ``forward`` or ``__call__`` outside torch:
    a wrapper's subclass doing so is a model of its own, not a wrapper to read through."""
    cls = type(module)
    return any(
        is_users_hook(inspect.getattr_static(cls, name, None)) for name in ("forward", "__call__")
    )


@contextlib.contextmanager
def wrappers_unwrapped(model: nn.Module) -> Iterator[tuple[nn.Module, list[str]]]:
    """:func:`unwrap_wrappers` for the block, with the forward hooks and pre-hooks each
    wrapper carries (the user's) registered on the module they wrap — around its own, in
    the order the wrappers would run them, each given its wrapper as its ``module``
    argument — and a note saying so. A wrapper runs its hooks around the call of that
    module, so the model's inputs and output pass through them as they do when it is
    called (``docs/semantics.md`` §1). While hooks are carried, other analyses wait
    (:data:`TRACING`): they would read them on the module too.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> wrapper = nn.DataParallel(inner)
        >>> def double(module, args, out):
        ...     return 2 * out
        >>> double.__module__ = "my_model"  # (as the user's module defines it)
        >>> _ = wrapper.register_forward_hook(double)
        >>> with wrappers_unwrapped(wrapper) as (model, notes):
        ...     model is inner, len(model._forward_hooks)
        (True, 1)
        >>> len(inner._forward_hooks)
        0
    """
    inner, chain = _wrapper_chain(model)  # (one walk for the notes and the hooks)
    notes = _unwrapped_notes(chain)
    hooked = [
        w
        for w, _, _ in chain
        # (an engine's own call predicts: it never runs hooks registered on it)
        if carries_hooks_of_its_own(w) and _held_by_engine(w) is None
    ]
    if not hooked:
        yield inner, notes
        return
    notes += [
        f"ran the forward hooks {type(w).__name__} carries around the call of the module it "
        "wraps, as it does"
        for w in hooked
    ]
    with TRACING:
        handles = []
        try:
            for wrapper in reversed(hooked):  # (innermost first: each around those before)
                handles += _hooks_carried(wrapper, inner)
            yield inner, notes
        finally:
            for handle in handles:
                handle.remove()


def _hooks_carried(wrapper: nn.Module, inner: nn.Module) -> list[Any]:
    """Register the forward hooks and pre-hooks of ``wrapper`` (the user's: not torch's or
    gpa's) on ``inner``, each called with ``wrapper`` as its module: its pre-hooks before
    those ``inner`` has, its forward hooks after; their handles."""
    handles = []
    pre = [(k, h) for k, h in wrapper._forward_pre_hooks.items() if is_users_hook(h)]
    for key, hook in reversed(pre):  # (each prepended: their order kept)
        with_kwargs = key in wrapper._forward_pre_hooks_with_kwargs
        handles.append(
            inner.register_forward_pre_hook(
                _called_with(wrapper, hook), prepend=True, with_kwargs=with_kwargs
            )
        )
    for key, hook in wrapper._forward_hooks.items():
        if is_users_hook(hook):
            handles.append(
                inner.register_forward_hook(
                    _called_with(wrapper, hook),
                    with_kwargs=key in wrapper._forward_hooks_with_kwargs,
                    always_call=key in wrapper._forward_hooks_always_called,
                )
            )
    return handles


def _called_with(wrapper: nn.Module, hook: Any) -> Any:
    """``hook`` called with ``wrapper`` as its module, whichever module runs it; it keeps
    the hook's name and module (the user's) and names the wrapper (``carried_from``)."""

    @functools.wraps(hook)
    def carried(module: nn.Module, *args: Any) -> Any:
        return hook(wrapper, *args)

    carried.carried_from = type(wrapper).__name__  # type: ignore[attr-defined]
    return carried
