"""Cost of the channel analysis: ``gpa.analyze(..., channels=True)`` vs ``channels=False``.

Issue 4 asks the channel-level analysis to stay within 3x the whole-layer analysis on a
ResNet-152-shaped model and on the reference models. This prints, per model, the best
wall time of each over a few runs and their ratio; it asserts nothing.

Run: ``python benchmarks/bench_channels.py [--repeat N] [--only NAME ...] [--profile NAME]``.
``--profile NAME`` prints the 25 most expensive functions of one channel analysis
(NAME: ``resnet152`` or a zoo entry). ``--zoo-tier`` measures instead every model of the
zoo tier (tests/zoo/catalog.py: torchvision, timm, Ultralytics, transformers; run it in
the zoo tier's virtualenv), with the inputs the tier gives it and the default tracer.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

import gpa
import gpa.models
from gpa.models.blocks import ConvBnAct, ZooNet, bottleneck_block, stage

GOAL = 3.0

# ResNet-152: bottleneck stages of 3, 8, 36, 3 blocks (inner width, output width, stride).
RESNET152_STAGES = ((3, 64, 256, 1), (8, 128, 512, 2), (36, 256, 1024, 2), (3, 512, 2048, 2))


def resnet152_shaped(num_classes: int = 1000) -> nn.Module:
    """A ResNet-152-shaped network from the zoo's blocks: 7x7 stride-2 stem and max pool,
    bottlenecks 3/8/36/3, GAP, linear. The first block of each stage changes the width
    with a partial shortcut (no projection conv), as the darknet ResNets of the zoo do."""
    stem = nn.Sequential(ConvBnAct(3, 64, 7, 2), nn.MaxPool2d(2, 2))
    stages, c = [], 64
    for blocks, mid, out, stride in RESNET152_STAGES:
        body = [
            bottleneck_block(c if i == 0 else out, mid, out, stride=stride if i == 0 else 1)
            for i in range(blocks)
        ]
        stages.append(stage(blocks=nn.Sequential(*body)))
        c = out
    model = ZooNet(stem, stages, c, num_classes)
    model.input_shape = (1, 3, 224, 224)
    return model


def models(only: list[str] | None) -> list[tuple[str, Callable[[], nn.Module]]]:
    found = [("resnet152", resnet152_shaped)]
    found += [(name, lambda name=name: gpa.models.build(name)) for name in gpa.models.names()]
    return [(n, f) for n, f in found if not only or n in only]


def best(runs: Sequence[Callable[[], object]], repeat: int) -> list[float]:
    """The best time of each of ``runs`` over ``repeat`` rounds, run in turn within each
    round: a slow spell of the machine falls on all of them, not on one."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for run, taken in zip(runs, times, strict=True):
            gc.collect()  # no run pays for the garbage of the one before
            start = time.perf_counter()
            run()
            taken.append(time.perf_counter() - start)
    return [min(taken) for taken in times]


def measure(model: nn.Module, repeat: int, inputs: dict | None = None) -> tuple[float, float]:
    inputs = inputs or {"input_shape": model.input_shape}

    def layers() -> object:
        return gpa.analyze(model, channels=False, **inputs)

    def channels() -> object:
        return gpa.analyze(model, channels=True, **inputs)

    layers(), channels()  # warm up (imports, caches)
    layer_time, channel_time = best([layers, channels], repeat)
    return layer_time, channel_time


def profile(name: str) -> None:
    ((_, build),) = models([name])
    model = build()
    profiler = cProfile.Profile()
    profiler.runcall(gpa.analyze, model, input_shape=model.input_shape, channels=True)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def zoo_tier(repeat: int, only: list[str] | None) -> None:
    """Layer level vs channels on every zoo-tier model that the channel analysis takes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "zoo"))
    os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics probes the network otherwise
    import catalog

    print(f"{'model':<44} {'layer s':>9} {'channel s':>10} {'ratio':>7}")
    worst = 0.0
    for entry in catalog.ENTRIES:
        if only and entry.target not in only:
            continue
        loaded, _ = catalog.build(entry)
        if entry.input_shape is not None:
            inputs: dict = {"input_shape": entry.input_shape}
        elif loaded.example_inputs is not None:
            inputs = {"example_inputs": loaded.example_inputs}
        else:
            inputs = {"input_shape": loaded.input_shape}
        try:
            layer_time, channel_time = measure(loaded.model, repeat, inputs)
        except gpa.GpaError as exc:  # e.g. only the autograd frontend reads it: no channels
            print(f"{entry.target:<44} no channel analysis: {str(exc).splitlines()[0][:60]}")
            continue
        ratio = channel_time / layer_time
        worst = max(worst, ratio)
        flag = "" if ratio <= GOAL else f"  > {GOAL:g}x"
        print(f"{entry.target:<44} {layer_time:>9.3f} {channel_time:>10.3f} {ratio:>6.2f}x{flag}")
    if not worst:
        print("no model measured: --only takes zoo-tier targets, e.g. torchvision:resnet18")
        return
    print(f"worst ratio: {worst:.2f}x (goal: <= {GOAL:g}x)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        nargs="*",
        help="model names: resnet152 or zoo entries; with --zoo-tier, its targets "
        "(e.g. torchvision:resnet18)",
    )
    parser.add_argument("--profile", metavar="NAME")
    parser.add_argument("--zoo-tier", action="store_true", help="the zoo tier's models instead")
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.profile)
        return
    if args.zoo_tier:
        zoo_tier(args.repeat, args.only)
        return
    print(f"{'model':<22} {'layers':>7} {'layer s':>9} {'channel s':>10} {'ratio':>7}")
    worst = 0.0
    for name, build in models(args.only):
        model = build()
        layer_time, channel_time = measure(model, args.repeat)
        ratio = channel_time / layer_time
        worst = max(worst, ratio)
        count = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
        flag = "" if ratio <= GOAL else f"  > {GOAL:g}x"
        print(
            f"{name:<22} {count:>7} {layer_time:>9.3f} {channel_time:>10.3f} {ratio:>6.2f}x{flag}"
        )
    print(f"worst ratio: {worst:.2f}x (goal: <= {GOAL:g}x)")


if __name__ == "__main__":
    main()
