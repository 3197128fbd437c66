"""Thread-local watches over the Python calls a model makes while a frontend reads it.

Some of what decides gradient flow happens in Python that no tensor operation shows. A
re-entrant activation checkpoint (``torch.utils.checkpoint.checkpoint(f, x,
use_reentrant=True)``, ``checkpoint_sequential``) runs ``f`` without gradient inside an
``autograd.Function`` whose backward runs ``f`` again with gradient: every frontend would
see ``f`` as code under ``no_grad``. Torch also switches gradient off and on in C++ around
Python it calls (a Function's forward, a saved-tensor hook of a non-re-entrant
checkpoint), which ``torch.export``'s record of grad-mode changes misses. A TorchScript
module accepts no hooks, so the autograd frontend cannot see where its calls begin and end.

A :class:`CallWatch` follows such calls with :func:`sys.settrace`, which acts on the
calling thread alone: nothing of torch is patched, and other threads (other analyses, the
model's other users) see nothing. A trace function costs time on every Python call, so a
frontend installs a watch only when a model needs one (:func:`in_reentrant_checkpoint`
tells, cheaply, that a re-entrant checkpoint runs). A trace function installed before (a
debugger, coverage) keeps receiving its events.

Example:
    >>> import torch
    >>> from torch.utils.checkpoint import checkpoint
    >>> def f(x):
    ...     return x * 2, torch.is_grad_enabled()
    >>> x = torch.ones(1, requires_grad=True)
    >>> checkpoint(f, x, use_reentrant=True)[1]  # torch runs f without gradient
    False
    >>> with Checkpoints():
    ...     checkpoint(f, x, use_reentrant=True)[1]  # as backward will run it
    True
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.autograd.function import BackwardCFunction, Function
from torch.utils.checkpoint import CheckpointFunction, _checkpoint_hook

__all__ = [
    "CallWatch",
    "Checkpoints",
    "ModuleCalls",
    "in_function_forward",
    "in_reentrant_checkpoint",
    "reentrant_checkpoint_calls",
    "recomputed_function_note",
    "unfed_checkpoint_note",
]

# A local trace function: (frame, event, arg) -> the frame's next local trace function.
LocalTrace = Callable[[FrameType, str, Any], Any]

_CHECKPOINT = inspect.unwrap(torch.utils.checkpoint.checkpoint).__code__
_CHECKPOINT_FORWARD = CheckpointFunction.forward.__code__
_NO_GRAD_ENTER = torch.no_grad.__enter__.__code__
_NO_GRAD_EXIT = torch.no_grad.__exit__.__code__
# what switches gradient off from Python: ``no_grad()`` entered, ``set_grad_enabled(False)``
_GRAD_OFF = (
    _NO_GRAD_ENTER,
    torch.set_grad_enabled.__init__.__code__,
    torch.set_grad_enabled.__enter__.__code__,
)
_MODULE_CALL = nn.Module._call_impl.__code__
# The saved-tensor hook of a non-re-entrant checkpoint (None if torch names it otherwise).
_PACK_HOOK = next(
    (
        c
        for c in _checkpoint_hook.__init__.__code__.co_consts
        if isinstance(c, types.CodeType) and c.co_name == "pack_hook"
    ),
    None,
)


def in_reentrant_checkpoint() -> bool:
    """Whether the caller runs inside a re-entrant checkpoint's function.

    Example:
        >>> in_reentrant_checkpoint()
        False
    """
    return bool(reentrant_checkpoint_calls())


def reentrant_checkpoint_calls() -> list[tuple[Any, tuple]]:
    """Each re-entrant checkpoint whose function the caller runs inside, innermost first:
    its ``ctx`` (whose ``run_function`` the backward runs again, with gradient, on
    detached copies of the arguments) and the arguments its function was given.

    Example:
        >>> reentrant_checkpoint_calls()
        []
    """
    found = []
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _CHECKPOINT_FORWARD:
            found.append((frame.f_locals["ctx"], frame.f_locals["args"]))
        frame = frame.f_back  # type: ignore[assignment]
    return found


def in_function_forward() -> list[type]:
    """The custom autograd Functions (classes: two may share a name) whose ``forward`` the
    caller runs inside, innermost first (autograd runs them without gradient; their
    backward alone sends gradient on).

    Example:
        >>> in_function_forward()
        []
    """
    found = []
    frame = sys._getframe(1)
    while frame is not None:
        function = _function_forward(frame)
        if function is not None:
            found.append(function)
        frame = frame.f_back  # type: ignore[assignment]
    return found


def _function_forward(frame: FrameType) -> type | None:
    """The Function (its class) if ``frame`` runs a custom autograd Function's ``forward``,
    else None: one given its ``ctx`` (the node backward runs, of class
    ``<Name>Backward``), or one of torch's newer style, given none (``setup_context``
    fills it afterwards), which ``Function.apply`` calls. A checkpoint's is
    :class:`Checkpoints`'s own case."""
    code = frame.f_code
    if code.co_name != "forward" or code is _CHECKPOINT_FORWARD:
        return None
    ctx = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
    if isinstance(ctx, BackwardCFunction):
        return getattr(type(ctx), "_forward_cls", None)
    method = _set_up_method(code)
    return method[1] if method is not None and method[0] == "forward" else None


