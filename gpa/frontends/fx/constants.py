"""Real values of the constant tensors of an fx graph annotated by the flow pass.

A constant is a parameter or buffer (``get_attr``), or what a few operations on constants
make of them (``self.idx.view(1, 4)``, ``torch.arange(4) * 2``, ``self.keep.nonzero()``;
the export frontend reads a tensor made in ``forward`` as
``detach_(lift_fresh_copy(constant))``). Those values matter where a result depends on
them and not only on shapes: an index or mask (``y[:, self.keep]``), which the meta
device cannot apply, and the channel probe of :mod:`gpa.channels.rules`.

Example:
    >>> import torch, torch.fx as fx
    >>> from torch import nn
    >>> from gpa.frontends.fx.flow import GradientFlow
    >>> root = nn.Module()
    >>> root.register_buffer("idx", torch.tensor([2, 0]))
    >>> g = fx.Graph()
    >>> x = g.placeholder("x")
    >>> flipped = g.call_method("flip", (g.get_attr("idx"), 0))  # as export writes it
    >>> _ = g.output(g.call_function(torch.index_select, (x, 1, flipped)))
    >>> gm = fx.GraphModule(root, g)
    >>> GradientFlow(gm).run(torch.randn(1, 3))
    >>> constant_value(flipped, gm.get_buffer).tolist(), constant_value(x, gm.get_buffer)
    ([0, 2], None)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

from gpa.frontends.fx.flow import FLOW, Shape

__all__ = ["constant_value"]

# How many operations deep a constant is looked for, and the operations whose results are
# no constants (random, uninitialised), by a word of their name.
_DEPTH = 8
_NOT_CONSTANT = ("rand", "normal", "bernoulli", "multinomial", "uniform", "dropout", "empty")


def constant_value(
    node: fx.Node, fetch_attr: Callable[[str], Any], limit: int = 1 << 24, depth: int = 0
) -> torch.Tensor | None:
    """The real value of ``node`` if it is a constant tensor (see the module docstring),
    else None: random or uninitialised results, results of more than ``limit`` elements,
    anything fed by an input or a computation that fails are no constants.

    Args:
        node: a node of a graph the flow pass annotated (:data:`gpa.frontends.fx.flow.FLOW`).
        fetch_attr: the traced module's attribute at a qualified name.
        limit: the largest constant (elements) worth computing.
    """
    if node.op == "get_attr":
        value = fetch_attr(node.target)
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            return value.detach()
        return None
    flow = node.meta.get(FLOW)
    if (
        node.op not in ("call_function", "call_method")
        or depth >= _DEPTH
        or flow is None
        or any(word in str(node.target) for word in _NOT_CONSTANT)
        or sum(math.prod(s) for s in tree_flatten(flow.shapes)[0] if isinstance(s, Shape)) > limit
    ):
        return None
    known: dict[fx.Node, Any] = {}
    for m in node.all_input_nodes:
        if m.meta[FLOW].is_constant:  # a size computed in forward
            known[m] = m.meta[FLOW].constant
            continue
        value = constant_value(m, fetch_attr, limit, depth + 1)
        if value is None:
            return None
        known[m] = value.clone()  # an in-place operation must not write to a buffer
    args = fx.node.map_arg(node.args, known.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, known.__getitem__)
    try:
        if node.op == "call_method":
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            result = node.target(*args, **kwargs)
    except Exception:  # whatever fails is no constant
        return None
    return result.detach() if isinstance(result, torch.Tensor) else None
