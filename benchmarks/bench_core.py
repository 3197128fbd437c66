"""Benchmark of the core analysis (issue 2, §9): tracing vs. analysis on deep models.

Run:  python benchmarks/bench_core.py [--repeat 3] [--no-torchview] [--quick]

Every figure is the median of ``--repeat`` runs; the runs of the things compared are
interleaved (one run of each per round), so that load on the machine hits them alike.

1. For each deep model it times, separately, the fx frontend's phases:
     trace     torch.fx symbolic tracing (``gpa.frontends.fx.tracer.trace``, outputs named)
     values    shape and gradient-flow propagation on the meta device
               (``gpa.frontends.fx.flow.GradientFlow``)
     analysis  everything after: layers, operation graph, gradient paths, records
   and prints analysis / trace and analysis / (trace + values).
2. It times the whole in-process ``gpa.analyze(model, input_shape=..., tracer=T)`` for
   T in fx, export, autograd and auto on zoo models (built on the CPU, real weights),
   with each tracer's ratio to fx.
3. It times ``gpa.analyze`` of a ResNet-50-shaped model (on the meta device) against
   torchview's ``draw_graph`` of the same model, if torchview is installed.

``--quick`` swaps in tiny models: it only checks that the script runs (the test suite
uses it); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

import gpa
from gpa.core.graph import GradientGraph
from gpa.core.records import layer_records
from gpa.core.report import NetworkSummary
from gpa.frontends.fx.flow import GradientFlow
from gpa.frontends.fx.graph import name_outputs, op_graph
from gpa.frontends.fx.layers import find_layers, uncalled_layers
from gpa.frontends.fx.tracer import trace
from gpa.models import build
from gpa.models.blocks import ConvBnAct, ZooNet, bottleneck_block, stage

TRACERS = ("fx", "export", "autograd", "auto")

# ResNet-152: bottleneck stages of (blocks, inner width, output width, stride).
RESNET152_STAGES = ((3, 64, 256, 1), (8, 128, 512, 2), (36, 256, 1024, 2), (3, 512, 2048, 2))


def resnet152_shaped(stages: Sequence[tuple[int, int, int, int]] = RESNET152_STAGES) -> ZooNet:
    """A darknet-style ResNet-152 from the zoo's blocks, as the zoo builds its ResNet-50
    (``resnet50_darknet``): 7x7 stride-2 stem and max pool, leaky bottlenecks whose first
    block per stage has a partial shortcut, GAP, 1x1 conv head."""
    stem = nn.Sequential(ConvBnAct(3, 64, 7, 2, act="leaky"), nn.MaxPool2d(2, 2))
    body, c = [], 64
    for blocks, mid, out, stride in stages:
        chain = [
            bottleneck_block(
                c if i == 0 else out, mid, out, stride=stride if i == 0 else 1, act="leaky"
            )
            for i in range(blocks)
        ]
        body.append(stage(blocks=nn.Sequential(*chain)))
        c = out
    return ZooNet(stem, body, c, 1000, conv_head=True)


class RecurrentStack(nn.Module):
    """``layers`` bidirectional LSTMs, batch first, each followed by a linear projection
    back to ``width`` (a sequence model's encoder)."""

    def __init__(self, layers: int, width: int = 16) -> None:
        super().__init__()
        self.lstms = nn.ModuleList(
            nn.LSTM(width, width, batch_first=True, bidirectional=True) for _ in range(layers)
        )
        self.projections = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lstm, projection in zip(self.lstms, self.projections, strict=True):
            x = projection(lstm(x)[0])
        return x


def median_interleaved(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """The median wall time of each of ``runs``, running one of each per round."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeat):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def analysis(gm: torch.fx.GraphModule, model: nn.Module) -> NetworkSummary:
    """What follows the fx frontend's tracing and flow pass: layers, operation graph,
    gradient paths and records (as ``gpa.frontends.fx.fx_gradient_graph`` and
    ``gpa.pipeline.analyze_model`` do it, without parameter and FLOP counts)."""
    calls = find_layers(gm, None, model)
    graph = GradientGraph(
        ops=op_graph(gm),
        calls={node.name: call for node, call in calls.items()},
        tracer="fx",
        uncalled=uncalled_layers(model, gm, None, calls),
    )
    return NetworkSummary.of(layer_records(graph))


def phases(model: nn.Module, shape: tuple[int, ...], repeat: int) -> dict[str, object]:
    """Median seconds spent tracing, propagating values and analysing ``model``; each
    round traces afresh and runs the later phases on that round's graph."""
    inputs = (torch.zeros(shape, device="meta"),)
    times: dict[str, list[float]] = {"trace": [], "values": [], "analysis": []}
    summary = None
    for _ in range(repeat):
        start = time.perf_counter()
        gm = trace(model)
        name_outputs(gm.graph)
        gm.recompile()
        traced = time.perf_counter()
        GradientFlow(gm).run(*inputs)
        flowed = time.perf_counter()
        summary = analysis(gm, model)
        done = time.perf_counter()
        times["trace"].append(traced - start)
        times["values"].append(flowed - traced)
        times["analysis"].append(done - flowed)
    found: dict[str, object] = {k: statistics.median(t) for k, t in times.items()}
    found["summary"] = summary
    return found


def deep_models(quick: bool) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    with torch.device("meta"):
        if quick:
            return {
                "residual chain, 8 layers": (build("resnet", blocks=3), (1, 3, 16, 16)),
                "ResNet-shaped, bottlenecks 1/1": (
                    resnet152_shaped(((1, 8, 16, 1), (1, 8, 16, 2))),
                    (1, 3, 32, 32),
                ),
                "LSTM stack, 2 x 4 steps": (RecurrentStack(2), (2, 4, 16)),
            }
        return {
            "residual chain, 1,000 layers": (build("resnet", blocks=499), (1, 3, 64, 64)),
            "DenseNet, 4 dense blocks of 64 layers": (
                build("densenet", blocks=4, layers=64, growth=8),
                (1, 3, 64, 64),
            ),
            "ResNet-152-shaped (bottlenecks 3/8/36/3)": (resnet152_shaped(), (1, 3, 224, 224)),
            "LSTM stack, 16 bidirectional x 64 steps": (RecurrentStack(16), (8, 64, 16)),
        }


def tracer_models(quick: bool) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Zoo models built on the CPU (real weights), with the input shapes they are timed at."""
    names = ["csp"] if quick else ["resnet50_darknet", "cspresnet50", "yolo_elan"]
    found = {}
    for name in names:
        model = build(name)
        shape = (1, 3, 224, 224) if name == "resnet50_darknet" else model.input_shape
        found[name] = (model, tuple(shape))
    return found


def time_phases(quick: bool, repeat: int) -> None:
    header = (
        f"{'model':42} {'layers':>6} {'trace':>8} {'values':>8} {'analysis':>9} "
        f"{'a/t':>6} {'a/(t+v)':>8}"
    )
    if not quick:  # untimed: the process's one-off meta-kernel warm-up for these ops
        with torch.device("meta"):
            for name in ("resnet", "densenet"):
                gpa.analyze(build(name), input_shape=(1, 3, 32, 32), tracer="fx")
    print(header)
    print("-" * len(header))
    for name, (model, shape) in deep_models(quick).items():
        r = phases(model, shape, repeat)
        t, v, a = r["trace"], r["values"], r["analysis"]
        print(
            f"{name:42} {r['summary'].layers:6d} {t:8.3f} {v:8.3f} {a:9.3f} "
            f"{a / t:6.2f} {a / (t + v):8.2f}"
        )


def time_tracers(quick: bool, repeat: int) -> None:
    print("\nWhole in-process gpa.analyze(model, input_shape=..., tracer=T), CPU weights:")
    models = tracer_models(quick)
    # one untimed call per tracer first: each frontend's one-off imports and warm-up
    warm_model, warm_shape = next(iter(models.values()))
    for tracer in TRACERS:
        gpa.analyze(warm_model, input_shape=warm_shape, tracer=tracer)
    header = (
        f"{'model':18} {'input':>14} {'layers':>6} "
        + " ".join(f"{t + ' s':>10}" for t in TRACERS)
        + " "
        + " ".join(f"{t + '/fx':>11}" for t in TRACERS[1:])
    )
    print(header)
    print("-" * len(header))
    for name, (model, shape) in models.items():
        runs = {t: partial(gpa.analyze, model, input_shape=shape, tracer=t) for t in TRACERS}
        times = median_interleaved(runs, repeat)
        layers = gpa.analyze(model, input_shape=shape, tracer="fx").network.layers
        size = "x".join(map(str, shape))
        print(
            f"{name:18} {size:>14} {layers:6d} "
            + " ".join(f"{times[t]:10.3f}" for t in TRACERS)
            + " "
            + " ".join(f"{times[t] / times['fx']:11.2f}" for t in TRACERS[1:])
        )


def time_torchview(quick: bool, repeat: int) -> None:
    name, shape = ("csp", (1, 3, 64, 64)) if quick else ("resnet50_darknet", (1, 3, 224, 224))
    print(f"\n{name}, {'x'.join(map(str, shape))}, meta device, whole call in process:")
    with torch.device("meta"):
        model = build(name)
    try:
        from torchview import draw_graph
    except ImportError:
        draw_graph = None
    runs: dict[str, Callable[[], object]] = {
        "gpa.analyze": lambda: gpa.analyze(model, input_shape=shape)
    }
    if draw_graph is not None:
        runs["torchview.draw_graph"] = lambda: draw_graph(model, input_size=shape, device="meta")
    times = median_interleaved(runs, repeat)
    for key, seconds in times.items():
        print(f"  {key:22} {seconds:8.3f} s")
    if draw_graph is None:
        print("  torchview not installed (pip install torchview graphviz): comparison skipped")
    else:
        print(
            f"  gpa / torchview        {times['gpa.analyze'] / times['torchview.draw_graph']:8.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-torchview", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny models: checks the script runs")
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__}, gpa {gpa.__version__}, "
        f"median of {args.repeat} interleaved runs\n"
    )
    time_phases(args.quick, args.repeat)
    time_tracers(args.quick, args.repeat)
    if not args.no_torchview:
        time_torchview(args.quick, args.repeat)


if __name__ == "__main__":
    main()
