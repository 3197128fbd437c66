"""``gpa.analyze``: trace a model, decide gradient flow, compute every layer's gradient paths."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from gpa.autograd import autograd_gradient_graph
from gpa.autograd import fx_leaf as _fx_leaf
from gpa.channels import route_channels
from gpa.counts import check_convention, count_report
from gpa.errors import GpaError, NoLayersError, TraceError
from gpa.flow import flow_from_names, flow_from_values
from gpa.graph import LOSS, GradientGraph, OutputKey, op_graph
from gpa.graph import input_shapes as _shapes
from gpa.layers import DEFAULT_LAYER_TYPES, find_layers, opaque_calls, uncalled_layers
from gpa.load import load_target, parse_outputs, resolve_layer_types, resolve_leaf_modules
from gpa.paths import GradientPaths, gradient_paths
from gpa.report import LayerRecord, NetworkSummary, Report
from gpa.segments import Segment, channel_segments, merge_calls
from gpa.trace import LeafSpec, single_call, trace

__all__ = ["analyze", "analyze_target", "fx_gradient_graph", "gradient_graph"]

Shape = Sequence[int]

_NO_INPUTS_NOTE = (
    "no example inputs: shapes were not propagated, and gradient flow was decided from "
    "a table of operation names instead of the values themselves (give --input-shape or "
    "example_inputs for the exact analysis)"
)


def analyze(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[Any] | None = None,
    *,
    input_shape: Shape | Sequence[Shape] | None = None,
    outputs: Iterable[OutputKey] | None = None,
    layer_types: Iterable[type[nn.Module]] | None = None,
    leaf_modules: LeafSpec | None = None,
    train: bool = True,
    name: str | None = None,
    count_convention: str = "torch",
    tracer: str = "fx",
    channels: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Compute the gradient paths of every layer of ``model``.

    Args:
        model: any ``nn.Module`` torch.fx can trace (it may live on the meta device).
        example_inputs: a tensor or a tuple of forward's positional arguments;
            only their shapes and dtypes are used.
        input_shape: instead of ``example_inputs``: one shape or a list of shapes
            (zeros of float32, or int64 for inputs read by an embedding).
        outputs: the returned values that feed the loss, by index or key (dotted
            for nested ones, e.g. ``"1.logits"``); default: all.
        layer_types: module classes counted as layers (default
            :data:`gpa.layers.DEFAULT_LAYER_TYPES`).
        leaf_modules: extra module classes or qualified names not to trace into.
        train: trace in train mode (default) or eval mode.
        name: display name of the model in the report.
        count_convention: how parameters are counted, ``"torch"`` (all) or ``"darknet"``
            (conv/linear weights only, the paper's Table 2); see :mod:`gpa.counts`.
        tracer: ``"fx"`` (symbolic tracing), ``"autograd"`` (one forward pass, then the
            autograd graph; see :mod:`gpa.autograd`) or ``"auto"`` (fx, falling back to
            autograd when fx cannot trace the model, with a note in the report).
        channels: also analyse channel segments (:mod:`gpa.segments`): each layer's
            output channels cut into ranges with their own gradient record, and the
            network's number of distinct gradient combinations. Needs example inputs
            and the fx tracer.
        progress: called with the name of each phase as it starts (the CLI shows
            them on a terminal).

    Returns:
        A :class:`~gpa.report.Report`.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10))
        >>> report = analyze(net, input_shape=(1, 3, 8, 8))
        >>> [(r.name, r.shortest) for r in report.layers.values()]
        [('0', 2), ('3', 1)]
    """
    _refuse_lazy(model)
    _refuse_cycles(model)
    outputs = _check_arguments(example_inputs, outputs, layer_types, leaf_modules)
    check_convention(count_convention)
    step = progress or (lambda phase: None)
    step("tracing and propagating shapes")
    graph = gradient_graph(
        model,
        example_inputs,
        input_shape=input_shape,
        outputs=outputs,
        layer_types=layer_types,
        leaf_modules=leaf_modules,
        train=train,
        tracer=tracer,
    )
    step("gradient paths")
    records = _records(graph)
    if channels:
        step("channel segments")
        records = _with_segments(records, graph, outputs)
    if not records:
        types = ", ".join(t.__name__ for t in (layer_types or DEFAULT_LAYER_TYPES))
        raise NoLayersError(
            f"{type(model).__name__} has no layers, so it has no gradient paths to analyse "
            f"(layer types: {types}; add more with layer_types= / --layer-type)"
        )
    notes = list(graph.notes)
    if not any(grad for _, _, grad in graph.ops.in_edges(LOSS, data="grad")):
        notes.append(
            "the model returns no tensor that gradient can flow back from (none, or only "
            "detached or integer values): every layer is unreachable"
        )
    report = Report(
        model=name or type(model).__name__,
        inputs=_describe_inputs(graph.inputs),
        layers=records,
        network=NetworkSummary.of(records),
        notes=notes,
    )
    step("parameters and FLOPs")
    return count_report(report, model, graph, count_convention)


