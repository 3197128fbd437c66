"""Frontends: from an ``nn.Module`` to a :class:`~gpa.core.graph.GradientGraph`.

Three frontends build the same graph (``docs/semantics.md`` §1.6): :mod:`gpa.frontends.fx`
traces the model symbolically, :mod:`gpa.frontends.export` reads ``torch.export``'s graph
and :mod:`gpa.frontends.autograd` runs the model once and reads its autograd graph.
:func:`gradient_graph` picks one by :attr:`AnalysisOptions.tracer
<gpa.options.AnalysisOptions.tracer>`; ``auto`` (the default) tries fx, then export, then
autograd, and says in a one-line note which ran and why the earlier ones did not.

Example:
    >>> import torch.nn as nn
    >>> from gpa.options import AnalysisOptions
    >>> class Looped(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         for _ in range(len(x)):  # len() of a tensor: fx cannot trace it
    ...             x = self.fc(x)
    ...         return x
    >>> g = gradient_graph(Looped(), AnalysisOptions(input_shape=(2, 2)))
    >>> g.tracer, g.notes[0].startswith("tracer auto used export: fx:")
    ('export', True)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gpa.core.graph import GradientGraph
from gpa.errors import GpaError, TraceError
from gpa.frontends.autograd import autograd_gradient_graph
from gpa.frontends.export import export_gradient_graph
from gpa.frontends.fx import fx_gradient_graph
from gpa.options import AnalysisOptions, Tracer

__all__ = ["CHANNEL_TRACERS", "FRONTENDS", "gradient_graph"]

#: Each frontend's builder.
FRONTENDS: dict[Tracer, Callable[[nn.Module, AnalysisOptions], GradientGraph]] = {
    Tracer.FX: fx_gradient_graph,
    Tracer.EXPORT: export_gradient_graph,
    Tracer.AUTOGRAD: autograd_gradient_graph,
}

#: The frontends whose graphs the channel analysis can follow (it needs fx nodes).
CHANNEL_TRACERS = (Tracer.FX, Tracer.EXPORT)

#: The frontends that run the model on inputs (fx alone can go without).
_NEEDS_INPUTS = (Tracer.EXPORT, Tracer.AUTOGRAD)


def gradient_graph(model: nn.Module, options: AnalysisOptions) -> GradientGraph:
    """The gradient graph of ``model`` built by the frontend ``options.tracer`` names.

    Raises:
        TraceError: the named frontend cannot read the model, or (``auto``) none can;
            the message says why each one failed.
        GpaError: the options ask for channel segments from a frontend without them.
    """
    tracer = options.tracer
    if tracer is not Tracer.AUTO:
        if options.channels and tracer not in CHANNEL_TRACERS:
            raise GpaError(
                f"the channel analysis follows channels through an fx graph; the {tracer} "
                "tracer cannot give channel segments (use --tracer auto, fx or export, or "
                "drop --channels)"
            )
        try:
            return FRONTENDS[tracer](model, options)
        except TraceError as exc:
            raise TraceError(
                f"{exc}\nOr let gpa choose a frontend that can read it (--tracer auto, the "
                "default: fx, else export, else autograd, which runs the model once)."
            ) from exc
    chain = [t for t in FRONTENDS if not options.channels or t in CHANNEL_TRACERS]
    reasons: list[str] = []
    for i, candidate in enumerate(chain):
        if candidate in _NEEDS_INPUTS and not options.has_inputs:
            reasons.append(f"{candidate}: needs example inputs")
            continue
        try:
            graph = FRONTENDS[candidate](model, options)
        except TraceError as exc:
            reasons.append(f"{candidate}: {str(exc).splitlines()[0]}")
            continue
        if graph.opaque and graph.inputs is not None and i + 1 < len(chain):
            reasons.append(f"{candidate}: cannot look into {', '.join(graph.opaque)}")
            continue
        if reasons:
            graph.notes.insert(0, f"tracer auto used {candidate}: {'; '.join(reasons)}")
        return graph
    why = "\n".join(f"  {r}" for r in reasons)
    hints = []
    if not options.has_inputs:
        hints.append("give example inputs (--input-shape or example_inputs) for export/autograd")
    if options.channels:
        hints.append("drop --channels to let the autograd tracer analyse it at layer level")
    hint = f"\n{'; '.join(hints).capitalize()}." if hints else ""
    raise TraceError(f"no frontend can read {type(model).__name__}:\n{why}{hint}")
