"""The fx frontend: symbolic tracing, a gradient-flow pass, layers, and the op graph.

:func:`fx_gradient_graph` traces the model (:mod:`~gpa.frontends.fx.tracer`), annotates
every node with its gradient flow (:mod:`~gpa.frontends.fx.flow`), finds the layer calls
(:mod:`~gpa.frontends.fx.layers`) and builds the :class:`~gpa.core.graph.GradientGraph`
(:mod:`~gpa.frontends.fx.graph`).

Example:
    >>> import torch.nn as nn
    >>> from gpa.options import AnalysisOptions
    >>> g = fx_gradient_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),
    ...                       AnalysisOptions(input_shape=(1, 2)))
    >>> [c.record for c in g.calls.values()], g.tracer
    (['0', '2'], 'fx')
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from gpa.core.graph import GradientGraph
from gpa.errors import GpaError, TraceError
from gpa.frontends.functions import called_function
from gpa.frontends.fx.branches import (
    calls_when_run,
    class_tests_answered_otherwise,
    other_branch_message,
    type_tests_unseen,
    unchecked_channels_message,
)
from gpa.frontends.fx.checkpoints import checkpoints_rewritten, unfed_checkpoints
from gpa.frontends.fx.contractions import pairwise_contractions
from gpa.frontends.fx.flow import RETURNED_INPUTS
from gpa.frontends.fx.graph import name_outputs, op_graph, output_notes
from gpa.frontends.fx.inline import InliningFlow, inline_calls
from gpa.frontends.fx.layers import (
    custom_operator_calls,
    find_layers,
    graph_reads,
    opaque_calls,
    uncalled_layers,
    wrapped_calls,
)
from gpa.frontends.fx.named_flow import flow_from_names
from gpa.frontends.fx.norm_act import norm_act_kinds
from gpa.frontends.fx.stacked import picks_from_stacks
from gpa.frontends.fx.tracer import MODULE_SITES, TESTED, single_call, trace
from gpa.frontends.hooks import hooked_calls_message, root_hooks_message
from gpa.frontends.inputs import floating_dtype, unbound_inputs_message, zeros
from gpa.frontends.modules import DEFAULT_LAYER_TYPES as LAYER_TYPES
from gpa.frontends.modules import forward_replaced, fx_leaf, opaque_layer_types, scripted_notes
from gpa.frontends.operators import custom_operator_label, custom_operator_note
from gpa.frontends.randomness import random_states
from gpa.frontends.state import training_mode
from gpa.frontends.watch import unfed_checkpoint_note
from gpa.frontends.wiring import refuse_other_wiring
from gpa.options import AnalysisOptions

__all__ = ["fx_gradient_graph"]

NO_INPUTS_NOTE = (
    "no example inputs: shapes were not propagated, and gradient flow was decided from "
    "a table of operation names instead of the values themselves (give --input-shape or "
    "example_inputs for the exact analysis)"
)


def fx_gradient_graph(model: nn.Module, options: AnalysisOptions) -> GradientGraph:
    """The gradient graph of ``model`` as the torch.fx tracer sees it.

    ``options.layer_types`` and ``options.leaf_modules`` must hold classes and qualified
    names only (class names resolved, see :func:`gpa.frontends.modules.resolve_options`).

    Raises:
        TraceError: fx cannot trace the model.
        ShapeError: the inputs do not fit it.
    """
    types = options.layer_types if options.layer_types is not None else LAYER_TYPES
    # one walk of the modules for every pass reading them: the state is restored after each
    # run of forward (§1.8), so each pass sees the modules it would walk itself
    named = list(model.named_modules())
    # (fx runs no hooks of a leaf's, nor of the model's: it traces forward alone)
    hooked = hooked_calls_message(
        model, types, options.leaf_modules, "fx", named
    ) or root_hooks_message(model)
    if hooked is not None:
        raise TraceError(hooked)
    if forward_replaced(model):
        cls = type(model).__name__
        raise TraceError(
            f"this {cls} has a forward of its own (an attribute set on the model), which "
            f"torch.fx does not trace: it traces {cls}.forward. --tracer export or autograd "
            "call the model's own (auto moves on)"
        )
    with training_mode(model, options.train, (m for _, m in named)) as state:
        leaves = [
            *(options.leaf_modules or ()),
            *opaque_layer_types(model, options.layer_types, named),
        ]
        traced = _rooted(model, leaves)
        walked = named if traced is model else None  # (the modules a single call holds)
        unbound = unbound_inputs_message(traced, options.input_count, "torch.fx")
        if unbound is not None:
            raise TraceError(unbound)
        kinds = norm_act_kinds(model, types, named) if traced is model else None
        drawn = random_states()  # what the trace draws, the check below draws again
        constants, classes = _forward_arguments(traced, options)
        # (the model's state is as the snapshot took it: the trace restores that one)
        gm = trace(traced, leaves, kinds, constants, classes, state if traced is model else None)
        checkpoints_rewritten(gm, pairwise_contractions(gm.graph))
        name_outputs(gm.graph)
        gm.recompile()
        notes = output_notes(gm, options.outputs)
        inputs = _example_inputs(gm, options)
        if inputs is None:
            flow_from_names(gm)
            notes.append(NO_INPUTS_NOTE)
        else:
            flow = InliningFlow(gm, every=options.channels)
            flow.run(*inputs)
        if picks_from_stacks(gm):
            gm.recompile()
        unfed = unfed_checkpoints(gm)
        reads = graph_reads(gm)  # (one reading of the graph for both)
        calls = find_layers(gm, options.layer_types, traced, reads=reads)
        opaque = opaque_calls(gm, calls, reads)
        into = wrapped_calls(gm) if options.channels else [node for node, _ in opaque]
        inlined = inline_calls(gm, into, flow) if inputs is not None and into else None
        if inlined is not None and inlined.replaced:
            # the calls fx kept whole, traced into by value (§1.1): their operations too
            gm.recompile()
            reads = graph_reads(gm)
            calls = find_layers(gm, options.layer_types, traced, reads=reads)
            opaque = opaque_calls(gm, calls, reads)
    _refuse_returned_inputs(calls)
    # (function, whether a custom autograd Function's) -> the modules whose weights it reads
    readers: dict[tuple[str, bool], dict[str, None]] = {}
    for node, owners in opaque:
        name = getattr(node.target, "__name__", str(node.target))
        key = (name, called_function(node.target) is not None)
        readers.setdefault(key, {}).update(dict.fromkeys(owners))
    operators = custom_operator_calls(gm, calls)
    notes += scripted_notes(traced, options.layer_types, walked)
    notes += _opaque_notes(readers, options.channels, inputs is not None)
    notes += [custom_operator_note(name, owners) for name, owners in operators.items()]
    notes += [unfed_checkpoint_note(unfed)] if unfed else []
    uncalled = uncalled_layers(traced, gm, options.layer_types, calls, walked)
    leaves = [node.target for node in gm.graph.nodes if node.op == "call_module"]
    # where a test on a proxy may have answered otherwise than on the value (a Site, or
    # True), or the code makes tests no proxy sees (read from the source)
    proxied = inputs is not None and (gm.meta.get(TESTED) or class_tests_answered_otherwise(gm))
    tested = inputs is not None and (proxied or type_tests_unseen(traced, leaves))
    if tested and options.channels:  # (a run cannot check channels: see the message)
        tests = (
            "isinstance(h, torch.Tensor), hasattr"
            if proxied
            else "type(h) is torch.Tensor, isinstance(h, torch.fx.Proxy)"
        )
        raise TraceError(unchecked_channels_message(model, tests=tests, site=proxied))
    traced_calls = _layer_module_calls(traced, gm, calls, uncalled, tested)
    if traced_calls and inputs is not None:  # did a test on a proxy take another branch?
        with training_mode(model, options.train):
            run = calls_when_run(traced, inputs, traced_calls, drawn, leaves)
        differ = {n: (c, run[n]) for n, c in traced_calls.items() if run and run[n] != c}
        if differ:
            raise TraceError(other_branch_message(model, differ))
    try:
        ops = op_graph(gm, options.outputs, {node.name for node in calls})
    except GpaError as error:  # (no tensor returned, an output missing: by a test?)
        if tested and traced is model:
            refuse_other_wiring(model, options, error, drawn)
        raise
    graph = GradientGraph(
        ops=ops,
        calls={node.name: call for node, call in calls.items()},
        tracer="fx",
        uncalled=uncalled,
        inputs=inputs,
        notes=notes,
        traced=gm,
        opaque=[
            *(
                f"{name} (a custom autograd Function given parameters)" if function else name
                for name, function in readers
            ),
            *map(custom_operator_label, operators),
        ],
        module_sites=gm.meta.get(MODULE_SITES, {}) if traced is model else {},
    )
    if tested and traced is model:  # the calls agree: does the wiring between them?
        refuse_other_wiring(model, options, graph, drawn)
    return graph


def _layer_module_calls(
    model: nn.Module,
    gm: fx.GraphModule,
    calls: dict[fx.Node, Any],
    uncalled: Sequence[tuple[str, str]],
    tested: bool,
) -> dict[str, int]:
    """The modules whose calls the run must confirm, by qualified name, with their calls in
    the trace: the layers left uncalled (none; one inside a TorchScript module stands for
    the outermost such module, whose calls are seen, as many as the trace makes); and where
    the model's code may have tested a proxy as no tensor answers (``tested``), every layer
    module called, as many times as the trace calls it (a branch taken otherwise may call
    the same layers, once too few: ``if isinstance(y, torch.Tensor): h = self.f(h + y)``)."""
    made: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            made[node.target] = made.get(node.target, 0) + 1
    counts = {}
    for name, _ in uncalled:
        scripted = _outermost_scripted(model, name)
        counts[scripted or name] = made.get(scripted, 0) if scripted else 0
    if tested:
        for node in calls:
            if node.op == "call_module":
                counts[node.target] = made[node.target]
    return counts


def _outermost_scripted(model: nn.Module, name: str) -> str | None:
    """The qualified name of the outermost TorchScript module holding ``name`` (itself
    included), or None."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if isinstance(model.get_submodule(prefix), torch.jit.ScriptModule):
            return prefix
    return None