def analyze_target(
    target: str,
    kwargs: dict[str, Any] | None = None,
    *,
    input_shape: Sequence[Shape] | None = None,
    outputs: Iterable[str] = (),
    layer_types: Iterable[str] = (),
    leaf_modules: Iterable[str] = (),
    train: bool = True,
    count_convention: str = "torch",
    channels: bool = False,
    tracer: str = "fx",
    progress: Callable[[str], None] | None = None,
) -> Report:
    """:func:`analyze` the model named by a TARGET string, with options as the CLI gives them.

    ``input_shape`` (a list of shapes) replaces the inputs the target defines; ``outputs``,
    ``layer_types`` and ``leaf_modules`` are the strings of ``--outputs``, ``--layer-type``
    and ``--leaf`` (see :mod:`gpa.load`).

    Example:
        >>> analyze_target("gpa.models:plainnet", {"depth": 2}).network.max_shortest
        4
    """
    loaded = load_target(target, kwargs)
    if input_shape:
        example_inputs, shapes = None, list(input_shape)
    else:
        example_inputs, shapes = loaded.example_inputs, loaded.input_shape
    layer_types, leaf_modules = list(layer_types), list(leaf_modules)
    return analyze(
        loaded.model,
        example_inputs,
        input_shape=shapes,
        outputs=parse_outputs(outputs),
        layer_types=resolve_layer_types(layer_types, loaded.model) if layer_types else None,
        leaf_modules=resolve_leaf_modules(leaf_modules, loaded.model) if leaf_modules else None,
        train=train,
        name=loaded.name,
        count_convention=count_convention,
        channels=channels,
        tracer=tracer,
        progress=progress,
    )


TRACERS = ("fx", "autograd", "auto")


def gradient_graph(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[Any] | None = None,
    *,
    tracer: str = "fx",
    **options: Any,
) -> GradientGraph:
    """The gradient graph of ``model`` built by ``tracer`` (see :func:`analyze`).

    ``"auto"`` uses fx and, when fx cannot trace the model or cannot look into a
    function that uses parameters (``torch.fx.wrap``), the autograd tracer, saying so
    in the graph's notes.
    """
    if tracer not in TRACERS:
        raise GpaError(f"unknown tracer {tracer!r}; choose one of {', '.join(TRACERS)}")
    if tracer == "autograd":
        return autograd_gradient_graph(model, example_inputs, **options)
    try:
        graph = fx_gradient_graph(model, example_inputs, **options)
        if tracer == "fx" or not graph.opaque or graph.inputs is None:
            return graph
        reason = f"fx cannot look into {', '.join(graph.opaque)}"
    except TraceError as exc:
        if tracer == "fx":
            raise TraceError(
                f"{exc}\nOr analyse it with the autograd tracer (--tracer auto / tracer='auto'), "
                "which runs the model once instead of tracing it."
            ) from exc
        reason = str(exc).splitlines()[0]
        if example_inputs is None and options.get("input_shape") is None:
            raise TraceError(
                f"{exc}\nThe autograd tracer could analyse it by running it, but it needs "
                "example inputs (--input-shape or example_inputs)."
            ) from exc
    graph = autograd_gradient_graph(model, example_inputs, **options)
    graph.notes.insert(0, f"{reason}; used the autograd tracer instead (tracer='auto')")
    return graph


