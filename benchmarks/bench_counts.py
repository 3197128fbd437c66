"""Benchmark of parameter and FLOP counting in reports (issue 3, §2).

Run:  python benchmarks/bench_counts.py

For deep zoo models (about 2000 layers) it times ``gpa.analyze`` as a whole and, alone,
the counting step it ends with (:func:`gpa.counts.count_report`, on an already built
gradient graph), and prints the share of the counting step. It then times
:func:`gpa.counts.count` (a meta forward pass with hooks) on every zoo entry.
Figures only: nothing is asserted.
"""

from __future__ import annotations

import time

import torch

import gpa
import gpa.models
from gpa.api import gradient_graph
from gpa.frontends.counts import count, count_report

DEEP = [("plainnet", {"depth": 2000, "width": 8}), ("resnet", {"blocks": 1000, "width": 8})]
SHAPE = (1, 3, 16, 16)


def main() -> None:
    for name, knobs in DEEP:
        model = gpa.models.build(name, **knobs)
        start = time.perf_counter()
        report = gpa.analyze(model, input_shape=SHAPE)
        whole = time.perf_counter() - start
        graph = gradient_graph(model, input_shape=SHAPE)
        start = time.perf_counter()
        count_report(report, model, graph, "torch")
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
        f"gpa.counts.count over the zoo ({len(gpa.models.names())} entries): "
        f"{time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    main()