def _set_up_method(code: types.CodeType) -> tuple[str, type] | None:
    """("forward" or "setup_context", the Function) if ``code`` is that method of a
    custom autograd Function of torch's newer style (``forward`` given no ``ctx``,
    ``setup_context`` given it afterwards), else None. ``Function.apply`` runs both from
    C++ (torch 2.14), so the Function is known by its methods' code."""
    if code not in _SET_UP_METHODS:  # (a Function defined since: look again)
        _SET_UP_METHODS.update(_set_up_methods())
        _SET_UP_METHODS.setdefault(code, None)
    return _SET_UP_METHODS[code]


# The code of newer-style Functions' forward and setup_context (see _set_up_method), and
# of other functions so named that were met (None).
_SET_UP_METHODS: dict[types.CodeType, tuple[str, type] | None] = {}


def _set_up_methods() -> Iterator[tuple[types.CodeType, tuple[str, type]]]:
    """Every newer-style Function's forward and setup_context code (a decorated one's
    inner function's, which its frame runs), with its role and the Function defining it
    (a subclass sharing it is known by it)."""
    stack = Function.__subclasses__()
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if getattr(cls, "setup_context", Function.setup_context) is Function.setup_context:
            continue
        for role in ("forward", "setup_context"):
            method = cls.__dict__.get(role)  # (defined here: inherited ones by their class)
            code = getattr(inspect.unwrap(getattr(method, "__func__", method)), "__code__", None)
            if code is not None:
                yield code, (role, cls)


def recomputed_function_note(functions: Iterable[type]) -> str:
    """The note of a run that read custom autograd Functions calling layers in their
    ``forward`` as their backward recomputes them (``docs/semantics.md`` §1.7)."""
    which = ", ".join(f"'{f.__name__}'" for f in functions)
    return (
        f"the custom autograd Function(s) {which} compute with the model's weights in "
        "forward, which autograd runs without gradient: gradient reaches those weights only "
        "through the Function's backward, which gpa cannot read. It is taken to "
        "differentiate what forward computed (as reversible layers and checkpoints "
        "recompute it); if it does otherwise, the paths through it differ"
    )


class CallWatch:
    """A context manager that shows this thread's Python calls to :meth:`on_call`.

    Subclasses implement :meth:`on_call`; it may return a local trace function for the
    frame (to see its ``"return"`` event, whose ``arg`` is the returned value).
    """

    def __init__(self) -> None:
        self._previous: Any = None

    def on_call(self, frame: FrameType) -> LocalTrace | None:
        """A Python function starts running in ``frame`` (its caller is ``frame.f_back``)."""
        raise NotImplementedError

    def __enter__(self) -> CallWatch:
        self._previous = sys.gettrace()
        sys.settrace(self._trace)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        sys.settrace(self._previous)

    def _trace(self, frame: FrameType, event: str, arg: Any) -> LocalTrace | None:
        ours = self.on_call(frame) if event == "call" else None
        theirs = self._previous(frame, event, arg) if self._previous is not None else None
        if ours is None or theirs is None:
            return ours or theirs
        return _both(ours, theirs)


def _both(ours: LocalTrace | None, theirs: LocalTrace | None) -> LocalTrace:
    """One local trace function for a frame that two watches follow."""

    def trace(frame: FrameType, event: str, arg: Any) -> LocalTrace:
        nonlocal ours, theirs
        ours = ours(frame, event, arg) if ours is not None else None
        theirs = theirs(frame, event, arg) if theirs is not None else None
        return trace

    return trace


