"""One tensor picked from a stack is the tensor stacked there.

Detection transformers stack one head's output per decoder level and return the last,
``torch.stack(levels)[-1]``; the heads of the other levels then receive no gradient (a
real backward gives them zeros), though the stack reads every one. A pass over a traced
graph puts each stacked tensor in place of the element picked from the stack along the
stacked axis by a constant index (``stack[-1]``, ``stack[:, i]``, ``stack[..., i]``,
``stack.select(d, i)``, ATen's ``select.int``), so the gradient flow of the layer level
follows only it (``docs/semantics.md`` §3). The autograd frontend reads autograd's graph
the same way.

Example:
    >>> import torch
    >>> from gpa.frontends.fx.tracer import trace
    >>> class Last(torch.nn.Module):
    ...     def forward(self, a, b):
    ...         return torch.stack([a.relu(), b.relu()])[-1]
    >>> from gpa.frontends.fx.flow import GradientFlow
    >>> gm = trace(Last())
    >>> GradientFlow(gm).run(torch.zeros(2), torch.zeros(2))
    >>> picks_from_stacks(gm), gm.graph.output_node().args
    (1, (relu_1,))
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
from typing import Any

import torch
import torch.fx as fx

from gpa.frontends.fx.flow import FLOW

__all__ = ["picks_from_stacks"]

_STACKS = {torch.stack, torch.ops.aten.stack.default}
_SELECTS = {torch.select, torch.ops.aten.select.int}
_SELECT = inspect.signature(lambda input, dim, index: None)


def picks_from_stacks(gm: fx.GraphModule) -> int:
    """Replace every element picked from a stack along its stacked axis by the tensor
    stacked there (indexed further if the pick goes on: ``stack[-1, :, 0]``); return how
    many were replaced. Stacks left without readers stay (they send gradient nowhere)."""
    replaced = 0
    for node in list(gm.graph.nodes):
        while (picked := _pick(node)) is not None:
            stack, dim, index, rest = picked
            operand = _stacked(stack, dim, index)
            if operand is None:
                break
            replaced += 1
            if any(r is not Ellipsis and r != slice(None) for r in rest):  # picks on: indexed
                node.args = (operand, rest)
                _flows_from(node, {stack: operand})
                continue  # (the operand may be a stack, picked from in turn: ``S[1, :, 0]``)
            for user in node.users:  # the flow pass's edges: to the operand, if it carries any
                _flows_from(user, {node: operand})
            node.replace_all_uses_with(operand)
            gm.graph.erase_node(node)
            break
    return replaced


def _flows_from(node: fx.Node, replaced: dict[fx.Node, fx.Node]) -> None:
    """Point ``node``'s gradient edges (the flow pass's) at the replacements, those that
    carry gradient."""
    flow = node.meta.get(FLOW)
    if flow is None or not replaced.keys() & flow.grad_from:
        return
    kept = flow.grad_from - replaced.keys()
    new = {r for old, r in replaced.items() if old in flow.grad_from and _carries_gradient(r)}
    node.meta[FLOW] = dataclasses.replace(flow, grad_from=frozenset(kept | new))


def _carries_gradient(node: fx.Node) -> bool:
    flow = node.meta.get(FLOW)
    return flow is not None and flow.value is not None and flow.value.requires_grad


def _pick(node: fx.Node) -> tuple[fx.Node, int, int, tuple] | None:
    """(stack node, axis, index, the rest of the index) when ``node`` picks one element of
    a stack's result along an axis by a constant index, else None."""
    rest: tuple = ()
    if node.op == "call_function" and node.target is operator.getitem:
        source, index = node.args
        if isinstance(index, tuple):
            dim, index, rest = _leading_pick(index, _rank(source))
        else:
            dim = 0
    elif (node.op == "call_function" and node.target in _SELECTS) or (
        node.op == "call_method" and node.target == "select"
    ):
        try:
            source, dim, index = _SELECT.bind(*node.args, **node.kwargs).args
        except TypeError:
            return None
    else:
        return None
    if not (isinstance(source, fx.Node) and _is_stack(source)):
        return None
    if type(index) is not int or type(dim) is not int:
        return None
    return source, dim, index, rest


def _leading_pick(items: tuple, rank: int | None) -> tuple[int, Any, tuple]:
    """(axis, index, the other items) of the first integer in a subscript ``items`` whose
    earlier items keep whole axes (``:``, ``...``), or index right before it by tensors or
    lists (``x[idx, 2]``: one block of advanced indices, which 2 joins, broadcast): ``x[:,
    2]`` picks 2 along axis 1, ``x[..., 2, :]`` along axis ``rank - 2``, ``x[idx, 2]`` along
    axis 1 (a boolean mask of k axes: k). The index is None when no such integer comes
    first, or when an ellipsis needs ``rank`` (the indexed tensor's) and it is not known;
    the other items index what the pick gives (``x[:, 2, :1]`` is ``y[:, :1]``, ``x[idx,
    2]`` is ``y[idx]``: the block stays one, where it was)."""
    position = next((p for p, item in enumerate(items) if type(item) is int), len(items))
    start = position  # the advanced indices right before the pick
    while start and _axes_indexed(items[start - 1]) is not None:
        start -= 1
    whole = all(i is Ellipsis or i == slice(None) for i in items[:start])
    if position == len(items) or not whole:
        return 0, None, ()
    item = items[position]
    rest = items[:position] + items[position + 1 :]
    if start < position:  # (an ellipsis before them would need every axis counted)
        if Ellipsis in items[:start]:
            return 0, None, ()
        return start + sum(_axes_indexed(i) for i in items[start:position]), item, rest
    if Ellipsis not in items[:position]:
        return position, item, rest
    after = [i for i in items[position:] if i is not None]  # (None makes an axis: no pick)
    if rank is None or not all(type(i) is int or isinstance(i, slice) for i in after):
        return 0, None, ()
    return rank - len(after), item, rest


def _axes_indexed(item: Any) -> int | None:
    """How many axes an advanced index spends: an integer tensor or a list one, a boolean
    mask as many as it has (None for anything else, or a tensor whose dtype is unknown)."""
    if isinstance(item, list) and item and all(type(i) in (int, bool) for i in item):
        return 1
    if not isinstance(item, fx.Node):
        return None
    flow = item.meta.get(FLOW)
    value = flow.value if flow is not None else None
    if value is None or value.dtype is None or value.shape is None:
        return None
    if value.dtype in ("bool", "uint8"):
        return len(value.shape)
    return 1 if value.dtype.startswith("int") else None


def _is_stack(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _STACKS


def _stacked(stack: fx.Node, dim: int, index: int) -> fx.Node | None:
    """The tensor ``stack`` holds at ``index`` along axis ``dim``, if that is its stacked
    axis and the tensor is a node."""
    tensors: Any = stack.args[0] if stack.args else stack.kwargs.get("tensors")
    axis = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or type(axis) is not int or not tensors:
        return None
    rank = _rank(tensors[0])
    if rank is None or dim % (rank + 1) != axis % (rank + 1):
        return None
    if not -len(tensors) <= index < len(tensors):
        return None
    operand = tensors[index]
    return operand if isinstance(operand, fx.Node) else None


def _rank(node: Any) -> int | None:
    """A node's number of dimensions, from its recorded value (the flow pass's, or
    export's ``val``)."""
    if not isinstance(node, fx.Node):
        return None
    flow = node.meta.get(FLOW)
    if flow is not None and flow.value is not None and flow.value.shape is not None:
        return len(flow.value.shape)
    value = node.meta.get("val")
    return value.dim() if isinstance(value, torch.Tensor) else None