def _refuse_returned_inputs(calls: dict[fx.Node, Any]) -> None:
    """Refuse a layer call that returns some of its inputs as they are (``docs/semantics.md``
    §1.1): Ultralytics' ``Detect``, declared a leaf, hands its input features on beside its
    predictions. Gradient reaching those tensors skips the layer (export and autograd see
    the tensors themselves), but fx's graph shows them as part of the call's result, so
    every path through them would count the layer once too often."""
    passing = [node for node in calls if node.meta.get(RETURNED_INPUTS)]
    if passing:
        node = passing[0]
        count = len(node.meta[RETURNED_INPUTS])
        raise TraceError(
            f"'{node.target}' returns {count} of its input tensors as they are, beside what "
            "it computes; fx records the call as one, so gradient reaching them through its "
            "output would be counted through the layer. Export and autograd follow the "
            "tensors themselves (--tracer export or autograd; auto moves on)"
        )


def _opaque_notes(
    readers: dict[tuple[str, bool], dict[str, None]], channels: bool, inputs: bool
) -> list[str]:
    """One note per function fx kept whole that reads parameters (``readers``: (function,
    whether it is a custom autograd Function's) -> the modules whose parameters it reads)."""
    other = "export" if channels else "autograd"  # autograd gives no segments
    tried = "with the inputs" if inputs else "without inputs"
    return [
        (
            f"'{name}' is a custom autograd Function, which fx takes as one call (its "
            "gradient is its backward's, which no trace sees)"
            if function
            else f"'{name}' is a function fx keeps whole (torch.fx.wrap) and could not trace "
            f"into {tried}"
        )
        + f"; it reads parameters of {', '.join(owners)}: layers inside it are not seen; "
        + f"analyse with --tracer {'autograd' if function else f'auto or {other}'} to see them"
        for (name, function), owners in readers.items()
    ]