def fx_gradient_graph(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[Any] | None = None,
    *,
    input_shape: Shape | Sequence[Shape] | None = None,
    outputs: Iterable[OutputKey] | None = None,
    layer_types: Iterable[type[nn.Module]] | None = None,
    leaf_modules: LeafSpec | None = None,
    train: bool = True,
) -> GradientGraph:
    """The gradient graph of ``model`` as the torch.fx tracer sees it (arguments as :func:`analyze`)."""
    was_training = model.training
    model.train(train)
    try:
        leaves = [*(leaf_modules or ()), *_custom_types(layer_types)]
        traced = _rooted(model, leaves)
        gm = trace(traced, leaves)
        inputs = _example_inputs(gm, example_inputs, input_shape)
        notes = []
        if inputs is None:
            flow_from_names(gm)
            notes.append(_NO_INPUTS_NOTE)
        else:
            flow_from_values(gm, inputs)
    finally:
        model.train(was_training)
    calls = find_layers(gm, layer_types, traced)
    opaque = opaque_calls(gm, calls)
    notes += [
        f"'{name}' is a function fx does not look into (torch.fx.wrap) and it reads "
        f"parameters of {', '.join(owners)}: layers inside it are not seen; analyse with "
        "--tracer auto or autograd to see them"
        for name, owners in opaque
    ]
    return GradientGraph(
        ops=op_graph(gm, outputs),
        calls={node.name: call for node, call in calls.items()},
        uncalled=uncalled_layers(traced, gm, layer_types),
        inputs=inputs,
        notes=notes,
        traced=gm,
        opaque=[name for name, _ in opaque],
    )


def _rooted(model: nn.Module, leaves: Sequence[Any]) -> nn.Module:
    """``model`` itself, or a wrapper naming it after its class when fx would not trace into it.

    A model that is a layer or a leaf (``gpa.analyze(nn.Linear(3, 2))``) is then
    reported as one call named ``Linear`` rather than by its parameters' names.
    """
    leaf_types = tuple(t for t in leaves if isinstance(t, type))
    if _fx_leaf(type(model)) or isinstance(model, leaf_types):
        return single_call(model)
    return model


def _custom_types(layer_types: Iterable[type[nn.Module]] | None) -> list[type[nn.Module]]:
    """Layer types fx would trace into: they must be leaves to be seen as one call."""
    return [t for t in layer_types or () if not _fx_leaf(t)]


def _refuse_cycles(model: nn.Module) -> None:
    """A module that contains one of its ancestors cannot be walked (torch recurses forever)."""
    stack: list[tuple[str, nn.Module, tuple[int, ...]]] = [("", model, (id(model),))]
    done: set[int] = set()
    while stack:
        name, module, ancestors = stack.pop()
        if id(module) in done:
            continue
        done.add(id(module))
        for child_name, child in module._modules.items():
            if child is None:
                continue
            path = f"{name}.{child_name}" if name else child_name
            if id(child) in ancestors:
                raise GpaError(
                    f"{type(model).__name__} contains itself: submodule '{path}' is one of its "
                    "own ancestors; keep such a reference out of the module tree (e.g. in a "
                    "plain list or with object.__setattr__)"
                )
            stack.append((path, child, (*ancestors, id(child))))


def _check_arguments(
    example_inputs: Any, outputs: Any, layer_types: Any, leaf_modules: Any
) -> Iterable[OutputKey] | None:
    """Refuse wrongly typed arguments with a clear message; a single output key is a list of one."""
    if example_inputs is not None and not isinstance(example_inputs, (torch.Tensor, tuple, list)):
        raise GpaError(
            "example_inputs must be a tensor or a tuple of forward's arguments, "
            f"got {type(example_inputs).__name__}"
        )
    if isinstance(outputs, (int, str)):
        outputs = [outputs]
    elif outputs is not None and (
        isinstance(outputs, torch.Tensor) or not isinstance(outputs, Iterable)
    ):
        raise GpaError(f"outputs must be indices or keys, got {type(outputs).__name__}")
    for name, value, allowed in (
        ("layer_types", layer_types, "nn.Module classes"),
        ("leaf_modules", leaf_modules, "nn.Module classes or qualified module names"),
    ):
        entries = (
            None
            if value is None
            or isinstance(value, (str, type, torch.Tensor))
            or not isinstance(value, Iterable)
            else list(value)
        )
        fits = entries is not None and all(
            (isinstance(e, type) and issubclass(e, nn.Module))
            or (isinstance(e, str) and name == "leaf_modules")
            for e in entries
        )
        if value is not None and not fits:
            raise GpaError(f"{name} must be a list of {allowed}, got {value!r}")
    return outputs


