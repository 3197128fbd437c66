"""``gpa.measure``: the gradients a model's layers really receive, next to its gradient paths.

:func:`measure` analyses the model's structure (:func:`gpa.analyze`), then runs ``steps``
training steps (forward and backward, in train mode unless ``train=False``, no optimizer
step) and measures, per
layer: the norm of its weight gradient, the norm of the gradient received at its output
and the linear CKA between every two layers' received gradients (``docs/semantics.md``,
"Measured gradients"). The model is left as it was found: its mode, buffers (batch-norm
statistics), parameter gradients, device and the global random state are restored.

Example:
    >>> import torch.nn as nn, gpa
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> m = gpa.measure(net, input_shape=(1, 4), steps=2, batch_size=8)
    >>> list(m.layers), m.layers["0"].frozen, m.cka("0", "0")
    (['0', '2'], False, 1.0)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from gpa.api import analyze
from gpa.core.report import Report
from gpa.errors import GpaError, ModelError
from gpa.frontends.fx.flow import differentiable
from gpa.frontends.inputs import bind_inputs, check_input_count, forward_parameters
from gpa.frontends.raised import model_raised
from gpa.frontends.state import eager_compiled_modules
from gpa.frontends.wrappers import unwrap_wrappers, wrappers_unwrapped
from gpa.measure.cka import chance_cka, cka_matrix, spearman
from gpa.measure.hooks import GradientRecorder, StepGradients
from gpa.measure.inputs import synthetic_batches
from gpa.measure.measurement import (
    LayerMeasurement,
    Measurement,
    SegmentMeasurement,
    combination_key,
    duplication_summary,
)

__all__ = ["Measurement", "measure", "measure_target", "virtual_loss"]

#: Added to ``seed`` for the synthetic inputs' generator (the loss directions use ``seed``).
INPUT_SEED_OFFSET = 1

LossFn = Callable[[Any, Any], torch.Tensor]


def virtual_loss(
    outputs: Any, seed: int = 0, select: Sequence[Any] | None = None
) -> Callable[[Any], torch.Tensor]:
    """The default loss L = Σ_o ⟨R_o, y_o⟩ / numel(y_o) over the selected outputs y_o.

    ``R_o`` is a standard-normal tensor of y_o's shape drawn, once per output path and
    shape, from a CPU generator seeded with ``seed`` (outputs in the returned structure's
    order), so the gradient entering each output is a fixed random direction.

    Args:
        outputs: the model's first output (only used to fix the paths' order).
        seed: the directions' seed.
        select: output keys feeding the loss (None: all), as ``outputs=`` of gpa.analyze.

    Returns:
        A function of the model's outputs giving the scalar loss.

    Raises:
        GpaError: no selected output is a floating tensor that requires gradient.

    Example:
        >>> y = torch.ones(2, 3, requires_grad=True)
        >>> loss = virtual_loss(y, seed=0)
        >>> bool(torch.isclose(loss(y) * 6, torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).sum()))
        True
    """
    from gpa.frontends.outputs import returned_values

    gen = torch.Generator().manual_seed(seed)
    directions: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def loss(out: Any) -> torch.Tensor:
        chosen = [
            (str(path), y)
            for path, y in returned_values(out).select(select)
            if isinstance(y, torch.Tensor) and y.requires_grad and y.is_floating_point()
        ]
        if not chosen:
            raise GpaError(
                "no selected output is a floating tensor that requires gradient: nothing to measure"
            )
        total = None
        for path, y in chosen:
            key = (path, tuple(y.shape))
            if key not in directions:
                directions[key] = torch.randn(key[1], generator=gen)
            r = directions[key].to(device=y.device, dtype=y.dtype)
            term = (r * y).sum() / y.numel()
            total = term if total is None else total + term
        return total

    loss(outputs)  # draws the directions in the returned structure's order
    return loss


def _as_args(batch: Any, model: nn.Module) -> tuple[Any, ...]:
    """A batch as forward's positional arguments: a tuple or list as it is, a dict by
    name (:func:`~gpa.frontends.inputs.bind_inputs`), anything else as the one argument."""
    if isinstance(batch, Mapping):
        return bind_inputs(model, batch)
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


_SYNTHETIC_BATCH = 32  # items per synthetic batch unless batch_size= says

_SPLIT_HOW = (
    "say which of a batch forward takes with forward_inputs= (a TARGET file's "
    "forward_inputs(batch)): lambda batch: batch[0] for (inputs, targets) batches; the loss "
    "still gets the whole batch"
)


def _forward_args(
    model: nn.Module, batch: Any, forward_inputs: Callable[[Any], Any] | None
) -> tuple[Any, ...]:
    """Forward's positional arguments for ``batch``: what ``forward_inputs(batch)`` gives,
    else the batch itself — a tuple or list as it is, a dict by forward's names
    (:func:`_as_args`), anything else as the one argument.

    Raises:
        GpaError: they hold no tensor, or do not fit forward (more than it takes by
            position, a name it does not take), saying what gave them.
        ModelError: ``forward_inputs`` raised.
    """
    given, what = batch, "a batch"
    if forward_inputs is not None:
        during = "It raised taking forward's inputs from a batch of batches= (example_batches)"
        with _raised_by("the forward_inputs function", during):
            given = forward_inputs(batch)
        what = "forward_inputs(batch)"
    how = f"; {_SPLIT_HOW}" if forward_inputs is None else ""
    if not any(isinstance(t, torch.Tensor) for t in tree_flatten(given)[0]):
        raise GpaError(
            f"{what} holds no tensor ({_described(given)}): forward's inputs are a tensor, a "
            f"tuple of forward's arguments or a dict of them by name{how}"
        )
    try:
        if isinstance(given, (tuple, list)):
            check_input_count(model, len(given))
        return _as_args(given, model)
    except GpaError as exc:
        said = str(exc).replace("example inputs were given", "were given")
        said = said.replace("example_inputs names", "it names")
        raise GpaError(f"{what} does not fit {type(model).__name__}.forward: {said}{how}") from None


def _described(value: Any) -> str:
    """A few words on a value that should hold tensors: its type, a tuple's length."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s), none a tensor"
    return "None" if value is None else f"a {type(value).__name__}"


