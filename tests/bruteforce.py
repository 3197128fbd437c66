"""Independent brute-force reference for the property tests (used only by tests).

A *spec* describes a small DAG-shaped model as a list of steps. :class:`SpecNet`
executes a spec in ``forward`` (the spec is fixed at construction, so torch.fx
unrolls the loop over it). :func:`brute_force` works on the spec's own graph,
never on gpa's: it enumerates every route from each layer's output to the loss,
writes each route down as the sequence of layer calls it crosses, de-duplicates
those sequences (two routes between the same two layers that cross no other
layer are one path) and derives every metric from the resulting set of paths.
:func:`autograd_reachable` cross-checks the reference's reachability against a
real backward pass.

Values are tensors of shape ``(BATCH, WIDTH, LENGTH)``. Value 0 is the model
input; step ``i`` (0-based) produces value ``i + 1``.

Step kinds (``Step.args`` are indices of earlier values):

``layer``   (j,)      a layer applied to v_j. Variants: ``conv1`` / ``conv3``
                      (``nn.Conv1d``), ``linear`` (``nn.Linear`` on the last
                      dim) -> module ``m{i}``; ``matmul`` / ``at`` / ``flinear`` /
                      ``einsum`` / ``wstd`` (functional op with a root
                      parameter, or a weight computed from it) -> layer ``p{i}``.
``cat``     (j, ...)  ``torch.cat`` of the operands (repeats allowed) along the
                      channel dim, then ``nn.Conv1d`` back to WIDTH -> ``m{i}``.
``add``     (j, k)    v_j + v_k (j == k allowed).
``mul``     (j, k)    v_j * v_k.
``norm``    (j,)      v_j / v_j.norm(dim=1, keepdim=True): two routes, one path.
``detach``  (j,)      ``.detach()`` / ``torch.detach`` / ``.data``.
``nograd``  (j,)      a conv ``m{i}`` called under ``torch.no_grad()`` /
                      ``torch.set_grad_enabled(False)`` / ``torch.inference_mode()``.
``shape``   (j, k)    an op through which gradient reaches v_j only; v_k gives
                      only its shape, or integer / bool / no-grad values.
``unused``  (j,)      a conv ``m{i}`` applied to v_j whose result nothing reads.
``reuse``   (j,)      the layer of earlier step ``ref`` (a ``layer``, ``nograd`` or
                      ``unused`` step) called again on v_j: weight sharing. Variant
                      ``grad`` or ``nograd`` (this call under ``torch.no_grad()``).
``ghost``   (j,)      v_j passed through unchanged; creates a conv ``m{i}`` that
                      ``forward`` never calls.

Several calls of one layer make one record; its paths are the paths of all its calls
together, a path being the sequence of layer *calls* from a call to the loss (so two
calls contribute separate paths even when their layer names coincide).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BATCH, WIDTH, LENGTH = 2, 4, 3
INPUT_SHAPE = (BATCH, WIDTH, LENGTH)
LOSS = "<loss>"

LAYER_VARIANTS = ("conv1", "conv3", "linear", "matmul", "at", "flinear", "einsum", "wstd")
PARAM_VARIANTS = ("matmul", "at", "flinear", "einsum", "wstd")
DETACH_VARIANTS = ("detach", "torch.detach", "data")
NOGRAD_VARIANTS = ("no_grad", "set_grad_enabled", "inference_mode")
SHAPE_VARIANTS = (
    "zeros_like",
    "ones_like",
    "expand_as",
    "view_as",
    "reshape_as",
    "type_as",
    "new_zeros",
    "size",
    "compare",
    "argmax",
    "long",
    "dropout",
)
LAYER_KINDS = ("layer", "cat", "nograd", "unused", "ghost")
REUSABLE_KINDS = ("layer", "nograd", "unused")


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str
    args: tuple[int, ...]
    variant: str = ""
    ref: int = -1  # for "reuse": index of the step whose layer is called again


@dataclasses.dataclass(frozen=True)
class Spec:
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]  # value indices the model returns, in order (repeats allowed)


def layer_name(i: int, step: Step) -> str | None:
    """The name of the layer step ``i`` creates, or None if it creates none."""
    if step.kind == "layer" and step.variant in PARAM_VARIANTS:
        return f"p{i}"
    if step.kind in LAYER_KINDS:
        return f"m{i}"
    return None


class SpecNet(nn.Module):
    """Executes a :class:`Spec`; every layer step owns its own weights."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        for i, step in enumerate(spec.steps):
            if step.kind == "layer":
                v = step.variant
                if v == "conv1":
                    self.add_module(f"m{i}", nn.Conv1d(WIDTH, WIDTH, 1))
                elif v == "conv3":
                    self.add_module(f"m{i}", nn.Conv1d(WIDTH, WIDTH, 3, padding=1))
                elif v == "linear":
                    self.add_module(f"m{i}", nn.Linear(LENGTH, LENGTH))
                elif v == "wstd":
                    self.register_parameter(f"p{i}", nn.Parameter(torch.randn(WIDTH, WIDTH, 1)))
                else:
                    self.register_parameter(f"p{i}", nn.Parameter(torch.randn(LENGTH, LENGTH)))
            elif step.kind == "cat":
                self.add_module(f"m{i}", nn.Conv1d(WIDTH * len(step.args), WIDTH, 1))
            elif step.kind in ("nograd", "unused", "ghost"):
                self.add_module(f"m{i}", nn.Conv1d(WIDTH, WIDTH, 1))

    def _layer(self, i: int, step: Step, x: torch.Tensor) -> torch.Tensor:
        v = step.variant
        if v in ("conv1", "conv3", "linear"):
            return getattr(self, f"m{i}")(x)
        p = getattr(self, f"p{i}")
        if v == "matmul":
            return torch.matmul(x, p)
        if v == "at":
            return x @ p.t()
        if v == "flinear":
            return F.linear(x, p)
        if v == "einsum":
            return torch.einsum("bcl,lm->bcm", x, p)
        if v == "wstd":
            w = (p - p.mean(dim=(1, 2), keepdim=True)) / (p.std(dim=(1, 2), keepdim=True) + 1e-5)
            return F.conv1d(x, w)
        raise AssertionError(v)

    def _nograd(self, i: int, step: Step, x: torch.Tensor) -> torch.Tensor:
        m = getattr(self, f"m{i}")
        if step.variant == "no_grad":
            with torch.no_grad():
                return m(x)
        if step.variant == "set_grad_enabled":
            with torch.set_grad_enabled(False):
                return m(x)
        if step.variant == "inference_mode":
            with torch.inference_mode():
                y = m(x)
            return y.clone()  # a normal tensor again (still without gradient)
        raise AssertionError(step.variant)

    def _call_again(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        ref = self.spec.steps[step.ref]
        if ref.kind == "layer":
            return self._layer(step.ref, ref, x)
        return getattr(self, f"m{step.ref}")(x)

    def _reuse(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        if step.variant == "nograd":
            with torch.no_grad():
                return self._call_again(step, x)
        return self._call_again(step, x)

    @staticmethod
    def _shape(step: Step, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        v = step.variant
        if v == "zeros_like":
            return a + torch.zeros_like(b)
        if v == "ones_like":
            return a * torch.ones_like(b)
        if v == "expand_as":
            return a.expand_as(b)
        if v == "view_as":
            return a.view_as(b)
        if v == "reshape_as":
            return a.reshape_as(b)
        if v == "type_as":
            return a.type_as(b)
        if v == "new_zeros":
            return a + b.new_zeros(b.shape)
        if v == "size":
            return a.view(b.size(0), -1).view(b.size())
        if v == "compare":
            return a * (b > 0).float()
        if v == "argmax":
            return torch.gather(a, 1, b.argmax(dim=1, keepdim=True).expand(b.shape))
        if v == "long":
            return a + b.long()
        if v == "dropout":
            return a * b.new_empty(b.shape).bernoulli_(0.5)
        raise AssertionError(v)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vals = [x]
        for i, step in enumerate(self.spec.steps):
            a = [vals[j] for j in step.args]
            k = step.kind
            if k == "layer":
                out = self._layer(i, step, a[0])
            elif k == "cat":
                out = getattr(self, f"m{i}")(torch.cat(a, dim=1))
            elif k == "add":
                out = a[0] + a[1]
            elif k == "mul":
                out = a[0] * a[1]
            elif k == "norm":
                out = a[0] / a[0].norm(dim=1, keepdim=True)
            elif k == "detach":
                if step.variant == "detach":
                    out = a[0].detach()
                elif step.variant == "torch.detach":
                    out = torch.detach(a[0])
                else:
                    out = a[0].data
            elif k == "nograd":
                out = self._nograd(i, step, a[0])
            elif k == "shape":
                out = self._shape(step, a[0], a[1])
            elif k == "unused":
                out = getattr(self, f"m{i}")(a[0])
            elif k == "reuse":
                out = self._reuse(step, a[0])
            elif k == "ghost":
                out = a[0]
            else:
                raise AssertionError(k)
            vals.append(out)
        return tuple(vals[o] for o in self.spec.outputs)


# --------------------------------------------------------------------------------------
# brute force on the spec's own graph


def _gradient_operands(step: Step) -> list[int]:
    """Operands of a step through which gradient flows, one entry per route (with repeats)."""
    k = step.kind
    if k in ("layer", "unused", "ghost"):
        return [step.args[0]]
    if k == "reuse":
        return [] if step.variant == "nograd" else [step.args[0]]
    if k == "cat":
        return list(step.args)  # cat(a, a): two routes into the same layer
    if k in ("add", "mul"):
        return [step.args[0], step.args[1]]
    if k == "norm":
        return [step.args[0], step.args[0]]  # numerator and the norm
    if k == "shape":
        return [step.args[0]]  # the second operand contributes no gradient
    if k in ("detach", "nograd"):
        return []
    raise AssertionError(k)


def call_name(spec: Spec, i: int) -> str | None:
    """The layer that step ``i`` calls, or None if it calls none."""
    step = spec.steps[i]
    if step.kind == "reuse":
        return layer_name(step.ref, spec.steps[step.ref])
    if step.kind == "ghost":
        return None
    return layer_name(i, step)


def _without_grad(step: Step) -> bool:
    return step.kind == "nograd" or (step.kind == "reuse" and step.variant == "nograd")


@dataclasses.dataclass
class Expected:
    name: str
    calls: int
    paths: list[tuple[str, ...]]  # one entry per distinct path, written as layer names

    @property
    def reachable(self) -> bool:
        return bool(self.paths)

    @property
    def shortest(self) -> int | None:
        return min(map(len, self.paths)) if self.paths else None

    @property
    def longest(self) -> int | None:
        return max(map(len, self.paths)) if self.paths else None

    @property
    def timestamps(self) -> tuple[int, ...]:
        return tuple(sorted({len(p) for p in self.paths}))

    @property
    def num_paths(self) -> int:
        return len(self.paths)

    @property
    def path_histogram(self) -> dict[int, int]:
        hist: dict[int, int] = {}
        for p in self.paths:
            hist[len(p)] = hist.get(len(p), 0) + 1
        return dict(sorted(hist.items()))

    @staticmethod
    def _sender(p: tuple[str, ...]) -> str:
        return p[1] if len(p) > 1 else LOSS

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted({self._sender(p) for p in self.paths}))

    def sources_at(self, t: int) -> tuple[str, ...]:
        return tuple(sorted({self._sender(p) for p in self.paths if len(p) == t}))


@dataclasses.dataclass
class ExpectedNetwork:
    layers: int
    max_shortest: int | None
    min_shortest: int | None
    mean_shortest: float | None
    longest: int | None
    unreachable: tuple[str, ...]


def brute_force(
    spec: Spec, selected: Sequence[int] | None = None
) -> tuple[dict[str, Expected], ExpectedNetwork]:
    """Every layer's paths, by explicit enumeration of routes in the spec's graph.

    ``selected``: positions in ``spec.outputs`` that feed the loss (None: all).
    Returns the per-layer expectations (called layers in order of first call, then the
    never-called ones in order of creation) and the network metrics.
    """
    out_positions = range(len(spec.outputs)) if selected is None else selected
    loss_feeds = [spec.outputs[p] for p in out_positions]  # value indices, repeats kept

    consumers: dict[int, list[int]] = {}  # value -> consuming values, one entry per route
    for i, step in enumerate(spec.steps):
        for j in _gradient_operands(step):
            consumers.setdefault(j, []).append(i + 1)

    def routes(v: int) -> Iterator[tuple[int, ...]]:
        """Every route from value v to the loss, as the layer calls (step indices) crossed
        after v. Value v is produced by step v - 1."""
        for fed in loss_feeds:
            if fed == v:
                yield ()
        for c in consumers.get(v, []):
            crossed = call_name(spec, c - 1) is not None
            for rest in routes(c):
                yield (c - 1, *rest) if crossed else rest

    call_paths: dict[str, set[tuple[int, ...]]] = {}
    calls: dict[str, int] = {}
    for i, step in enumerate(spec.steps):
        name = call_name(spec, i)
        if name is None:
            continue
        calls[name] = calls.get(name, 0) + 1
        found = call_paths.setdefault(name, set())
        if not _without_grad(step):  # a call under no_grad gives its weights nothing
            found |= {(i, *r) for r in routes(i + 1)}
    for i, step in enumerate(spec.steps):
        name = layer_name(i, step)
        if name is not None and name not in calls:  # created, never called
            calls[name] = 0
            call_paths[name] = set()

    layers = {
        name: Expected(
            name,
            calls[name],
            sorted(tuple(call_name(spec, c) for c in p) for p in call_paths[name]),
        )
        for name in calls
    }

    shortest = [e.shortest for e in layers.values() if e.reachable]
    net = ExpectedNetwork(
        layers=len(layers),
        max_shortest=max(shortest) if shortest else None,
        min_shortest=min(shortest) if shortest else None,
        mean_shortest=sum(shortest) / len(shortest) if shortest else None,
        longest=max((e.longest for e in layers.values() if e.reachable), default=None),
        unreachable=tuple(n for n, e in layers.items() if not e.reachable),
    )
    return layers, net


def autograd_reachable(spec: Spec, selected: Sequence[int] | None = None) -> set[str]:
    """Layers whose weights get a gradient from real autograd (independent sanity check)."""
    torch.manual_seed(0)
    model = SpecNet(spec)
    outs = model(torch.randn(*INPUT_SHAPE))
    positions = range(len(outs)) if selected is None else selected
    loss = sum(outs[p].sum() for p in positions if outs[p].requires_grad)
    if isinstance(loss, torch.Tensor):
        loss.backward()
    got = set()
    for i, step in enumerate(spec.steps):
        name = layer_name(i, step)
        if name is None:
            continue
        owner = getattr(model, name)
        param = owner if isinstance(owner, nn.Parameter) else owner.weight
        if param.grad is not None:
            got.add(name)
    return got
