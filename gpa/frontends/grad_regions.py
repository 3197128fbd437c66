"""Export's grad-mode regions in the fx frontend's form (``docs/semantics.md`` §1.2, §1.9).

``torch.export`` records a ``with torch.no_grad():`` block (or ``set_grad_enabled``, a
``@torch.no_grad()`` method) as one ``wrap_with_set_grad_enabled`` call of a submodule
holding the block's operations. :func:`inline_grad_mode_regions` puts those operations in
its place between :func:`~gpa.frontends.fx.modes.grad_mode` markers, as fx records them;
:func:`mark_inference_mode` marks what ran under ``torch.inference_mode()`` (export keeps no
node for it) or came out of a ``no_grad`` region its functional form inlined
(:data:`NO_GRAD_REGION`); :func:`may_miss_grad_mode` tells when export's record may lack a
switch torch made in C++ (around an activation checkpoint).

Example:
    >>> import torch, torch.nn as nn
    >>> class Frozen(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a = nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         with torch.no_grad():
    ...             return self.a(x)
    >>> gm = torch.export.export(Frozen(), (torch.zeros(1, 2),), strict=False).module()
    >>> [is_grad_mode_region(n) for n in gm.graph.nodes].count(True)
    1
    >>> _ = inline_grad_mode_regions(gm)
    >>> [n.args for n in gm.graph.nodes if n.target is grad_mode]
    [(False,), (True,)]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.utils.checkpoint

from gpa.errors import TraceError
from gpa.frontends.fx.modes import grad_mode

__all__ = [
    "NO_GRAD_REGION",
    "inline_grad_mode_regions",
    "is_grad_mode_region",
    "mark_inference_mode",
    "may_miss_grad_mode",
]

#: ``node.meta`` key: the operation ran under ``no_grad`` in a region the decomposition
#: inlined (see :func:`~gpa.frontends.functional_form.functional_form`).
NO_GRAD_REGION = "gpa_no_grad_region"


def may_miss_grad_mode(program: Any) -> bool:
    """Whether export's record of grad-mode changes may lack one torch made in C++: a
    checkpoint's function ran (its frames are in the recorded stack traces), or a region
    without gradient holds no operation (a switch around Python that torch calls, such as
    a checkpoint's saved-tensor hook)."""
    gm = program.graph_module
    for node in gm.graph.nodes:
        if is_grad_mode_region(node) and not node.args[0]:
            region = gm.get_submodule(node.args[1].target).graph.nodes
            if not any(n.op == "call_function" for n in region):
                return True
    return any(
        _CHECKPOINT_FILE in (node.meta.get("stack_trace") or "")
        for module in gm.modules()
        if isinstance(module, fx.GraphModule)
        for node in module.graph.nodes
    )


_CHECKPOINT_FILE = torch.utils.checkpoint.__file__


def is_grad_mode_region(node: fx.Node) -> bool:
    return node.op == "call_function" and (
        getattr(node.target, "__name__", "") == "wrap_with_set_grad_enabled"
    )


def mark_inference_mode(graph: fx.Graph) -> None:
    """Put each operation run under ``torch.inference_mode()`` between ``grad_mode(False)``
    markers: export records no node for that mode, only results that are inference
    tensors; likewise each one a decomposition took out of a ``no_grad`` region
    (:func:`functional_form`)."""
    enabled = True
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is grad_mode:
            enabled = bool(node.args[0])
            continue
        value = node.meta.get("val")
        inference = isinstance(value, torch.Tensor) and value.is_inference()
        if enabled and (inference or node.meta.get(NO_GRAD_REGION)):
            with graph.inserting_before(node):
                graph.call_function(grad_mode, (False,))
            with graph.inserting_after(node):
                graph.call_function(grad_mode, (True,))


def inline_grad_mode_regions(gm: fx.GraphModule, watched: bool = False) -> int:
    """Replace each ``wrap_with_set_grad_enabled(mode, submodule, *args)`` by the
    submodule's operations between ``grad_mode(mode)`` and ``grad_mode(previous)``; drop
    export's dtype assertions (``_assert_tensor_metadata``: they check, they compute
    nothing). Any other operator holding a submodule is refused: ``wrap_with_autocast``
    among them, since export keeps no grad-mode change inside it (a ``no_grad`` block
    under ``torch.autocast``), and its operations would all seem to carry gradient.

    Returns how many regions without gradient hold ``detach_`` calls when exported
    under :class:`~gpa.frontends.watch.Checkpoints` (``watched``): autograd's, on the
    outputs of a re-entrant checkpoint none of whose inputs requires grad — given the
    model's inputs alone, which require none in training (``docs/semantics.md`` §1.7).

    Raises:
        TraceError: another operator holding a submodule remains (``torch.cond``, …):
            the layers inside it would be lost.
    """
    graph = gm.graph
    enabled = True
    detached = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is grad_mode:
            enabled = bool(node.args[0])
        if (
            node.op == "call_function"
            and node.target is torch.ops.aten._assert_tensor_metadata.default
        ):
            graph.erase_node(node)
            continue
        if not is_grad_mode_region(node):
            _refuse_subgraphs(gm, node)
            continue
        mode, holder, *args = node.args
        mode = bool(mode)
        sub = gm.get_submodule(holder.target)
        detached += inline_grad_mode_regions(sub, watched)
        with graph.inserting_before(node):
            graph.call_function(grad_mode, (mode,))
            placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
            env = dict(zip(placeholders, args, strict=True))
            cut = False
            for inner in sub.graph.nodes:
                if inner.op == "placeholder":
                    continue
                if inner.op == "output":
                    results = fx.node.map_arg(inner.args[0], env.__getitem__)
                    break
                if inner.op == "get_attr":  # a constant of the region: lift it to gm
                    name = f"_gpa_{holder.target}_{inner.target}".replace(".", "_")
                    setattr(gm, name, getattr(sub, inner.target))
                    env[inner] = graph.get_attr(name)
                    continue
                if watched and not mode and inner.target is torch.ops.aten.detach_.default:
                    cut = True
                env[inner] = graph.node_copy(inner, env.__getitem__)
            graph.call_function(grad_mode, (enabled,))
        detached += cut
        for user in list(node.users):
            user.replace_all_uses_with(results[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)
        if not holder.users:
            graph.erase_node(holder)
    return detached


def _refuse_subgraphs(gm: fx.GraphModule, node: fx.Node) -> None:
    """Raise TraceError if ``node`` calls an operator on a submodule of ``gm`` (a
    higher-order operator: ``torch.cond``, ``map``, …) that gpa does not inline."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.HigherOrderOperator):
        return
    held = [
        a
        for a in node.all_input_nodes
        if a.op == "get_attr" and isinstance(getattr(gm, str(a.target), None), fx.GraphModule)
    ]
    if held:
        name = getattr(node.target, "__name__", str(node.target))
        why = (
            "torch.autocast, inside which export keeps no no_grad"
            if name == "wrap_with_autocast"
            else "which gpa does not read"
        )
        raise TraceError(
            f"torch.export's graph calls {name} on a part of the model ({why}): the layers "
            "inside it would be lost or misread"
        )
