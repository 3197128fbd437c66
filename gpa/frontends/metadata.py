"""Operands an operation reads only the dtype, device or shape of.

``w.type_as(x)``, ``w.expand_as(x)``, ``w.to(x)``, ``torch.ones_like(x)``,
``x.new_zeros(n)``: the result's values do not depend on ``x``'s, so ``x`` being data does
not make the result data (``docs/semantics.md`` §2: a weight cast to the input's dtype is
still a weight). Shared by the frontends that decide what is computed from parameters
alone (fx and export's graphs, the autograd frontend's run); the names are those of
torch's functions, methods and ATen operators (``ones_like.default``: ``ones_like``).

Example:
    >>> reads_metadata_only("type_as", 1), reads_metadata_only("type_as", 0)
    (True, False)
    >>> reads_metadata_only("ones_like", 0), reads_metadata_only("mul", 1)
    (True, False)
"""

from __future__ import annotations

__all__ = ["reads_metadata_only"]

#: Operations whose second tensor operand gives only its dtype, device or shape.
_SECOND = frozenset({"type_as", "expand_as", "view_as", "reshape_as", "to"})


def reads_metadata_only(name: str, position: int) -> bool:
    """Whether operation ``name`` reads only the dtype, device or shape of its tensor
    operand at ``position`` (0-based, in the order of its arguments)."""
    name = name.split(".")[0]
    if name.endswith("_like") or name.startswith("new_"):
        return position == 0
    return position == 1 and name in _SECOND