def _rooted(model: nn.Module, leaves: Sequence[Any]) -> nn.Module:
    """``model`` itself, or a wrapper naming it after its class when fx would not trace into it.

    A model that is a layer or a leaf (``gpa.analyze(nn.Linear(3, 2))``) is then reported
    as one call named ``Linear`` rather than by its parameters' names.
    """
    leaf_types = tuple(t for t in leaves if isinstance(t, type))
    if fx_leaf(type(model)) or isinstance(model, leaf_types):
        return single_call(model)
    return model


def _reads_embedding(gm: fx.GraphModule, placeholder: fx.Node) -> bool:
    for user in placeholder.users:
        if user.op == "call_module" and isinstance(
            gm.get_submodule(user.target), (nn.Embedding, nn.EmbeddingBag)
        ):
            return True
        if user.op == "call_function" and user.target in (F.embedding, torch.embedding):
            return True
    return False


# Example inputs fx traces as the values given: None and Python flags, numbers, strings.
_CONSTANT_INPUTS = (type(None), bool, int, float, str)


def _constant(value: Any) -> bool:
    """Whether fx can trace ``value`` as a constant (it asserts the value at the call: NaN,
    which equals nothing, would fail)."""
    return isinstance(value, _CONSTANT_INPUTS) and value == value


