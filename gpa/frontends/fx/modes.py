"""Grad-mode nodes: where ``forward`` switches autograd off or on.

Plain fx forgets ``torch.no_grad()``, ``torch.set_grad_enabled(False)`` and
``torch.inference_mode()`` inside ``forward``; gpa's tracer (and export's reading of its
graph) records each change as a call of :func:`grad_mode`, so later passes know which
operations ran without gradient (``docs/semantics.md`` §1.2).
"""

from __future__ import annotations

import torch
import torch.fx as fx

__all__ = ["grad_mode", "grad_modes"]


def grad_mode(enabled: bool) -> None:
    """Set autograd's grad mode; recorded in traced graphs where ``forward`` changes it."""
    torch._C._set_grad_enabled(enabled)


def grad_modes(graph: fx.Graph) -> dict[fx.Node, bool]:
    """The grad mode ``graph`` runs each node in: that of the last :func:`grad_mode`
    before it (on, where there is none).

    Example:
        >>> g = fx.Graph()
        >>> x = g.placeholder("x")
        >>> _ = g.call_function(grad_mode, (False,))
        >>> y = g.call_method("relu", (x,))
        >>> grad_modes(g)[x], grad_modes(g)[y]
        (True, False)
    """
    modes, enabled = {}, True
    for node in graph.nodes:
        if node.op == "call_function" and node.target is grad_mode:
            enabled = bool(node.args[0])
        modes[node] = enabled
    return modes
