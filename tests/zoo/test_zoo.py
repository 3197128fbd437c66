"""Zoo tier: torchvision, timm, Ultralytics and Hugging Face architectures, analysed by
the default tracer and compared frontend against frontend.

Run by ``.ci/zoo`` (its own virtualenv with torch 2.14.1 and the libraries); the default
``pytest`` run deselects it. Every entry of :mod:`catalog` is loaded as its ``gpa
analyze`` target and must be analysed by ``tracer="auto"``; every pair of frontends
(fx, export, autograd) that can read it must give identical per-layer records (names,
types, calls, shortest, longest, timestamps, num_paths, histogram, sources), except the
documented cases of :data:`catalog.KNOWN_DIFFERENCES`, whose difference is checked to be
exactly the one described. Analysing a model must leave it as it was. The models built on
the CPU (and a few others) are checked against one real forward and backward pass: calls
counted by forward hooks, and which layers' parameters receive gradient.
"""

from __future__ import annotations

import itertools

import pytest
from catalog import (
    BACKWARD_CHECKED,
    ENTRIES,
    FRONTENDS,
    KNOWN_DIFFERENCES,
    KNOWN_FACT_ERRORS,
    KNOWN_SIDE_EFFECTS,
    Entry,
    Outcome,
    build,
    independent_facts,
    real_pass,
    records,
    run,
)

pytestmark = pytest.mark.zoo

_IDS = {"ids": lambda e: e.target}


def _first_difference(a, b) -> str:
    for x, y in itertools.zip_longest(records(a.layers), records(b.layers)):
        if x != y:
            return f"{x}\n  vs {y}"
    return "same records"


@pytest.mark.parametrize("entry", ENTRIES, **_IDS)
def test_frontends_agree(entry: Entry) -> None:
    outcome = run(entry)
    errors = "; ".join(f"{t}: {e}" for t, e in outcome.errors.items())
    assert outcome.auto is not None, f"auto: {outcome.auto_error} ({errors})"
    known = KNOWN_DIFFERENCES.get(entry.target)
    wrong = known.wrong if known else ()
    # auto uses the first of fx, export, autograd that reads the model; fx gives way
    # where it cannot look into a function that reads parameters (its known misses), and
    # autograd is tried before export then (semantics §1.6).
    order = FRONTENDS
    if "fx" in wrong and "fx" in outcome.read_by:
        order = ("fx", "autograd", "export")
    before = order[: order.index(outcome.auto_tracer)]
    assert all(t not in outcome.read_by or (t == "fx" and t in wrong) for t in before)
    right = [t for t in outcome.read_by if t not in wrong]
    for a, b in itertools.combinations(right, 2):
        ra, rb = outcome.reports[a], outcome.reports[b]
        assert records(ra.layers) == records(rb.layers), (
            f"{a} and {b} disagree: {_first_difference(ra, rb)}"
        )
        assert ra.network == rb.network
    if known is not None:
        assert set(known.wrong) <= set(outcome.read_by)
        assert known.check(outcome.reports), (
            f"the known difference of {entry.target} is no longer the one described "
            f"(fixed? then drop it from KNOWN_DIFFERENCES): {known.reason}"
        )
    # analysing the model left it as it was (semantics §1.8)
    assert outcome.changed == KNOWN_SIDE_EFFECTS.get(entry.target, (set(), ""))[0]
    if entry.target in BACKWARD_CHECKED:
        _check_real_pass(outcome)


def _check_real_pass(outcome: Outcome) -> None:
    """Calls and reachability as one real forward and backward pass show them, for every
    frontend that reads the model (the known exceptions exactly as recorded). The pass
    runs on a model built afresh (the analysed one may hold the analyses' side effects)."""
    entry = outcome.entry
    model = build(Entry(entry.target, entry.family, entry.kwargs, device="cpu"))[0].model
    facts = real_pass(model, outcome.inputs)
    for tracer in outcome.read_by:
        found = independent_facts(model, outcome.reports[tracer], facts)
        expected = KNOWN_FACT_ERRORS.get((entry.target, tracer), set())
        assert found == expected, f"{tracer} against a real backward pass"


def test_catalog_spans_the_families() -> None:
    families = {e.family for e in ENTRIES}
    wanted = {
        "VGG", "ResNet", "ResNeXt", "Wide ResNet", "DenseNet", "MobileNet v2", "MobileNet v3",
        "EfficientNet", "RegNet", "ShuffleNet", "SqueezeNet", "GoogLeNet", "Inception",
        "ConvNeXt", "ViT", "DeiT", "Swin", "MLP-Mixer", "CSPDarknet", "CSPResNet", "DarkNet",
        "VoVNet", "HRNet", "DLA", "Res2Net",
        "YOLOv8 (detect)", "YOLO11 (detect)", "YOLOv8 (segment)", "YOLOv8 (classify)",
        "YOLOv8 (pose)", "RT-DETR", "BERT", "GPT-2", "Llama", "T5", "ViT (HF)", "Whisper",
    }  # fmt: skip
    assert wanted <= families
    assert len(ENTRIES) >= 80
    assert len({e.target for e in ENTRIES}) == len(ENTRIES)
    assert {e.library for e in ENTRIES} == {"torchvision", "timm", "ultralytics", "transformers"}
    assert set(KNOWN_DIFFERENCES) <= {e.target for e in ENTRIES}
    assert all(set(k.wrong) <= set(FRONTENDS) for k in KNOWN_DIFFERENCES.values())


