"""Benchmark of ``gpa.measure`` (issue 16): measuring vs the same number of plain steps.

Run:  python benchmarks/bench_measure.py [--batch 32] [--steps 8] [--size 224] [--quick]
          [--torchvision]

The model is the zoo's ResNet-50-shaped ``resnet50_darknet`` (torchvision is not a
dependency), or with ``--torchvision`` torchvision's own ``resnet50`` (the zoo tier's
virtualenv has it). Plain training steps: forward, ``out.sum().backward()``, on the same batches
(no optimizer step, as gpa.measure). The measured time includes everything
``gpa.measure`` does: the structural analysis, the hooks and the CKA. The figure printed
is measure / plain. ``--quick`` uses a tiny model (the test suite only checks it runs).
"""

from __future__ import annotations

import argparse
import time

import torch

import gpa.models
from gpa.measure import measure


def plain_steps(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """Seconds for forward + backward over ``batches``."""
    model.train()
    start = time.perf_counter()
    for x in batches:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--torchvision", action="store_true", help="torchvision's resnet50")
    args = parser.parse_args(argv)
    name = "resnet" if args.quick else "resnet50_darknet"
    size = 32 if args.quick else args.size
    torch.manual_seed(0)
    if args.torchvision:
        import torchvision

        name, model = "torchvision resnet50", torchvision.models.resnet50(weights=None)
    else:
        model = gpa.models.build(name)
    shape = (1, 3, size, size)
    batches = [torch.randn(args.batch, *shape[1:]) for _ in range(args.steps)]
    plain_steps(model, batches[:1])  # warm-up
    plain = plain_steps(model, batches)
    start = time.perf_counter()
    measure(model, input_shape=shape, steps=args.steps, batch_size=args.batch)
    measured = time.perf_counter() - start
    print(
        f"model {name}, input {size}x{size}, batch {args.batch}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"plain steps  {plain:8.2f} s")
    print(f"gpa.measure  {measured:8.2f} s")
    print(f"measure/plain {measured / plain:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
