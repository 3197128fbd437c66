"""Example inputs made from input shapes, the one place every frontend gets them from.

Inputs given by shape are zeros: of the model's floating dtype (:func:`floating_dtype`:
float32, or float16, bfloat16, float64 — or a complex dtype — for a model whose first
parameter has it), or int64 for the inputs read as indices (by an embedding,
``docs/semantics.md`` §1.4).

Example:
    >>> [(tuple(x.shape), x.dtype) for x in zeros((2, 4), (2, 3), integer={1}, device="cpu")]
    [((2, 4), torch.float32), ((2, 3), torch.int64)]
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from gpa.errors import GpaError, ShapeError, TargetError
from gpa.frontends.wrappers import unwrap_wrappers
from gpa.names import class_path
from gpa.options import parse_input_shapes

__all__ = [
    "bind_inputs",
    "DeclaredInputs",
    "check_input_count",
    "declared_inputs",
    "describe_inputs",
    "describe_value",
    "floating_dtype",
    "forward_parameters",
    "inputs_given",
    "integer_variants",
    "shapes_given",
    "unbound_inputs_message",
    "zeros",
]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def forward_parameters(model: nn.Module) -> dict[str, inspect.Parameter]:
    """The parameters of the ``forward`` gpa calls for ``model`` (through the wrappers it
    reads through: data-parallel, averaged, compiled), by name; empty when it has no
    signature Python can read."""
    inner = unwrap_wrappers(model)[0]
    try:
        return dict(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):  # a scripted or built-in forward
        return {}


def check_input_count(model: nn.Module, count: int) -> None:
    """Refuse ``count`` inputs where ``forward`` takes fewer by position (and no ``*args``):
    Python refuses the call, and a trace would leave the others unread.

    Raises:
        ShapeError: too many inputs.

    Example:
        >>> check_input_count(nn.Linear(2, 2), 2)
        Traceback (most recent call last):
        ...
        gpa.errors.ShapeError: the model's forward takes 1 input(s) ('input') but 2 example inputs were given
    """
    inner = unwrap_wrappers(model)[0]
    if inner._forward_pre_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return  # (a pre-hook may take inputs forward does not)
    try:  # the function called: a decorator's wrapper may take more than what it wraps
        parameters = inspect.signature(inner.forward, follow_wrapped=False).parameters.values()
    except (TypeError, ValueError):  # a scripted or built-in forward
        return
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return
    positional = [p.name for p in parameters if p.kind in _POSITIONAL]
    if count > len(positional):
        names = ", ".join(map(repr, positional))
        raise ShapeError(
            f"the model's forward takes {len(positional)} input(s) ({names}) but {count} "
            "example inputs were given"
        )


def unbound_inputs_message(model: nn.Module, count: int, tracer: str) -> str | None:
    """The refusal of ``tracer`` (torch.fx, torch.export) where ``count`` inputs are more
    than ``model.forward``'s signature takes as :func:`inspect.signature` reads it, else
    None. Both tracers bind the inputs to that signature — through a decorator's
    ``functools.wraps``, to the function wrapped —, where Python calls the model, whose
    forward pre-hook or decorator's wrapper may take more than ``forward`` itself.

    Example:
        >>> unbound_inputs_message(nn.Linear(2, 2), 1, "torch.fx") is None
        True
        >>> print(unbound_inputs_message(nn.Linear(2, 2), 2, "torch.fx"))
        torch.fx binds the example inputs to Linear.forward(input: torch.Tensor) -> torch.Tensor, which takes fewer than the 2 given (a forward pre-hook or a decorator's wrapper takes the others); the autograd frontend calls the model as Python does (--tracer autograd; auto moves on)
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a scripted or built-in forward: the tracer says
        return None
    try:
        signature.bind_partial(*range(count))
    except TypeError:
        name = type(model).__name__
        return (
            f"{tracer} binds the example inputs to {name}.forward{signature}, which takes "
            f"fewer than the {count} given (a forward pre-hook or a decorator's wrapper "
            "takes the others); the autograd frontend calls the model as Python does "
            "(--tracer autograd; auto moves on)"
        )
    return None


def bind_inputs(model: nn.Module, inputs: Any) -> Any:
    """``forward``'s arguments given by name (a dict, a Hugging Face ``BatchEncoding``) as
    the positional tuple gpa calls ``forward`` with: each argument up to the last one
    named, those left out at their defaults. Anything but a mapping is returned as it is.

    Raises:
        GpaError: a name ``forward`` takes only by keyword (after ``*``, or through
            ``**kwargs``) or not at all, or an argument without default left out before
            one that is named.

    Example:
        >>> class Net(nn.Module):
        ...     def forward(self, x, mask=None, scale=1.0):
        ...         return x * scale
        >>> bind_inputs(Net(), {"x": 1, "scale": 2.0})
        (1, None, 2.0)
    """
    if not isinstance(inputs, Mapping):
        return inputs
    parameters = forward_parameters(model)
    positional = [p for p in parameters.values() if p.kind in _POSITIONAL]
    order = [p.name for p in positional]
    for name in inputs:
        if name in order:
            continue
        if not order:  # (*args, **kwargs): a decorator without functools.wraps, often
            shown = ", ".join(map(str, parameters.values()))
            raise GpaError(
                f"{type(model).__name__}.forward names no argument gpa can place {name!r} "
                f"at (its signature: ({shown})): give forward's arguments by position, as a "
                "tuple"
            )
        kind = parameters[name].kind if name in parameters else None
        if kind is inspect.Parameter.VAR_POSITIONAL:
            raise GpaError(
                f"example_inputs names {name!r}, which {type(model).__name__}.forward "
                f"collects its further positional arguments in (*{name}): give them by "
                "position, as a tuple"
            )
        if name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            how = "by keyword" if name in parameters else "through **kwargs"
            raise GpaError(
                f"example_inputs names {name!r}, which {type(model).__name__}.forward takes "
                f"only {how}; gpa calls forward with positional arguments "
                f"({', '.join(order) or 'none'}): set it where the model reads it otherwise "
                "(its config), or wrap the model in a module whose forward takes it by position"
            )
        raise GpaError(
            f"example_inputs names {name!r}, an argument {type(model).__name__}.forward does "
            f"not take; its arguments: {', '.join(order) or 'none'}"
        )
    last = max((order.index(name) for name in inputs), default=-1)
    args = []
    for p in positional[: last + 1]:
        if p.name in inputs:
            args.append(inputs[p.name])
        elif p.default is not p.empty:
            args.append(p.default)
        else:
            raise GpaError(
                f"example_inputs leaves out {p.name!r}, which {type(model).__name__}.forward "
                "needs before the arguments named: give it too"
            )
    return tuple(args)


def floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating or complex parameter (float32 if it has
    none): a model converted with ``.half()`` takes float16 inputs, one whose first layer
    is complex (``nn.Linear(4, 4, dtype=torch.cfloat)``) complex ones.

    Example:
        >>> floating_dtype(nn.Linear(2, 2).to(torch.bfloat16))
        torch.bfloat16
        >>> floating_dtype(nn.Linear(2, 2, dtype=torch.cfloat))
        torch.complex64
    """
    return next(
        (p.dtype for p in model.parameters() if p.is_floating_point() or p.is_complex()),
        torch.float32,
    )


def zeros(
    *shapes: Sequence[int],
    integer: Collection[int] = (),
    device: str = "meta",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Zeros of each shape on ``device``: int64 at the positions in ``integer``, else ``dtype``."""
    return tuple(
        torch.zeros(tuple(s), dtype=torch.int64 if i in integer else dtype, device=device)
        for i, s in enumerate(shapes)
    )


def integer_variants(
    shapes: Sequence[Sequence[int]], device: str = "meta", dtype: torch.dtype = torch.float32
) -> IntegerVariants:
    """Inputs to try when it is unknown which are indices: all ``dtype``, then each in turn
    int64, then — while the model refuses floats as indices (:meth:`IntegerVariants.failed`
    tells) — all int64 (a transformer's ids, token types and mask), then the other sets of
    two or more (up to :data:`_EVERY_SET_UP_TO` inputs).

    Example:
        >>> def indices(tries, failure):  # which inputs each try makes int64
        ...     for inputs in tries:
        ...         yield [i for i, x in enumerate(inputs) if x.dtype == torch.int64]
        ...         tries.failed(failure)
        >>> list(indices(integer_variants([(1,)] * 3), ValueError("a shape bug")))
        [[], [0], [1], [2]]
        >>> refused = RuntimeError("Expected tensor for argument #1 'indices' to be Long")
        >>> list(indices(integer_variants([(1,)] * 3), refused))
        [[], [0], [1], [2], [0, 1, 2], [0, 1], [0, 2], [1, 2]]
    """
    return IntegerVariants(shapes, device, dtype)


class IntegerVariants:
    """The inputs :func:`integer_variants` gives, one try after another; a model failing
    for another reason than indices given as floats (a shape it refuses) is not run on
    every set of them: past one input at a time, the tries go on only while it does."""

    def __init__(self, shapes: Sequence[Sequence[int]], device: str, dtype: torch.dtype) -> None:
        self.shapes, self.device, self.dtype = shapes, device, dtype
        self._indices = False  # a try failed on floats given as indices

    def failed(self, exc: BaseException) -> None:
        """The model failed on the last inputs given, raising ``exc``."""
        self._indices = self._indices or _indices_refused(exc)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.shapes)
        yield self._made(set())
        for i in range(n):
            yield self._made({i})
        sets = [set(range(n))] if n > 1 else []
        if 2 < n <= _EVERY_SET_UP_TO:
            sets += [set(c) for size in range(2, n) for c in itertools.combinations(range(n), size)]
        for chosen in sets:
            if not self._indices:
                return
            yield self._made(chosen)

    def _made(self, integer: set[int]) -> tuple[torch.Tensor, ...]:
        return zeros(*self.shapes, integer=integer, device=self.device, dtype=self.dtype)


