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
   again under :class:`~gpa.frontends.watch.Checkpoints` when an activation checkpoint
   may have hidden a grad-mode switch from export; in functional form when the graph
   writes in place into a view of a tensor read afterwards (``out[:, :k] = y``), after
   reading a dropout that returns its input itself as that input and giving a detached
   alias whose memory is written afterwards memory of its own (§1.3); a TorchScript
   submodule, which export cannot read, is refused by name, and so is a call of a custom
   autograd Function, whose gradient export's graph cannot show (§1.2);
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

import collections
import contextlib
import functools
import inspect
import io
import logging
import operator
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils.checkpoint
from torch import nn
from torch.amp.autocast_mode import autocast
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from gpa.core.graph import GradientGraph, LayerCall
from gpa.errors import GpaError, ShapeError, TraceError
from gpa.frontends.frames import Site, caller_site, stack_trace_site, user_frame
from gpa.frontends.functional_form import (
    discarded_kept,
    functional_form,
    regenerated_views_placed,
)
from gpa.frontends.functions import custom_function_calls, run_function
from gpa.frontends.fx.branches import (
    EXACT_TYPE_TESTS,
    calls_when_run,
    other_branch_message,
    type_tests_unseen,
    unchecked_channels_message,
)
from gpa.frontends.fx.contractions import pairwise_contractions
from gpa.frontends.fx.flow import GradientFlow
from gpa.frontends.fx.graph import name_outputs, op_graph, output_notes
from gpa.frontends.fx.layers import (
    STANDS_FOR,
    custom_operator_calls,
    find_layers,
    used_modules,
)
from gpa.frontends.fx.stacked import picks_from_stacks
from gpa.frontends.fx.tracer import (
    CALL_OF,
    SITE,
    clash_message,
    graph_module,
    graph_module_names,
    single_call,
    unwritable_names,
)
from gpa.frontends.fx.writes import detached_write_targets, write_into_view, written_into
from gpa.frontends.grad_regions import (
    inline_grad_mode_regions,
    mark_inference_mode,
    may_miss_grad_mode,
)
from gpa.frontends.hooks import hooked_calls_message
from gpa.frontends.inputs import (
    IntegerVariants,
    floating_dtype,
    integer_variants,
    unbound_inputs_message,
)
from gpa.frontends.modules import (
    DEFAULT_LAYER_TYPES,
    compiled,
    fx_leaf,
    has_forward,
    is_layer_module,
    opaque_layer_types,
    scripted_call,
    shallow_copy,
    split_leaves,
    type_name,
    unused_layer_modules,
)
from gpa.frontends.operators import custom_operator_label, custom_operator_note
from gpa.frontends.outputs import exportable
from gpa.frontends.raised import input_too_small
from gpa.frontends.randomness import random_states, set_random_states
from gpa.frontends.state import parameters_requiring_grad, training_mode
from gpa.frontends.watch import Checkpoints, unfed_checkpoint_note
from gpa.frontends.wiring import refuse_other_wiring
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
        TraceError: an exported operation fails on the meta device (export ran it on the
            example inputs: a limit of this frontend; ``auto`` moves on).
    """
    if not options.has_inputs:
        raise GpaError(
            "the export tracer exports the model on example inputs, so it needs them "
            "(give --input-shape or example_inputs)"
        )
    types = options.layer_types if options.layer_types is not None else DEFAULT_LAYER_TYPES
    hooked = hooked_calls_message(model, types, options.leaf_modules, "export")
    if hooked is not None:
        raise TraceError(hooked)
    leaf_types, leaf_names = split_leaves(options.leaf_modules)
    custom = opaque_layer_types(model, types)
    root = single_call(model) if fx_leaf(type(model)) or isinstance(model, leaf_types) else model
    unbound = unbound_inputs_message(root, options.input_count, "torch.export")
    if unbound is not None:
        raise TraceError(unbound)

    def is_leaf(path: str, module: nn.Module) -> bool:  # (given as a leaf: one call, §1.1)
        # (a container without forward is never called: export's module stack names it on
        # the calls of the modules inside, when they are reached through it)
        return isinstance(module, leaf_types) or path in leaf_names and has_forward(module)

    def is_opaque(path: str, module: nn.Module) -> bool:
        return fx_leaf(type(module)) or isinstance(module, custom) or is_leaf(path, module)

    whole = [
        path
        for path, m in model.named_modules()
        if (inner := compiled(m)) is not None
        and (is_opaque(path, m) or is_opaque(f"{path}._orig_mod", inner))
    ]
    if whole:  # export's graph names no call of a compiled module (nor of what it wraps)
        raise TraceError(
            f"'{whole[0]}' is compiled (torch.compile) and to be read as one call (a leaf or "
            "a layer type): export's graph does not show where the compiled module's calls "
            "begin and end; fx and autograd read it (auto moves on)"
        )
    if options.channels and type_tests_unseen(root, (), EXACT_TYPE_TESTS):
        # (a run cannot check channels: see the message)
        raise TraceError(unchecked_channels_message(model, "torch.export", _EXACT_TESTS))
    with training_mode(model, options.train):
        drawn = random_states()  # what export draws, the check below draws again
        program, inputs, watched, sites = _export(root, options)
        _refuse_other_branch(root, inputs, sites, types, drawn)
        try:
            gm, fused, used, unfed = _remodule(
                root, program, (is_opaque, is_leaf), types, watched, sites
            )
        except SyntaxError as exc:  # fx writes module names into Python code
            raise ExportError(unwritable_names(model, exc)) from None
        if pairwise_contractions(gm.graph):
            gm.recompile()
        try:
            GradientFlow(gm, followed_by="autograd").run(*tree_flatten(inputs)[0])
        except ShapeError as exc:  # export ran the model on these inputs: gpa's limit
            if input_too_small(exc):  # (unless torch refuses them, export's fakes did not)
                raise
            raise TraceError(
                f"export's graph of {type(model).__name__} does not run on the meta device: {exc}"
            ) from exc
    picks_from_stacks(gm)
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    known = [n for n in gm.graph.nodes if n.name in fused]
    found = {n.name: c for n, c in find_layers(gm, types, root, known).items()} | fused
    calls = dict(sorted(found.items(), key=lambda item: order[item[0]]))
    operators = custom_operator_calls(
        gm, {n: found[n.name] for n in gm.graph.nodes if n.name in found}
    )
    graph = GradientGraph(
        ops=op_graph(gm, options.outputs, calls),
        calls=calls,
        tracer="export",
        uncalled=unused_layer_modules(
            root,
            used | used_modules(gm, calls, root),
            types,
            called=used | {n.target for n in gm.graph.nodes if n.op == "call_module"},
        ),
        inputs=tuple(inputs),
        notes=[
            *output_notes(gm, options.outputs),
            *(custom_operator_note(name, owners) for name, owners in operators.items()),
            *([unfed_checkpoint_note(unfed)] if unfed else []),
        ],
        traced=gm,
        opaque=[custom_operator_label(name) for name in operators],
        module_sites=sites.named if root is model else {},
    )
    if root is model and type_tests_unseen(model, (), EXACT_TYPE_TESTS):
        # the calls agree (:func:`_refuse_other_branch`): does the wiring between them?
        refuse_other_wiring(model, options, graph, drawn, "torch.export", _EXACT_TESTS)
    return graph


#: The tests export's fake tensors answer otherwise than the tensors they stand for.
_EXACT_TESTS = "type(h) is torch.Tensor, h.__class__"


def _refuse_other_branch(
    model: nn.Module, inputs: tuple, sites: _Sites, types: tuple[type, ...], drawn: tuple
) -> None:
    """Refuse an export that took another branch than the run. Export runs ``forward`` on
    fake tensors, a subclass of Tensor: a test of a value's exact class (``type(h) is
    torch.Tensor``, ``h.__class__``) answers otherwise. Where ``forward``'s code makes one
    (:func:`~gpa.frontends.fx.branches.type_tests_unseen`), a run on the meta device
    counts each layer module's calls against export's (``sites``, every module call).

    Raises:
        TraceError: a layer module is called otherwise than when the model runs.
    """
    if not type_tests_unseen(model, (), EXACT_TYPE_TESTS):
        return
    modules = dict(model.named_modules())
    layers = [n for n, m in modules.items() if n and is_layer_module(m, types)]
    run = calls_when_run(model, inputs, layers, drawn) or {}
    if any(id(modules[n]) in sites for n in layers):
        exported = {n: len(sites.get(id(modules[n]), ())) for n in run}
    else:  # export ran a copy of the model (tied modules): its calls counted by class
        by_class: collections.Counter[type] = collections.Counter()
        for m in {id(modules[n]): modules[n] for n in run}.values():
            by_class[type(m)] += run[next(n for n in run if modules[n] is m)]
        copied: collections.Counter[type] = collections.Counter()
        for cls, count in sites.classes.items():  # (the copy's classes derive from the model's)
            copied[next((c for c in cls.__mro__ if c in by_class), cls)] += count
        run = {f"{cls.__name__} modules": count for cls, count in by_class.items()}
        exported = {f"{cls.__name__} modules": copied[cls] for cls in by_class}
    differ = {n: (exported[n], count) for n, count in run.items() if exported[n] != count}
    if differ:
        raise TraceError(other_branch_message(model, differ, "torch.export", _EXACT_TESTS))


def _export(model: nn.Module, options: AnalysisOptions) -> tuple[Any, tuple, bool, _Sites]:
    """The exported program, the inputs it was exported with, whether it was exported
    under :class:`~gpa.frontends.watch.Checkpoints`, and where each module was called
    from (:func:`_call_sites`).

    Export records where Python switches gradient off and on, not where torch does in C++
    (around an activation checkpoint), so a model whose graph shows signs of that
    (:func:`may_miss_grad_mode`) is exported again under the watch, which repeats those
    switches in Python.
    """
    model = exportable(model)  # its values in containers export can flatten (§1.5)
    on_meta = any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    if options.example_inputs is not None:
        # only their shapes and dtypes count (§1.4): on the model's meta device if it is
        given = options.example_inputs
        on_device = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, given)
        candidates: Iterable[tuple] = [on_device if on_meta else given]
    else:
        device = "meta" if on_meta else "cpu"
        candidates = integer_variants(options.input_shape or (), device, floating_dtype(model))
    first: BaseException | None = None
    functions: dict[type, None] = {}  # custom autograd Functions called

    def note(function: type[torch.autograd.Function], args: tuple, kwargs: dict) -> Any:
        functions[function] = None
        return run_function(function, args, kwargs)

    def seen(function: type[torch.autograd.Function], args: tuple, kwargs: dict) -> None:
        functions[function] = None

    # every export draws what the first would (see _refuse_other_branch); the states are
    # left as the kept one left them (the pipeline notes a draw)
    states = random_states()
    for args in candidates:
        try:
            with (
                _quiet_torch_logs(),
                custom_function_calls(note, seen),
                parameters_requiring_grad(model),
                _autocast_off(),
            ):
                set_random_states(states)
                with _call_sites(model) as sites:
                    program = torch.export.export(model, tuple(args), strict=False)
                watched = may_miss_grad_mode(program)
                if watched:
                    set_random_states(states)
                    with Checkpoints(), _call_sites(model) as sites:
                        program = torch.export.export(model, tuple(args), strict=False)
        except Exception as exc:  # the model cannot be exported on these inputs
            first = first or exc
            if isinstance(candidates, IntegerVariants):
                candidates.failed(exc)
            continue
        if functions:
            raise ExportError(_custom_functions_message(model, list(functions)))
        _check_no_scripted_calls(model, program)
        _check_no_transforms(model, program)
        _identity_dropouts_dropped(program.graph_module)
        _detached_apart(program.graph_module)
        if write_into_view(program.graph_module.graph) is not None:
            # later readers of the tensor would read it unwritten: in functional form
            # (copy_ into a slice becomes slice_scatter) the write is data flow
            program = functional_form(program)
            regenerated_views_placed(program.graph_module.graph)
        return program, tuple(args), watched, sites
    assert first is not None
    scripted = scripted_call(model, first)
    if scripted is not None:  # not the model's fault, nor the user's code: say what helps
        raise _cannot_read_scripted(model, scripted) from None
    if input_too_small(first):  # the model's, on these inputs: it runs on larger ones
        raise ShapeError(_failure_message(model, first)) from first
    raise ExportError(_failure_message(model, first)) from first


def _custom_functions_message(model: nn.Module, functions: list[type]) -> str:
    names = ", ".join(f.__qualname__ for f in functions)
    return (
        f"{type(model).__name__} calls the custom autograd Function(s) {names}: "
        "torch.export records the operations of forward, but gradient goes through "
        "backward (autograd runs forward under no_grad), so export's graph cannot show "
        "the gradient paths through them. --tracer autograd reads them, and so does fx "
        "where each is called as Function.apply(...) (auto tries fx first)."
    )


# Dropouts that return their input itself when not training or at p = 0 (ATen's schemas
# mark their result as a new tensor all the same)
_DROPOUTS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
)


def _identity_dropouts_dropped(gm: fx.GraphModule) -> None:
    """Read a dropout that returns its input itself (``nn.Dropout`` in eval mode,
    ``F.dropout(x, 0.0)``) as that input: a write into either name writes into both, as
    in eager PyTorch, where export's functional form took the result for a copy (``y =
    self.drop(h); h.mul_(w); c(y)``: c was not reached from w). No gradient path changes
    otherwise: such a dropout passes gradient through as it is."""
    inputs: set[fx.Node] = set()  # the tensors whose later readers may now read stale
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _DROPOUTS:
            continue
        x, p, train = (*node.args, *[None] * 3)[:3]
        p = node.kwargs.get("p", p)
        train = node.kwargs.get("train", train)
        if isinstance(x, fx.Node) and (train is False or p == 0):
            node.replace_all_uses_with(x)
            gm.graph.erase_node(node)
            inputs.add(x)
    if not inputs:
        return
    # export made later readers of a written tensor read the write, but not the dropout's
    # readers, which read its input now: they do too (and of a write into that write...)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        target = written_into(node)
        if target in inputs:
            for user in list(target.users):
                if order[user] > order[node]:
                    user.replace_input_with(target, node)
            inputs.add(node)
    gm.recompile()


def _detached_apart(gm: fx.GraphModule) -> None:
    """Give each detached alias whose memory is written in place afterwards (``v =
    h.detach(); v += y``, or ``h += y`` and ``v`` read after) memory of its own: autograd
    carries no such write across the detach, but in the graph's functional form ``h``'s
    later readers would read ``v``'s write (gradient from them into ``y``, none into what
    made ``h``), and ``v``'s readers ``h``'s (the functional form detaches again where ``v``
    is read, which the grouping by module then folds into the reader's call). A copy
    changes no other gradient path: a detached tensor has no history of its own
    (``docs/semantics.md`` §1.3)."""
    targets = detached_write_targets(gm.graph)
    for detach in targets:
        with gm.graph.inserting_after(detach):
            copy_ = gm.graph.call_function(torch.ops.aten.clone.default, (detach,))
        copy_.meta = dict(detach.meta)
        value = detach.meta.get("val")
        if value is not None and getattr(value, "fake_mode", None) is not None:
            with value.fake_mode:
                copy_.meta["val"] = value.clone()
        detach.replace_all_uses_with(
            copy_, delete_user_cb=functools.partial(operator.is_not, copy_)
        )
    if targets:
        gm.recompile()


@contextlib.contextmanager
def _autocast_off() -> Iterator[None]:
    """``torch.autocast`` (and its CUDA and CPU kin, its subclasses) does nothing in this
    thread for the block: it changes operations' precision, never a gradient path, and
    export keeps no grad-mode change inside it — a ``no_grad`` block under
    ``autocast(enabled=False)``, as EfficientViT's attention writes, would be lost. Other
    threads' autocast works as ever."""
    owner = threading.get_ident()
    enter, leave = autocast.__enter__, autocast.__exit__

    def entering(self: autocast) -> Any:
        return None if threading.get_ident() == owner else enter(self)

    def leaving(self: autocast, *exc: Any) -> Any:
        return None if threading.get_ident() == owner else leave(self, *exc)

    autocast.__enter__, autocast.__exit__ = entering, leaving  # type: ignore[method-assign]
    try:
        yield
    finally:
        autocast.__enter__, autocast.__exit__ = enter, leave  # type: ignore[method-assign]


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Keep what torch writes about a failing export (log records, the partial graph it
    prints to ``sys.stderr``) off the user's terminal: gpa reports the failure itself, in
    one line. Log records are filtered, not levelled, as export sets torch's log levels."""
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name == "torch" or name.startswith("torch.")
    ]
    for lg in loggers:
        lg.addFilter(_drop)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    return False


