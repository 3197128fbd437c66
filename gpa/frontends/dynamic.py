"""Dynamic convolutions: which convolutions whose kernel is mixed from data are layers.

CondConv and dynamic convolution compute a convolution's kernel (and bias) by functional
layers, ``routing(x) @ experts``, from the input (``docs/semantics.md`` §2). The
convolution is then the layer and those *makers* are not — provided each maker's result
serves kernels and biases alone. A maker whose result is also data (read by another layer,
returned) stays a layer, and so do the convolutions it makes a kernel for, with their
other makers: the rule applies to whole groups of convolutions and makers, or not at all.
Both graph frontends (fx/export and autograd) find the candidates and call
:func:`dynamic_layers`.

Example:
    >>> dynamic_layers({"conv_a": ["mix"], "conv_b": ["mix", "gate"]}, impure={"gate"})
    ({}, set())
    >>> dynamic_layers({"conv_a": ["mix"], "conv_b": ["other"]}, impure={"other"})
    ({'conv_a': ['mix']}, {'mix'})
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

__all__ = ["dynamic_layers"]

C = TypeVar("C", bound=Hashable)
M = TypeVar("M", bound=Hashable)


def dynamic_layers(
    makers: Mapping[C, Sequence[M]], impure: Iterable[M]
) -> tuple[dict[C, list[M]], set[M]]:
    """The convolutions that become layers (each with its makers, in the order given) and
    the makers that stop being layers.

    Args:
        makers: candidate convolution -> the functional layers making its kernel and bias
            (non-empty lists).
        impure: makers whose result is also used otherwise than as a kernel or bias.
    """
    blocked = set(impure)
    refused: set[C] = set()
    changed = True
    while changed:  # a refused convolution keeps every one of its makers a layer
        changed = False
        for conv, made_by in makers.items():
            if conv not in refused and any(m in blocked for m in made_by):
                refused.add(conv)
                fresh = set(made_by) - blocked
                blocked |= fresh
                changed = changed or bool(fresh)
    chosen = {c: list(m) for c, m in makers.items() if c not in refused}
    return chosen, {m for made_by in chosen.values() for m in made_by}
