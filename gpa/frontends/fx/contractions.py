"""An ``einsum`` of three or more operands, read as the contractions torch makes of it.

torch contracts the operands of ``torch.einsum(equation, a, b, c, ...)`` two at a time,
left to right (unless ``opt_einsum`` is installed and enabled: then in the order it
chooses, which depends on the sizes), and autograd records each contraction. Where two
operands are weights (a low-rank ``einsum("bi,ir,ro->bo", h, A, B)``) or one is a second
input, which operand meets which decides the layers and their paths (§2): ``h`` meets
``A`` first — a call of ``A`` —, the result meets ``B`` — a call of ``B`` —, as the
autograd frontend reads the run. :func:`pairwise_contractions` rewrites such calls in an
fx graph (fx's and export's) into those contractions, each an ``einsum`` of two operands,
so every frontend reads the same calls (:mod:`gpa.frontends.einsum` says what they are).

Example:
    >>> import torch, torch.fx as fx
    >>> g = fx.Graph()
    >>> h, a, b = g.placeholder("h"), g.placeholder("a"), g.placeholder("b")
    >>> _ = g.output(g.call_function(torch.einsum, ("bi,ir,ro->bo", h, a, b)))
    >>> len(pairwise_contractions(g))
    1
    >>> [n.args[0] for n in g.nodes if n.op == "call_function"]
    ['bi,ir->br', 'br,ro->bo']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from gpa.frontends.einsum import einsum_operands, split_einsum

__all__ = ["EINSUM", "contraction_arguments", "pairwise_contractions"]

_ATEN = frozenset({torch.ops.aten.einsum, torch.ops.aten.einsum.default})
#: What an fx graph calls an ``einsum`` by (ATen's too: in model code, or export's).
EINSUM = frozenset({torch.einsum, torch.functional.einsum}) | _ATEN

# ``node.meta`` keys holding a node's value (export's fake tensors, fx's shape pass).
_VALUES = frozenset({"val", "tensor_meta", "example_value"})


def pairwise_contractions(graph: fx.Graph) -> dict[fx.Node, fx.Node]:
    """Rewrite each ``einsum`` call of three or more operands in ``graph`` into the
    contractions torch makes of it, left to right (see the module's docstring); returns
    each call rewritten (erased from ``graph``) with the node now giving its result. Where
    ``opt_einsum`` decides the order (from sizes not known yet), every call stays whole."""
    rewritten: dict[fx.Node, fx.Node] = {}
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
        rewritten[node] = held
    return rewritten


def contraction_arguments(target: Any, equation: str, a: Any, b: Any) -> tuple:
    """The arguments of an ``einsum`` of two operands called as ``target`` is (ATen's takes
    them in a list)."""
    return (equation, [a, b]) if target in _ATEN else (equation, a, b)


def _contraction(graph: fx.Graph, node: fx.Node, equation: str, a: Any, b: Any) -> fx.Node:
    """An ``einsum`` of two operands, called as ``node`` calls its function."""
    return graph.call_function(node.target, contraction_arguments(node.target, equation, a, b))