def _indices_refused(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is torch refusing floats as indices: an
    embedding's "Expected tensor for argument #1 'indices' to have one of the following
    scalar types: Long, Int", indexing's "tensors used as indices must be long, int…",
    ``gather``'s "Expected dtype int32/int64 for index", ``one_hot``'s "index tensor of
    type LongTensor"."""
    seen = 0
    while exc is not None and seen < 8:
        text = str(exc).lower()
        if ("index" in text or "indices" in text) and any(w in text for w in _INTEGER_WORDS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


# What torch's refusals of floats as indices name as wanted.
_INTEGER_WORDS = ("long", "int64", "int32", "integer", " int")


#: Inputs given by shape up to which every set of them is tried as indices (2^n tries).
_EVERY_SET_UP_TO = 4


def describe_inputs(inputs: Sequence[object] | None) -> list[dict[str, object]] | None:
    """Shape and dtype of each input tensor, for the report; anything else by a text the
    same in every run and checkout (:func:`describe_value`).

    Example:
        >>> describe_inputs([*zeros((1, 3)), [torch.ones(2)], None])
        [{'shape': [1, 3], 'dtype': 'float32'}, {'value': '[float32[2]]'}, {'value': 'None'}]
    """
    if inputs is None:
        return None
    return [
        {"shape": list(x.shape), "dtype": _dtype(x)}
        if isinstance(x, torch.Tensor)
        else {"value": describe_value(x)}
        for x in inputs
    ]


def describe_value(value: object) -> str:
    """An input that is no tensor, as text the same in every run and checkout: Python
    constants by ``repr``, tensors by dtype and shape (their values, device and gradient
    flag depend on the inputs, not on the model), lists, tuples and dicts item by item, sets
    sorted, anything else by its class (:func:`gpa.names.class_path`: a ``repr`` may hold
    values, addresses or paths).

    Example:
        >>> describe_value({"k": (torch.ones(2), 3, {"b", "a"})})
        "{'k': (float32[2], 3, {'a', 'b'})}"
    """
    if isinstance(value, torch.Tensor):
        return f"{_dtype(value)}[{', '.join(str(d) for d in value.shape)}]"
    if value is None or type(value) in (bool, int, float, str):
        return repr(value)
    if type(value) in (list, tuple):
        items = [describe_value(v) for v in value]
        text = ", ".join(items) + ("," if type(value) is tuple and len(items) == 1 else "")
        return f"[{text}]" if type(value) is list else f"({text})"
    if type(value) is dict:
        pairs = (f"{describe_value(k)}: {describe_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if type(value) in (set, frozenset):
        return "{" + ", ".join(sorted(describe_value(v) for v in value)) + "}"
    return f"<{class_path(type(value))}>"


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def shapes_given(value: Any, label: str) -> list[tuple[int, ...]]:
    """``value``, a shape or a list of shapes a model or a target file declares (``label``
    names it in errors), as a list of shapes.

    Raises:
        TargetError: ``value`` is no shape.

    Example:
        >>> shapes_given((1, 3, 8, 8), "input_shape")
        [(1, 3, 8, 8)]
    """
    try:
        return list(parse_input_shapes(value))
    except GpaError:
        raise TargetError(
            f"{label} must be a tuple of ints like (1, 3, 224, 224), each at least 1, or a "
            f"list of such tuples, got {value!r}"
        ) from None


def inputs_given(value: Any, label: str, model: nn.Module) -> tuple[Any, ...]:
    """``value``, example inputs a model or a target file declares (``label`` names them in
    errors): a tensor, a tuple of them, or a dict of forward's arguments by name (bound to
    forward's positions), as forward's positional arguments.

    Raises:
        TargetError: ``value`` is none of those, or its names do not fit forward.
    """
    if isinstance(value, torch.Tensor):
        return (value,)
    # (a tuple of numbers alone is a shape written where tensors were meant)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    if isinstance(value, Mapping):  # forward's arguments by name
        try:
            return bind_inputs(model, value)
        except GpaError as exc:
            raise TargetError(f"{label}: {exc}") from None
    raise TargetError(
        f"{label} must be a tensor, a tuple of tensors, a dict of forward's arguments by "
        f"name or a callable returning one, got {type(value).__name__}"
    )


class DeclaredInputs(NamedTuple):
    """The inputs a model declares: example inputs or shapes (one of them None; both where
    it declares none), and which declaration gave them, in words (``"its input_shape
    attribute, (1, 3, 8, 8)"``; None where it declares none)."""

    example_inputs: tuple[Any, ...] | None
    shapes: list[tuple[int, ...]] | None
    origin: str | None


def declared_inputs(
    model: nn.Module, where: str = "the model", *, strict: bool = True
) -> DeclaredInputs:
    """The inputs ``model`` declares itself: its ``input_shape`` attribute (a shape or a
    list of shapes: every :mod:`gpa.models` entry's), else PyTorch Lightning's
    ``example_input_array`` (a tensor, a tuple of them, or a dict of forward's arguments by
    name). ``where`` names the model in errors; without ``strict``, a declaration that is
    no inputs (an attribute of that name meaning something else to the model) is passed
    over for the next one. An attribute whose property raises is none.

    Raises:
        TargetError: with ``strict``, ``input_shape`` is no shape.

    Example:
        >>> net = nn.Linear(2, 3)
        >>> net.example_input_array = torch.zeros(1, 2)
        >>> found = declared_inputs(net)
        >>> found.example_inputs[0].shape, found.shapes, found.origin
        (torch.Size([1, 2]), None, 'its example_input_array')
    """
    shape = _attribute(model, "input_shape")
    if shape is not None and not isinstance(shape, nn.Module):
        label = f"the model's input_shape attribute ({where})"
        try:
            shapes = shapes_given(shape, label)
            return DeclaredInputs(None, shapes, f"its input_shape attribute, {shape!r}")
        except TargetError:
            if strict:
                raise
    array = _attribute(model, "example_input_array")  # PyTorch Lightning's convention
    label = f"the model's example_input_array ({where})"
    if isinstance(array, Mapping) and array:
        # Lightning calls forward(**example_input_array): a name forward takes only by
        # keyword is fine there, and this is the last fallback: no inputs, then
        with contextlib.suppress(TargetError):
            return DeclaredInputs(inputs_given(array, label, model), None, _ARRAY)
    elif isinstance(array, torch.Tensor) or (
        isinstance(array, (tuple, list))
        and array
        and all(isinstance(a, torch.Tensor) for a in array)
    ):
        return DeclaredInputs(inputs_given(array, label, model), None, _ARRAY)
    return DeclaredInputs(None, None, None)


_ARRAY = "its example_input_array"


def _attribute(model: nn.Module, name: str) -> Any:
    """``model``'s attribute ``name``, or None (a property may raise: a Lightning module's
    before its ``setup()``)."""
    try:
        return getattr(model, name, None)
    except Exception:
        return None
