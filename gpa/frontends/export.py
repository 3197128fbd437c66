"""The export frontend: ``torch.export``'s ATen graph, brought into the fx frontend's form.

``torch.export.export(model, args, strict=False)`` reads models that symbolic tracing
cannot (data-dependent shapes aside): Python control flow over module lists, iteration
over ``chunk`` results, ``len()`` of tensors, Hugging Face and Ultralytics models. Its graph
holds ATen operations, parameters and buffers as ``get_attr`` nodes (after unlifting), and
every node's ``nn_module_stack`` — the module calls it was made in.

:func:`export_gradient_graph` turns that graph into the one the fx frontend builds, so
that every later stage (the gradient-flow pass, layers, the op graph, channel routing,
counts) runs unchanged (``docs/semantics.md`` §1.6):

1. export in the analysis' train/eval mode with the example inputs (from input shapes:
   zeros, each input retried as int64 when export refuses floats, as for embeddings);
2. unlift, drop export's guard call, and inline grad-mode regions (the
   ``wrap_with_set_grad_enabled`` higher-order op) between :func:`grad_mode` markers;
3. group the nodes of every call of a module fx would keep whole (``torch.nn`` modules,
   leaf modules, custom layer types) by ``nn_module_stack``: a call taking one tensor and
   giving one becomes a ``call_module`` node of the real module (exactly what fx records);
   any other call that contains a layer (``MultiheadAttention``, an LSTM, a user leaf)
   becomes one fused ``call_module`` node, reported under the module's qualified name;
4. name the returned values by their pytree key paths (``"logits"``, ``"feats.0"``).

ATen decomposes a call into several operations; a gradient path counts layer calls, so
this does not change any number (tests compare all three frontends).

Example:
    >>> import torch.nn as nn
    >>> from gpa.options import AnalysisOptions
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> g = export_gradient_graph(net, AnalysisOptions(input_shape=(1, 2)))
    >>> [c.record for c in g.calls.values()], g.tracer
    (['0', '2'], 'export')
"""

from __future__ import annotations

import copy
import inspect
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions
from torch.utils._pytree import tree_flatten, tree_unflatten

from gpa.core.graph import GradientGraph, LayerCall
from gpa.errors import GpaError, TraceError
from gpa.frontends.frames import user_frame
from gpa.frontends.fx.flow import GradientFlow
from gpa.frontends.fx.graph import name_outputs, op_graph, output_notes
from gpa.frontends.fx.layers import find_layers
from gpa.frontends.fx.tracer import grad_mode, single_call
from gpa.frontends.inputs import integer_variants
from gpa.frontends.modules import (
    DEFAULT_LAYER_TYPES,
    fx_leaf,
    split_leaves,
    training_mode,
    unused_layer_modules,
)
from gpa.frontends.outputs import exportable
from gpa.options import AnalysisOptions

__all__ = ["ExportError", "export_gradient_graph"]


class ExportError(TraceError):
    """``torch.export`` cannot export the model (data-dependent control flow or shapes,
    an unsupported operation); the message names the model's source line where export
    reports one."""


