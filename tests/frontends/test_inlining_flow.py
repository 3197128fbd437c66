"""The flow pass reads a wrapped call through its operations, as running it whole would.

``InliningFlow`` (``gpa.frontends.fx.inline``) works out a call of a ``torch.fx.wrap``
function by tracing into it by value and composing its operations' flows, instead of
running the function whole under autograd and walking the autograd graph. The independent
computation is the plain ``GradientFlow``, which runs it whole: every node of the traced
model — the wrapped calls included — must get the same annotation from both (the arguments
gradient reaches, the result's shapes, dtype and requires_grad, per result of a
multi-result call too). A function writing into an argument is run whole (the pass checks
such writes), and each look of a call is traced once per analysis, the inlining reusing it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from gpa.frontends.fx import inline
from gpa.frontends.fx.flow import FLOW, PARTS, GradientFlow
from gpa.frontends.fx.inline import InliningFlow
from gpa.frontends.fx.tracer import trace
from tests.frontends.test_opaque import (
    TRACED_CASES,
    Shifted,
    Siblings,
    Wrapped,
    WrappedTwice,
    Writes,
    _attend,
)


def unweighted_drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """torchvision's ``stochastic_depth`` as it reads in eval mode: the input itself."""
    if not training or p == 0.0:
        return x
    return x * torch.empty(x.shape[0], 1, device=x.device).bernoulli_(1 - p) / (1 - p)


def halves(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two results: the first from the layer, the second from ``x`` alone, detached."""
    return F.linear(x, weight), x.detach() * 2


torch.fx.wrap("unweighted_drop")
torch.fx.wrap("halves")


class Others(nn.Module):
    """Wrapped calls test_opaque.py does not hold: one reading no parameter and returning
    its input, one whose results depend on different arguments."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.case == "returns-its-input":
            return self.b(unweighted_drop(self.a(x), 0.5, self.training))
        left, right = halves(self.a(x), self.b.weight)
        return left + right


MODELS = {
    **{
        f"siblings-{case}": (lambda case=case: Siblings(case))
        for case in (*TRACED_CASES, "checks-types", "copy-zeroed")
    },
    "shifted": Shifted,
    "wrapped": lambda: Wrapped(by_value=True),
    "wrapped-twice": lambda: WrappedTwice(by_value=True),
    **{
        f"writes-{case}": (lambda case=case: Writes(case))
        for case in (
            "metadata",
            "no-gradient",
            "under-no-grad",
        )
    },
    "returns-its-input": lambda: Others("returns-its-input"),
    "results-apart": lambda: Others("results-apart"),
}


def _annotations(through: bool, model: nn.Module, shape: tuple) -> dict:
    """Every node's annotation by the pass running wrapped calls whole, or reading every
    one of them through its operations (``through``)."""
    gm = trace(model)
    flow = InliningFlow(gm, every=True) if through else GradientFlow(gm)
    flow.run(torch.zeros(shape))
    return {
        n.name: (
            sorted(m.name for m in n.meta[FLOW].grad_from),
            n.meta[FLOW].value,
            n.meta[FLOW].shapes,
            [sorted(m.name for m in part) for part in n.meta.get(PARTS, ())],
        )
        for n in gm.graph.nodes
    }


# Calls not read through their operations: traced, they would check types on proxies or
# write into a copy fx does not follow (test_opaque.py), or write into an argument.
RUN_WHOLE = {"siblings-checks-types", "siblings-copy-zeroed"} | {
    name for name in MODELS if name.startswith("writes-")
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_call_is_read_as_running_it_whole_gives(name: str, monkeypatch) -> None:
    model = MODELS[name]().eval() if name == "returns-its-input" else MODELS[name]()
    shape = (2, 5, 4) if name == "shifted" else (2, 4)
    whole = _annotations(False, model, shape)
    through, read_through = [], InliningFlow._through

    def spy(self, n, inner):
        through.append(n.name)
        return read_through(self, n, inner)

    monkeypatch.setattr(InliningFlow, "_through", spy)
    assert _annotations(True, model, shape) == whole
    assert bool(through) == (name not in RUN_WHOLE)


def test_a_call_writing_into_its_argument_runs_whole(monkeypatch) -> None:
    # accumulate() adds into its first argument: traced, its graph writes into a
    # placeholder, so the pass runs it whole (and checks the write) — the trace is not used
    run_whole = []
    original = GradientFlow._run_under_autograd

    def spy(self, n):
        run_whole.append(n.name)
        return original(self, n)

    monkeypatch.setattr(GradientFlow, "_run_under_autograd", spy)
    gm = trace(Writes("metadata"))
    InliningFlow(gm, every=True).run(torch.zeros(2, 4))
    assert "accumulate" in run_whole
    assert "accumulate" not in [
        n.name for n in gm.graph.nodes if n.op == "call_function" and n.target is inline.setitem_
    ]


class Alike(nn.Module):
    """Two calls of ``attend`` on arguments that look alike (4 features, a 4 x 4 weight, a
    bias): one look."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = _attend(True, x, self.a.weight, self.a.bias)  # by the name fx patched
        return self.head(_attend(True, hidden, self.b.weight, self.b.bias))


def test_each_look_is_traced_once_per_analysis(monkeypatch) -> None:
    # one trace serves the flow pass (neither call runs whole) and the inlining of both
    traced, run_whole = [], []
    trace_by_value, run = inline._traced, GradientFlow._run_under_autograd

    def counting(gm, call, *args):
        traced.append(call.name)
        return trace_by_value(gm, call, *args)

    def spy(self, n):
        run_whole.append(n.name)
        return run(self, n)

    monkeypatch.setattr(inline, "_traced", counting)
    monkeypatch.setattr(GradientFlow, "_run_under_autograd", spy)
    report = gpa.analyze(Alike(), input_shape=(1, 4), tracer="fx")
    assert report.notes == []
    assert traced == ["attend"]
    assert not [name for name in run_whole if name.startswith("attend")]
    # a -> head and b -> head by hand: a feeds b feeds head
    assert {n: r.shortest for n, r in report.layers.items()} == {"a": 3, "b": 2, "head": 1}