def _cannot_read_scripted(model: nn.Module, name: str) -> ExportError:
    return ExportError(
        f"torch.export cannot read '{name}', a TorchScript module "
        f"({type_name(model.get_submodule(name))}); the fx and autograd frontends analyse "
        "a scripted module as one call (--tracer fx or autograd; auto tries fx first)"
    )


def _check_no_scripted_calls(model: nn.Module, program: Any) -> None:
    """Refuse a program that went through a TorchScript module: export records its
    operations with its weights as constants, so its layers would vanish.

    Raises:
        ExportError: naming the scripted module.
    """
    modules = dict(model.named_modules())
    for node in program.graph.nodes:
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            if isinstance(modules.get(path), torch.jit.ScriptModule):
                raise _cannot_read_scripted(model, path)


#: Where export's graph takes the functions switching torch.func's transform levels from
#: (``_vmap_increment_nesting``, ``_add_batch_dim``, ``_jvp_increment_nesting`` …).
_TRANSFORM_LEVELS = "torch._functorch.predispatch"


def _check_no_transforms(model: nn.Module, program: Any) -> None:
    """Refuse a program holding torch.func's transforms (``torch.vmap``, ``jvp``): export
    records one as calls switching a transform level on and off around operations written
    for one item of the batch, which gpa's gradient-flow pass, running each operation on
    its own, cannot follow (a level left on would also stay on for the whole process). The
    autograd frontend reads the run (``docs/semantics.md`` §1.1).

    Raises:
        ExportError: naming the model's line making the transform, where export recorded it.
    """
    for module in program.graph_module.modules():
        if not isinstance(module, fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if (
                node.op == "call_function"
                and getattr(node.target, "__module__", None) == _TRANSFORM_LEVELS
                and node.target.__name__ != "lazy_load_decompositions"  # (switches nothing)
            ):
                site = stack_trace_site(node.meta.get("stack_trace"))
                where = f" ({site[0]}, line {site[1]})" if site else ""
                raise ExportError(
                    f"{type(model).__name__} calls a torch.func transform (torch.vmap, jvp)"
                    f"{where}: export's graph holds it as switches of a transform level "
                    f"({node.target.__name__}) around operations on one item of the batch, "
                    "which gpa cannot follow; --tracer autograd reads the run (auto moves on)"
                )


#: What torch.export says of a tensor it made without tracing (``h.data``) and would keep.
_LIFTED_FAKE = "fake tensor in the exported program constant"


def _failure_message(model: nn.Module, exc: BaseException) -> str:
    detail = next((line for line in str(exc).splitlines() if line.strip()), "")
    if _LIFTED_FAKE in detail:  # (torch's words ask to file an issue: the user's way out)
        detail = (
            "forward makes a tensor export does not trace and would keep as a constant, "
            "most often by reading .data (.detach() is followed); fx and autograd read "
            "it (auto moves on)"
        )
    else:
        detail = f"{type(exc).__name__}: {detail}"
    head = f"torch.export cannot export {type(model).__name__}"
    if input_too_small(exc):  # (not export's limit: the model's, on these inputs)
        head = f"{type(model).__name__} cannot run on these inputs (under torch.export)"
    lines = [f"{head}: {detail}"]
    frame = user_frame(exc, asked=True)
    if frame is not None:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    if too_small := input_too_small(exc):
        lines.append(too_small)
    elif _DATA_DEPENDENT in detail:
        lines.append(_ON_VALUES)
    return "\n".join(lines)


#: torch.export's words where Python asks a traced tensor for its values (``if t.all()``,
#: ``int(n)``) or a size computed from them, and what gpa says after them.
_DATA_DEPENDENT = "data-dependent"
_ON_VALUES = (
    "Forward decides on tensor values where export stopped (an if on t.all(), a count made "
    "of them), which export cannot: it traces one graph for every input. --tracer autograd "
    "reads the run on the example inputs (auto moves on)."
)


# ----------------------------------------------------------------- the graph


@dataclass
class _Call:
    """The nodes of one call of an opaque module, in graph order, and the line of model
    code that made the call (None when unknown)."""

    path: str
    module: nn.Module
    nodes: list[fx.Node]
    site: Site | None = None


#: Per module (by id), where each of its calls came from, in call order.
class _Sites(dict):
    """``id(module)`` -> where each of its calls was made (see :func:`_call_sites`),
    ``classes``: how many calls the modules of each class got (export may run a copy of
    the model, whose modules are not the model's), and ``named``: the same sites by the
    qualified name in ``model`` of the module called (export's non-strict tracing calls
    stand-ins of the model's modules, each telling the module it stands for)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.classes: collections.Counter[type] = collections.Counter()
        self.named: dict[str, list[Site | None]] = {}
        named = reversed(list(model.named_modules(remove_duplicate=False)))
        self._names = {id(m): n for n, m in named}  # (a tied module: its first name)

    def add(self, module: nn.Module, site: Site | None) -> None:
        """Note a call of ``module`` made at ``site``."""
        self.setdefault(id(module), []).append(site)
        self.classes[type(module)] += 1
        name = self._names.get(id(_stood_for(module)))
        if name is not None:
            self.named.setdefault(name, []).append(site)


def _stood_for(module: nn.Module) -> nn.Module:
    """The module a stand-in of torch.export's tracer stands for (``get_base``), else
    ``module``."""
    base = getattr(type(module), "get_base", None)
    try:
        return base(module) if base is not None else module
    except Exception:  # a get_base of the model's own, or a stale stand-in
        return module


@contextlib.contextmanager
def _call_sites(model: nn.Module) -> Iterator[_Sites]:
    """Where each module is called from while the block runs (:func:`caller_site`, by a
    global forward pre-hook; export runs forward's Python code). Export's own stack
    traces keep the frames of ``forward`` methods alone: a layer called from a helper
    method (Ultralytics' ``Detect.forward_head``) would be placed at the line calling the
    helper, and a call torch's code makes (inside ``MultiheadAttention``) nowhere."""
    sites = _Sites(model)

    def record(module: nn.Module, args: Any) -> None:
        sites.add(module, caller_site())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield sites
    finally:
        handle.remove()


def _remodule(
    model: nn.Module,
    program: Any,
    kept: tuple[Callable[[str, nn.Module], bool], Callable[[str, nn.Module], bool]],
    types: tuple[type, ...],
    watched: bool,
    sites: _Sites,
) -> tuple[fx.GraphModule, dict[str, LayerCall], set[str], int]:
    """The exported graph in the fx frontend's form, its fused layer calls, the qualified
    names of the modules it calls, and how many re-entrant checkpoints it was given
    nothing requiring gradient (see :func:`~gpa.frontends.grad_regions.inline_grad_mode_regions`); ``kept``: which
    modules' calls are kept as one call (opaque ones), and which of those the user gave
    as leaves (one call even where no layer: §1.1); ``sites``: where each module was
    called from (:func:`_call_sites`)."""
    is_opaque, is_leaf = kept
    try:
        exported = program.module()
    except Exception:  # torch puts the model's state on a GraphModule of its own
        clashes = _unlifting_clashes(model)
        if not clashes:
            raise
        raise ExportError(clash_message(clashes, "torch.export's unlifted module")) from None
    graph = exported.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    discarded_kept(exported)
    unfed = inline_grad_mode_regions(exported, watched)
    mark_inference_mode(graph)
    _name_outputs(graph, program.call_spec.out_spec)
    graph._codegen = fx.graph.CodeGen()  # flat inputs, the outputs named above
    root = shallow_copy(model)  # constants export lifted go here, not on the user's model
    _attach_constants(graph, exported, root)
    calls = _module_calls(graph, model, is_opaque)
    _place(calls, sites)
    fused_groups: list[_Call] = []
    for call in calls:
        if not _replace_by_module(graph, call) and (
            is_layer_module(call.module, types) or is_leaf(call.path, call.module)
        ):
            fused_groups.append(call)
    for node in list(graph.nodes):  # weights of replaced calls
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    gm = graph_module(root, graph, type(model).__name__)
    fused = _fuse(gm, fused_groups, types)
    return gm, fused, {c.path for c in calls}, unfed


def _unlifting_clashes(model: nn.Module) -> list[str]:
    """The names of ``model``'s children, parameters, buffers and tensors that torch.export's
    unlifted module uses itself (``graph``, ``meta``, ``validate_inputs``, ``_in_spec``):
    where its unlifting fails, it failed to put them there."""
    held = [*model._modules, *model._parameters, *model._buffers]
    held += [k for k, v in vars(model).items() if isinstance(v, torch.Tensor)]
    taken = _unlifted_names()
    return [name for name in held if name in taken]


@functools.cache
def _unlifted_names() -> frozenset[str]:
    """What torch.export's unlifted module uses itself beyond any module (its class's names
    and those it sets on itself), learnt from a probe: the names vary with torch's version."""
    probe = nn.Linear(1, 1)
    try:
        unlifted = torch.export.export(probe, (torch.empty(1, 1),)).module()
    except Exception:  # a torch without export's unlifting: fx's names
        return graph_module_names()
    own = (set(dir(unlifted)) | set(vars(unlifted))) - {"weight", "bias"}
    return frozenset(own - set(dir(nn.Module)) - set(vars(nn.Module()))) | graph_module_names()


def _place(calls: list[_Call], sites: _Sites) -> None:
    """Give each call the site of the run's call it is: the k-th call of a module in the
    graph is its k-th call in the run, where the graph has all of them (a decomposition
    drops a call whose result nothing reads: its module's sites are then not used)."""
    seen: dict[int, int] = {}
    for call in calls:
        seen[id(call.module)] = seen.get(id(call.module), 0) + 1
    counted: dict[int, int] = {}
    for call in calls:
        # (by name: export's non-strict tracing calls stand-ins of the model's modules)
        made = sites.named.get(call.path) or sites.get(id(call.module), [])
        if len(made) == seen[id(call.module)]:
            k = counted.get(id(call.module), 0)
            call.site = made[k]
            counted[id(call.module)] = k + 1


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
    canonical = _CanonicalPaths(model)
    calls: dict[str, _Call] = {}
    for node in graph.nodes:
        for key, (recorded, _) in (node.meta.get("nn_module_stack") or {}).items():
            path = canonical(recorded) if recorded else recorded
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


class _CanonicalPaths:
    """A module's qualified name from the path export records for its call.

    Export writes the Python expression that reached the module: a loop over a slice of a
    container (``for m in self.model[:-1]``, RT-DETR) gives ``model.slice(None, -1,
    None).11.ma``, which names ``model.11.ma``; a module registered under several names
    (CoaT's shared position encodings) is reached by whichever name the code used. Paths
    are resolved by walking the model (a slice applied to the container's children,
    indices into the slice), and the module found is named by its first qualified name,
    as fx and ``named_modules`` name it.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
        >>> _CanonicalPaths(net)("slice(1, None, None).0.1")
        '1.1'
    """

    _TOKEN = re.compile(r"slice\([^)]*\)|[^.]+")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {id(m): n for n, m in model.named_modules(remove_duplicate=True)}
        self.cache: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.cache:
            self.cache[path] = self._resolve(path)
        return self.cache[path]

    def _resolve(self, path: str) -> str:
        module: nn.Module = self.model
        sliced: list[str] | None = None  # the children a preceding slice kept
        for token in self._TOKEN.findall(path):
            if token.startswith("slice("):
                try:
                    bounds = [
                        None if b.strip() == "None" else int(b) for b in token[6:-1].split(",")
                    ]
                except ValueError:
                    return path
                sliced = (sliced if sliced is not None else list(module._modules))[slice(*bounds)]
                continue
            if sliced is not None:
                if not token.lstrip("-").isdigit():
                    return path
                token, sliced = sliced[int(token)], None  # an index into the slice
            child = module._modules.get(token)
            if child is None:
                return path
            module = child
        return self.names.get(id(module), path)


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
    if not outputs and call.nodes:  # a call whose result is discarded still runs
        outputs = [call.nodes[-1]]
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
    node.meta = {
        k: v for k, v in outputs[0].meta.items() if k in ("nn_module_stack", "val", "stack_trace")
    }
    if call.site is not None:
        node.meta[SITE] = call.site
    outputs[0].replace_all_uses_with(node)
    for member in reversed(call.nodes):
        if not member.users:
            graph.erase_node(member)
    return True


def _fuse(gm: fx.GraphModule, groups: list[_Call], types: tuple[type, ...]) -> dict[str, LayerCall]:
    """Fuse each group into one ``call_module`` node; the layer call each one is (a leaf
    holding no layer is one call, and no layer)."""
    if not groups:
        return {}
    partitions = [dict.fromkeys(g.nodes) for g in groups]
    fuse_by_partitions(gm, partitions, prefix="_gpa_call_", always_return_tuple=False)
    fused = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target.startswith("_gpa_call_"):
            group = groups[int(node.target.removeprefix("_gpa_call_"))]
            site = group.site or stack_trace_site(group.nodes[0].meta.get("stack_trace"))
            if is_layer_module(group.module, types):
                fused[node.name] = LayerCall(group.path, type_name(group.module), site)
            node.meta[STANDS_FOR] = group.module  # its channel axis and groups (§8)
            node.meta[CALL_OF] = (group.path, type(group.module).__name__)  # for messages
            _devices_follow_inputs(gm.get_submodule(node.target))
    return fused


def _devices_follow_inputs(gm: fx.GraphModule) -> None:
    """Make the devices export wrote into a fused call (``torch.zeros(..., device="cpu")``
    for an LSTM's initial state) that of the call's first tensor input, so the call runs on
    the meta device of the gradient-flow pass as on the probes of channel routing."""
    graph = gm.graph
    first = next(
        (
            n
            for n in graph.nodes
            if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
        ),
        None,
    )
    if first is None:
        return
    device: fx.Node | None = None
    for node in list(graph.nodes):
        if node.op == "placeholder" or not any(
            isinstance(v, torch.device) for v in tree_flatten((node.args, node.kwargs))[0]
        ):
            continue
        if device is None:
            with graph.inserting_before(node):
                device = graph.call_function(getattr, (first, "device"))
        node.args, node.kwargs = tree_map(
            functools.partial(_replace_device, device), (node.args, node.kwargs)
        )
    gm.recompile()


def _replace_device(device: fx.Node, value: Any) -> Any:
    return device if isinstance(value, torch.device) else value
