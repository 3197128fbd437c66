"""Parameter and FLOP counts per module, without computing anything for real.

The model runs once on the meta device (``torch.func.functional_call`` with meta copies of
its parameters and buffers; the model itself is neither copied nor changed), and forward
hooks on the weight layers read the sizes of their inputs and outputs.

FLOPs count a multiply-add as **2** FLOPs and cover only the weight layers
(``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Linear``, ``Bilinear``); bias adds,
norms, activations, pooling and element-wise ops are not counted. For a convolution this
is ``2 * weights * output positions`` (darknet's "BFLOPs"). FLOPs are for the given
inputs, batch included.

:func:`count_report` adds these numbers to a :class:`gpa.Report` (``gpa.analyze`` calls it)
without a second forward pass: FLOPs come from the shapes the analysis propagated.

Two parameter conventions:

- ``"torch"``: every parameter (weights, biases, norm affine parameters, ...), attributed
  to the module that owns it;
- ``"darknet"``: only the weights of the weight layers, the classifier included; biases
  and norms excluded (the convention of the paper's Table 2).

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
    >>> c = count(net, input_shape=(1, 3, 4, 4))
    >>> c.params, c.flops
    ({'0': 224, '1': 16}, {'0': 6912})
    >>> count(net, input_shape=(1, 3, 4, 4), convention="darknet").total_params
    216
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from gpa.errors import GpaError, ShapeError

__all__ = [
    "CONVENTIONS",
    "WEIGHT_LAYERS",
    "Counts",
    "check_convention",
    "count",
    "count_report",
    "count_flops",
    "count_params",
    "format_flops",
    "format_params",
]

#: Parameter conventions understood by :func:`count_params` and :func:`count`.
CONVENTIONS: tuple[str, ...] = ("torch", "darknet")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: Module types whose FLOPs are counted (and whose weights the darknet convention counts).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (*_CONV, *_CONV_T, nn.Linear, nn.Bilinear)


@dataclass(frozen=True)
class Counts:
    """Parameters and FLOPs of a model, per module qualified name.

    Attributes:
        convention: ``"torch"`` or ``"darknet"`` (see the module docstring).
        params: module name -> number of parameters it owns directly (only non-zero
            entries; the root module is ``""``).
        flops: weight-layer name -> FLOPs over all its calls (2 per multiply-add).
    """

    convention: str
    params: Mapping[str, int]
    flops: Mapping[str, int]

    @property
    def total_params(self) -> int:
        """Sum of :attr:`params`."""
        return sum(self.params.values())

    @property
    def total_flops(self) -> int:
        """Sum of :attr:`flops`."""
        return sum(self.flops.values())

    def __str__(self) -> str:
        return (
            f"{format_params(self.total_params)} params, {format_flops(self.total_flops)} "
            f"({self.convention} convention; a multiply-add counts as 2 FLOPs)"
        )


def format_params(n: int) -> str:
    """``41573216`` -> ``"41.57 M"``."""
    return f"{n / 1e6:.2f} M"


def format_flops(n: int) -> str:
    """``18570000000`` -> ``"18.57 GFLOPs"``."""
    return f"{n / 1e9:.2f} GFLOPs"


def count_params(model: nn.Module, convention: str = "torch") -> dict[str, int]:
    """Parameters per module name under ``convention`` (no forward pass needed).

    A parameter shared by several modules is counted once, for the first owner.

    Example:
        >>> count_params(nn.Linear(4, 2)), count_params(nn.Linear(4, 2), "darknet")
        ({'': 10}, {'': 8})
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if convention == "darknet":
            weight = getattr(module, "weight", None) if isinstance(module, WEIGHT_LAYERS) else None
            params = [weight] if isinstance(weight, Tensor) else []
        else:
            params = list(module.parameters(recurse=False))
        n = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if n:
            out[name] = n
    return out


