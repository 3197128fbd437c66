"""Which layer calls hand gradient to which: a gradient graph seen at the level of its
layer calls, to tell whether two frontends read the same model the same way.

A frontend's trace may take another branch than the model takes when it runs and still
call every layer module as often (``if isinstance(h, torch.Tensor): g = g + h`` on an fx
proxy leaves a residual out): counting calls cannot see it, the wiring between the calls
can (``docs/semantics.md`` §1.1). Each layer call is named by its record and its rank
among that record's calls (``("f", 1)``: the second call of ``f``), which do not depend on
the frontend.

Example:
    >>> import networkx as nx
    >>> from gpa.core.graph import LOSS, GradientGraph, LayerCall
    >>> ops = nx.DiGraph()
    >>> ops.add_edge("a", "relu", grad=True)
    >>> ops.add_edge("relu", "b", grad=True)
    >>> ops.add_edge("b", LOSS, grad=True)
    >>> g = GradientGraph(ops, {n: LayerCall(n, "Linear") for n in "ab"}, "fx")
    >>> layer_wiring(g)[("a", 0)]
    frozenset({('b', 0)})
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping

from torch import nn

from gpa.core.graph import LOSS, GradientGraph
from gpa.errors import GpaError, TraceError
from gpa.frontends.fx.branches import other_branch_message
from gpa.frontends.randomness import drawing_from
from gpa.options import AnalysisOptions

__all__ = [
    "CallKey",
    "layer_wiring",
    "refuse_other_wiring",
    "wiring_differences",
]

#: The tests fx's trace answers otherwise than the run (see :func:`refuse_other_wiring`).
FX_TESTS = "isinstance(h, torch.Tensor), type(h), hasattr, a dict keyed by h.shape or h.device"

#: A layer call as every frontend names it: (record, rank among the record's calls).
CallKey = tuple[str, int]


def layer_wiring(
    graph: GradientGraph, records: Collection[str] | None = None
) -> dict[CallKey, frozenset[CallKey | str]]:
    """For each layer call of ``graph`` (of ``records``, if given: others are passed
    through as any operation), the layer calls (and :data:`LOSS`) its result reaches
    first along edges carrying gradient, through no other layer call: the calls that hand
    gradient back to it directly (``docs/semantics.md`` §1, §4).

    Returns:
        ``{(record, rank): frozenset of (record, rank) or LOSS}`` for every layer call.
    """
    keys: dict[Hashable, CallKey] = {}
    ranks: dict[str, int] = {}
    for node, call in graph.calls.items():  # (in forward order)
        if records is not None and call.record not in records:
            continue
        keys[node] = (call.record, ranks.get(call.record, 0))
        ranks[call.record] = keys[node][1] + 1
    wiring = {}
    for node, key in keys.items():
        reached: set[CallKey | str] = set()
        seen, stack = {node}, [node]
        while stack:
            for _, after, grad in graph.ops.out_edges(stack.pop(), data="grad"):
                if not grad or after in seen:
                    continue
                seen.add(after)
                if after in keys:
                    reached.add(keys[after])
                elif after == LOSS:
                    reached.add(LOSS)
                else:
                    stack.append(after)
        wiring[key] = frozenset(reached)
    return wiring


def wiring_differences(
    traced: Mapping[CallKey, frozenset], run: Mapping[CallKey, frozenset]
) -> list[str]:
    """Where the wiring ``traced`` (:func:`layer_wiring` of a trace) differs from ``run``'s
    (of the model's run), one phrase per layer call, in ``traced``'s order; empty where
    they agree.

    Example:
        >>> wiring_differences({("a", 0): frozenset({LOSS})}, {("a", 0): frozenset()})
        ["'a' hands its gradient to the loss in the trace, to nothing when it runs"]
    """
    said = []
    for key in [*traced, *(k for k in run if k not in traced)]:
        there, here = traced.get(key), run.get(key)
        if there != here:
            said.append(
                f"{_call(key)} hands its gradient to {_callers(there)} in the trace, "
                f"to {_callers(here)} when it runs"
            )
    return said


def refuse_other_wiring(
    model: nn.Module,
    options: AnalysisOptions,
    graph: GradientGraph | GpaError,
    drawn: tuple,
    frontend: str = "torch.fx",
    tests: str = FX_TESTS,
) -> None:
    """Refuse ``frontend``'s ``graph`` of ``model`` where a test its trace answers otherwise
    than the run (``tests``) took another branch that calls every layer module as often:
    the layer calls of the autograd frontend's reading of one run (on the meta device,
    else on real inputs, as that frontend runs it), drawing the random numbers the trace
    drew (``drawn``), hand gradient to other calls than in ``graph``. ``graph`` may also
    be the error the trace's returned values gave (no tensor; a selected output missing):
    refused where the run returns them (timm's feature hooks keep their features in a
    dict keyed by the tensor's device, which fx's proxies miss). Where the model cannot run
    at all, nothing is checked: the frontend's own run is the model's to fail
    (``docs/semantics.md`` §1.1).

    Raises:
        TraceError: the wiring or the outputs differ.
    """
    run = _run_read(model, options, drawn)
    if run is None:
        return
    if isinstance(graph, GpaError):
        said = [f"the trace's outputs fail where the run's do not ({graph})"]
    else:
        # a function computing with weights is a layer to autograd alone (§1.6): passed through
        traced, ran = ({c.record for c in g.calls.values()} for g in (graph, run))
        modules = dict(model.named_modules())
        records = (traced & ran) | {r for r in traced ^ ran if r in modules}
        said = wiring_differences(layer_wiring(graph, records), layer_wiring(run, records))
    if said:
        shown = [*said[:3], *([f"{len(said) - 3} more"] if len(said) > 3 else [])]
        raise TraceError(
            other_branch_message(model, {}, frontend, tests, wiring=shown)
            + f"; {'autograd reads' if 'export' in frontend else 'export or autograd read'} "
            "the run (auto moves on)"
        )


def _run_read(model: nn.Module, options: AnalysisOptions, drawn: tuple) -> GradientGraph | None:
    """The autograd frontend's reading of one run of ``model`` drawing the random numbers
    ``drawn``, or None where it cannot read it."""
    from gpa.frontends.autograd import autograd_gradient_graph  # (it reads fx's flow)

    try:
        with drawing_from(drawn):
            return autograd_gradient_graph(model, options)
    except GpaError:
        return None


def _call(key: CallKey) -> str:
    record, rank = key
    return f"{record!r}" if rank == 0 else f"call {rank + 1} of {record!r}"


def _callers(keys: frozenset | None) -> str:
    if keys is None:
        return "nothing (no such call)"
    if not keys:
        return "nothing"
    named = sorted("the loss" if k == LOSS else _call(k) for k in keys)
    return ", ".join(named)
