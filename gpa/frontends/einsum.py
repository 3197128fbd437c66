"""The contractions torch makes of an ``einsum``, read off its equation: pure functions
over the equation and the call's arguments, shared by every frontend.

torch contracts the operands of ``torch.einsum(equation, a, b, c, ...)`` two at a time,
left to right (unless ``opt_einsum`` is installed and enabled: then in the order it
chooses, which depends on the sizes), and autograd records each contraction. Where two
operands are weights (a low-rank ``einsum("bi,ir,ro->bo", h, A, B)``) or one is a second
input, which operand meets which decides the layers and their paths (``docs/semantics.md``
§2): ``h`` meets ``A`` first — a call of ``A`` —, the result meets ``B`` — a call of ``B``.
An ``einsum`` of two operands that sums no subscript both carry is a product, no layer.

Example:
    >>> split_einsum(("bi,ir,ro->bo", "h", "A", "B"))
    [('bi,ir->br', 1), ('br,ro->bo', 2)]
    >>> sums_across("bi,i->bi")
    False
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["einsum_call", "einsum_operands", "pairwise_equations", "split_einsum", "sums_across"]

_ELLIPSIS = "\u2026"  # the ellipsis as one character (subscripts are letters)


def pairwise_equations(equation: str, count: int) -> list[str] | None:
    """The equations of the contractions torch makes, left to right, of an ``einsum`` of
    ``count`` operands: each of two operands, the last giving the equation's output; None
    where the equation does not name ``count`` operands.

    Each intermediate keeps the subscripts (and the ellipsis) a later operand or the output
    reads, in the order they first appear; an implicit output (no ``->``) is the ellipsis,
    then the subscripts met once in alphabetical order, as torch reads it.

    Example:
        >>> pairwise_equations("ri,or,bi", 3)
        ['ri,or->io', 'io,bi->bo']
        >>> pairwise_equations("...i,ir,ro->...o", 3)
        ['...i,ir->...r', '...r,ro->...o']
    """
    inputs, output = _terms(equation)
    if len(inputs) != count or count < 2:
        return None
    steps, held = [], inputs[0]
    for i, term in enumerate(inputs[1:], start=1):
        later = set("".join(inputs[i + 1 :])) | set(output)
        kept = "".join(c for c in dict.fromkeys(held + term) if c in later)
        made = output if i == count - 1 else kept
        steps.append(f"{held},{term}->{made}".replace(_ELLIPSIS, "..."))
        held = made
    return steps


def sums_across(equation: str) -> bool:
    """Whether an ``einsum`` of two operands sums a subscript both carry (the ellipsis
    too: ``"...i,...j->ij"`` sums the dimensions it stands for) — a contraction, which
    torch computes as a matrix product. An elementwise or outer product (``"bi,j"``: an
    implicit output keeps every subscript met once), or a sum within one operand, mixes
    nothing: torch multiplies (§2: a weight times data is no layer). An equation of other
    operand counts is taken to.

    Example:
        >>> sums_across("bi,ir->br"), sums_across("bi,i->bi"), sums_across("bi,jj->bi")
        (True, False, False)
        >>> sums_across("...i,...j->ij"), sums_across("bi,j")
        (True, False)
    """
    inputs, output = _terms(equation)
    if len(inputs) != 2:
        return True
    return bool((set(inputs[0]) & set(inputs[1])) - set(output))


def split_einsum(args: tuple) -> list[tuple[str, int]] | None:
    """For an ``einsum`` call's arguments (:func:`einsum_call`), the contractions torch
    makes of three or more operands: each step's equation with the position of the operand
    it brings in (among :func:`einsum_operands`); None for fewer operands, an equation not
    naming them, or where ``opt_einsum`` decides the order.

    Example:
        >>> split_einsum(("bi,ir,ro->bo", "h", "A", "B"))
        [('bi,ir->br', 1), ('br,ro->bo', 2)]
    """
    if torch.backends.opt_einsum.enabled and torch.backends.opt_einsum.is_available():
        return None
    call = einsum_call(args)
    if call is None:
        return None
    steps = pairwise_equations(*call)
    if steps is None or len(steps) < 2:
        return None
    return [(step, i) for i, step in enumerate(steps, start=1)]


def einsum_call(args: tuple) -> tuple[str, int] | None:
    """The equation of an ``einsum`` call's arguments, and how many operands it has: the
    equation then the operands one by one or in a list (``torch.einsum(eq, [a, b])``,
    ATen's ``einsum(eq, tensors)``), or the operands each followed by its subscripts as a
    list of numbers, the output's last (``torch.einsum(h, [0, 1], w, [1, 2], [0, 2])``);
    None for other arguments.

    Example:
        >>> h, w = object(), object()  # (tensors, or an fx graph's nodes)
        >>> einsum_call((h, [0, 1], w, [1, 2], [0, 2]))
        ('AB,BC->AC', 2)
    """
    if args and isinstance(args[0], str):
        return args[0], len(einsum_operands(args))
    pairs = len(args) // 2
    terms = [_sublist(s) for s in args[1 : 2 * pairs : 2]]
    output = _sublist(args[-1]) if len(args) % 2 else ""
    if not terms or None in terms or output is None:
        return None
    return ",".join(terms) + (f"->{output}" if len(args) % 2 else ""), pairs


def einsum_operands(args: tuple) -> list[Any]:
    """The operands of an ``einsum`` call's arguments (:func:`einsum_call`'s forms)."""
    if args and not isinstance(args[0], str):  # (the sublist form)
        return list(args[0 : len(args) // 2 * 2 : 2])
    rest = list(args[1:])
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    return rest


def _sublist(subscripts: Any) -> str | None:
    """A sublist's subscripts as letters (torch's: 0-25 are A-Z, 26-51 a-z), or None."""
    if not isinstance(subscripts, (list, tuple)):
        return None
    letters = []
    for n in subscripts:
        if n is Ellipsis:
            letters.append("...")
        elif isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 52:
            letters.append(chr(ord("A") + n) if n < 26 else chr(ord("a") + n - 26))
        else:
            return None
    return "".join(letters)


def _terms(equation: str) -> tuple[list[str], str]:
    """An equation's input terms and its output, the ellipsis one character; an implicit
    output (no ``->``) is the ellipsis, then the subscripts met once in alphabetical
    order, as torch reads it."""
    inputs, arrow, output = equation.replace(" ", "").replace("...", _ELLIPSIS).partition("->")
    terms = inputs.split(",")
    if not arrow:
        every = "".join(terms)
        once = sorted(c for c in set(every) if every.count(c) == 1 and c != _ELLIPSIS)
        output = (_ELLIPSIS if _ELLIPSIS in every else "") + "".join(once)
    return terms, output