def _macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Multiply-adds of one call of a weight layer."""
    if isinstance(module, _CONV):
        return (
            output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        )
    if isinstance(module, _CONV_T):
        return (
            inputs[0].numel()
            * (module.out_channels // module.groups)
            * math.prod(module.kernel_size)
        )
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Bilinear):
        return output.numel() * module.in1_features * module.in2_features
    return 0


#: Normalisations keep their input's shape; on the meta device their decompositions cost
#: milliseconds per call, so the counting pass replaces them by an empty tensor of that shape.
_NORMS = frozenset(
    {
        F.batch_norm,
        F.instance_norm,
        F.layer_norm,
        F.group_norm,
        torch.batch_norm,
        torch.instance_norm,
        torch.layer_norm,
        torch.group_norm,
    }
)


class _SkipNorms(TorchFunctionMode):
    """Answer normalisations of meta tensors with an empty meta tensor of the same shape."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in _NORMS and args and isinstance(args[0], Tensor) and args[0].is_meta:
            return torch.empty_like(args[0])
        return func(*args, **(kwargs or {}))


def _to_meta(value: Any) -> Any:
    return torch.empty_like(value, device="meta") if isinstance(value, Tensor) else value


def _meta_inputs(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any] | None,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None,
) -> tuple[Any, ...]:
    """Positional arguments on the meta device, from inputs, shapes or ``model.input_shape``."""
    if example_inputs is not None:
        args = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
        return tuple(_to_meta(a) for a in args)
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError(
                "counting FLOPs needs example_inputs or input_shape (the model has no "
                "input_shape attribute)"
            )
    shapes = list(input_shape)
    if shapes and all(isinstance(s, int) for s in shapes):
        shapes = [shapes]
    return tuple(torch.zeros(tuple(s), device="meta") for s in shapes)


def count_flops(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any] | None = None,
    *,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
) -> dict[str, int]:
    """FLOPs per weight-layer name for one forward pass (2 per multiply-add).

    The forward runs in eval mode (the train/eval flag of every module is restored) on
    the meta device, with ``example_inputs`` (moved to meta), tensors of ``input_shape``
    (a shape or a list of shapes), or ``model.input_shape``. Layers never called are
    absent. Raises :class:`gpa.errors.ShapeError` if the forward pass fails.

    Example:
        >>> count_flops(nn.Linear(4, 2), input_shape=(3, 4))
        {'': 48}
    """
    args = _meta_inputs(model, example_inputs, input_shape)
    flops: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):

            def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any, name: str = name) -> None:
                flops[name] = flops.get(name, 0) + 2 * _macs(mod, inp, out)

            handles.append(module.register_forward_hook(hook))
    state = {
        k: _to_meta(v) for k, v in [*model.named_parameters(), *model.named_buffers()]
    }  # tied parameters appear once; functional_call re-ties them
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), _SkipNorms():
            torch.func.functional_call(model, state, args)
    except Exception as err:  # the model does not accept these inputs
        shapes = [tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__ for a in args]
        raise ShapeError(f"forward pass on inputs {shapes} failed: {err}") from err
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return flops


def count(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any] | None = None,
    *,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    convention: str = "torch",
) -> Counts:
    """Parameters (under ``convention``) and FLOPs of ``model``, per module.

    See :func:`count_params` and :func:`count_flops`; inputs default to
    ``model.input_shape`` (set on every :mod:`gpa.models` entry).

    Example:
        >>> import gpa.models
        >>> import torch
        >>> with torch.device("meta"):
        ...     m = gpa.models.darknet53()
        >>> str(count(m, convention="darknet"))
        '41.57 M params, 18.57 GFLOPs (darknet convention; a multiply-add counts as 2 FLOPs)'
    """
    params = count_params(model, convention)
    return Counts(convention, params, count_flops(model, example_inputs, input_shape=input_shape))


def check_convention(convention: str) -> str:
    """``convention`` if it is one of :data:`CONVENTIONS`; a :class:`GpaError` otherwise."""
    if convention not in CONVENTIONS:
        raise GpaError(
            f"count convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}"
        )
    return convention


_NO_FLOPS_NOTE = "no example inputs: FLOPs were not counted (give --input-shape or example_inputs)"