def _positional_note(model: nn.Module, batch: Any) -> str | None:
    """The note binding a tuple batch's items to forward's arguments by position (a
    ``(ids, mask, labels)`` batch gives ``labels`` to BERT's ``token_type_ids``), or None
    for a batch of one item or another kind."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        return None
    names = [
        p.name
        for p in forward_parameters(model).values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][: len(batch)]
    if len(names) < len(batch):  # (*args: no names to give)
        return None
    bound = ", ".join(f"{i} -> {n}" for i, n in enumerate(names, 1))
    return (
        f"each batch's items are forward's arguments by position ({bound}); "
        "forward_inputs= takes part of a batch, or names them with a dict"
    )


def _to(batch: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in batch)


def _examples_from(report: Report) -> tuple[torch.Tensor, ...]:
    if not report.inputs:
        raise GpaError("gpa.measure needs inputs: give example_inputs, input_shape= or batches=")
    out = []
    for spec in report.inputs:
        if "shape" not in spec:
            raise GpaError(f"cannot synthesise an input from {spec['value']}; give batches=")
        out.append(torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"])))
    return tuple(out)


@contextlib.contextmanager
def _preserved(model: nn.Module, device: torch.device | None, train: bool) -> Iterator[None]:
    """Run with ``model`` in train (or eval) mode on ``device``; restore everything
    afterwards."""
    modes = {m: m.training for m in model.modules()}
    buffers = {
        k: b.detach().clone()
        for k, b in model.state_dict(keep_vars=True).items()
        if not isinstance(b, nn.Parameter) and isinstance(b, torch.Tensor)
    }
    grads = {p: p.grad for p in model.parameters()}
    home = next(itertools.chain(model.parameters(), model.buffers()), None)
    home_device = home.device if home is not None else None
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            if device is not None:
                model.to(device)
            model.train(train)
            yield
    finally:
        if home_device is not None:
            model.to(home_device)
        model.load_state_dict(buffers, strict=False)
        for m, mode in modes.items():
            m.training = mode
        for p, g in grads.items():
            p.grad = g


def _trainable(module: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _functional_weight(model: nn.Module, layer: str) -> torch.Tensor | None:
    """The weight a functional layer record ``layer`` is named after (a floating
    parameter of that qualified name, ``docs/semantics.md`` §2), or None."""
    try:
        weight = model.get_parameter(layer)
    except AttributeError:
        return None
    return weight if differentiable(weight) else None


def _param_axis(module: nn.Module, p: torch.Tensor) -> int:
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    return 1 if transposed and p is getattr(module, "weight", None) else 0


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    batches: Iterable[Any] | None = None,
    loss: LossFn | None = None,
    forward_inputs: Callable[[Any], Any] | None = None,
    steps: int = 8,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    channels: bool = False,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> Measurement:
    """Measure the gradients every layer of ``model`` receives (``docs/semantics.md``,
    "Measured gradients"), next to its structural gradient paths.

    Args:
        model: any ``nn.Module`` with real weights.
        example_inputs: a tensor or a tuple of forward's positional arguments (or a dict
            of them by name, as :func:`gpa.analyze` takes), shape ``(B, ...)``; the structural analysis runs on them and the synthetic batches
            copy their shapes (dim 0 becomes ``batch_size``) and dtypes: floats standard
            normal, integers uniform in the embeddings' range (:mod:`gpa.measure.inputs`).
        batches: instead of synthetic batches, an iterable of batches (a tensor, a tuple
            of forward's arguments or a dict of them by name each); at most ``steps`` are used. Without
            ``example_inputs`` the first batch is the example.
        loss: ``loss(outputs, batch) -> scalar tensor``; default: the virtual loss
            (:func:`virtual_loss`, directions drawn from ``seed``).
        forward_inputs: ``forward_inputs(batch)``, what of each of ``batches`` forward
            takes (a tensor, a tuple of forward's arguments or a dict of them by name):
            ``lambda batch: batch[0]`` for ``(inputs, targets)`` batches; ``loss`` still
            gets the whole batch. Default: the whole batch.
        steps: number of forward/backward steps (>= 1).
        batch_size: items per synthetic batch (>= 2 for CKA to be defined); default 32.
            Given ``batches`` keep their own (a note says so when it is given too).
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` …; default: where the model is.
        seed: seeds the directions of the virtual loss, the synthetic inputs (``seed + 1``)
            and the global RNG during the steps (dropout); the global state is restored.
        channels: also analyse channel segments and measure each segment's norms.
        name: display name of the model.
        progress: called with the name of each phase.
        **options: analysis options of :func:`gpa.analyze` (``input_shape``, ``outputs`` —
            also the outputs the virtual loss reads —, ``train`` — also the mode the steps
            run in (eval mode: batch norm on its running statistics, no dropout) —,
            ``layer_types``, ``tracer`` …).

    Returns:
        A :class:`~gpa.measure.measurement.Measurement`.

    Raises:
        GpaError: as :func:`gpa.analyze`; no inputs at all; ``steps`` < 1; no batch; a
            batch, or what ``forward_inputs`` makes of it, that forward cannot take; the
            loss is not a scalar tensor that requires gradient.
        ModelError: the user's code (``forward_inputs``, forward, the loss, ``batches``)
            raised in a step.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
        >>> m = measure(net, torch.zeros(1, 3), steps=1, batch_size=4)
        >>> m.layers["1"].output_grad_norm > 0, m.steps
        (True, 1)
    """
    step = progress or (lambda phase: None)
    if steps < 1:
        raise GpaError(f"steps must be at least 1, got {steps}")
    if forward_inputs is not None and not callable(forward_inputs):
        raise GpaError(
            "forward_inputs must be a function batch -> forward's inputs, not "
            f"{type(forward_inputs).__name__} {forward_inputs!r:.40}"
        )
    _check_device(model, device)
    example_inputs = bind_inputs(model, example_inputs)
    batch_iter: Iterator[Any] | None = None
    if batches is not None:
        batch_iter = _drawn(batches)
        first = next(batch_iter, None)
        if first is None:
            raise GpaError("batches= is empty: nothing to measure")
        batch_iter = itertools.chain([first], batch_iter)
        first_args = _forward_args(model, first, forward_inputs)
        if example_inputs is None and "input_shape" not in options:
            example_inputs = first_args
    step("structural analysis")
    report = analyze(
        model, example_inputs, name=name, channels=channels, progress=progress, **options
    )
    given, (model, _) = model, unwrap_wrappers(model)  # (the report names its layers)
    target = torch.device(device) if device is not None else None
    modules, weights = {}, {}
    notes = list(report.notes)
    if batches is not None and forward_inputs is None:
        notes += filter(None, [_positional_note(model, first)])
    if batches is not None and batch_size is not None:
        notes.append(
            f"batch_size {batch_size} (--batch-size) sizes synthetic batches: the given "
            "batches keep their own"
        )
    for layer in report.layers:
        try:
            modules[layer] = model.get_submodule(layer)
        except AttributeError:
            if layer == type(model).__name__ and len(report.layers) == 1:
                modules[layer] = model  # the model itself is the one layer
                continue
            weight = _functional_weight(model, layer)
            if weight is not None:  # a functional layer, named by its weight (§2)
                weights[layer] = weight
            else:
                notes.append(f"layer {layer!r} is not a submodule: not measured")
            continue
        if isinstance(modules[layer], torch.jit.ScriptModule):  # (refuses Python hooks)
            del modules[layer]
            notes.append(
                f"layer {layer!r} is a TorchScript module, which takes no hooks: not measured"
            )
    segments = {
        n: [(s.start, s.stop) for s in r.segments]
        for n, r in report.layers.items()
        if r.segments is not None and n in modules
    }
    train = options.get("train", True)
    # (the wrappers' hooks run in the steps as in the analysis)
    with _preserved(model, target, train), eager_compiled_modules(), wrappers_unwrapped(given):
        torch.manual_seed(seed)
        run_device = target or next(
            itertools.chain((p.device for p in model.parameters()), [torch.device("cpu")])
        )
        if batch_iter is None:
            examples = (
                _as_args(example_inputs, model)
                if example_inputs is not None
                else _examples_from(report)
            )
            batch_iter = synthetic_batches(
                examples,
                model,
                steps=steps,
                batch_size=_SYNTHETIC_BATCH if batch_size is None else batch_size,
                seed=seed + INPUT_SEED_OFFSET,
                device=run_device,
            )
        per_step, items = _run(
            model,
            modules,
            weights,
            segments,
            batch_iter,
            steps,
            loss,
            forward_inputs if batches is not None else None,  # (synthetic: forward's own)
            batches is not None,
            seed,
            options.get("outputs"),
            run_device,
            step,
        )
    return _summarise(
        report,
        modules,
        weights,
        segments,
        per_step,
        items,
        steps=len(per_step),
        batch_size=items[0] if len(set(items)) == 1 else None,
        seed=seed,
        device=str(run_device),
        loss="virtual" if loss is None else "user",
        notes=notes,
    )


def _run(
    model: nn.Module,
    modules: dict[str, nn.Module],
    weights: dict[str, torch.Tensor],
    segments: dict[str, list[tuple[int, int]]],
    batch_iter: Iterator[Any],
    steps: int,
    loss: LossFn | None,
    forward_inputs: Callable[[Any], Any] | None,
    given: bool,
    seed: int,
    outputs: Any,
    device: torch.device,
    step: Callable[[str], None],
) -> tuple[list[tuple[StepGradients, dict[str, float], dict[str, list[float]]]], list[int]]:
    """Run the steps (on ``batches=`` when ``given``, else synthetic batches); per step the
    received-gradient reductions and the weight norms, and the step's batch items (see
    :func:`_items`)."""
    from gpa.options import AnalysisOptions

    select = AnalysisOptions(outputs=outputs).outputs if outputs is not None else None
    virtual = None
    results, items = [], []
    params = list(model.parameters())
    with GradientRecorder(modules, segments, weights, model) as recorder:
        for i, batch in enumerate(itertools.islice(batch_iter, steps)):
            step(f"step {i + 1}/{steps}")
            args = _to(_forward_args(model, batch, forward_inputs), device)
            items.append(_items(args))
            recorder.data((batch, args))  # (drawn with the capture on: no constants)
            for p in params:
                p.grad = None
            with _raised_by(type(model).__name__, _step_failed("forward", given)):
                out = model(*args)
            if loss is None:
                virtual = virtual or virtual_loss(out, seed, select)
                value = virtual(out)
            else:
                with _raised_by("the loss function", _step_failed("loss", given)):
                    value = loss(out, batch)
            problem = _not_a_loss(value)
            if problem is not None:
                raise GpaError(problem)
            if not bool(torch.isfinite(value.detach()).all()):  # every gradient would be too
                where = "the model's outputs hold" if loss is None else "the loss function gave"
                raise GpaError(
                    f"the loss is {float(value.detach().reshape(()))} in step {i + 1} ({where} "
                    "NaN or infinite values): its gradients would be too"
                )
            with _raised_by(type(model).__name__, _step_failed("backward", given)):
                value.reshape(()).backward()
            results.append((recorder.end_step(), *_weight_norms(modules, weights, segments)))
    for p in params:
        p.grad = None
    if not results:
        raise GpaError("batches= gave no batch: nothing to measure")
    return results, items


def _drawn(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches ``batches`` gives; an exception raised drawing one (the user's iterable,
    a TARGET file's ``example_batches``) as a :class:`~gpa.errors.ModelError` naming its
    line, not a failure of gpa's."""
    found = None
    while True:
        try:
            found = iter(batches) if found is None else found
            batch = next(found)
        except StopIteration:
            return
        except Exception as exc:
            during = (
                "It raised while a measured step drew its batch from batches= (example_batches)"
            )
            raise ModelError(model_raised("the batches", exc, during=during)) from exc
        yield batch


def _items(args: tuple[Any, ...]) -> int:
    """A step's batch items: the leading size of its first input tensor (1 for a scalar,
    0 without a tensor) — the rows CKA takes for samples (``docs/semantics.md`` §11)."""
    first = next((t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)), None)
    if first is None:
        return 0
    return first.shape[0] if first.dim() else 1


def _not_a_loss(value: Any) -> str | None:
    """Why ``value``, what the loss function returned, cannot be the step's loss (a real
    scalar tensor computed with gradient from the model's outputs) — saying what it is and
    how such code usually gets one — or None when it can be.

    Example:
        >>> _not_a_loss(torch.ones(2, 3, requires_grad=True))
        'the loss function returned a tensor of shape (2, 3): reduce it to one value (.sum(), .mean())'
    """
    said = "the loss function returned"
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return f"{said} a tensor of shape {tuple(value.shape)}: reduce it to one value (.sum(), .mean())"
        if value.is_complex():
            return f"{said} a complex tensor: the loss must be a real number"
        if not value.is_floating_point():
            return (
                f"{said} a tensor of dtype {value.dtype} (a count or a comparison), which "
                "carries no gradient: return a floating loss computed from the outputs"
            )
        if not value.requires_grad:
            return (
                f"{said} a scalar tensor that does not require gradient: it was computed "
                "under torch.no_grad(), from .detach()ed outputs, or from outputs no "
                "trainable parameter reaches"
            )
        if value.grad_fn is None:
            return (
                f"{said} a tensor made to require gradient (a leaf), computed from none of "
                "the model's outputs: no gradient would reach the model"
            )
        return None
    if isinstance(value, np.ndarray):
        return (
            f"{said} a NumPy array of shape {value.shape}, which carries no gradient: "
            "return a torch tensor computed from the outputs"
        )
    if isinstance(value, (bool, int, float, complex, np.generic)):
        origin = "NumPy" if isinstance(value, np.generic) else "Python"
        return (
            f"{said} a {origin} {type(value).__name__} ({value!r}), which carries no gradient: "
            "return the tensor itself, not .item() or float() of it"
        )
    if isinstance(value, Mapping):
        keys = [repr(k) for k in list(value)[:4]] + (["…"] if len(value) > 4 else [])
        hint = (
            "for example outputs['loss']"
            if "loss" in value
            else "none is 'loss': a Hugging Face model computes one only when given labels"
        )
        return (
            f"{said} a {type(value).__name__} with keys {', '.join(keys)}: return the loss "
            f"tensor itself ({hint})"
        )
    if isinstance(value, (tuple, list)):
        kind, n = ("tuple" if isinstance(value, tuple) else "list"), len(value)
        return (
            f"{said} a {kind} of {n} item{'' if n == 1 else 's'}: return the loss tensor "
            "itself (for example the first item)"
        )
    return (
        f"{said} {'None' if value is None else type(value).__name__}: it must return a "
        "scalar tensor that requires gradient"
    )


@contextlib.contextmanager
def _raised_by(name: str, during: str) -> Iterator[None]:
    """An exception of the block (a measured step's forward, loss or backward, or
    ``forward_inputs``: the user's code, on real tensors) as a
    :class:`~gpa.errors.ModelError` naming ``name`` and saying ``during`` what, not a
    failure of gpa's: the structural analysis, on the meta device, may pass where a real
    step fails (an input dtype the layers do not take; integer inputs drawn at random
    that the model cannot take, as an EmbeddingBag's offsets)."""
    try:
        yield
    except GpaError:
        raise
    except Exception as exc:
        raise ModelError(model_raised(name, exc, during=during)) from exc


def _step_failed(part: str, given: bool) -> str:
    """Where a step failed, and what to try: other batches for synthetic ones."""
    if given:
        return (
            f"It raised in the {part} of a measured training step on a batch of batches= "
            "(example_batches)"
        )
    return (
        f"It raised in the {part} of a measured training step (real tensors, synthetic "
        "batches); give batches= (or example_batches next to the model) that the model "
        "takes, or synthetic ones of another batch_size (--batch-size)"
    )


def _weight_norms(
    modules: dict[str, nn.Module],
    weights: dict[str, torch.Tensor],
    segments: dict[str, list[tuple[int, int]]],
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """‖∂L/∂W‖ per trainable layer, and per segment (parameters sliced on output channels);
    a functional layer's is its weight's."""
    norms, seg_norms = {}, {}
    for name, weight in weights.items():
        if weight.requires_grad:
            grad = weight.grad
            norms[name] = 0.0 if grad is None else float(grad.double().pow(2).sum().sqrt())
    for name, module in modules.items():
        trainable = _trainable(module)
        if not trainable:
            continue
        grads = [(p, p.grad) for p in trainable if p.grad is not None]
        norms[name] = math.sqrt(sum(float(g.double().pow(2).sum()) for _, g in grads))
        if name in segments:
            width = segments[name][-1][1]
            sums = []
            for start, stop in segments[name]:
                total = 0.0
                for p, g in grads:
                    axis = _param_axis(module, p)
                    if g.dim() > axis and g.shape[axis] == width:
                        total += float(g.narrow(axis, start, stop - start).double().pow(2).sum())
                sums.append(math.sqrt(total))
            seg_norms[name] = sums
    return norms, seg_norms


def _summarise(
    report: Report,
    modules: dict[str, nn.Module],
    weights: dict[str, torch.Tensor],
    segments: dict[str, list[tuple[int, int]]],
    per_step: list[tuple[StepGradients, dict[str, float], dict[str, list[float]]]],
    items: list[int],
    **meta: Any,
) -> Measurement:
    measured = [n for n in report.layers if n in modules or n in weights]  # (forward order)
    called = [s.sq_norms.keys() for s, _, _ in per_step]
    names = [n for n in measured if any(n in c for c in called)]
    missing = [n for n in measured if n not in names]
    notes = meta.pop("notes")
    if missing:
        notes.append(
            "layers not called in the measured steps — or called only with a weight "
            "computed from several modules' (fused q, k, v: docs/semantics.md §2), whose "
            "calls the measurement does not see —, left out of the table and its counts "
            f"(layers, frozen): {', '.join(missing)}"
        )
    # a layer some steps do not call (an expert no token was routed to, a branch) received
    # no gradient there: 0 in its norms, and it has no samples there for CKA
    uncalled = {n: [i + 1 for i, c in enumerate(called) if n not in c] for n in names}
    out_norm = {
        n: float(np.mean([math.sqrt(s.sq_norms.get(n, 0.0)) for s, _, _ in per_step]))
        for n in names
    }
    w = {n: [wn[n] for _, wn, _ in per_step] for n in names if n in per_step[0][1]}
    stacked = {}
    for n in names:
        parts = [s.features.get(n) for s, _, _ in per_step]
        if all(p is not None for p in parts) and len({p.shape[1] for p in parts}) == 1:
            stacked[n] = np.concatenate(parts, axis=0)
    samples, batch = _samples(stacked, sum(items))
    usable = [n for n, f in stacked.items() if f.shape[0] == samples]
    for n in names:
        if uncalled[n]:
            which = ", ".join(map(str, uncalled[n]))
            notes.append(
                f"layer {n!r}: not called in step {which} of {len(per_step)} (no gradient "
                "there: 0 in its norms, no samples for CKA): left out of CKA"
            )
        elif n not in stacked:
            notes.append(
                f"layer {n!r}: its calls or outputs receive gradients with differing numbers "
                "of rows (samples) or channels, which do not line up: left out of CKA"
            )
        elif n not in usable:
            against = "the batch items are" if batch else "most layers' have"
            notes.append(
                f"layer {n!r}: its received gradient has {stacked[n].shape[0]} rows over the "
                f"steps, where {against} {samples}: rows that are not batch items (tokens "
                "flattened into rows, one row for the whole batch, a share of the tokens) do "
                "not line up: left out of CKA"
            )
    if 0 < samples < _FEW_SAMPLES:  # (two centred samples span one direction: CKA is 1)
        notes.append(
            f"CKA compares layers over {samples} sample(s), too few to tell them apart "
            "(over 2, any two layers' CKA is 1): measure more steps or a larger batch"
        )
    small = cka_matrix([stacked[n] for n in usable])
    chance = chance_cka([stacked[n] for n in usable], seed=meta["seed"])
    median = duplication_summary(small)["median"]
    if (
        samples >= _FEW_SAMPLES
        and chance is not None
        and median
        and chance >= _CHANCE_SHARE * median
    ):
        width = max(stacked[n].shape[1] for n in usable)
        notes.append(
            f"CKA of two layers with one side's samples shuffled (unrelated gradients) is "
            f"already {chance:.3g} here, against a median CKA of {median:.3g} (medians over "
            f"the pairs): {samples} samples are few for up to {width} channels, and linear "
            "CKA leans toward 1 then; read the CKA figures against that level, or measure "
            "more steps or a larger batch"
        )
    sim = np.full((len(names), len(names)), np.nan)
    idx = [names.index(n) for n in usable]
    sim[np.ix_(idx, idx)] = small
    trained = [float(np.mean(v)) for v in w.values()]
    median = float(np.median(trained)) if trained else 0.0
    layers = {}
    for i, n in enumerate(names):
        row = sim[i].copy()
        row[i] = np.nan
        best = int(np.nanargmax(row)) if np.isfinite(row).any() else None
        mean_w = float(np.mean(w[n])) if n in w else None
        seg = None
        if n in segments:
            seg = tuple(
                SegmentMeasurement(
                    start,
                    stop,
                    float(np.mean([sn[n][j] for _, _, sn in per_step])) if n in w else None,
                    float(
                        np.mean(
                            [
                                math.sqrt(s.segment_sq_norms.get(n, [0.0] * len(segments[n]))[j])
                                for s, _, _ in per_step
                            ]
                        )
                    ),
                )
                for j, (start, stop) in enumerate(segments[n])
            )
        layers[n] = LayerMeasurement(
            name=n,
            type=type(modules[n]).__name__ if n in modules else report.layers[n].type,
            weight_grad_norm=mean_w,
            weight_grad_norm_std=float(np.std(w[n])) if n in w else None,
            output_grad_norm=out_norm[n],
            relative_norm=mean_w / median if mean_w is not None and median > 0 else None,
            frozen=n not in w,
            most_similar=(names[best], float(row[best])) if best is not None else None,
            segments=seg,
        )
    return Measurement(
        model=report.model,
        layers=layers,
        similarity=sim,
        report=report,
        rank_correlation=_rank_correlation(report, names, sim),
        notes=notes,
        cka_chance=chance,
        **meta,
    )


# Samples below which linear CKA tells no layers apart (see _summarise).
_FEW_SAMPLES = 3

# The share of the median CKA from which the chance CKA is noted (see _summarise): half
# the similarity measured is reached by unrelated gradients too.
_CHANCE_SHARE = 0.5


def _samples(stacked: Mapping[str, np.ndarray], items: int) -> tuple[int, bool]:
    """The number of rows the layers CKA compares have (``docs/semantics.md`` §11), and
    whether those are the batch items: the steps' batch items (``items``) where some
    layer's received gradient has that many rows, else the row count most layers have
    (ties: the first layer's); 0 without layers.

    Example:
        >>> rows = lambda n: np.zeros((n, 2))
        >>> _samples({"a": rows(6), "b": rows(30), "c": rows(30)}, 6)
        (6, True)
        >>> _samples({"a": rows(2), "b": rows(30), "c": rows(30)}, 6)
        (30, False)
    """
    counts = Counter(f.shape[0] for f in stacked.values())
    if items in counts:
        return items, True
    return (counts.most_common(1)[0][0], False) if counts else (0, False)


def _rank_correlation(report: Report, names: list[str], sim: np.ndarray) -> float | None:
    """Spearman over layer pairs (both reached, CKA defined) of shares-combination vs CKA.

    Layers share a combination when their layer-level keys are equal, or, with channel
    segments, when some segment of one has the combination of some segment of the other.
    """
    keys = [combination_key(report.layers[n]) for n in names]
    shared, values = [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        if keys[i] is None or keys[j] is None or not np.isfinite(sim[i, j]):
            continue
        segmented = report.layers[names[i]].segments is not None
        same = bool(keys[i] & keys[j]) if segmented else keys[i] == keys[j]
        shared.append(1.0 if same else 0.0)
        values.append(float(sim[i, j]))
    return spearman(shared, values)


def _check_device(model: nn.Module, device: str | torch.device | None) -> None:
    """Refuse a device this machine cannot run on, and a model with no values to train.

    Raises:
        GpaError: ``device`` is no device torch knows or has here (``cuda`` without a
            GPU); the model's parameters are on the meta device.
    """
    if device is not None:
        try:
            torch.empty(0, device=device)
        except Exception as exc:  # torch's message says why
            # (its first sentence: torch goes on to list every backend it has)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
            raise GpaError(f"device {str(device)!r} cannot be used here: {reason}") from None
    if any(p.is_meta for p in model.parameters()):  # (nothing to copy to another device)
        raise GpaError(
            f"{type(model).__name__}'s parameters are on the meta device (shapes, no values): "
            "measuring trains the model for real; build it on a real device (gpa builds "
            "transformers models on meta for analysis only)"
        )


def measure_target(
    target: str,
    kwargs: dict[str, Any] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **settings: Any,
) -> Measurement:
    """:func:`measure` the model named by a TARGET string (see :mod:`gpa.target`).

    The target file's ``example_inputs`` / ``input_shape`` give the inputs (unless
    ``settings`` give ``input_shape``), its ``example_batches`` (an iterable of batches, or
    a zero-argument callable returning one) the batches, its ``forward_inputs(batch)`` what
    of a batch forward takes and its ``loss_fn(outputs, batch)`` the loss, unless
    ``settings`` give ``batches`` / ``forward_inputs`` / ``loss``.

    Raises:
        TargetError: the target cannot be loaded; otherwise as :func:`measure`.

    Example:
        >>> m = measure_target("gpa.models:plainnet", {"depth": 2}, steps=1, batch_size=2)
        >>> len(m.layers)
        4
    """
    from gpa.target import load_target

    # the model's initial weights are part of what is measured: the same seed, the same
    # weights (a target builds its model with torch's global generator)
    torch.manual_seed(settings.get("seed", 0))
    # (a transformers model is built on the meta device for analysis: measuring trains it)
    loaded = load_target(target, kwargs, device="cpu", train=settings.get("train", True))
    settings.setdefault("name", loaded.name)
    batches = getattr(loaded, "example_batches", None)
    if batches is not None and settings.get("batches") is None:
        settings["batches"] = batches() if callable(batches) else batches
    for name, setting in (("loss_fn", "loss"), ("forward_inputs", "forward_inputs")):
        given = getattr(loaded, name, None)
        if given is not None and settings.get(setting) is None:
            settings[setting] = given
    example = None
    chosen = False  # the shape the library's model takes, where the user gave none
    if settings.get("input_shape") is None:
        settings.pop("input_shape", None)
        if loaded.example_inputs is not None:
            example = loaded.example_inputs
        elif loaded.input_shape is not None and settings.get("batches") is None:
            settings["input_shape"] = loaded.input_shape
            chosen = True
    measured = measure(loaded.model, example, progress=progress, **settings)
    if chosen and loaded.inputs_from is not None:
        # (as analyze_target says: the size decides some numbers)
        measured.notes.insert(
            0, f"inputs chosen by gpa: {loaded.inputs_from}, at the batch size measured"
        )
    measured.notes[:0] = loaded.notes
    return measured


class _CallableModule(types.ModuleType):
    """``gpa.measure`` is this package and, called, :func:`measure`: ``import gpa.measure``
    binds the package where ``gpa.measure(...)`` is called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Measurement:
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
