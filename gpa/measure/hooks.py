"""Capturing the gradient each layer receives at its output, reduced as it arrives.

A forward hook on every layer module registers a tensor hook on each floating output that
requires gradient — and so does a ``TorchFunctionMode`` on each result of a feature-mixing
call of a functional layer, or of a layer module's weight outside any layer module
(:class:`_FunctionalCalls`, ``docs/semantics.md`` §11); when the backward pass reaches
that output, the hook reduces the gradient ``g`` at once to

* its squared Frobenius norm ``‖g‖²`` (and, per channel segment, that of the segment's
  channels), and
* a (batch, channels) feature matrix: ``g`` averaged over every axis but the batch axis
  (0) and the channel axis (1 for convolutions, the last axis otherwise, as in
  ``docs/semantics.md`` §8).

Nothing else of ``g`` is kept. The calls of a module in one step are merged: their squared
norms add up and their feature matrices are joined along the channel axis, in forward
order. An output whose gradient never arrives (consumed only after ``.detach()``) counts as
zero. :meth:`GradientRecorder.end_step` hands back one step's reductions and clears them,
so memory holds one step's reduced values, never all steps' gradients.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    >>> with GradientRecorder({"0": net[0], "1": net[1]}) as rec:
    ...     net(torch.ones(4, 3)).sum().backward()
    ...     step = rec.end_step()
    >>> step.sq_norms["1"], step.features["1"].shape
    (4.0, (4, 1))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from gpa.channels.rules import is_conv, layer_channel_axis
from gpa.frontends.fx.flow import differentiable
from gpa.frontends.metadata import reads_metadata_only
from gpa.frontends.operators import MIXING_FUNCTION_NAMES, function_name
from gpa.frontends.watch import reentrant_checkpoint_calls

__all__ = ["GradientRecorder", "StepGradients", "channel_axis", "output_tensors"]


def channel_axis(module: nn.Module, shape: tuple[int, ...] | None = None) -> int:
    """The axis of a layer's result holding its channels, as the channel analysis finds it
    (§8): 1 for a convolution (or a module containing one), -1 otherwise; given the
    result's ``shape``, the last axis also for a convolution's tokens ``(B, N, C)`` (see
    :func:`gpa.channels.rules.layer_channel_axis`: a leaf returning tokens).

    Example:
        >>> channel_axis(nn.Conv2d(1, 1, 1)), channel_axis(nn.Linear(1, 1))
        (1, -1)
        >>> channel_axis(nn.Sequential(nn.Conv2d(3, 8, 4), nn.Flatten(2)), (1, 25, 8))
        2
    """
    if shape is None:
        return 1 if is_conv(module, None) else -1
    return layer_channel_axis(module, None, shape, output=True)  # the channel analysis' rule


def output_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The floating tensors in a module's output (tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from output_tensors(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from output_tensors(v)


def _features(g: torch.Tensor, axis: int) -> torch.Tensor:
    """``g`` (B, ...) averaged over all axes but 0 and ``axis``: (B, C), float64 on the CPU."""
    g = g.detach()
    if g.is_complex():
        g = g.abs()
    if g.dim() == 0:
        return g.reshape(1, 1).double().cpu()
    if g.dim() == 1:
        return g.reshape(-1, 1).double().cpu()
    axis = axis % g.dim()
    if axis == 0:
        axis = g.dim() - 1
    g = g.movedim(axis, 1).reshape(g.shape[0], g.shape[axis], -1)
    return g.double().mean(dim=2).cpu()


def _feature_shape(y: torch.Tensor, axis: int) -> tuple[int, int]:
    """The shape :func:`_features` gives for a gradient shaped like ``y``."""
    if y.dim() <= 1:
        return (y.shape[0] if y.dim() else 1, 1)
    axis = axis % y.dim()
    return (y.shape[0], y.shape[axis if axis else y.dim() - 1])


@dataclass
class StepGradients:
    """One step's reduced received gradients, by layer name.

    Attributes:
        sq_norms: ``‖∂L/∂y‖²`` summed over the layer's calls.
        features: (batch, channels) float64 array per layer (None when the calls' batch
            sizes differ, so that the samples do not line up).
        segment_sq_norms: per layer with segments, the squared norm of each segment's
            channels (summed over calls).
    """

    sq_norms: dict[str, float] = field(default_factory=dict)
    features: dict[str, np.ndarray | None] = field(default_factory=dict)
    segment_sq_norms: dict[str, list[float]] = field(default_factory=dict)


class GradientRecorder:
    """Hooks that reduce the gradient received at each layer's output (module docstring).

    Args:
        modules: layer name -> module, in forward order.
        segments: layer name -> [(start, stop)] channel ranges to measure separately.
        weights: functional layer name -> its weight (a parameter the model's code hands
            to a feature-mixing function itself: ``F.linear(x, self.A)``, an expert bank
            in ``torch.bmm``; ``docs/semantics.md`` §2). Each call of such a function
            given the weight beside data — as it is, or made from it alone:
            ``self.A.t()``, ``self.w[i]`` — is a call of that layer, whose result is its
            output.
        model: the model the weights belong to: its other parameters and buffers are
            weights too (``self.B @ self.A``: a weight, not a call of ``B``).

    Use as a context manager (the hooks are removed on exit); call :meth:`end_step` after
    each backward pass.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        segments: Mapping[str, Sequence[tuple[int, int]]] | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.modules = dict(modules)
        self.model = model
        self.weights = dict(weights or {})
        self.segments = {k: list(v) for k, v in (segments or {}).items()}
        self.axes = {name: channel_axis(m) for name, m in self.modules.items()}
        self.axes.update(dict.fromkeys(self.weights, -1))
        self._handles: list[Any] = []
        self._calls_seen: _FunctionalCalls | None = None
        self.inside: list[str] = []  # the layer modules whose calls run now, innermost last
        self._reset()

    def _reset(self) -> None:
        self._calls: dict[str, int] = {}
        self._shapes: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}
        # the calls whose outputs require no gradient, kept apart: a re-entrant checkpoint
        # runs its layers so first (grad mode off) and again in the backward, which is when
        # they receive gradient — unless nothing gradient reaches needs that (a checkpoint
        # given a frozen stem's output): then they were called and received nothing
        self._quiet: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}
        self._sq: dict[str, float] = {}
        self._seg: dict[str, list[float]] = {}
        self._feats: dict[str, dict[tuple[int, int], torch.Tensor]] = {}

    def __enter__(self) -> GradientRecorder:
        for name, module in self.modules.items():
            self._handles += [
                module.register_forward_pre_hook(self._entered(name)),
                # (first: a forward hook of the user's runs outside the call, §1.1)
                module.register_forward_hook(self._left, prepend=True, always_call=True),
                module.register_forward_hook(self._forward_hook(name)),
            ]
        if self.weights or self.model is not None:
            self._calls_seen = _FunctionalCalls(self, self.model)
            self._calls_seen.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._calls_seen is not None:
            self._calls_seen.__exit__(*exc)
            self._calls_seen = None

    def data(self, values: Any) -> None:
        """Take the tensors in ``values`` for data, not the model's own (a step's inputs,
        drawn while the capture is on)."""
        if self._calls_seen is not None:
            self._calls_seen.data(values)

    def _entered(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.inside.append(name)

        return hook

    def _left(self, module: nn.Module, args: Any, output: Any) -> None:
        self.inside.pop()

    def _forward_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.record(name, output, lambda shape: channel_axis(module, shape))

        return hook

    def record(self, name: str, output: Any, axis: Callable[[tuple[int, ...]], int]) -> None:
        """Take one call of layer ``name`` returning ``output``: the gradient its tensors
        receive is reduced when it arrives. ``axis`` gives the channel axis of a result of
        the given shape (asked of the layer's first result)."""
        # (by its outputs: a forward may switch grad mode on inside a no_grad block)
        if not any(y.requires_grad for y in output_tensors(output)):
            quiet = self._quiet.setdefault(name, {})
            call = len({key[0] for key in quiet})
            for slot, y in enumerate(output_tensors(output)):
                quiet[(call, slot)] = _feature_shape(y, self.axes[name])
            return
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        for slot, y in enumerate(output_tensors(output)):
            key = (call, slot)
            if call == 0 and slot == 0:  # the layer's own channels, where they lie
                self.axes[name] = axis(tuple(y.shape))
            self._shapes.setdefault(name, {})[key] = _feature_shape(y, self.axes[name])
            if y.requires_grad:  # else autograd computes no gradient for it: zero
                y.register_hook(self._tensor_hook(name, key))

    def _tensor_hook(self, name: str, key: tuple[int, int]) -> Any:
        def hook(g: torch.Tensor) -> None:
            gd = g.detach()
            mag = gd.abs() if gd.is_complex() else gd
            self._sq[name] = self._sq.get(name, 0.0) + float(mag.double().pow(2).sum())
            if name in self.segments and gd.dim() >= 2:
                axis = self.axes[name] % gd.dim()
                sums = self._seg.setdefault(name, [0.0] * len(self.segments[name]))
                for i, (start, stop) in enumerate(self.segments[name]):
                    part = mag.narrow(axis, start, max(0, min(stop, gd.shape[axis]) - start))
                    sums[i] += float(part.double().pow(2).sum())
            self._feats.setdefault(name, {})[key] = _features(gd, self.axes[name])

        return hook

    def end_step(self) -> StepGradients:
        """The reductions of the step just run (zeros for outputs no gradient reached)."""
        step = StepGradients()
        for name in [*self.modules, *self.weights]:
            shapes = self._shapes.get(name) or self._quiet.get(name)
            if shapes is None:
                continue
            step.sq_norms[name] = self._sq.get(name, 0.0)
            if name in self.segments:
                step.segment_sq_norms[name] = self._seg.get(name, [0.0] * len(self.segments[name]))
            got = self._feats.get(name, {})
            parts = [
                got[key].numpy() if key in got else np.zeros(shape)
                for key, shape in sorted(shapes.items())
            ]
            batches = {p.shape[0] for p in parts}
            step.features[name] = np.concatenate(parts, axis=1) if len(batches) == 1 else None
        self._reset()
        return step


@dataclass(frozen=True)
class _Made:
    """What a tensor computed from the model's own tensors alone (parameters, buffers,
    constants made in forward) comes from: the functional layers whose weights it holds,
    and whether data picked its entries (``table[ids]``: rows that are data beside a
    weight, an expert picked by routing beside data)."""

    layers: frozenset[str]
    picked: bool = False


def _operands(name: str, args: tuple, kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
    """The tensors operation ``name`` reads the values of (not those it reads only the
    dtype or shape of: ``x`` in ``w.type_as(x)``, see :mod:`gpa.frontends.metadata`)."""
    read = [
        t
        for i, a in enumerate(args)
        if not reads_metadata_only(name, i)
        for t in tree_leaves(a)
        if isinstance(t, torch.Tensor)
    ]
    read += [t for t in tree_leaves(kwargs) if isinstance(t, torch.Tensor)]
    return read


class _FunctionalCalls(TorchFunctionMode):
    """Gives ``recorder`` the functional calls of its layers, as ``docs/semantics.md`` §2
    finds them: outside any layer module's call, a feature-mixing call
    (:data:`~gpa.frontends.operators.MIXING_FUNCTION_NAMES`) given data and a tensor made
    from one layer's weight — a functional layer's (``recorder.weights``) or a layer
    module's; as it is, transposed, cast, multiplied by another weight (merged LoRA), with
    entries picked or masked at positions data gives (an expert by its routing) — is a
    call of that layer. Made tensors are tracked from the model's parameters and buffers
    and the constants forward makes; data written into one (not into the model's own)
    makes it data. Rows of a weight picked by data beside another weight
    (``table[ids] @ w``) are data. A re-entrant checkpoint's function runs again in the
    backward with the mode on (autograd keeps none there): those are the calls receiving
    gradient."""

    def __init__(self, recorder: GradientRecorder, model: nn.Module | None) -> None:
        super().__init__()
        self.recorder = recorder
        self.made: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> _Made
        owned = model.parameters() if model is not None else ()
        own = list(itertools.chain(owned, model.buffers() if model is not None else ()))
        for t in own:
            self.made[t] = _Made(frozenset())
        self.own = {id(t) for t in own}  # (the model holds them through the steps)
        # a layer module's weights are its record's, called by the module or functionally
        # elsewhere (a tied output projection, §2); the first record holding one names it
        held: dict[int, str] = {}
        for name, module in recorder.modules.items():
            for p in module.parameters():
                held.setdefault(id(p), name)
                self.made[p] = _Made(frozenset({held[id(p)]}))
        for name, weight in recorder.weights.items():
            self.made[weight] = _Made(frozenset({name}))

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        version = first._version if first is not None else None
        result = func(*args, **kwargs)
        name = function_name(func)
        read = _operands(name, args, kwargs)
        made = [self.made.get(t) for t in read]
        if name in MIXING_FUNCTION_NAMES:
            self._mixed(name, result, read, made)
            return result
        values = [m for t, m in zip(read, made, strict=True) if differentiable(t)]
        from_values = bool(values) and all(m is not None for m in values)
        if not read or from_values or all(m is not None for m in made):
            # made from the model's own values (no operand: a constant made in forward);
            # positions data gave (``W[ids]``, ``W.masked_fill(mask, 0)``) pick its entries
            picked = any(m is not None and m.picked for m in made) or None in made
            self._mark(result, [m for m in made if m is not None], picked=picked)
        elif first is not None and first._version != version:
            # data written into a tensor made in forward (``torch.zeros(n, c).index_add_(0,
            # i, h)``, ``out[mask] = h``) makes it data, and the tensor it is a view of; the
            # model's own tensors stay its own (a running statistic, an initialisation)
            for t in (first, first._base):
                if t is not None and id(t) not in self.own:
                    self.made.pop(t, None)
        return result

    def data(self, values: Any) -> None:
        """Take the tensors in ``values`` for data (a step's inputs, drawn while the mode is
        on: made without operands, they would pass for constants)."""
        for t in tree_leaves(values):
            if isinstance(t, torch.Tensor):
                self.made.pop(t, None)

    def _mixed(self, name: str, result: Any, read: list, made: list) -> None:
        """A feature-mixing call: a call of the one layer whose weight it is given beside
        data, or a weight itself when it is given weights alone."""
        weights = [m for m in made if m is not None and not m.picked]
        data = [t for t, m in zip(read, made, strict=True) if m is None or (m.picked and weights)]
        if not weights:
            weights = [m for m in made if m is not None]
        if not data:
            self._mark(result, made, picked=any(m.picked for m in made))
            return
        layers = frozenset().union(*(m.layers for m in weights))
        [layer] = layers if len(layers) == 1 else [None]
        # (inside a layer module's call, the call is the module's: hooked, §2)
        if layer is not None and not self.recorder.inside:
            convolution = name.startswith("conv")
            self.recorder.record(layer, result, lambda s: 1 if convolution else -1)
            if not torch.is_grad_enabled():  # (a re-entrant checkpoint's first run, maybe)
                self._run_again_seen()

    def _mark(self, result: Any, made: list, picked: bool) -> None:
        layers = frozenset().union(*(m.layers for m in made))
        for t in tree_leaves(result):
            if isinstance(t, torch.Tensor):
                self.made[t] = _Made(layers, picked)

    def _run_again_seen(self) -> None:
        """Have each re-entrant checkpoint the caller runs inside run its function again,
        in the backward, with this mode on: autograd keeps no mode there, and that run is
        the one whose results receive gradient (the first ran without)."""
        for ctx, given in reentrant_checkpoint_calls():
            run = ctx.run_function
            if getattr(run, "_gpa_mode", None) is self:
                continue
            # the backward gives the function detached copies: made as the arguments were
            marks = [self.made.get(a) if isinstance(a, torch.Tensor) else None for a in given]

            def seen(*args: Any, run: Callable[..., Any] = run, marks: list = marks) -> Any:
                for a, mark in zip(args, marks, strict=False):
                    if mark is not None and isinstance(a, torch.Tensor):
                        self.made[a] = mark
                if self in _get_current_function_mode_stack():
                    return run(*args)
                with self:
                    return run(*args)

            seen._gpa_mode = self  # type: ignore[attr-defined]
            ctx.run_function = seen
