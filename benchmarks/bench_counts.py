"""Benchmark of parameter and FLOP counting in reports (issue 3, §2).

Run:  python benchmarks/bench_counts.py [--layers 2000]

For deep zoo models (about ``--layers`` layers) it times ``gpa.analyze`` as a whole and,
alone, the counting step of its pipeline (:func:`gpa.frontends.counts.layer_counts`, on an
already built gradient graph), and prints the share of the counting step. It then times
:func:`gpa.frontends.counts.count` (parameters, and FLOPs from a gradient graph built for
counting alone) on every zoo entry. Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

import gpa
import gpa.models
from gpa.frontends import gradient_graph
from gpa.frontends.counts import count, layer_counts
from gpa.options import AnalysisOptions

SHAPE = (1, 3, 16, 16)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2000, help="depth of the deep models")
    args = parser.parse_args(argv)
    deep = [
        ("plainnet", {"depth": args.layers, "width": 8}),
        ("resnet", {"blocks": args.layers // 2, "width": 8}),
    ]
    for name, knobs in deep:
        model = gpa.models.build(name, **knobs)
        start = time.perf_counter()
        report = gpa.analyze(model, input_shape=SHAPE)
        whole = time.perf_counter() - start
        graph = gradient_graph(model, AnalysisOptions(input_shape=SHAPE))
        start = time.perf_counter()
        layer_counts(model, graph, "torch")
        counting = time.perf_counter() - start
        print(
            f"{name}{knobs}: {report.network.layers} layers, gpa.analyze {whole:.2f} s, "
            f"of which counting {counting * 1000:.0f} ms ({counting / whole:.1%})"
        )
    start = time.perf_counter()
    for name in gpa.models.names():
        one = time.perf_counter()
        with torch.device("meta"):
            model = gpa.models.build(name)
        count(model)
        print(f"  count({name}): {time.perf_counter() - one:.3f} s")
    print(
        f"gpa.frontends.counts.count over the zoo ({len(gpa.models.names())} entries): "
        f"{time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    main()