def export_gradient_graph(model: nn.Module, options: AnalysisOptions) -> GradientGraph:
    """The gradient graph of ``model`` read from ``torch.export`` (see the module docstring).

    Needs example inputs or input shapes. ``options.layer_types`` and
    ``options.leaf_modules`` must hold classes and qualified names only.

    Raises:
        GpaError: no inputs were given.
        ExportError: torch.export cannot export the model.
        ShapeError: an exported operation fails on the meta device.
    """
    if not options.has_inputs:
        raise GpaError(
            "the export tracer exports the model on example inputs, so it needs them "
            "(give --input-shape or example_inputs)"
        )
    types = options.layer_types if options.layer_types is not None else DEFAULT_LAYER_TYPES
    leaf_types, leaf_names = split_leaves(options.leaf_modules)
    custom = tuple(t for t in types if not fx_leaf(t))
    root = single_call(model) if fx_leaf(type(model)) or isinstance(model, leaf_types) else model

    def is_opaque(path: str, module: nn.Module) -> bool:
        return (
            fx_leaf(type(module)) or isinstance(module, leaf_types + custom) or path in leaf_names
        )

    with training_mode(model, options.train):
        program, inputs = _export(root, options)
        gm, fused, used = _remodule(root, program, is_opaque, types)
        GradientFlow(gm).run(*tree_flatten(inputs)[0])
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    found = {n.name: c for n, c in find_layers(gm, types, root).items()} | fused
    calls = dict(sorted(found.items(), key=lambda item: order[item[0]]))
    used |= {n.target.rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
    return GradientGraph(
        ops=op_graph(gm, options.outputs),
        calls=calls,
        tracer="export",
        uncalled=unused_layer_modules(root, used, types),
        inputs=tuple(inputs),
        notes=output_notes(gm, options.outputs),
        traced=gm,
    )


def _export(model: nn.Module, options: AnalysisOptions) -> tuple[Any, tuple]:
    """The exported program and the inputs it was exported with."""
    model = exportable(model)  # its values in containers export can flatten (§1.5)
    if options.example_inputs is not None:
        candidates: Iterable[tuple] = [options.example_inputs]
    else:
        on_meta = any(t.is_meta for t in [*model.parameters(), *model.buffers()])
        candidates = integer_variants(options.input_shape or (), "meta" if on_meta else "cpu")
    first: BaseException | None = None
    for args in candidates:
        try:
            return torch.export.export(model, tuple(args), strict=False), tuple(args)
        except Exception as exc:  # the model cannot be exported on these inputs
            first = first or exc
    assert first is not None
    raise ExportError(_failure_message(model, first)) from first


def _failure_message(model: nn.Module, exc: BaseException) -> str:
    detail = next((line for line in str(exc).splitlines() if line.strip()), "")
    lines = [f"torch.export cannot export {type(model).__name__}: {type(exc).__name__}: {detail}"]
    frame = user_frame(exc)
    if frame is not None:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    return "\n".join(lines)


# ----------------------------------------------------------------- the graph


@dataclass
class _Call:
    """The nodes of one call of an opaque module, in graph order."""

    path: str
    module: nn.Module
    nodes: list[fx.Node]


def _remodule(
    model: nn.Module,
    program: Any,
    is_opaque: Callable[[str, nn.Module], bool],
    types: tuple[type, ...],
) -> tuple[fx.GraphModule, dict[str, LayerCall], set[str]]:
    """The exported graph in the fx frontend's form, its fused layer calls, and the
    qualified names of the modules it calls."""
    exported = program.module()
    graph = exported.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    _inline_grad_mode_regions(exported)
    _name_outputs(graph, program.call_spec.out_spec)
    graph._codegen = fx.graph.CodeGen()  # flat inputs, the outputs named above
    root = copy.copy(model)  # constants export lifted go here, not on the user's model
    _attach_constants(graph, exported, root)
    calls = _module_calls(graph, model, is_opaque)
    fused_groups: list[_Call] = []
    for call in calls:
        if not _replace_by_module(graph, call) and _has_layer(call.module, types):
            fused_groups.append(call)
    for node in list(graph.nodes):  # weights of replaced calls
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    gm = fx.GraphModule(root, graph, type(model).__name__)
    fused = _fuse(gm, fused_groups)
    return gm, fused, {c.path for c in calls}


def _inline_grad_mode_regions(gm: fx.GraphModule) -> None:
    """Replace each ``wrap_with_set_grad_enabled(mode, submodule, *args)`` by the
    submodule's operations between ``grad_mode(mode)`` and ``grad_mode(previous)``."""
    graph = gm.graph
    enabled = True
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is grad_mode:
            enabled = bool(node.args[0])
        if node.op != "call_function" or getattr(node.target, "__name__", "") != (
            "wrap_with_set_grad_enabled"
        ):
            continue
        mode, holder, *args = node.args
        sub = gm.get_submodule(holder.target)
        _inline_grad_mode_regions(sub)
        with graph.inserting_before(node):
            graph.call_function(grad_mode, (bool(mode),))
            placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
            env = dict(zip(placeholders, args, strict=True))
            for inner in sub.graph.nodes:
                if inner.op == "placeholder":
                    continue
                if inner.op == "output":
                    results = fx.node.map_arg(inner.args[0], env.__getitem__)
                    break
                if inner.op == "get_attr":  # a constant of the region: lift it to gm
                    name = f"_gpa_{holder.target}_{inner.target}".replace(".", "_")
                    setattr(gm, name, getattr(sub, inner.target))
                    env[inner] = graph.get_attr(name)
                    continue
                env[inner] = graph.node_copy(inner, env.__getitem__)
            graph.call_function(grad_mode, (enabled,))
        for user in list(node.users):
            user.replace_all_uses_with(results[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)
        if not holder.users:
            graph.erase_node(holder)


def _name_outputs(graph: fx.Graph, spec: Any) -> None:
    """Return the outputs as ``{dotted path: node}``: their paths in the returned structure
    (pytree key paths: dict keys, indices, attribute names), as ``docs/semantics.md`` §1.5
    names them (:func:`~gpa.frontends.fx.graph.name_outputs`)."""
    output = next(n for n in graph.nodes if n.op == "output")
    name_outputs(graph, structure=tree_unflatten(list(output.args[0]), spec))


def _attach_constants(graph: fx.Graph, exported: fx.GraphModule, root: nn.Module) -> None:
    """Put on ``root`` the constants export lifted that the model does not hold itself."""
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        try:
            _fetch(root, node.target)
            continue
        except AttributeError:
            pass
        name = "_gpa_constant_" + node.target.replace(".", "_")
        setattr(root, name, _fetch(exported, node.target))
        node.target = name


def _fetch(module: nn.Module, target: str) -> Any:
    owner, _, attr = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def _module_calls(
    graph: fx.Graph, model: nn.Module, is_opaque: Callable[[str, nn.Module], bool]
) -> list[_Call]:
    """Every call of an opaque module (the outermost one in each node's module stack)."""
    modules = dict(model.named_modules())
    calls: dict[str, _Call] = {}
    for node in graph.nodes:
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            module = modules.get(path) if path else None
            if module is not None and is_opaque(path, module):
                calls.setdefault(key, _Call(path, module, [])).nodes.append(node)
                break
    for call in calls.values():  # the call's own weights, when nothing else reads them
        members = set(call.nodes)
        owned = [
            a
            for n in call.nodes
            for a in n.all_input_nodes
            if a.op == "get_attr"
            and a.target.startswith(call.path + ".")
            and all(u in members for u in a.users)
        ]
        call.nodes = list(dict.fromkeys(owned)) + call.nodes
    return list(calls.values())


def _inputs_and_outputs(call: _Call) -> tuple[list[fx.Node], list[fx.Node]]:
    members = set(call.nodes)
    inputs = [a for n in call.nodes for a in n.all_input_nodes if a not in members]
    outputs = [n for n in call.nodes if any(u not in members for u in n.users)]
    return list(dict.fromkeys(inputs)), outputs


def _takes_one_tensor(module: nn.Module) -> bool:
    """A ``torch.nn`` module whose forward takes one required argument and returns one
    tensor (so its call can stand for the operations export made of it)."""
    if not type(module).__module__.startswith("torch.nn") or isinstance(
        module, (nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention)
    ):
        return False
    parameters = list(inspect.signature(module.forward).parameters.values())
    required = [
        p
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1


def _replace_by_module(graph: fx.Graph, call: _Call) -> bool:
    """Replace a one-tensor-in, one-tensor-out call by a ``call_module`` node; whether done."""
    inputs, outputs = _inputs_and_outputs(call)
    data = [a for a in inputs if a.op != "get_attr"]
    if (
        len(data) != 1
        or len(outputs) != 1
        or outputs[0].target is operator.getitem
        or not isinstance(outputs[0].meta.get("val"), torch.Tensor)
        or not _takes_one_tensor(call.module)
    ):
        return False
    with graph.inserting_before(outputs[0]):
        node = graph.create_node("call_module", call.path, (data[0],))
    node.meta = {k: v for k, v in outputs[0].meta.items() if k in ("nn_module_stack", "val")}
    outputs[0].replace_all_uses_with(node)
    for member in reversed(call.nodes):
        if not member.users:
            graph.erase_node(member)
    return True


def _has_layer(module: nn.Module, types: tuple[type, ...]) -> bool:
    return any(isinstance(m, types) for m in module.modules())


def _fuse(gm: fx.GraphModule, groups: list[_Call]) -> dict[str, LayerCall]:
    """Fuse each group into one ``call_module`` node; the layer call each one is."""
    if not groups:
        return {}
    partitions = [dict.fromkeys(g.nodes) for g in groups]
    fuse_by_partitions(gm, partitions, prefix="_gpa_call_", always_return_tuple=False)
    fused = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target.startswith("_gpa_call_"):
            group = groups[int(node.target.removeprefix("_gpa_call_"))]
            fused[node.name] = LayerCall(group.path, type(group.module).__name__)
    return fused
