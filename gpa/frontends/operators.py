"""Custom operators: calls of operators registered from outside torch, which no frontend
sees into.

An operator registered with ``torch.library`` (or a C++ extension: ``torchvision``'s
``deform_conv2d``) is one call in every frontend's graph, its gradient its registered
backward's. gpa cannot tell whether it mixes features, so one given weights beside data is
no layer, and each frontend says so in a note (``docs/semantics.md`` §2): if it mixes
features, each path through a call of it is one layer short and its weights are in no
record. One registered as a stand-in for a torch operator (:data:`STANDING_FOR`) is read
as that operator.

Example:
    >>> import torch
    >>> custom_operator(torch.ops.aten.mm.default) is None
    True
    >>> print(custom_operator_note("demo::mix", ["experts"]))  # doctest: +NORMALIZE_WHITESPACE
    'demo::mix' is a custom operator, which gpa cannot look into; it reads weights of
    experts beside data: they are in no layer here (if it mixes features, each path
    through a call of it is one layer short)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from gpa.frontends.einsum import einsum_call, sums_across

__all__ = [
    "MIXING_FUNCTION_NAMES",
    "STANDING_FOR",
    "StandIn",
    "backward_kind",
    "custom_operator",
    "custom_operator_label",
    "custom_operator_note",
    "function_name",
    "mixed_arguments",
    "mixes_nothing",
    "torch_operator",
]

# torch's own operator namespaces: what the frontends read like any torch function
_TORCH_NAMESPACES = frozenset({"aten", "prims", "prim", "profiler", "debugprims", "rngprims"})


class StandIn(NamedTuple):
    """The torch operator a custom operator stands for: its ATen name, and the kind of the
    autograd node it makes (``type(grad_fn).__name__`` without the version digit)."""

    aten: str
    backward: str


#: Custom operators registered as a stand-in for one of torch's own, by qualified name:
#: the same arguments and result, registered only so that torch.compile and torch.export
#: do not trace into a Python loop. Every frontend reads them as the operator they stand
#: for. ``transformers::grouped_mm_fallback(input, weight, offs)`` is
#: ``aten._grouped_mm``: Hugging Face's mixture-of-experts banks call it in its place
#: under torch.export when their weights are not bfloat16 (and on CPUs where torch's
#: kernel is missing or its inputs unaligned).
STANDING_FOR: dict[str, StandIn] = {
    "transformers::grouped_mm_fallback": StandIn("_grouped_mm", "GroupedMmBackward"),
}
# the autograd node kind torch generates for a custom operator's registered backward
_GENERATED = {
    "GeneratedBackwardFor_{}_{}_defaultBackward".format(*q.split("::")): s.backward
    for q, s in STANDING_FOR.items()
}


def _qualified(target: Any) -> str | None:
    """``namespace::name`` of an operator (overload or packet), else None."""
    if isinstance(target, torch._ops.OpOverload):
        return target.name().partition(".")[0]
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    return None


def custom_operator(target: Any) -> str | None:
    """The qualified name (``namespace::name``) of the operator ``target`` when it is
    registered from outside torch and stands for none of torch's own
    (:data:`STANDING_FOR`), else None."""
    qualified = _qualified(target)
    if qualified is None or qualified in STANDING_FOR:
        return None
    return None if qualified.partition("::")[0] in _TORCH_NAMESPACES else qualified


def torch_operator(target: Any) -> Any:
    """The ATen operator (default overload, as in the export frontend's graph) that the
    custom operator ``target`` (overload or packet) of :data:`STANDING_FOR` stands for;
    any other ``target`` as it is.

    Example:
        >>> torch_operator(torch.relu) is torch.relu
        True
    """
    stand_in = STANDING_FOR.get(_qualified(target) or "")
    return target if stand_in is None else getattr(torch.ops.aten, stand_in.aten).default


#: The names (:func:`function_name`) of torch's feature-mixing functions and tensor methods,
#: as a ``TorchFunctionMode`` sees them called: a call of one given a weight is a layer
#: call (``docs/semantics.md`` §2).
MIXING_FUNCTION_NAMES = frozenset(
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear bilinear "
    "embedding embedding_bag matmul __matmul__ __rmatmul__ mm bmm mv dot addmm addbmm baddbmm "
    "addmv einsum tensordot inner vdot linalg_matmul linalg_multi_dot chain_matmul "
    "_grouped_mm grouped_mm".split()
)


# The argument a feature-mixing function adds to its product, by position and keyword
# (``docs/semantics.md`` §2: a bias alone makes no layer).
_ADDED = {
    **dict.fromkeys(["linear", "conv1d", "conv2d", "conv3d"], (2, "bias")),
    **dict.fromkeys(["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"], (2, "bias")),
    "bilinear": (3, "bias"),
    **dict.fromkeys(["addmm", "addbmm", "baddbmm", "addmv"], (0, "input")),
}


def mixed_arguments(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    """The arguments a call of the feature-mixing function ``name`` (a method's with its
    tensor first) mixes: all but the one it only adds to its product (``F.linear``'s and a
    convolution's ``bias``, ``addmm``'s ``input``), a bias alone making no layer (§2).
    An argument both added and mixed (``addmm(h, h, w)``) is mixed.

    Example:
        >>> mixed_arguments("addmm", ("b", "h", "w"), {}), mixed_arguments("linear", ("h", "w"), {"bias": "b"})
        (['h', 'w'], ['h', 'w'])
    """
    skipped = _ADDED.get(name)
    if skipped is None:
        return [*args, *kwargs.values()]
    position, keyword = skipped
    return [
        *(a for i, a in enumerate(args) if i != position),
        *(a for k, a in kwargs.items() if k != keyword),
    ]


def added_argument(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """The argument a call of the feature-mixing function ``name`` only adds to its
    product (:func:`mixed_arguments`), or None.

    Example:
        >>> added_argument("addmm", ("b", "h", "w"), {}), added_argument("mm", ("h", "w"), {})
        ('b', None)
    """
    skipped = _ADDED.get(name)
    if skipped is None:
        return None
    position, keyword = skipped
    return args[position] if position < len(args) else kwargs.get(keyword)


def mixes_nothing(name: str, args: tuple, scalar_operand: bool = False) -> bool:
    """Whether a call of the feature-mixing function ``name`` (:data:`MIXING_FUNCTION_NAMES`)
    given ``args`` multiplies without summing across its operands, which mixes nothing
    (a layer scale: no layer, ``docs/semantics.md`` §2), as autograd records it (a mul):
    an ``einsum`` of two operands summing no subscript they share (``"bi,i->bi"``, an outer
    product, a sum within one), or ``inner`` of a 0-d operand (``scalar_operand``; torch
    documents it as ``mul``).

    Example:
        >>> mixes_nothing("einsum", ("bi,i->bi", "h", "w")), mixes_nothing("einsum", ("bi,i->b", "h", "w"))
        (True, False)
    """
    if name == "einsum" and (call := einsum_call(args)) is not None:
        return call[1] == 2 and not sums_across(call[0])
    return name == "inner" and scalar_operand


def function_name(func: Any) -> str:
    """``func``'s name (a ``TorchFunctionMode``'s ``func``: ``torch.nn.functional.linear``,
    ``torch.Tensor.__matmul__``); a custom operator standing for one of torch's own
    (:data:`STANDING_FOR`) by that one's.

    Example:
        >>> function_name(torch.Tensor.__matmul__) in MIXING_FUNCTION_NAMES
        True
    """
    stands_for = torch_operator(func)
    if stands_for is not func:
        return stands_for.overloadpacket.__name__
    return getattr(func, "__name__", "")


def backward_kind(kind: str) -> str:
    """The kind of autograd node (``type(grad_fn).__name__`` without its version digit)
    as the torch operation a custom operator of :data:`STANDING_FOR` stands for makes it;
    any other ``kind`` as it is.

    Example:
        >>> backward_kind("GeneratedBackwardFor_transformers_grouped_mm_fallback_defaultBackward")
        'GroupedMmBackward'
    """
    return _GENERATED.get(kind, kind)


def custom_operator_note(name: str, owners: Iterable[str]) -> str:
    """The note for a custom operator ``name`` given weights of the modules ``owners``."""
    return (
        f"'{name}' is a custom operator, which gpa cannot look into; it reads weights of "
        f"{', '.join(owners)} beside data: they are in no layer here (if it mixes "
        "features, each path through a call of it is one layer short)"
    )


def custom_operator_label(name: str) -> str:
    """How ``tracer auto`` names a custom operator given weights that it moved on from."""
    return f"{name} (a custom operator given weights)"