_STAR = inspect.Parameter.VAR_POSITIONAL


def _forward_arguments(
    model: nn.Module, options: AnalysisOptions
) -> tuple[dict[str, Any], dict[str, type]]:
    """``forward``'s arguments that are Python constants (None, a flag, a number, a
    string), by name, and the classes of the inputs traced as placeholders, by placeholder.

    Constants are those the example inputs give so, and those no input gives whose default
    is one (Hugging Face's ``inputs_embeds=None``, a ``return_dict`` flag). fx traces them
    as these values, so that ``if inputs_embeds is None:`` takes the branch the call takes
    (a proxy is never None). ``*args`` holds one ``fx.PH`` (or constant) per input reaching
    it (``PeftModel.forward(*args, **kwargs)``), whose placeholders are ``args_0``, ``args_1``
    …, and ``**kwargs`` is empty (as fx names them: ``"*args": ()`` for Ultralytics'
    ``forward(x, *args, **kwargs)``): forward unpacks them, and fx's one proxy for them all
    cannot be unpacked. The classes answer the model's type tests on its inputs (see
    :class:`~gpa.frontends.fx.tracer.GpaProxy`); inputs made from shapes are tensors.
    """
    if isinstance(model, fx.GraphModule):
        return {}, {}
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}, {}
    given = options.example_inputs
    count = len(given) if given is not None else len(options.input_shape or ())

    def placeholder(j: int, name: str) -> Any:  # the constant, else fx.PH and its class
        value = given[j] if given is not None else torch.empty(0)
        if _constant(value):
            return value
        classes[name] = type(value)
        return fx.PH

    constants: dict[str, Any] = {}
    classes: dict[str, type] = {}
    for i, p in enumerate(parameters):
        if p.kind is _STAR:
            # the inputs reaching it, one placeholder each (see GpaTracer); else empty
            constants[f"*{p.name}"] = tuple(
                placeholder(j, f"{p.name}_{j - i}") for j in range(i, count)
            )
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            constants[f"**{p.name}"] = {}
            continue
        if i < count and p.kind is not inspect.Parameter.KEYWORD_ONLY:
            value = placeholder(i, p.name)
            if value is not fx.PH:
                constants[p.name] = value
        elif p.default is not inspect.Parameter.empty and _constant(p.default):
            constants[p.name] = p.default
    return constants, classes


def _example_inputs(gm: fx.GraphModule, options: AnalysisOptions) -> tuple | None:
    """The example inputs, or meta zeros of the input shapes (int64 when read by an embedding)."""
    if options.example_inputs is not None:
        return options.example_inputs
    if options.input_shape is None:
        return None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    integer = {i for i, p in enumerate(placeholders) if _reads_embedding(gm, p)}
    return zeros(*options.input_shape, integer=integer, dtype=floating_dtype(gm))
