"""Frontends: from an ``nn.Module`` to a :class:`~gpa.core.graph.GradientGraph`.

Two frontends build the same graph (``docs/semantics.md`` §1.6): :mod:`gpa.frontends.fx`
traces the model symbolically, :mod:`gpa.frontends.autograd` runs it once and reads its
autograd graph. :func:`gradient_graph` picks one by :attr:`AnalysisOptions.tracer
<gpa.options.AnalysisOptions.tracer>`; ``auto`` (the default) takes fx and, when fx cannot
trace the model or cannot look into a function that reads parameters, the autograd tracer,
with a one-line note saying so.

Example:
    >>> import torch.nn as nn
    >>> from gpa.options import AnalysisOptions
    >>> class Branchy(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         return self.fc(x) if x.sum() > 0 else x  # data-dependent Python
    >>> g = gradient_graph(Branchy(), AnalysisOptions(input_shape=(1, 2)))
    >>> g.tracer, g.notes[0].endswith("used the autograd tracer instead (tracer='auto')")
    ('autograd', True)
"""

from __future__ import annotations

from torch import nn

from gpa.core.graph import GradientGraph
from gpa.errors import GpaError, TraceError
from gpa.frontends.autograd import autograd_gradient_graph
from gpa.frontends.fx import fx_gradient_graph
from gpa.options import AnalysisOptions, Tracer

__all__ = ["CHANNEL_TRACERS", "gradient_graph"]

#: The frontends whose graphs the channel analysis can follow (it needs fx nodes).
CHANNEL_TRACERS = (Tracer.FX,)


def gradient_graph(model: nn.Module, options: AnalysisOptions) -> GradientGraph:
    """The gradient graph of ``model`` built by the frontend ``options.tracer`` names.

    Raises:
        TraceError: fx cannot trace the model and no other frontend may or can be used
            (``tracer="fx"``, no inputs for the autograd tracer, or ``channels=True``).
        GpaError: the options ask for channel segments from a frontend without them.
    """
    tracer = options.tracer
    if options.channels and tracer is Tracer.AUTOGRAD:
        raise GpaError(
            "the channel analysis follows channels through fx's graph; the autograd tracer "
            "cannot give channel segments (use --tracer fx or auto, or drop --channels)"
        )
    if tracer is Tracer.AUTOGRAD:
        return autograd_gradient_graph(model, options)
    try:
        graph = fx_gradient_graph(model, options)
        if tracer is Tracer.FX or options.channels or not graph.opaque or graph.inputs is None:
            return graph
        reason = f"fx cannot look into {', '.join(graph.opaque)}"
    except TraceError as exc:
        if tracer is Tracer.FX:
            raise TraceError(
                f"{exc}\nOr analyse it with the autograd tracer (--tracer auto, the default, or "
                "--tracer autograd), which runs the model once instead of tracing it."
            ) from exc
        if options.channels:
            raise TraceError(
                f"{exc}\nThe channel analysis needs fx's graph, so the autograd tracer cannot "
                "stand in; drop --channels to analyse it at layer level with the autograd tracer."
            ) from exc
        if not options.has_inputs:
            raise TraceError(
                f"{exc}\nThe autograd tracer could analyse it by running it, but it needs "
                "example inputs (--input-shape or example_inputs)."
            ) from exc
        reason = str(exc).splitlines()[0]
    graph = autograd_gradient_graph(model, options)
    graph.notes.insert(0, f"{reason}; used the autograd tracer instead (tracer='auto')")
    return graph