def unfed_checkpoint_note(count: int) -> str:
    """The note of a run with ``count`` re-entrant checkpoints given nothing that requires
    gradient in training (``docs/semantics.md`` §1.7)."""
    which = (
        "a re-entrant activation checkpoint is"
        if count == 1
        else f"{count} re-entrant activation checkpoints are"
    )
    return (
        f"{which} given no tensor that requires gradient in training (the model's inputs "
        "alone, or what such a checkpoint returned), so its outputs carry none: the "
        'layers it runs receive no gradient through it (torch warns "None of the inputs '
        'have requires_grad=True"); checkpoint with use_reentrant=False, or give it a '
        "tensor that requires gradient"
    )


class Checkpoints(CallWatch):
    """Within the block, activation checkpoints leave every operation the grad mode it
    has without them; so do the custom autograd Functions in ``functions`` (whose
    ``forward`` computes with the model's weights: reversible layers), read as their
    backward recomputes them.

    ``CheckpointFunction.apply`` (re-entrant) disables gradient (autograd does, for every
    Function's forward), then its forward enters ``torch.no_grad()`` and calls the
    function. The watch sets the grad mode back as the function starts — the mode
    ``checkpoint`` was called in, in which backward's recomputation runs it — so the
    frontends record its operations, and a ``no_grad`` of the user's own inside it,
    exactly as without the checkpoint. Where torch restores a mode in C++ (as
    ``checkpoint`` returns, after a non-re-entrant checkpoint's saved-tensor hook), the
    watch says it again in Python, where a tracer that records grad-mode changes
    (``torch.export``) hears it.

    Attributes:
        results: per checkpoint call, its ``ctx`` (the ``CheckpointFunctionBackward``
            node its outputs get) and, per output, the autograd edge ``(grad_fn,
            output_nr)`` the function gave it (None for a value without one): the
            autograd frontend reads the function's own graph through them.
        boundaries: per checkpoint call, in order, the arguments it was given and the
            outputs it returned (tensors, or fx proxies while fx traces).
    """

    def __init__(self, functions: Iterable[type] = ()) -> None:
        super().__init__()
        self.results: list[tuple[Any, list[tuple[Any, int] | None]]] = []
        self.boundaries: list[tuple[tuple, tuple]] = []
        # per call of a custom autograd Function named in ``functions``, as ``results``
        self.functions: list[tuple[Any, list[tuple[Any, int] | None]]] = []
        self._watched = frozenset(functions)
        self._modes: dict[FrameType, bool] = {}  # checkpoint() -> grad mode it was called in
        self._pending: dict[FrameType, bool] = {}  # checkpoint forward -> mode for the function
        self._entered: set[FrameType] = set()  # checkpoint forwards inside their no_grad
        self._running = 0  # how many watched Functions' forwards are running
        # the forward code and edges of newer-style Functions whose forward returned,
        # until their setup_context is given the ctx (innermost last)
        self._set_up: list[tuple[types.CodeType, list[tuple[Any, int] | None]]] = []

    def forget(self) -> None:
        """Drop what the block recorded so far: a run that failed (on the meta device)
        before the one whose graph is read."""
        self.results.clear()
        self.boundaries.clear()
        self.functions.clear()

    def on_call(self, frame: FrameType) -> LocalTrace | None:
        code = frame.f_code
        if code is _CHECKPOINT:
            self._modes[frame] = torch.is_grad_enabled()
            return self._checkpoint_events
        if self._watched:
            if code.co_name == "setup_context" and self._set_up:
                self._set_up_given(frame)
            if _function_forward(frame) in self._watched:
                # with gradient, as backward recomputes it (in training: the mode it runs in)
                self._running += 1
                torch._C._set_grad_enabled(True)
                return self._function_events
            if code in _GRAD_OFF and self._running:  # inside it, no_grad saves the
                return self._no_grad_events  # memory that recomputing in backward spends
        if code is _CHECKPOINT_FORWARD:  # called by autograd, from checkpoint()
            caller = frame.f_back
            while caller is not None and caller not in self._modes:
                caller = caller.f_back
            self._pending[frame] = self._modes[caller] if caller is not None else True
            return self._forward_events
        if code is _PACK_HOOK:
            return self._pack_events
        caller = frame.f_back
        if caller in self._pending:
            if code is _NO_GRAD_ENTER:
                self._entered.add(caller)
            elif code is not _NO_GRAD_EXIT and caller in self._entered:
                # the checkpointed function itself starts: with gradient, as in backward
                self._entered.discard(caller)
                torch._C._set_grad_enabled(self._pending[caller])
        return None

    def _checkpoint_events(self, frame: FrameType, event: str, arg: Any) -> LocalTrace:
        if event == "return":
            self._modes.pop(frame, None)
            # torch restored the caller's mode in C++: say it again where tracers hear it
            torch._C._set_grad_enabled(torch.is_grad_enabled())
        return self._checkpoint_events

    def _pack_events(self, frame: FrameType, event: str, arg: Any) -> LocalTrace:
        if event == "return":
            # autograd saves tensors only with gradient on, and turns it back on in C++
            torch._C._set_grad_enabled(True)
        return self._pack_events

    def _function_events(self, frame: FrameType, event: str, arg: Any) -> LocalTrace:
        if event == "return":
            self._running -= 1
            made = _edges_of(arg)
            names = frame.f_code.co_varnames
            ctx = frame.f_locals.get(names[0]) if names else None
            if not isinstance(ctx, BackwardCFunction):  # its setup_context is given it
                self._set_up.append((frame.f_code, made))
            elif any(made):  # (else no output carries gradient: autograd's edges stay)
                self.functions.append((ctx, made))
        return self._function_events

    def _set_up_given(self, frame: FrameType) -> None:
        """A newer-style Function's ``setup_context`` starts, given the ``ctx`` its
        outputs get: the node to link to what its ``forward`` computed. (torch calls it
        right after that ``forward`` returns: the last one watched.)"""
        method = _set_up_method(frame.f_code)
        if method is None or method[0] != "setup_context":
            return
        ctx = frame.f_locals.get(frame.f_code.co_varnames[0])
        forward = getattr(getattr(type(ctx), "_forward_cls", None), "forward", None)
        code = getattr(inspect.unwrap(forward), "__code__", None) if forward else None
        code_made = self._set_up.pop()
        if code_made[0] is code and any(code_made[1]):  # (else another's: link nothing)
            self.functions.append((ctx, code_made[1]))

    def _no_grad_events(self, frame: FrameType, event: str, arg: Any) -> LocalTrace:
        if event == "return":
            torch._C._set_grad_enabled(True)
        return self._no_grad_events

    def _forward_events(self, frame: FrameType, event: str, arg: Any) -> LocalTrace:
        if event == "return":
            self._pending.pop(frame, None)
            self._entered.discard(frame)
            outputs = arg if isinstance(arg, tuple) else (arg,)
            self.results.append((frame.f_locals.get("ctx"), _edges_of(arg)))
            self.boundaries.append((tuple(frame.f_locals.get("args", ())), outputs))
        return self._forward_events


