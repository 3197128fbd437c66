"""An ``einsum`` of three or more operands, read as the contractions torch makes of it.

torch contracts the operands of ``torch.einsum(equation, a, b, c, ...)`` two at a time,
left to right (unless ``opt_einsum`` is installed and enabled: then in the order it
chooses, which depends on the sizes), and autograd records each contraction. Where two
operands are weights (a low-rank ``einsum("bi,ir,ro->bo", h, A, B)``) or one is a second
input, which operand meets which decides the layers and their paths (§2): ``h`` meets
``A`` first — a call of ``A`` —, the result meets ``B`` — a call of ``B`` —, as the
autograd frontend reads the run. :func:`pairwise_contractions` rewrites such calls in an
fx graph (fx's and export's) into those contractions, each an ``einsum`` of two operands,
so every frontend reads the same calls; :func:`split_einsum` says what they are, for a
tracer recording them as it goes (the trace into a function fx kept whole).

Example:
    >>> import torch, torch.fx as fx
    >>> g = fx.Graph()
    >>> h, a, b = g.placeholder("h"), g.placeholder("a"), g.placeholder("b")
    >>> _ = g.output(g.call_function(torch.einsum, ("bi,ir,ro->bo", h, a, b)))
    >>> pairwise_contractions(g)
    1
    >>> [n.args[0] for n in g.nodes if n.op == "call_function"]
    ['bi,ir->br', 'br,ro->bo']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

__all__ = [
    "EINSUM",
    "contraction_arguments",
    "einsum_operands",
    "pairwise_contractions",
    "pairwise_equations",
    "split_einsum",
    "sums_across",
]

_ATEN = frozenset({torch.ops.aten.einsum, torch.ops.aten.einsum.default})
#: What an fx graph calls an ``einsum`` by (ATen's too: in model code, or export's).
EINSUM = frozenset({torch.einsum, torch.functional.einsum}) | _ATEN

# ``node.meta`` keys holding a node's value (export's fake tensors, fx's shape pass).
_VALUES = frozenset({"val", "tensor_meta", "example_value"})
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
    inputs, arrow, output = _terms(equation)
    if len(inputs) != count or count < 2:
        return None
    if not arrow:
        every = "".join(inputs)
        once = sorted(c for c in set(every) if every.count(c) == 1 and c != _ELLIPSIS)
        output = (_ELLIPSIS if _ELLIPSIS in every else "") + "".join(once)
    steps, held = [], inputs[0]
    for i, term in enumerate(inputs[1:], start=1):
        later = set("".join(inputs[i + 1 :])) | set(output)
        kept = "".join(c for c in dict.fromkeys(held + term) if c in later)
        made = output if i == count - 1 else kept
        steps.append(f"{held},{term}->{made}".replace(_ELLIPSIS, "..."))
        held = made
    return steps


def sums_across(equation: str) -> bool:
    """Whether an ``einsum`` of two operands sums a subscript both carry — a contraction,
    which torch computes as a matrix product. An elementwise or outer product, or a sum
    within one operand, mixes nothing: torch multiplies (§2: a weight times data is no
    layer). An equation of other operand counts is taken to.

    Example:
        >>> sums_across("bi,ir->br"), sums_across("bi,i->bi"), sums_across("bi,jj->bi")
        (True, False, False)
    """
    inputs, arrow, output = _terms(equation)
    if len(inputs) != 2 or not arrow:
        return True
    shared = (set(inputs[0]) & set(inputs[1])) - {_ELLIPSIS}
    return bool(shared - set(output))


def split_einsum(args: tuple) -> list[tuple[str, int]] | None:
    """For an ``einsum`` call's arguments (the equation, then its operands one by one or
    in a list), the contractions torch makes of three or more operands: each step's
    equation with the position of the operand it brings in; None for fewer operands, an
    equation not naming them, or where ``opt_einsum`` decides the order.

    Example:
        >>> split_einsum(("bi,ir,ro->bo", "h", "A", "B"))
        [('bi,ir->br', 1), ('br,ro->bo', 2)]
    """
    if torch.backends.opt_einsum.enabled and torch.backends.opt_einsum.is_available():
        return None
    if not args or not isinstance(args[0], str):
        return None
    steps = pairwise_equations(args[0], len(einsum_operands(args)))
    if steps is None or len(steps) < 2:
        return None
    return [(step, i) for i, step in enumerate(steps, start=1)]


def pairwise_contractions(graph: fx.Graph) -> int:
    """Rewrite each ``einsum`` call of three or more operands in ``graph`` into the
    contractions torch makes of it, left to right (see the module's docstring); returns how
    many calls were rewritten. Where ``opt_einsum`` decides the order (from sizes not
    known yet), every call stays whole."""
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in EINSUM or node.kwargs:
            continue
        steps = split_einsum(node.args)
        if steps is None:
            continue
        operands = einsum_operands(node.args)
        with graph.inserting_before(node):
            held = operands[0]
            for step, i in steps:
                held = _contraction(graph, node, step, held, operands[i])
                # where the call was made; the values recorded are the whole call's
                held.meta = {k: v for k, v in node.meta.items() if k not in _VALUES}
        held.meta = dict(node.meta)
        node.replace_all_uses_with(held)
        graph.erase_node(node)
        rewritten += 1
    return rewritten


def _terms(equation: str) -> tuple[list[str], str, str]:
    """An equation's input terms, its arrow (empty when implicit) and its output, the
    ellipsis one character."""
    inputs, arrow, output = equation.replace(" ", "").replace("...", _ELLIPSIS).partition("->")
    return inputs.split(","), arrow, output


def einsum_operands(args: tuple) -> list[Any]:
    """The operands of an ``einsum`` call's arguments (given one by one, or as a list:
    ``torch.einsum(eq, [a, b])`` and ATen's ``einsum(eq, tensors)``)."""
    rest = list(args[1:])
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    return rest


def contraction_arguments(target: Any, equation: str, a: Any, b: Any) -> tuple:
    """The arguments of an ``einsum`` of two operands called as ``target`` is (ATen's takes
    them in a list)."""
    return (equation, [a, b]) if target in _ATEN else (equation, a, b)


def _contraction(graph: fx.Graph, node: fx.Node, equation: str, a: Any, b: Any) -> fx.Node:
    """An ``einsum`` of two operands, called as ``node`` calls its function."""
    return graph.call_function(node.target, contraction_arguments(node.target, equation, a, b))
