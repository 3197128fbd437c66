"""An ``einsum`` of three or more operands, read as the contractions torch makes of it.

torch contracts the operands of ``torch.einsum(equation, a, b, c, ...)`` two at a time,
left to right (unless ``opt_einsum`` is installed and enabled: then in the order it
chooses, which depends on the sizes), and autograd records each contraction. Where two
operands are weights (a low-rank ``einsum("bi,ir,ro->bo", h, A, B)``) or one is a second
input, which operand meets which decides the layers and their paths (§2): ``h`` meets
``A`` first — a call of ``A`` —, the result meets ``B`` — a call of ``B`` —, as the
autograd frontend reads the run. :func:`pairwise_contractions` rewrites such calls in an
fx graph (fx's and export's) into those contractions, each an ``einsum`` of two operands,
so every frontend reads the same calls.

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

__all__ = ["pairwise_contractions", "pairwise_equations"]

# ``node.meta`` keys holding a node's value (export's fake tensors, fx's shape pass).
_VALUES = frozenset({"val", "tensor_meta", "example_value"})

_EINSUM = frozenset({torch.einsum, torch.functional.einsum, torch.ops.aten.einsum.default})


def pairwise_equations(equation: str, count: int) -> list[str] | None:
    """The equations of the contractions torch makes, left to right, of an ``einsum`` of
    ``count`` operands: each of two operands, the last giving the equation's output; None
    where the equation holds an ellipsis or does not name ``count`` operands.

    Each intermediate keeps the subscripts a later operand or the output reads, in the
    order they first appear; an implicit output (no ``->``) is the subscripts met once, in
    alphabetical order, as torch reads it.

    Example:
        >>> pairwise_equations("ri,or,bi", 3)
        ['ri,or->io', 'io,bi->bo']
    """
    equation = equation.replace(" ", "")
    if "..." in equation:
        return None
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != count or count < 2:
        return None
    if not arrow:
        every = "".join(terms)
        output = "".join(sorted(c for c in set(every) if every.count(c) == 1))
    steps, held = [], terms[0]
    for i, term in enumerate(terms[1:], start=1):
        later = set("".join(terms[i + 1 :])) | set(output)
        made = (
            output
            if i == count - 1
            else "".join(c for c in dict.fromkeys(held + term) if c in later)
        )
        steps.append(f"{held},{term}->{made}")
        held = made
    return steps


def pairwise_contractions(graph: fx.Graph) -> int:
    """Rewrite each ``einsum`` call of three or more operands in ``graph`` into the
    contractions torch makes of it, left to right (see the module's docstring); returns how
    many calls were rewritten. Where ``opt_einsum`` decides the order (from sizes not
    known yet), every call stays whole."""
    if torch.backends.opt_einsum.enabled and torch.backends.opt_einsum.is_available():
        return 0
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _EINSUM or node.kwargs:
            continue
        equation, operands = _einsum_arguments(node)
        steps = pairwise_equations(equation, len(operands)) if equation else None
        if steps is None or len(steps) < 2:
            continue
        with graph.inserting_before(node):
            held = operands[0]
            for step, operand in zip(steps, operands[1:], strict=True):
                held = _contraction(graph, node, step, held, operand)
                # where the call was made; the values recorded are the whole call's
                held.meta = {k: v for k, v in node.meta.items() if k not in _VALUES}
        held.meta = dict(node.meta)
        node.replace_all_uses_with(held)
        graph.erase_node(node)
        rewritten += 1
    return rewritten


def _einsum_arguments(node: fx.Node) -> tuple[str | None, list[Any]]:
    """The equation and operands of an ``einsum`` call (operands given one by one, or as
    a list: ``torch.einsum(eq, [a, b])`` and ATen's ``einsum(eq, tensors)``)."""
    if not node.args or not isinstance(node.args[0], str):
        return None, []
    rest = list(node.args[1:])
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    return node.args[0], rest


def _contraction(graph: fx.Graph, node: fx.Node, equation: str, a: Any, b: Any) -> fx.Node:
    """An ``einsum`` of two operands, called as ``node`` calls its function."""
    if node.target is torch.ops.aten.einsum.default:
        return graph.call_function(node.target, (equation, [a, b]))
    return graph.call_function(node.target, (equation, a, b))
