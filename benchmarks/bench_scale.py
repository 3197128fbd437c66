"""Analysis at scale (issue 7, §3): 10,000-layer models and models too large for memory.

Run:  python benchmarks/bench_scale.py [--only NAME] [--no-others]

Each model is built on the meta device (no weights exist) and analysed in a fresh
subprocess, so that its peak resident memory (ru_maxrss) is its own. Printed per model:
layers, parameters, gpa's fx tracing time (trace + meta shape propagation), the whole
``gpa.analyze`` time and peak memory; then, in the same run, the time torchview's
``draw_graph`` and torchlens's ``trace`` take to build their graph of the same model
(torchlens runs the model: real weights where they fit, else its fake-tensor backend).
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Sequence

import torch
from child import call_in_child
from torch import nn

WIDTH = 16


class Block(nn.Module):
    """A pre-norm transformer block written out (so its linears are separate layers)."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).unbind(2)
        att = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding, ``depth`` blocks, a linear head."""

    def __init__(self, dim: int, depth: int, heads: int, mlp: int, patch: int = 14) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.head = nn.Linear(dim, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


def plain_chain(depth: int) -> nn.Module:
    """``depth`` Linear layers with ReLU between: a 10,000-layer PlainNet."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(*layers)


MODELS = {
    # name: (builder, input shape)
    "plain chain, 10,000 linears": (lambda: plain_chain(10_000), (1, WIDTH)),
    "plainnet (zoo), 10,000 convs": (None, None),
    "ViT-g/14 (1.0B params)": (lambda: ViT(1408, 40, 16, 6144), (1, 3, 224, 224)),
    "ViT-22B-sized (21.7B params)": (lambda: ViT(6144, 48, 48, 24576), (1, 3, 224, 224)),
}


def build(name: str, device: str = "meta") -> tuple[nn.Module, tuple[int, ...]]:
    with torch.device(device):
        if name.startswith("plainnet"):
            from gpa.models import build as zoo

            model = zoo("plainnet", depth=10_000 - 2, width=8)
            return model, (1, 3, 16, 16)
        builder, shape = MODELS[name]
        return builder(), shape


def measure(name: str) -> dict:
    """Run in a subprocess: time the phases of one analysis and its peak memory."""
    import gpa
    from gpa.frontends.fx.flow import GradientFlow
    from gpa.frontends.fx.graph import name_outputs
    from gpa.frontends.fx.tracer import trace

    model, shape = build(name)
    gpa.analyze(model, input_shape=shape)  # pays the process's one-off meta-kernel warm-up
    start = time.perf_counter()
    report = gpa.analyze(model, input_shape=shape)
    total = time.perf_counter() - start
    start = time.perf_counter()
    gm = trace(model)  # the fx frontend's tracing: trace, name the outputs, flow pass
    name_outputs(gm.graph)
    gm.recompile()
    GradientFlow(gm).run(torch.zeros(shape, device="meta"))
    tracing = time.perf_counter() - start
    del gm
    return {
        "layers": report.network.layers,
        "params": report.network.params,
        "max_shortest": report.network.max_shortest,
        "tracing": tracing,
        "analyze": total,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def others(name: str) -> dict:
    """torchview's and torchlens's time to build their graph of the same model.

    torchlens runs the model for real: it gets real (CPU) weights and input when they fit
    in memory (the 10,000-layer chains), else its fake-tensor backend is tried.
    """
    model, shape = build(name)
    found: dict = {}
    try:
        from torchview import draw_graph

        start = time.perf_counter()
        draw_graph(model, input_size=shape, device="meta")
        found["torchview"] = time.perf_counter() - start
    except Exception as exc:  # report, do not hide, why a tool could not do it
        found["torchview"] = f"failed: {type(exc).__name__}"
    try:
        import torchlens

        start = time.perf_counter()
        if sum(p.numel() for p in model.parameters()) > 100_000_000:
            # the weights do not fit: torchlens's fake-tensor backend, if it takes the model
            torchlens.trace(model, input_size=shape, backend="fake")
        else:  # torchlens runs the model: real (CPU) weights and input
            real, shape = build(name, "cpu")
            start = time.perf_counter()
            torchlens.trace(real, torch.zeros(shape))
        found["torchlens"] = time.perf_counter() - start
    except Exception as exc:
        found["torchlens"] = f"failed: {type(exc).__name__}"
    return found


def _fmt(value: object) -> str:
    return f"{value:.1f} s" if isinstance(value, float) else str(value)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append")
    parser.add_argument("--no-others", action="store_true")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; each model in its own process, built on the meta device\n")
    for name in MODELS:
        if args.only and not any(o in name for o in args.only):
            continue
        r = call_in_child("bench_scale", "measure", name)
        if "error" in r:
            print(f"{name}: {r['error']}")
            continue
        print(
            f"{name}: {r['layers']} layers, {r['params'] / 1e9:.2f}B params, "
            f"max_shortest {r['max_shortest']}; tracing {r['tracing']:.1f} s, "
            f"gpa.analyze {r['analyze']:.1f} s ({r['tracing'] / r['analyze']:.0%} tracing), "
            f"peak {r['peak_mb']:.0f} MB"
        )
        if not args.no_others:
            o = call_in_child("bench_scale", "others", name)
            print("    " + ", ".join(f"{k}: {_fmt(v)}" for k, v in o.items()))


if __name__ == "__main__":
    main()
