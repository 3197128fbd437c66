"""Benchmark of the core analysis (issue 2, §9): tracing vs. analysis on deep models.

Run:  python benchmarks/bench_core.py [--repeat 3] [--no-torchview]

For each model it times, separately (best of ``--repeat`` runs):
  trace     torch.fx symbolic tracing (gpa.trace.trace)
  values    shape and gradient-flow propagation on the meta device (gpa.flow)
  analysis  everything after: layers, operation graph, gradient paths, records
and prints analysis / trace and analysis / (trace + values). It then times the whole
in-process ``gpa.analyze`` of a ResNet-50-shaped model against torchview's
``draw_graph`` of the same model (if torchview is installed), in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

import gpa
from gpa import api
from gpa.core.graph import GradientGraph, op_graph
from gpa.core.report import NetworkSummary
from gpa.frontends.fx.flow import flow_from_values
from gpa.frontends.fx.layers import find_layers, uncalled_layers
from gpa.frontends.fx.tracer import trace
from gpa.models import build
from gpa.models.darknet import ResStageCfg, _darknet_resnet

RESNET152 = (
    ResStageCfg(3, 64, 256, 1),
    ResStageCfg(8, 128, 512, 2),
    ResStageCfg(36, 256, 1024, 2),
    ResStageCfg(3, 512, 2048, 2),
)


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def phases(model: nn.Module, shape: tuple[int, ...], repeat: int) -> dict[str, float]:
    """Seconds spent tracing, propagating values and analysing ``model``."""
    inputs = (torch.zeros(shape, device="meta"),)
    t_trace, gm = _best(lambda: trace(model), repeat)

    def values() -> None:
        flow_from_values(gm, inputs)

    t_values, _ = _best(values, repeat)

    def analysis() -> object:
        calls = find_layers(gm, None, model)
        graph = GradientGraph(
            ops=op_graph(gm),
            calls={n.name: c for n, c in calls.items()},
            uncalled=uncalled_layers(model, gm),
        )
        records = api._records(graph)
        return NetworkSummary.of(records)

    t_analysis, summary = _best(analysis, repeat)
    return {"trace": t_trace, "values": t_values, "analysis": t_analysis, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-torchview", action="store_true")
    args = parser.parse_args()

    with torch.device("meta"):
        models = {
            "residual chain, 1,000 layers": (build("resnet", blocks=499), (1, 3, 64, 64)),
            "DenseNet, 4 dense blocks of 64 layers": (
                build("densenet", blocks=4, layers=64, growth=8),
                (1, 3, 64, 64),
            ),
            "ResNet-152-shaped (bottlenecks 3/8/36/3)": (
                _darknet_resnet(RESNET152, 1000),
                (1, 3, 224, 224),
            ),
        }
    print(f"torch {torch.__version__}, gpa {gpa.__version__}, best of {args.repeat}\n")
    header = f"{'model':42} {'layers':>6} {'trace':>8} {'values':>8} {'analysis':>9} {'a/t':>6} {'a/(t+v)':>8}"
    print(header)
    print("-" * len(header))
    for name, (model, shape) in models.items():
        r = phases(model, shape, args.repeat)
        ratio = r["analysis"] / r["trace"]
        ratio_all = r["analysis"] / (r["trace"] + r["values"])
        print(
            f"{name:42} {r['summary'].layers:6d} {r['trace']:8.3f} {r['values']:8.3f} "
            f"{r['analysis']:9.3f} {ratio:6.2f} {ratio_all:8.2f}"
        )

    print("\nResNet-50-shaped model (resnet50_darknet), 1x3x224x224, whole call in process:")
    with torch.device("meta"):
        resnet50 = build("resnet50_darknet")
    t_gpa, report = _best(lambda: gpa.analyze(resnet50, input_shape=(1, 3, 224, 224)), args.repeat)
    print(f"  gpa.analyze            {t_gpa:8.3f} s  ({report.network.layers} layers)")
    if args.no_torchview:
        return
    try:
        from torchview import draw_graph
    except ImportError:
        print("  torchview not installed (pip install torchview graphviz): comparison skipped")
        return
    t_tv, _ = _best(
        lambda: draw_graph(resnet50, input_size=(1, 3, 224, 224), device="meta"), args.repeat
    )
    print(f"  torchview.draw_graph   {t_tv:8.3f} s")
    print(f"  gpa / torchview        {t_gpa / t_tv:8.2f}")


if __name__ == "__main__":
    main()
