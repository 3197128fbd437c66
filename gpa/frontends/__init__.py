"""Frontends: from an ``nn.Module`` to a :class:`~gpa.core.graph.GradientGraph`.

Three frontends build the same graph (``docs/semantics.md`` §1.6): :mod:`gpa.frontends.fx`
traces the model symbolically, :mod:`gpa.frontends.export` reads ``torch.export``'s graph
and :mod:`gpa.frontends.autograd` runs the model once and reads its autograd graph.
:func:`gradient_graph` picks one by :attr:`AnalysisOptions.tracer
<gpa.options.AnalysisOptions.tracer>`; ``auto`` (the default) tries fx, then export, then
autograd — autograd before export when fx cannot look into a function that reads
parameters — and says in a one-line note which ran and why the earlier ones did not.

An exception the model's own code raised (a ``raise`` or ``assert`` of its ``forward``) is
the model's error, :class:`~gpa.errors.ModelError`, not a frontend's limit: ``auto`` goes
on to the frontends that run the model on its inputs (fx may meet it only because it
passes proxies) and, when none can read the model, reports the model's error rather than
the frontends' limits.

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

import contextlib
import warnings
from collections.abc import Callable, Iterator

from torch import nn

from gpa.core.graph import GradientGraph, added_apart, calls_of_each_owner
from gpa.errors import GpaError, ModelError, ShapeError, TraceError
from gpa.frontends.autograd import autograd_gradient_graph
from gpa.frontends.export import export_gradient_graph
from gpa.frontends.fx import fx_gradient_graph
from gpa.frontends.modules import hidden_weight_notes
from gpa.frontends.raised import model_raised, raised_by_model
from gpa.frontends.randomness import random_states, set_random_states
from gpa.frontends.sites import past_wrappers
from gpa.frontends.state import TRACING
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
        ModelError: the model's own code raised (under ``auto``: in every frontend that
            ran it, or in fx when no other could run).
        ShapeError: the inputs do not fit the model (under ``auto``: fx's reading, when
            no frontend could read it: fx names the operation).
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
            return _build(tracer, model, options)
        except TraceError as exc:
            raise TraceError(
                f"{exc}\nOr let gpa choose a frontend that can read it (--tracer auto, the "
                "default: fx, else export, else autograd, which runs the model once)."
            ) from exc
    chain = [t for t in FRONTENDS if not options.channels or t in CHANNEL_TRACERS]
    states = random_states()  # (each frontend tried draws what the first drew)
    reasons: list[str] = []
    own: set[int] = set()  # reasons gpa gives itself: they say what to do, so come first
    raised: ModelError | None = None
    unfit: ShapeError | None = None  # fx's: a branch its proxies took may be the cause
    i = 0
    while i < len(chain):
        candidate = chain[i]
        i += 1
        if candidate in _NEEDS_INPUTS and not options.has_inputs:
            reasons.append(f"{candidate}: needs example inputs")
            continue
        set_random_states(states)
        try:
            graph = _build(candidate, model, options)
        except (TraceError, ModelError, ShapeError) as exc:
            if exc.__cause__ is None:  # not a library's error passed on
                own.add(len(reasons))
            reasons.append(f"{candidate}: {str(exc).splitlines()[0]}")
            raised = exc if isinstance(exc, ModelError) else raised
            unfit = exc if isinstance(exc, ShapeError) and unfit is None else unfit
            continue
        if graph.opaque and graph.inputs is not None and i < len(chain):
            reasons.append(
                f"{candidate}: cannot look into {', '.join(dict.fromkeys(graph.opaque))}"
            )
            chain[i:] = _looking_inside(chain[i:])
            continue
        if reasons:
            graph.notes.insert(0, f"tracer auto used {candidate}: {'; '.join(reasons)}")
        return graph
    if unfit is not None:  # the inputs fit no frontend's reading: it names the operation
        raise unfit
    if raised is not None:  # the model's own error, not the frontends' limits
        raise raised
    ordered = sorted(range(len(reasons)), key=lambda k: k not in own)
    why = "\n".join(f"  {reasons[k]}" for k in ordered)
    hints = []
    if not options.has_inputs:
        hints.append("give example inputs (--input-shape or example_inputs) for export/autograd")
    if options.channels:
        hints.append("drop --channels to let the autograd tracer analyse it at layer level")
    hint = f"\n{'; '.join(hints).capitalize()}." if hints else ""
    which = (
        f"no frontend that gives channel segments ({', '.join(map(str, chain))}) can read"
        if options.channels
        else "no frontend can read"
    )
    raise TraceError(f"{which} {type(model).__name__}:\n{why}{hint}")


def _looking_inside(rest: list[Tracer]) -> list[Tracer]:
    """The frontends left to try after fx gave way to functions it cannot look into
    (``torch.fx.wrap``) that read parameters: autograd first. It runs those functions'
    Python as it is, on the meta device, and sees every operation they make on the
    weights — the layers fx missed — at a fraction of export's cost (Swin-T: about a
    seventh); where both read a model they give the same records (semantics §1.6), so
    only the time differs. Export stays next, for a model autograd cannot run."""
    return sorted(rest, key=lambda t: t is not Tracer.AUTOGRAD)


def _build(tracer: Tracer, model: nn.Module, options: AnalysisOptions) -> GradientGraph:
    """The graph one frontend builds; an exception the model's own code raised while the
    frontend traced it becomes a :class:`ModelError` (not a tracing limitation)."""
    try:
        with TRACING, _checkpoint_warning_ignored():
            graph = FRONTENDS[tracer](model, options)
    except TraceError as exc:
        cause = exc.__cause__
        if cause is None or raised_by_model(cause) is None:
            raise
        during = _DURING.get(tracer)
        raise ModelError(model_raised(type(model).__name__, cause, during=during)) from cause
    graph.calls = past_wrappers(graph.calls, graph.uncalled, graph.module_sites, model)
    graph.notes += hidden_weight_notes(model, options.layer_types, options.leaf_modules)
    added_apart(graph)
    calls_of_each_owner(graph)
    return graph


@contextlib.contextmanager
def _checkpoint_warning_ignored() -> Iterator[None]:
    """torch's word on a re-entrant checkpoint given no tensor that requires gradient,
    unsaid for the block: a frontend's own runs (fx's proxies, meta values) provoke it where
    training would not; where training is cut, the frontend says so in a note (§1.7). One
    filter is added and that one removed after (under :data:`TRACING`: frontends take
    turns), so a filter the model's code adds meanwhile stays."""
    warnings.filterwarnings("ignore", "None of the inputs have requires_grad=True", UserWarning)
    added = warnings.filters[0]
    try:
        yield
    finally:
        if added in warnings.filters:
            warnings.filters.remove(added)
            getattr(warnings, "_filters_mutated", lambda: None)()  # (as warnings does)


#: What ran the model when it raised under a tracer, and what to do if only that fails.
_DURING = {
    Tracer.FX: (
        "It raised while torch.fx traced forward symbolically (tensors are fx proxies "
        "then); if it raises only under fx, --tracer export or autograd runs it on "
        "example inputs."
    ),
    Tracer.EXPORT: (
        "It raised while torch.export ran forward on the example inputs (as fake "
        "tensors); if it raises only under export, --tracer autograd runs it for real."
    ),
}