def _refuse_lazy(model: nn.Module) -> None:
    lazy = [
        n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)
    ]
    if lazy:
        raise GpaError(
            f"{type(model).__name__} has uninitialized lazy parameters ({', '.join(lazy[:3])}"
            f"{', …' if len(lazy) > 3 else ''}); run one forward pass to materialize them first"
        )


def _records(graph: GradientGraph) -> dict[str, LayerRecord]:
    """Merge the per-call gradient paths into one record per layer, in forward order."""
    names = graph.calls
    found = gradient_paths(graph.ops, names, loss=LOSS)
    stamps = {n: p.paths.stamps for n, p in found.items() if p.paths} | {LOSS: 1}
    grouped: dict[str, list[str]] = defaultdict(list)
    for node_name, call in names.items():
        grouped[call.record].append(node_name)
    rank = {record: i for i, record in enumerate(grouped)} | {LOSS: len(grouped)}
    records = {}
    for record, members in grouped.items():
        reached = [found[m].paths for m in members if found[m].paths]
        deliveries: dict[str, int] = defaultdict(int)
        for m in members:
            for succ in found[m].sources:
                source = names[succ].record if succ in names else succ
                deliveries[source] |= stamps[succ]
        records[record] = LayerRecord(
            name=record,
            type=names[members[0]].type,
            calls=len(members),
            paths=GradientPaths.union(reached) if reached else None,
            deliveries={s: deliveries[s] for s in sorted(deliveries, key=rank.__getitem__)},
        )
    for missing, kind in graph.uncalled:
        if missing not in records:
            records[missing] = LayerRecord(missing, kind, 0, None)
    return records


def _with_segments(
    records: dict[str, LayerRecord], graph: GradientGraph, outputs: Iterable[OutputKey] | None
) -> dict[str, LayerRecord]:
    """Records with their channel segments (senders named by record)."""
    if graph.traced is None or graph.inputs is None:
        raise GpaError(
            "the channel analysis needs example inputs (--input-shape / example_inputs) and "
            "the fx tracer: it follows channels through the shapes of every traced tensor"
        )
    found = channel_segments(route_channels(graph.traced, graph.calls, outputs), graph.calls)
    rename = {call: c.record for call, c in graph.calls.items()}
    grouped: dict[str, list[list[Segment]]] = defaultdict(list)
    for call, segs in found.items():
        grouped[rename[call]].append(
            [
                replace(
                    s,
                    sources=tuple(
                        replace(x, sender=rename.get(x.sender, x.sender)) for x in s.sources
                    ),
                )
                for s in segs
            ]
        )
    return {
        name: replace(r, segments=tuple(merge_calls(grouped[name])) if name in grouped else ())
        for name, r in records.items()
    }


def _reads_embedding(gm: fx.GraphModule, placeholder: fx.Node) -> bool:
    for user in placeholder.users:
        if user.op == "call_module" and isinstance(
            gm.get_submodule(user.target), (nn.Embedding, nn.EmbeddingBag)
        ):
            return True
        if user.op == "call_function" and user.target in (F.embedding, torch.embedding):
            return True
    return False


def _example_inputs(
    gm: fx.GraphModule,
    example_inputs: torch.Tensor | Sequence[Any] | None,
    input_shape: Shape | Sequence[Shape] | None,
) -> tuple | None:
    if example_inputs is not None and input_shape is not None:
        raise GpaError("give either example_inputs or input_shape, not both")
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            return (example_inputs,)
        return tuple(example_inputs)
    if input_shape is None:
        return None
    shapes = _shapes(input_shape)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = []
    for i, shape in enumerate(shapes):
        integer = i < len(placeholders) and _reads_embedding(gm, placeholders[i])
        dtype = torch.int64 if integer else torch.float32
        inputs.append(torch.zeros(shape, dtype=dtype, device="meta"))
    return tuple(inputs)


def _describe_inputs(inputs: tuple | None) -> list[dict[str, Any]] | None:
    if inputs is None:
        return None
    described = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            described.append({"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")})
        else:
            described.append({"value": repr(x)})
    return described
