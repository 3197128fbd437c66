"""Re-entrant checkpoints given nothing that requires gradient pass none on.

``torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=True)`` (torch's default) is an
``autograd.Function``: when none of the tensors it is given requires gradient — the model's
inputs alone, as in a network checkpointing its first block — its outputs carry none, and
the layers ``fn`` runs receive no gradient through it (torch warns "None of the inputs have
requires_grad=True"). In training, a tensor requires gradient when it is computed from
parameters along edges gradient flows through (§3); the model's inputs require none. The
fx tracer records each re-entrant checkpoint's arguments and results
(:data:`~gpa.frontends.fx.tracer.CHECKPOINTS`); after the flow pass this pass removes the
gradient edges out of the results of each checkpoint given nothing computed from
parameters (``docs/semantics.md`` §1.7).

Example:
    >>> import torch
    >>> from torch.utils.checkpoint import checkpoint
    >>> from gpa.frontends.fx.flow import GradientFlow
    >>> from gpa.frontends.fx.tracer import trace
    >>> class First(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         return self.b(checkpoint(self.a, x, use_reentrant=True))
    >>> gm = trace(First())
    >>> GradientFlow(gm).run(torch.zeros(1, 2))
    >>> unfed_checkpoints(gm)
    1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch.fx as fx
from torch import nn

from gpa.frontends.fx.flow import FLOW, differentiable
from gpa.frontends.fx.tracer import CHECKPOINTS

__all__ = ["checkpoints_rewritten", "unfed_checkpoints"]


def checkpoints_rewritten(gm: fx.GraphModule, replaced: Mapping[fx.Node, fx.Node]) -> None:
    """Point the record of what each checkpoint is given and returns at the nodes now
    giving the values of the nodes a pass rewrote (``replaced``: erased node -> its
    replacement; an ``einsum`` split into its contractions)."""
    if replaced and gm.meta.get(CHECKPOINTS):
        gm.meta[CHECKPOINTS] = [
            tuple([replaced.get(n, n) for n in nodes] for nodes in boundary)
            for boundary in gm.meta[CHECKPOINTS]
        ]


def unfed_checkpoints(gm: fx.GraphModule) -> int:
    """Cut the gradient edges out of the results of every re-entrant checkpoint given no
    tensor computed from parameters; return how many were cut."""
    cut: set[fx.Node] = set()  # results of checkpoints cut: no gradient, whatever made them
    count = 0
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for given, returned in gm.meta.get(CHECKPOINTS, ()):  # in order: a cut one's results
        if not returned:  # feed the next ones
            continue
        start = min(order[n] for n in returned)  # (what the model does after it: no feed)
        if set(given) & _from_parameters(gm, cut, lambda n, start=start: order[n] < start):
            continue
        cut.update(returned)
        count += 1
        for node in returned:
            for user in node.users:
                flow = user.meta.get(FLOW)
                if flow is not None and node in flow.grad_from:
                    user.meta[FLOW] = dataclasses.replace(flow, grad_from=flow.grad_from - {node})
    return count


def _from_parameters(
    gm: fx.GraphModule, cut: set[fx.Node], before: Callable[[fx.Node], bool]
) -> set[fx.Node]:
    """The nodes computed from parameters along edges gradient flows through, but for the
    results ``cut`` (a checkpoint's: it ran its layers without gradient), and from tensors
    the model makes require gradient ``before`` the checkpoint asking (``h.requires_grad_()``,
    ``h.requires_grad = True``: Wav2Vec2's feature encoder, so that its re-entrant
    checkpoints pass gradient on)."""
    found: set[fx.Node] = set()
    for node in gm.graph.nodes:
        flow = node.meta.get(FLOW)
        if node in cut:
            continue
        if _made_to_require_gradient(node) and before(node):
            found.update((node, node.args[0]))
        elif node.op == "get_attr":
            held = gm.get_parameter(node.target) if _is_parameter(gm, node.target) else None
            if held is not None and differentiable(held):
                found.add(node)
        elif (
            node.op == "call_module"
            and any(differentiable(p) for p in gm.get_submodule(node.target).parameters())
            # (run under no_grad, a layer's result carries no gradient: the flow pass knows)
            and (flow is None or flow.value is None or flow.value.requires_grad)
            or flow is not None
            and any(m in found for m in flow.grad_from)
        ):
            found.add(node)
    return found


def _made_to_require_gradient(node: fx.Node) -> bool:
    """Whether ``node`` is ``h.requires_grad_()`` or ``h.requires_grad_(True)``."""
    if node.op != "call_method" or node.target != "requires_grad_" or not node.args:
        return False
    wanted = node.args[1] if len(node.args) > 1 else node.kwargs.get("requires_grad", True)
    return wanted is True and isinstance(node.args[0], fx.Node)


def _is_parameter(gm: fx.GraphModule, target: str) -> bool:
    owner, _, name = target.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    return isinstance(getattr(module, name, None), nn.Parameter)
