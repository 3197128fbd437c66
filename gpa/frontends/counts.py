"""Parameter and FLOP counts per module, without computing anything for real.

Nothing runs for real: parameters are counted from the model's parameter tensors, and
FLOPs from the shapes a frontend propagated on the meta device (the model itself is neither
copied nor changed).

FLOPs count a multiply-add as **2** FLOPs and cover only the weight layers
(``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Linear``, ``Bilinear``); bias adds,
norms, activations, pooling and element-wise ops are not counted. For a convolution this
is ``2 * weights * output positions`` (darknet's "BFLOPs"). FLOPs are for the given
inputs, batch included.

:func:`layer_counts` gives these numbers for every layer record of a gradient graph
(``gpa.analyze`` puts them in its report) without a second forward pass: FLOPs come from
the shapes the frontend propagated, and :func:`count_flops` is the same computation on a
graph built for counting alone.

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
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from gpa.core.graph import GradientGraph
from gpa.frontends.modules import module_class, submodule_lookup
from gpa.frontends.wrappers import unwrap_wrappers
from gpa.options import AnalysisOptions, CountConvention

__all__ = [
    "WEIGHT_LAYERS",
    "Counts",
    "LayerCounts",
    "count",
    "count_flops",
    "count_params",
    "format_flops",
    "format_params",
    "layer_counts",
]

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


def count_params(
    model: nn.Module,
    convention: str = "torch",
    first: Collection[str] = (),
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> dict[str, int]:
    """Parameters per module name under ``convention`` (no forward pass needed).

    A parameter shared by several modules is counted once, for the first owner in module
    order — among the modules named in ``first`` (a report's layer records) where one
    holds it: T5's ``shared`` embedding, never called, holds the weight its stacks'
    ``embed_tokens`` compute with. ``named``: ``model.named_modules()``, when the caller
    walked them already.

    Example:
        >>> count_params(nn.Linear(4, 2)), count_params(nn.Linear(4, 2), "darknet")
        ({'': 10}, {'': 8})
    """
    convention = CountConvention.parse(convention, "count convention")
    out: dict[str, int] = {}
    seen: set[int] = set()
    walked = model.named_modules() if named is None else named
    modules = sorted(walked, key=lambda item: item[0] not in first)
    for name, module in modules:
        if convention is CountConvention.DARKNET:
            layer = issubclass(module_class(module), WEIGHT_LAYERS)
            held = _weight_held(module) if layer else None
            params = [held] if held is not None else []
        else:
            params = [(p, p.numel()) for p in module.parameters(recurse=False)]
        n = 0
        for p, size in params:
            if id(p) not in seen:
                seen.add(id(p))
                n += size
        if n:
            out[name] = n
    return out


def _weight_held(module: nn.Module) -> tuple[object, int] | None:
    """What ``module`` holds for its weight — an object whose identity tells a shared
    weight — and the weight's size, or None. A parametrized weight
    (``parametrizations.spectral_norm``, a low-rank product) is computed anew at each read:
    a run of the parametrization, which in train mode updates spectral norm's buffers,
    giving a fresh tensor whose identity the next may reuse. So its parametrization stands
    for it, and its size is read off the layer's own sizes (its originals may have other
    shapes: weight norm's magnitude, a product's factors)."""
    if parametrize.is_parametrized(module, "weight"):
        size = _defined_weight_size(module)
        return (module.parametrizations["weight"], size) if size is not None else None
    weight = getattr(module, "weight", None)
    return (weight, weight.numel()) if isinstance(weight, Tensor) else None


def _defined_weight_size(module: nn.Module) -> int | None:
    """The weight size the layer's sizes define (a conv's ``out × in / groups ×
    kernel``, a linear's ``out × in``, a bilinear's ``out × in1 × in2``), or None."""
    kind = module_class(module)
    kernel = math.prod(getattr(module, "kernel_size", ()) or (1,))
    if issubclass(kind, _CONV):
        return module.out_channels * (module.in_channels // module.groups) * kernel
    if issubclass(kind, _CONV_T):
        return module.in_channels * (module.out_channels // module.groups) * kernel
    if issubclass(kind, nn.Linear):
        return module.out_features * module.in_features
    if issubclass(kind, nn.Bilinear):
        return module.out_features * module.in1_features * module.in2_features
    return None


def _macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Multiply-adds of one call of a weight layer (a scripted one too: it keeps the
    attributes read here)."""
    kind = module_class(module)
    if issubclass(kind, _CONV):
        return (
            output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        )
    if issubclass(kind, _CONV_T):
        return (
            inputs[0].numel()
            * (module.out_channels // module.groups)
            * math.prod(module.kernel_size)
        )
    if issubclass(kind, nn.Linear):
        return output.numel() * module.in_features
    if issubclass(kind, nn.Bilinear):
        return output.numel() * module.in1_features * module.in2_features
    return 0


def count_flops(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
) -> dict[str, int]:
    """FLOPs per weight-layer module name for one forward pass (2 per multiply-add).

    The computation of :func:`layer_counts`, on the gradient graph of ``model`` in eval
    mode (the default frontend, nothing computed for real) with ``example_inputs``,
    tensors of ``input_shape`` (a shape or a list of shapes), or the inputs the model
    declares (:func:`~gpa.frontends.inputs.declared_inputs`).
    Layers never called, and layers that are not weight-layer modules, are absent.

    Raises:
        GpaError: no inputs are known, or the model does not accept them.

    Example:
        >>> count_flops(nn.Linear(4, 2), input_shape=(3, 4))
        {'': 48}
    """
    from gpa.errors import GpaError
    from gpa.frontends import gradient_graph
    from gpa.frontends.inputs import bind_inputs, declared_inputs

    example_inputs = bind_inputs(model, example_inputs)
    if example_inputs is None and input_shape is None:
        example_inputs, input_shape, origin = declared_inputs(model, strict=False)
        if origin is None:
            declared_inputs(model)  # (an input_shape that is no shape: raises, saying so)
            raise GpaError(
                "counting FLOPs needs example_inputs or input_shape (the model declares "
                "neither an input_shape attribute nor an example_input_array)"
            )
    options = AnalysisOptions(example_inputs=example_inputs, input_shape=input_shape, train=False)
    graph = gradient_graph(model, options)
    modules = _layer_modules(model, [c.record for c in graph.calls.values()])
    return {
        "" if modules[record] is model else record: sum(fs)  # type: ignore[arg-type]
        for record, fs in _flops_by_record(graph, modules).items()
        if None not in fs
    }


def count(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    convention: str = "torch",
    count_convention: str | None = None,
) -> Counts:
    """Parameters (under ``convention``) and FLOPs of ``model``, per module.

    See :func:`count_params` and :func:`count_flops`; inputs default to the model's own
    (its ``input_shape``, set on every :mod:`gpa.models` entry, else Lightning's
    ``example_input_array``). ``count_convention``:
    ``convention`` under the name every analysis option has it (``gpa.analyze``,
    ``--count-convention``); it wins where given.

    Example:
        >>> import gpa.models
        >>> import torch
        >>> with torch.device("meta"):
        ...     m = gpa.models.darknet53()
        >>> str(count(m, convention="darknet"))
        '41.57 M params, 18.57 GFLOPs (darknet convention; a multiply-add counts as 2 FLOPs)'
    """
    model, _ = unwrap_wrappers(model)  # a data-parallel wrapper: the module it runs
    convention = count_convention or convention
    params = count_params(model, convention)
    return Counts(convention, params, count_flops(model, example_inputs, input_shape=input_shape))


_NO_FLOPS_NOTE = "no example inputs: FLOPs were not counted (give --input-shape or example_inputs)"


class _Shape:
    """Stands in for a tensor in :func:`_macs`: only ``numel()`` is read."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.n = math.prod(shape)

    def numel(self) -> int:
        return self.n


def _call_flops(graph: GradientGraph, node: Hashable, module: nn.Module) -> int | None:
    """FLOPs of one layer call from the shapes the analysis propagated (None if unknown)."""
    value = graph.ops.nodes[node].get("value")
    preds = list(graph.ops.predecessors(node))
    first = graph.ops.nodes[preds[0]].get("value") if preds else None
    if value is None or value.shape is None:
        return None
    if issubclass(module_class(module), _CONV_T) and (first is None or first.shape is None):
        return None
    inputs = (_Shape(first.shape),) if first is not None and first.shape is not None else ()
    # a call computing with several modules' weights: each its share (§2, §9)
    share = graph.ops.nodes[node].get("share", 1.0)
    return round(2 * _macs(module, inputs, _Shape(value.shape)) * share)


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
    submodule = submodule_lookup(model)
    out: dict[str, nn.Module | None] = {}
    for record in records:
        found = submodule(record)
        if found is not None:
            out[record] = found
        else:  # the model analysed as one call (named after its class), or a root parameter
            out[record] = model if record == type(model).__name__ else None
    return out


@dataclass(frozen=True)
class LayerCounts:
    """Parameters and FLOPs of every layer record of a gradient graph (``docs/semantics.md`` §9).

    Attributes:
        convention: how parameters were counted.
        params: record -> parameters of its module and the modules inside it (a functional
            layer on a root parameter: that parameter; None if unknown).
        flops: record -> FLOPs over all its calls (None: not counted, see ``notes``).
        total_params: parameters of the whole model.
        total_flops: the sum of the counted layers' FLOPs (None without inputs).
        notes: what was not counted, for the report.
    """

    convention: CountConvention
    params: Mapping[str, int | None]
    flops: Mapping[str, int | None]
    total_params: int
    total_flops: int | None
    notes: tuple[str, ...] = ()


def layer_counts(
    model: nn.Module,
    graph: GradientGraph,
    convention: CountConvention | str = "torch",
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> LayerCounts:
    """Parameters (under ``convention``) and FLOPs of every layer record of ``graph``.

    FLOPs come from the shapes the frontend propagated through ``graph``, over all calls
    of a layer, for conv, transposed conv, linear and bilinear modules; other layer types
    have ``flops`` None, with a note. No forward pass is added. Without example inputs
    every ``flops`` is None and a note says so. ``named``: ``model.named_modules()``, when
    the caller walked them already.

    Example:
        >>> import gpa
        >>> r = gpa.analyze(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), input_shape=(2, 4))
        >>> r.layers["0"].params, r.layers["0"].flops, r.network.params, r.network.flops
        (15, 48, 21, 48)
    """
    convention = CountConvention.parse(convention, "count convention")
    records = dict.fromkeys(
        [*(c.record for c in graph.calls.values()), *(n for n, _ in graph.uncalled)]
    )
    types = {c.record: c.type for c in graph.calls.values()}
    params = _subtree_sums(count_params(model, convention, first=records, named=named))
    modules = _layer_modules(model, records)
    flops = {
        r: None if None in fs else sum(fs)  # type: ignore[arg-type]
        for r, fs in _flops_by_record(graph, modules).items()
    }
    record_params = {
        r: _root_parameter_size(model, r)
        if modules[r] is None
        else params.get("" if modules[r] is model else r, 0)
        for r in records
    }
    notes: list[str] = []
    if graph.inputs is None:
        notes.append(_NO_FLOPS_NOTE)
    else:
        uncounted = sorted({types[r] for r, f in flops.items() if f is None})
        counted_any = any(f is not None for f in flops.values())
        if uncounted:
            notes.append(
                f"FLOPs were not counted for layers of type {', '.join(uncounted)}: only "
                "torch's conv, linear and bilinear modules of known shapes are, not other "
                "layers (a leaf holding one among them)"
                # (with none counted the total is null, not a sum leaving them out)
                + ("; the total leaves them out" if counted_any else ", so there is no total")
            )
    counted = [f for f in flops.values() if f is not None]
    return LayerCounts(
        convention=convention,
        params=record_params,
        flops=flops,
        total_params=params.get("", 0),
        total_flops=sum(counted) if graph.inputs is not None and counted else None,
        notes=tuple(notes),
    )


def _flops_by_record(
    graph: GradientGraph, modules: Mapping[str, nn.Module | None]
) -> dict[str, list[int | None]]:
    """Record -> FLOPs of each of its calls (None for a call that is not counted)."""
    per_call: dict[str, list[int | None]] = {}
    for node, call in graph.calls.items():
        # a call of several records' weights: counted as the largest's that is counted
        # (a root parameter is not: the next is), each its share (§2, §9)
        module, weighted = None, False
        for record in graph.ops.nodes[node].get("counted_as", (call.record,)):
            module = modules.get(record)
            weighted = module is not None and issubclass(module_class(module), WEIGHT_LAYERS)
            if weighted:
                break
        n = _call_flops(graph, node, module) if weighted else None
        per_call.setdefault(call.record, []).append(n)
    return per_call


def _root_parameter_size(model: nn.Module, name: str) -> int | None:
    try:
        return model.get_parameter(name).numel()
    except AttributeError:
        return None