class _Shape:
    """Stands in for a tensor in :func:`_macs`: only ``numel()`` is read."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.n = math.prod(shape)

    def numel(self) -> int:
        return self.n


def _call_flops(graph: Any, node: str, module: nn.Module) -> int | None:
    """FLOPs of one layer call from the shapes the analysis propagated (None if unknown)."""
    value = graph.ops.nodes[node].get("value")
    preds = list(graph.ops.predecessors(node))
    first = graph.ops.nodes[preds[0]].get("value") if preds else None
    if value is None or value.shape is None:
        return None
    if isinstance(module, _CONV_T) and (first is None or first.shape is None):
        return None
    inputs = (_Shape(first.shape),) if first is not None and first.shape is not None else ()
    return 2 * _macs(module, inputs, _Shape(value.shape))


def _subtree_sums(per_module: Mapping[str, int]) -> dict[str, int]:
    """Per module name, the sum of its own entry and its descendants' (root ``""`` included)."""
    sums: dict[str, int] = {}
    for name, value in per_module.items():
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            prefix = ".".join(parts[:i])
            sums[prefix] = sums.get(prefix, 0) + value
    return sums


def _layer_modules(model: nn.Module, records: Any) -> dict[str, nn.Module | None]:
    """Record name -> the module it stands for (None for a functional layer on a root parameter)."""
    named = dict(model.named_modules(remove_duplicate=False))
    out: dict[str, nn.Module | None] = {}
    for record in records:
        if record in named:
            out[record] = named[record]
        else:  # the model analysed as one call (gpa.trace.single_call), or a root parameter
            out[record] = model if record == type(model).__name__ else None
    return out


def count_report(report: Any, model: nn.Module, graph: Any, convention: str) -> Any:
    """``report`` (a :class:`gpa.Report`) with parameters and FLOPs per layer and in total.

    A layer's ``params`` are those of its module and of the modules inside it, under
    ``convention`` (a functional layer on a root parameter: that parameter). Its ``flops``
    are computed from the shapes the analysis propagated through ``graph`` (a
    :class:`gpa.graph.GradientGraph`), over all its calls, for conv, transposed conv,
    linear and bilinear layers; other layer types have ``flops`` None. No forward pass
    is added, so counting costs little next to the analysis. Network ``params`` count the
    whole model (norms and biases included under ``"torch"``); network ``flops`` are the
    sum over the layers. Without example inputs FLOPs are None and a note says so.

    Example:
        >>> import gpa
        >>> r = gpa.analyze(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), input_shape=(2, 4))
        >>> r.layers["0"].params, r.layers["0"].flops, r.network.params, r.network.flops
        (15, 48, 21, 48)
    """
    from dataclasses import replace

    params = _subtree_sums(count_params(model, convention))
    modules = _layer_modules(model, report.layers)
    per_call: dict[str, list[int | None]] = {}
    for node, call in graph.calls.items():
        module = modules.get(call.record)
        weighted = isinstance(module, WEIGHT_LAYERS)
        n = _call_flops(graph, node, module) if weighted else None  # type: ignore[arg-type]
        per_call.setdefault(call.record, []).append(n)
    flops = {r: None if None in fs else sum(fs) for r, fs in per_call.items()}  # type: ignore[arg-type]
    layers = {}
    for name, record in report.layers.items():
        module = modules[name]
        if module is None:
            n_params = _root_parameter_size(model, name)
        else:
            prefix = "" if module is model else name
            n_params = params.get(prefix, 0)
        layers[name] = replace(record, params=n_params, flops=flops.get(name))
    notes = list(report.notes)
    counted = [f for f in flops.values() if f is not None]
    if graph.inputs is None:
        notes.append(_NO_FLOPS_NOTE)
    else:
        uncounted = sorted({layers[r].type for r, f in flops.items() if f is None})
        if uncounted:
            notes.append(
                f"FLOPs were not counted for layers of type {', '.join(uncounted)} (only conv, "
                "linear and bilinear modules of known shapes are); the total leaves them out"
            )
    network = replace(
        report.network,
        params=params.get("", 0),
        flops=sum(counted) if graph.inputs is not None and counted else None,
        count_convention=convention,
    )
    return replace(report, layers=layers, network=network, notes=notes)


def _root_parameter_size(model: nn.Module, name: str) -> int | None:
    try:
        return model.get_parameter(name).numel()
    except AttributeError:
        return None
