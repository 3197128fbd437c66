"""Custom operators: calls of operators registered from outside torch, which no frontend
sees into.

An operator registered with ``torch.library`` (or a C++ extension: ``torchvision``'s
``deform_conv2d``, Hugging Face's ``transformers::grouped_mm_fallback``) is one call in
every frontend's graph, its gradient its registered backward's. gpa cannot tell whether it
mixes features, so one given weights beside data is no layer, and each frontend says so in
a note (``docs/semantics.md`` §2): if it mixes features, the paths through it are one layer
short and its weights are in no record.

Example:
    >>> import torch
    >>> custom_operator(torch.ops.aten.mm.default) is None
    True
    >>> print(custom_operator_note("demo::mix", ["experts"]))  # doctest: +NORMALIZE_WHITESPACE
    'demo::mix' is a custom operator, which gpa cannot look into; it reads weights of
    experts beside data: they are in no layer here (if it mixes features, the paths
    through it are one layer short)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["custom_operator", "custom_operator_label", "custom_operator_note"]

# torch's own operator namespaces: what the frontends read like any torch function
_TORCH_NAMESPACES = frozenset({"aten", "prims", "prim", "profiler", "debugprims", "rngprims"})


def custom_operator(target: Any) -> str | None:
    """The qualified name (``namespace::name``) of the operator ``target`` when it is
    registered from outside torch, else None."""
    if isinstance(target, torch._ops.OpOverload):
        qualified = target.name()
    elif isinstance(target, torch._ops.OpOverloadPacket):
        qualified = target._qualified_op_name
    else:
        return None
    return None if qualified.partition("::")[0] in _TORCH_NAMESPACES else qualified


def custom_operator_note(name: str, owners: Iterable[str]) -> str:
    """The note for a custom operator ``name`` given weights of the modules ``owners``."""
    return (
        f"'{name}' is a custom operator, which gpa cannot look into; it reads weights of "
        f"{', '.join(owners)} beside data: they are in no layer here (if it mixes "
        "features, the paths through it are one layer short)"
    )


def custom_operator_label(name: str) -> str:
    """How ``tracer auto`` names a custom operator given weights that it moved on from."""
    return f"{name} (a custom operator given weights)"