def _edges_of(returned: Any) -> list[tuple[Any, int] | None]:
    """Per output of a Function's ``forward``, the autograd edge it carries (None for a
    value without one)."""
    outputs = returned if isinstance(returned, tuple) else (returned,)
    return [
        (t.grad_fn, t.output_nr) if isinstance(t, torch.Tensor) and t.grad_fn is not None else None
        for t in outputs
    ]


class ModuleCalls(CallWatch):
    """Within the block, the calls of ``modules`` are shown to ``pre(module, args)`` and
    ``post(module, args, output)``, as forward hooks would be: for modules that take no
    hooks (TorchScript modules).

    Example:
        >>> seen = []
        >>> linear = torch.jit.script(nn.Linear(2, 2))
        >>> with ModuleCalls([linear], lambda m, a: seen.append("pre"),
        ...                  lambda m, a, out: seen.append(tuple(out.shape))):
        ...     _ = linear(torch.zeros(3, 2))
        >>> seen
        ['pre', (3, 2)]
    """

    def __init__(
        self,
        modules: Iterable[nn.Module],
        pre: Callable[[nn.Module, Any], None],
        post: Callable[[nn.Module, Any, Any], None],
    ) -> None:
        super().__init__()
        self._ids = {id(m) for m in modules}
        self._pre, self._post = pre, post

    def on_call(self, frame: FrameType) -> LocalTrace | None:
        if frame.f_code is not _MODULE_CALL:
            return None
        module = frame.f_locals.get("self")
        if id(module) not in self._ids:
            return None
        args = frame.f_locals.get("args", ())
        self._pre(module, args)

        def events(frame: FrameType, event: str, arg: Any) -> LocalTrace:
            if event == "return":  # also when it raises (arg is then None)
                self._post(module, args, arg)
            return events

        return events