@pytest.mark.parametrize(
    "name, act", [("efficientnet_b0", "SwishMe"), ("mobilenetv3_small_100", "HardSwishMe")]
)
def test_timms_memory_efficient_activations_give_the_paths_of_torchs(name, act) -> None:
    # timm's SwishMe / HardSwishMe apply custom autograd Functions (forward under no_grad,
    # a backward of their own): an activation changes no gradient path, so the records
    # equal those of the same model with torch's nn.SiLU / nn.Hardswish, on every frontend
    # that reads it (fx traced into the Functions' forward: every layer but the
    # classifier was reported unreachable). Export refuses custom Functions.
    import timm
    import torch
    from timm.layers import activations_me

    import gpa

    inputs = (torch.randn(2, 3, 64, 64),)
    native = gpa.analyze(timm.create_model(name), inputs)
    model = timm.create_model(name, act_layer=getattr(activations_me, act))
    for tracer in ("auto", "fx", "autograd"):
        report = gpa.analyze(model, inputs, tracer=tracer)
        assert report.tracer == ("fx" if tracer == "auto" else tracer)
        assert records(report.layers) == records(native.layers), tracer
    assert all(r.reachable for r in native.layers.values())
    with pytest.raises(gpa.errors.TraceError, match="custom autograd Function"):
        gpa.analyze(model, inputs, tracer="export")


def test_condconv_convolutions_are_layers() -> None:
    # timm's CondConv2d mixes its expert kernels by routing weights computed from the
    # block's input, then convolves: the convolution is the layer, the mixing is not
    # (semantics §2). EfficientNet-CondConv's last block, blocks.6.0 (no shortcut):
    # conv_pw → conv_dw → [SE: conv_reduce → conv_expand, a gate] → conv_pwl → conv_head →
    # classifier, and routing_fn (from the pooled block input) makes all three kernels.
    import gpa

    loaded, _ = build(Entry("timm:efficientnet_cc_b0_4e", "EfficientNet-CondConv"))
    reports = {
        t: gpa.analyze(loaded.model, input_shape=(1, 3, 64, 64), tracer=t) for t in FRONTENDS
    }
    fx = reports["fx"]
    assert all(records(r.layers) == records(fx.layers) for r in reports.values())
    block = {k.removeprefix("blocks.6.0."): r for k, r in fx.layers.items() if "blocks.6.0." in k}
    expected = {  # name: (path histogram, sources)
        "conv_pwl": ({3: 1}, {"conv_head"}),
        "se.conv_expand": ({4: 1}, {"blocks.6.0.conv_pwl"}),
        "se.conv_reduce": ({5: 1}, {"blocks.6.0.se.conv_expand"}),
        "conv_dw": ({4: 1, 6: 1}, {"blocks.6.0.conv_pwl", "blocks.6.0.se.conv_reduce"}),
        "conv_pw": ({5: 1, 7: 1}, {"blocks.6.0.conv_dw"}),
        "routing_fn": (
            {4: 1, 5: 1, 6: 1, 7: 1, 8: 1},
            {f"blocks.6.0.{c}" for c in ("conv_pw", "conv_dw", "conv_pwl")},
        ),
    }
    for name, (histogram, sources) in expected.items():
        assert (dict(block[name].path_histogram), set(block[name].sources)) == (
            histogram,
            sources,
        ), name
    assert {r.type for r in block.values()} == {"CondConv2d", "Conv2d", "Linear"}
    assert all(r.calls == 1 for r in fx.layers.values())


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_passes_through_as_it_runs(mode, p, train, monkeypatch) -> None:
    # torchvision's stochastic_depth (fx records it whole) is passed through by the flow
    # pass without a meta run; the paths must be those of a real forward and backward
    # (the autograd frontend), also where it drops every sample (p = 1: zeros times the
    # input, still a path) and where it returns its input (p = 0, eval)
    from torch import nn
    from torchvision.ops import StochasticDepth

    import gpa
    from gpa.frontends.fx.flow import GradientFlow

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1)
            self.drop, self.head = StochasticDepth(p, mode), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.head(y + self.drop(self.b(y)))

    ran = []
    run = GradientFlow._run_under_autograd
    monkeypatch.setattr(
        GradientFlow, "_run_under_autograd", lambda self, n: ran.append(n.name) or run(self, n)
    )
    model = Block().train(train)
    fx = gpa.analyze(model, input_shape=(2, 3, 5, 5), tracer="fx", train=train)
    assert not [n for n in ran if "stochastic_depth" in n]
    autograd = gpa.analyze(model, input_shape=(2, 3, 5, 5), tracer="autograd", train=train)
    assert records(fx.layers) == records(autograd.layers)
    assert (fx.layers["a"].shortest, fx.layers["a"].longest) == (2, 3)  # head; head ← b


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_a_write_through_stochastic_depth_returning_its_input(p, train) -> None:
    # y = sd(h); y += f(h'); b(h): stochastic_depth returns h itself in eval mode or at
    # p = 0, and the write then reaches b (by hand: f's sources b and g; else g alone);
    # fx refuses what its graph cannot show, auto's answer is a real backward's
    from torch import nn
    from torchvision.ops import StochasticDepth

    import gpa
    from gpa.errors import TraceError

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.f = nn.Linear(3, 4), nn.Linear(4, 4)
            self.b, self.g = nn.Linear(4, 2), nn.Linear(4, 2)
            self.drop = StochasticDepth(p, "row")

        def forward(self, x):
            h = self.a(x)
            y = self.drop(h)
            y += self.f(h * 1.0)
            return self.b(h) + self.g(y)

    aliased = p == 0.0 or not train
    if aliased:
        with pytest.raises(TraceError, match="holds the same memory as 'a'"):
            gpa.analyze(Block(), input_shape=(2, 3), tracer="fx", train=train)
    for tracer in ("auto", "autograd"):
        report = gpa.analyze(Block(), input_shape=(2, 3), tracer=tracer, train=train)
        assert sorted(report.layers["f"].sources) == (["b", "g"] if aliased else ["g"])
