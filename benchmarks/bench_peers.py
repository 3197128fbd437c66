"""gpa beside its peers on the models people use (issue 14): one run, interleaved, medians.

Run:  python benchmarks/bench_peers.py [--repeat 3] [--only TARGET ...] [--no-channels]
      (needs torchvision and timm; torchview and torchlens are timed when installed:
      ``pip install torchview graphviz torchlens``)

Every model is built once on the CPU (real weights, eval-free: as a user has it), with one
input tensor of 1x3x224x224. Each round runs every contender once on every model, so load
on the machine hits them alike; every figure is the median of ``--repeat`` rounds, after one
untimed warm-up round (one-off imports, kernel and tracer caches). The contenders:

  fx trace      ``torch.fx.symbolic_trace(model)`` alone (no shapes, no analysis)
  gpa fx        ``gpa.analyze(model, (x,), tracer="fx")``
  gpa auto      ``gpa.analyze(model, (x,))`` (the default tracer)
  gpa channels  ``gpa.analyze(model, (x,), channels=True)``
  torchview     ``torchview.draw_graph(model, input_data=x, device="cpu")`` (graph only,
                nothing rendered; it runs the model)
  torchlens     ``torchlens.trace(model, x, save=None)`` (metadata only; it runs the model)
                in a child process per round, timed after one warm-up call there: torchlens
                wraps torch's functions for good on its first call, which would slow
                every other contender in the same process

It prints the table and the issue's ratios (gpa / torchview <= 0.5, gpa / fx trace <= 2,
channels / layer level <= 3) with "met" or "missed"; it asserts nothing.
``--quick`` swaps in two tiny torchvision-free models to check the script runs.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

import gpa

SIZE = (1, 3, 224, 224)
MODELS = (
    "torchvision:resnet50",
    "torchvision:densenet121",
    "torchvision:efficientnet_b0",
    "torchvision:vit_b_16",
    "torchvision:convnext_tiny",
    "torchvision:swin_t",
    "timm:cspdarknet53",
)
QUICK = ("gpa.models:csp", "gpa.models:resnet")
GOALS = {"gpa fx / torchview": 0.5, "gpa fx / fx trace": 2.0, "channels / layer": 3.0}


def build(target: str) -> nn.Module:
    """The model a ``library:name`` target names, with fresh (random) weights."""
    library, name = target.split(":")
    if library == "gpa.models":
        from gpa.models import build as zoo

        return zoo(name)
    if library == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    if library == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    raise ValueError(f"unknown library {library!r}")


def contenders(
    model: nn.Module, x: torch.Tensor, channels: bool, target: str | None = None
) -> dict[str, Callable]:
    """What is timed on one model, by column name (only the peers that are installed)."""
    runs: dict[str, Callable] = {
        "fx trace": lambda: torch.fx.symbolic_trace(model),
        "gpa fx": lambda: gpa.analyze(model, (x,), tracer="fx"),
        "gpa auto": lambda: gpa.analyze(model, (x,)),
    }
    if channels:
        runs["gpa channels"] = lambda: gpa.analyze(model, (x,), channels=True)
    try:
        from torchview import draw_graph

        runs["torchview"] = lambda: draw_graph(model, input_data=x, device="cpu")
    except ImportError:
        pass
    if importlib.util.find_spec("torchlens") is not None and target is not None:
        runs["torchlens"] = partial(torchlens_in_child, target)
    return runs


def torchlens_in_child(target: str) -> float | str:
    """torchlens's time on ``target``, measured in a fresh process after a warm-up call."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import bench_peers; bench_peers.time_torchlens({target!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = done.stdout.split()
    if done.returncode or not lines:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:60]
    return float(lines[-1])


def time_torchlens(target: str) -> None:
    """Print the seconds one ``torchlens.trace`` of ``target`` takes (after a warm-up)."""
    import torchlens

    warnings.filterwarnings("ignore")  # its notes on train-mode batch norm
    torch.manual_seed(0)
    model, x = build(target), torch.randn(SIZE)
    torchlens.trace(model, x, save=None)
    start = time.perf_counter()
    torchlens.trace(model, x, save=None)
    print(time.perf_counter() - start)


def timed(run: Callable) -> float | str:
    gc.collect()  # every contender starts on a collected heap: none pays for another's garbage
    start = time.perf_counter()
    try:
        run()
    except Exception as exc:  # a peer that cannot take the model: say so in its cell
        return f"failed: {type(exc).__name__}"
    return time.perf_counter() - start


def measure(models: dict[str, nn.Module], repeat: int, channels: bool) -> dict:
    """``{model: {column: median seconds or 'failed: ...'}}``, interleaved rounds."""
    x = torch.randn(SIZE)
    runs = {name: contenders(m, x, channels, name) for name, m in models.items()}
    found: dict[str, dict[str, list]] = {n: {c: [] for c in r} for n, r in runs.items()}
    for round_ in range(repeat + 1):
        for name, columns in runs.items():
            for column, run in columns.items():
                if column == "torchlens" and not round_:
                    continue  # it warms up in its own process
                seconds = run() if column == "torchlens" else timed(run)
                if round_:  # round 0 warms up
                    found[name][column].append(seconds)
    return {
        name: {
            c: next((s for s in times if isinstance(s, str)), None) or statistics.median(times)
            for c, times in columns.items()
        }
        for name, columns in found.items()
    }


def ratio(a: object, b: object) -> float | None:
    return a / b if isinstance(a, float) and isinstance(b, float) else None


def report(table: dict) -> None:
    columns = list(next(iter(table.values())))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    print("| model | " + " | ".join(f"{c} (s)" for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(cell(row[c]) for c in columns) + " |")
    print("\n| model | " + " | ".join(GOALS) + " |")
    print("|---|" + "---:|" * len(GOALS))
    missed: dict[str, list[str]] = {g: [] for g in GOALS}
    measured: dict[str, int] = dict.fromkeys(GOALS, 0)
    for name, row in table.items():
        values = {
            "gpa fx / torchview": ratio(row["gpa fx"], row.get("torchview")),
            "gpa fx / fx trace": ratio(row["gpa fx"], row["fx trace"]),
            "channels / layer": ratio(row.get("gpa channels"), row["gpa auto"]),
        }
        for goal, value in values.items():
            measured[goal] += value is not None
            if value is not None and value > GOALS[goal]:
                missed[goal].append(name)
        print(
            f"| {name} | "
            + " | ".join("-" if v is None else f"{v:.2f}" for v in values.values())
            + " |"
        )
    print()
    for goal, bound in GOALS.items():
        status = "missed on " + ", ".join(missed[goal]) if missed[goal] else "met"
        if not measured[goal]:
            status = "not measured (a contender is not installed)"
        print(f"goal {goal} <= {bound}: {status}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=MODELS,
        metavar="TARGET",
        help="models of the list only: " + ", ".join(MODELS),
    )
    parser.add_argument("--no-channels", action="store_true", help="leave out gpa channels")
    parser.add_argument("--quick", action="store_true", help="tiny models: checks the script runs")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    targets = QUICK if args.quick else [t for t in MODELS if not args.only or t in args.only]
    models = {t: build(t) for t in targets}
    print(
        f"torch {torch.__version__}, gpa {gpa.__version__}, {torch.get_num_threads()} threads, "
        f"input {'x'.join(map(str, SIZE))}, median of {args.repeat} interleaved rounds\n"
    )
    report(measure(models, args.repeat, not args.no_channels))


if __name__ == "__main__":
    main()
