"""Gradient flow without example inputs: which inputs of each node gradient reaches, read
from the operations' names (``docs/semantics.md`` §3).

With no inputs to run the model on, the flow pass cannot ask autograd. :func:`flow_from_names`
annotates every node as :class:`~gpa.frontends.fx.flow.GradientFlow` does
(``node.meta[FLOW]``, without values or shapes) from tables of what takes no gradient:
comparisons, integer casts and results, factories, ``detach``, the second argument of
``expand_as`` and its kin, and code under ``no_grad``. It is exact for the common
operations; a report made so says so.

Example:
    >>> import torch.nn as nn
    >>> from gpa.frontends.fx.tracer import trace
    >>> gm = trace(nn.Sequential(nn.Linear(2, 2)))
    >>> flow_from_names(gm)
    >>> [sorted(a.name for a in n.meta[FLOW].grad_from) for n in gm.graph.nodes]
    [[], ['input_1'], ['_0']]
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from gpa.frontends.fx.flow import FLOW, NodeFlow, differentiable
from gpa.frontends.fx.modes import grad_mode
from gpa.frontends.fx.writes import detaches, written_into

__all__ = ["flow_from_names"]

_NO_GRAD_METHODS = frozenset(
    "detach detach_ size dim numel argmax argmin argsort eq ne lt le gt ge long int bool byte "
    "short char nonzero new_zeros new_ones new_empty new_full new_tensor zero_ isnan isinf "
    "isfinite sign_ bernoulli_ uniform_ normal_ random_ fill_ numpy tolist item data_ptr "
    "stride is_contiguous get_device".split()
)
_NO_GRAD_FUNCTIONS = frozenset(
    "detach argmax argmin argsort eq ne lt le gt ge zeros_like ones_like empty_like rand_like "
    "randn_like randint_like full_like zeros ones empty rand randn randint full arange "
    "linspace logspace eye tensor isnan isinf isfinite numel bernoulli".split()
)
_NO_GRAD_OPERATORS = frozenset(
    {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.not_}
)
# Methods whose second argument contributes only its shape, dtype or device.
_SHAPE_ONLY_SECOND = frozenset("expand_as view_as reshape_as type_as to new_tensor".split())
_TENSOR_ATTRIBUTES = frozenset("T mT H mH real imag values".split())
# Reductions returning (values, indices): element 1 / ``.indices`` is an integer tensor.
_VALUES_INDICES = frozenset("max min sort topk mode median kthvalue cummax cummin".split())


def _is_indices_of(node: fx.Node) -> bool:
    """``torch.max(x, 1)[1]`` and the like: the integer half of a (values, indices) result."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or source.op not in ("call_function", "call_method"):
        return False
    name = source.target if source.op == "call_method" else getattr(source.target, "__name__", "")
    return name in _VALUES_INDICES and node.args[1] == 1


def _is_integer_dtype(value: Any) -> bool:
    return isinstance(value, torch.dtype) and not (value.is_floating_point or value.is_complex)


def _differentiable_inputs(node: fx.Node) -> list[fx.Node] | None:
    """Inputs gradient may flow through by name; None means all of them."""
    target = node.target
    name = getattr(target, "__name__", str(target))
    if any(_is_integer_dtype(a) for a in (*node.args, *node.kwargs.values())):
        return []  # a cast to (or a tensor made with) an integer or bool dtype
    if node.op == "call_method":
        if target in _NO_GRAD_METHODS:
            return []
        if target in _SHAPE_ONLY_SECOND:
            first = node.args[0]
            return [first] if isinstance(first, fx.Node) else []
        return None
    if node.op == "call_function":
        if target is getattr:
            return None if node.args[1] in _TENSOR_ATTRIBUTES else []
        if target is operator.getitem and _is_indices_of(node):
            return []
        if target in _NO_GRAD_OPERATORS or target is grad_mode:
            return []
        module = getattr(target, "__module__", "") or ""
        if name in _NO_GRAD_FUNCTIONS and (
            module.startswith("torch") or target is getattr(torch, name, None)
        ):
            return []
        return None
    return None


class _NamedFlow(fx.Interpreter):
    """:func:`flow_from_names` as an fx pass: each node's value is whether its result
    requires grad."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.enabled = True

    def run_node(self, n: fx.Node) -> bool:
        if n.op == "placeholder":
            n.meta[FLOW] = NodeFlow(frozenset())
            return True
        if n.op == "get_attr":
            value = self.fetch_attr(n.target)
            n.meta[FLOW] = NodeFlow(frozenset())
            return isinstance(value, nn.Parameter) and differentiable(value)
        if n.op == "output":
            n.meta[FLOW] = NodeFlow(frozenset(m for m in n.all_input_nodes if self.env[m]))
            return False
        if n.op == "call_function" and n.target is grad_mode:
            self.enabled = bool(n.args[0])
        allowed = _differentiable_inputs(n)
        candidates = n.all_input_nodes if allowed is None else allowed
        flows = frozenset(m for m in candidates if self.env[m]) if self.enabled else frozenset()
        if not self.enabled and not detaches(n):  # a write under no_grad: what it writes
            target = written_into(n, self.fetch_attr)  # into keeps its history
            if target is not None and self.env[target]:
                n.meta[FLOW] = NodeFlow(frozenset({target}))
                return True
        n.meta[FLOW] = NodeFlow(flows)
        if n.op == "call_module":
            module = self.fetch_attr(n.target)
            has_weights = any(differentiable(p) for p in module.parameters())
            return self.enabled and (bool(flows) or has_weights)
        return bool(flows)


def flow_from_names(gm: fx.GraphModule) -> None:
    """Annotate gradient flow without example inputs, from a table of operation names.

    A node's result requires grad when one of its differentiable inputs does;
    parameters and inputs require grad; code between ``grad_mode(False)`` and
    ``grad_mode(True)`` produces no gradient, but for a write in place into a tensor that
    requires grad, which keeps its history. Sets ``node.meta[FLOW]`` with
    ``value`` and ``shapes`` None.
    """
    count = sum(n.op == "placeholder" for n in gm.graph.nodes)
    _NamedFlow(gm).run(*([True] * count))
