"""Deep residual streams (issue 14): time and peak memory against depth, with growth exponents.

Run:  python benchmarks/bench_residual.py [--layers 1000 3000 10000] [--channels 1000]

A residual chain of N layers is N / 2 blocks ``x = x + fc2(relu(fc1(x)))`` of 16-wide
``Linear`` layers, built on the meta device. It is the worst case of gpa's output: every
layer writing to the stream sends gradient to every later layer reading it, so the
``sources`` lists together are quadratic in depth.

Each depth is analysed in a fresh process (its peak resident memory, ``ru_maxrss``, is its
own: the whole process, Python and torch included) after a warm-up call on a small chain; each figure is the best of two runs, interleaved.
Printed per depth: *tracing* (the fx frontend's own work: symbolic tracing plus shape and
gradient-flow propagation on the meta device, timed apart), the whole ``gpa.analyze``,
their ratio, peak memory; then the growth exponent k of time and memory between
consecutive depths (t ~ N^k). ``--channels N`` also times ``channels=True`` at depth N.
Issue 14's goals: peak < 1 GB at 3,000 and < 2 GB at 10,000 layers; ``gpa.analyze`` <= 1.5x
its tracing; channels at 1,000 layers < 60 s. It asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import time
from collections.abc import Sequence

import torch
from child import call_in_child
from torch import nn

WIDTH = 16
GOALS = {"peak MB": {3000: 1024, 10000: 2048}, "analyze / tracing": 1.5, "channels s": 60.0}


class Block(nn.Module):
    """``x + fc2(relu(fc1(x)))``: two layers on the residual stream."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def residual_chain(layers: int) -> nn.Module:
    """A residual chain of ``layers`` Linear layers (``layers // 2`` blocks), on the meta device."""
    with torch.device("meta"):
        return nn.Sequential(*[Block() for _ in range(layers // 2)])


def measure(layers: int, channels: bool) -> dict:
    """In a fresh process: tracing time, whole-analysis time and peak memory at one depth."""
    import gpa
    from gpa.frontends.fx.flow import GradientFlow
    from gpa.frontends.fx.graph import name_outputs
    from gpa.frontends.fx.tracer import trace

    shape = (1, WIDTH)
    gpa.analyze(residual_chain(20), input_shape=shape, channels=channels)  # one-off warm-up
    model = residual_chain(layers)

    def tracing() -> None:
        gc.disable()  # as gpa.analyze does while it runs
        try:
            gm = trace(model)
            name_outputs(gm.graph)
            gm.recompile()
            GradientFlow(gm).run(torch.zeros(shape, device="meta"))
        finally:
            gc.enable()

    reports = []

    def analysis() -> None:
        reports.append(gpa.analyze(model, input_shape=shape, channels=channels))

    times: dict[str, list[float]] = {"tracing": [], "analyze": []}
    for _ in range(2):  # interleaved, the best of two each: load hits both alike
        for phase, run in (("tracing", tracing), ("analyze", analysis)):
            start = time.perf_counter()
            run()
            times[phase].append(time.perf_counter() - start)
    report = reports[-1]
    tracing_time, total = min(times["tracing"]), min(times["analyze"])
    return {
        "layers": report.network.layers,
        "max_shortest": report.network.max_shortest,
        "tracing": tracing_time,
        "analyze": total,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def exponent(n0: int, v0: float, n1: int, v1: float) -> float:
    """The k of v ~ n^k between two measurements.

    Example:
        >>> round(exponent(1000, 1.0, 3000, 9.0), 2)
        2.0
    """
    return math.log(v1 / v0) / math.log(n1 / n0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[1000, 3000, 10000],
        help="depths in layers (default: 1000 3000 10000)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        nargs="*",
        default=[1000],
        metavar="LAYERS",
        help="depths also analysed with channels=True (default: 1000; none: leave it out)",
    )
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; residual chains of {WIDTH}-wide Linear layers, meta device")
    print("| layers | tracing (s) | gpa.analyze (s) | analyze / tracing | peak (MB) |")
    print("|---:|---:|---:|---:|---:|")
    found = []
    for n in args.layers:
        r = call_in_child("bench_residual", "measure", n, False)
        if "error" in r:
            print(f"| {n} | failed: {r['error']} | | | |")
            continue
        found.append((n, r))
        print(
            f"| {r['layers']} | {r['tracing']:.2f} | {r['analyze']:.2f} | "
            f"{r['analyze'] / r['tracing']:.2f} | {r['peak_mb']:.0f} |"
        )
    for (n0, a), (n1, b) in zip(found, found[1:], strict=False):
        print(
            f"growth {n0} -> {n1} layers: time N^{exponent(n0, a['analyze'], n1, b['analyze']):.2f}, "
            f"tracing N^{exponent(n0, a['tracing'], n1, b['tracing']):.2f}, "
            f"peak memory N^{exponent(n0, a['peak_mb'], n1, b['peak_mb']):.2f}"
        )
    for n in args.channels:
        r = call_in_child("bench_residual", "measure", n, True)
        status = r.get("error") or f"{r['analyze']:.1f} s, peak {r['peak_mb']:.0f} MB"
        print(f"channels=True, {n} layers: {status}")


if __name__ == "__main__":
    main()
