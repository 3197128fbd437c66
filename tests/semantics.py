"""Helpers of the hand-derived gradient-path semantics tests (issue 2 §3, §8).

The tests live by topic in tests/core/test_paths.py (worked examples),
tests/core/test_serialize.py, tests/frontends/test_layers.py,
tests/frontends/test_gradient_flow.py, tests/frontends/test_inputs_outputs.py and
tests/frontends/test_tracing.py.

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md): a gradient path of a layer is a sequence of layers from
that layer to ``<loss>`` along which gradient flows; its length counts the layers on
it, the layer itself included; two routes between the same two layers that cross no
other layer are one path. None of these numbers was copied from gpa's output.

Most checks state a layer's full path histogram {length: count}; shortest, longest,
timestamps and num_paths follow from it (min key, max key, sorted keys, sum of counts).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gpa

IMG = (1, 3, 8, 8)
LOSS = "<loss>"


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling to (N, C): no layer."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def run(model, example, with_inputs: bool):
    """Analyse with example inputs (values decide gradient flow) or without any (op names do)."""
    return gpa.analyze(model, example) if with_inputs else gpa.analyze(model)


WITH_INPUTS = pytest.mark.parametrize("with_inputs", [True, False], ids=["inputs", "no-inputs"])


def expect(report, name: str, hist: dict[int, int], sources: tuple[str, ...], calls: int = 1):
    """Assert every path metric of one layer from its hand-derived histogram and sources."""
    rec = report.layers[name]
    assert rec.name == name
    assert rec.reachable, name
    assert rec.calls == calls, name
    assert dict(rec.path_histogram) == hist, name
    assert rec.shortest == min(hist), name
    assert rec.longest == max(hist), name
    assert tuple(rec.timestamps) == tuple(sorted(hist)), name
    assert rec.num_paths == sum(hist.values()), name
    assert sorted(rec.sources) == sorted(sources), name  # order: test_sources_order
    assert len(rec.sources) == len(set(rec.sources)), name


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


def check_reachability_with_autograd(report, model, *inputs):
    """Independent check of the hand derivation: run the model for real, backpropagate the
    sum of its outputs, and compare which layers' parameters got a gradient with the
    layers the report marks reachable."""
    model.zero_grad(set_to_none=True)
    loss = sum(t.sum() for t in _tensors(model(*inputs)) if t.requires_grad)
    loss.backward()
    got = set()
    for name in report.layers:
        try:
            params = list(model.get_submodule(name).parameters())
        except AttributeError:
            params = [model.get_parameter(name)]
        if any(p.grad is not None for p in params):
            got.add(name)
    assert got == {n for n, r in report.layers.items() if r.reachable}


def at(senders) -> tuple[str, ...]:
    """sources_at(t) as a sorted tuple (its order: see test_sources_order)."""
    return tuple(sorted(senders))


def expect_unreachable(report, name: str, calls: int = 1):
    rec = report.layers[name]
    assert not rec.reachable, name
    assert rec.calls == calls, name
    assert rec.shortest is None and rec.longest is None, name
    assert tuple(rec.timestamps) == (), name
    assert rec.num_paths == 0, name
    assert dict(rec.path_histogram) == {}, name
    assert tuple(rec.sources) == (), name
    assert name in report.network.unreachable


def expect_network(
    report, *, layers, max_shortest, min_shortest, mean_shortest, longest, unreachable=()
):
    n = report.network
    assert n.layers == layers
    assert n.max_shortest == max_shortest
    assert n.min_shortest == min_shortest
    assert n.mean_shortest == pytest.approx(mean_shortest, abs=1e-6)
    assert n.longest == longest
    assert sorted(n.unreachable) == sorted(unreachable)
    assert len(n.unreachable) == len(unreachable)
