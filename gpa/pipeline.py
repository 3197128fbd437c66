"""The analysis pipeline: model and options in, report out.

One path for every surface (library, CLI, ``gpa check``, ``gpa.testing``):

1. :func:`gpa.frontends.modules.resolve_options`: class names resolved against the model;
2. :func:`gpa.frontends.gradient_graph`: the frontend the options name builds the graph;
3. :func:`gpa.channels.channel_segments` (with ``channels``): segments per layer;
4. :func:`gpa.frontends.counts.layer_counts`: parameters and FLOPs per layer;
5. :func:`gpa.core.records.layer_records`: every record, with all its fields, at once;
6. the :class:`~gpa.core.report.Report` and its network summary.

Example:
    >>> import torch.nn as nn
    >>> from gpa.options import AnalysisOptions
    >>> report = analyze_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),
    ...                        AnalysisOptions(input_shape=(1, 4)))
    >>> report.network.max_shortest, report.tracer
    (2, 'fx')
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from gpa.channels import channel_segments
from gpa.core.graph import LOSS, GradientGraph, OwnerCall
from gpa.core.records import layer_records
from gpa.core.report import LayerRecord, NetworkSummary, Report
from gpa.core.segments import SegmentList
from gpa.errors import NoGradientError, NoLayersError
from gpa.frontends import gradient_graph
from gpa.frontends.counts import layer_counts
from gpa.frontends.inputs import check_input_count, describe_inputs
from gpa.frontends.modules import (
    DEFAULT_LAYER_TYPES,
    check_model,
    display_name,
    module_class,
    resolve_options,
    split_leaves,
)
from gpa.frontends.randomness import PYTHON_DRAWS_NOTE, python_random_states
from gpa.frontends.state import TRACING, modes_switched
from gpa.frontends.wrappers import unwrap_wrappers, wrappers_unwrapped
from gpa.names import class_path, stable_repr
from gpa.options import AnalysisOptions

__all__ = ["analyze_model"]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while an analysis runs (as it was after).

    An analysis makes millions of small objects that live until it ends (fx nodes, meta
    tensors with their autograd graph, routing rows, segments); every few thousand of
    them the collector would walk them all again, and the model's and torch's objects
    with them: a third of the time of a timm model's analysis, half of a channel
    analysis of Xception. The analysis makes next to no garbage in cycles: what it drops
    is freed by reference counting at once (peak memory unchanged in
    ``benchmarks/bench_residual.py``), and a program that paused the collector itself
    keeps it paused.

    The first young pass after the collector is on again walks what the analysis left
    (a tenth of a channel analysis), and must: it also frees the cycles the analysis
    dropped (fx graphs, autograd graphs). Moving everything to the oldest generation
    instead (``gc.freeze(); gc.unfreeze()``) skipped that pass but let those cycles pile
    up, each analysis slower than the last.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def analyze_model(
    model: nn.Module,
    options: AnalysisOptions,
    *,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Analyse ``model`` as ``options`` say (see :func:`gpa.analyze` for the errors raised)."""
    check_model(unwrap_wrappers(model)[0])  # (before the wrappers' hooks move onto it)
    with _collector_paused(), _random_states_kept(), wrappers_unwrapped(model) as unwrapped:
        return _analyze(*unwrapped, options, name, progress)


@contextmanager
def _random_states_kept() -> Iterator[None]:
    """torch's, Python's and numpy's global random states as they were before the block:
    a frontend running the model (dropout on real inputs, a draw in forward) must not
    change what the user's next seeded step draws (``docs/semantics.md`` §1.8)."""
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def _analyze(
    model: nn.Module,
    wrapped: list[str],
    options: AnalysisOptions,
    name: str | None,
    progress: Callable[[str], None] | None,
) -> Report:
    step = progress or (lambda phase: None)
    options = resolve_options(options, model)
    check_input_count(model, options.input_count)
    step("tracing and propagating shapes")
    states = python_random_states()
    graph = gradient_graph(model, options)
    if python_random_states() != states:  # restored after the analysis (§1.8)
        graph.notes.append(PYTHON_DRAWS_NOTE)
    if not graph.carries_gradient:
        raise NoGradientError(_no_gradient(type(model).__name__, options))
    segments = None
    if options.channels:
        step("channel segments")
        with TRACING:  # the routing calls modules on probes: no fx trace meanwhile
            segments = channel_segments(graph, options.outputs)
        if shared := _shared_calls(graph):
            graph.notes.append(_SHARED_CHANNELS.format(", ".join(shared)))
    step("parameters and FLOPs")
    named = list(model.named_modules())  # one walk for the counts and the notes below
    counts = layer_counts(model, graph, options.count_convention, named)
    step("gradient paths")
    records = layer_records(graph, params=counts.params, flops=counts.flops, segments=segments)
    if not records:
        types = ", ".join(
            t if isinstance(t, str) else t.__name__
            for t in (options.layer_types or DEFAULT_LAYER_TYPES)
        )
        raise NoLayersError(
            f"{type(model).__name__} has no layers, so it has no gradient paths to analyse "
            f"(layer types: {types}; add more with layer_types= / --layer-type)"
        )
    notes = [
        *wrapped,
        *_mode_notes(model, options, named),
        *graph.notes,
        *counts.notes,
        *_fallback_notes(records),
        *_no_layer_reached_notes(records, options),
        *_channels_reaching_nothing_notes(records),
        *_intermediate_outputs_notes(graph),
        *_tied_notes(model, records, named),
        *_frozen_notes(model, records, named),
        *_leaves_not_called_notes(options, records),
        *_classes_matching_nothing_notes(model, options),
    ]
    return Report(
        model=name or display_name(model),
        inputs=describe_inputs(graph.inputs),
        layers=records,
        network=NetworkSummary.of(
            records,
            params=counts.total_params,
            flops=counts.total_flops,
            count_convention=counts.convention.value,
        ),
        notes=[stable_repr(note) for note in notes],  # (a frontend's error text, quoted)
        tracer=graph.tracer,
        options=options.to_dict(),
    )


def _fallback_notes(records: Mapping[str, LayerRecord]) -> list[str]:
    """A note naming the operations whose channel routing fell back, and how many layers'
    segments it touches (the JSON's ``channel_fallback`` names them)."""
    touched = {name: r.channel_fallbacks for name, r in records.items() if r.channel_fallbacks}
    if not touched:
        return []
    operations = sorted({op for ops in touched.values() for op in ops})
    return [
        f"channel routing fell back through {', '.join(operations)} (for {len(touched)} "
        "layer(s)): gpa cannot follow channels through them, so every channel reaching "
        "them is taken to reach every position after them — the segments and gradient "
        "combinations of those layers over-approximate (docs/semantics.md §8; the JSON's "
        "channel_fallback names the operations per layer)"
    ]


def _shared_calls(graph: GradientGraph) -> list[str]:
    """The records of calls of several modules' weights after the first (§2), in order."""
    return list(
        dict.fromkeys(c.record for key, c in graph.calls.items() if isinstance(key, OwnerCall))
    )


#: The channel analysis reads a call of several modules' weights as one (§8).
_SHARED_CHANNELS = (
    "channel segments read a call computing with several modules' weights as one call "
    "of its first module: the segments of the layers before it name that one alone, "
    "and count one path through it; {} get that call's segments (docs/semantics.md §2, "
    "§8)"
)


def _intermediate_outputs_notes(graph: GradientGraph) -> list[str]:
    """A note when returned tensors feeding the loss are also read inside the model:
    intermediate feature maps returned beside the predictions (an Ultralytics head's
    ``feats`` in train mode, ``hidden_states``) give every layer before them a path straight
    to the loss, which a loss reading them for their shapes only does not train
    (``docs/semantics.md`` §1.5)."""
    ops = graph.ops
    # the nodes gradient flows from into the loss: a reader off those (the computation of
    # an output left unselected, a model's own loss beside the logits selected) trains nothing
    # (read off the predecessor map: an edge view per node cost a fiftieth of an analysis)
    predecessors = ops.pred
    feeding, stack = {LOSS}, [LOSS]
    while stack:
        for m, data in predecessors[stack.pop()].items():
            if data.get("grad") and m not in feeding:
                feeding.add(m)
                stack.append(m)

    def read_inside(node: Hashable, data: dict) -> bool:  # (the frontend's word, where it knows)
        read = any(
            s != LOSS and s in feeding and ops.edges[node, s].get("grad")
            for s in ops.successors(node)
        )
        return read and data.get("read_inside", True)

    read = [
        data.get("output")
        for node, _, data in ops.in_edges(LOSS, data=True)
        if data.get("grad") and read_inside(node, data)
    ]
    if not read:
        return []
    named = [str(key) for key in read if key is not None]
    said = "outputs" if len(named) > 1 else "output"  # (as --outputs names them)
    shown = f" ({said} {', '.join(named[:4])}{', …' if len(named) > 4 else ''})" if named else ""
    return [
        f"{len(read)} returned tensor(s) feeding the loss are also read inside the model{shown}: "
        "each gives the layers before it a path straight to the loss; if the training loss "
        "does not read them (an Ultralytics head's feats in train mode, logits returned "
        "beside the model's own loss), select what it reads with --outputs "
        "(docs/semantics.md §1.5)"
    ]


def _no_layer_reached_notes(
    records: Mapping[str, LayerRecord], options: AnalysisOptions
) -> list[str]:
    """A note where the loss reaches no layer: what feeds it carries gradient, but to the
    inputs alone (an input returned as it is, or computed from the inputs alone; layers'
    outputs only through values without gradient) — every layer is unreachable (§1.5)."""
    if any(r.reachable for r in records.values()):
        return []
    which = "the selected outputs" if options.outputs is not None else "the outputs"
    return [
        f"no layer is reached from {which}: they carry gradient only to the inputs or to "
        "parameters of no layer (an input returned as it is; layers' outputs reached only "
        "through values without gradient), so every layer is unreachable"
        + (" (select other outputs with outputs= / --outputs)" if options.outputs else "")
    ]


def _channels_reaching_nothing_notes(records: Mapping[str, LayerRecord]) -> list[str]:
    """Notes naming the layers reachable as whole tensors at rounds none of their
    channels is reached at: the layer level reads a tensor whole (a slice of a stack reads
    the whole stack, ``docs/semantics.md`` §3), where the routing of channels and positions
    finds what the layer filled cut away along some routes (a slice after a channel
    shuffle) or all (SAM's mask decoder drops its first mask token's masks after a matmul:
    a real backward gives that token's MLP zeros). The layer's record stays the whole
    tensor's (§8); the note says which of its rounds no channel shares."""
    cut, partly = [], []
    for name, r in records.items():
        if not r.reachable or not isinstance(r.segments, SegmentList):
            continue
        if not r.segments.reached():
            cut.append(name)
            continue
        if r.whole_tensor_only:
            partly.append(f"{name} ({', '.join(map(str, r.whole_tensor_only))})")
    notes = []
    if cut:
        notes.append(
            f"{_listed(cut, ', ')}: reachable as whole tensors, but none of their channels reaches "
            "the loss once channels and positions are followed (what they fill is cut away "
            "later, as a slice of a stack after a matmul does); a real backward gives them "
            "zero gradient (docs/semantics.md §3 and §8)"
        )
    if partly:
        notes.append(
            f"{_listed(partly, '; ')}: reached at these rounds as whole tensors only, by no "
            "channel once channels and positions are followed (a slice or a pick drops them: "
            "after a channel shuffle, a class token read alone; a real backward brings no "
            "gradient along those routes); the layers' "
            "shortest, longest and timestamps are the whole tensors', their segments the "
            "channels' (docs/semantics.md §3 and §8)"
        )
    return notes


def _listed(names: Sequence[str], sep: str) -> str:
    """The first five of ``names``, and how many more."""
    return sep.join(names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")


def _tied_notes(
    model: nn.Module, records: Mapping[str, LayerRecord], named: Sequence[tuple[str, nn.Module]]
) -> list[str]:
    """A note naming the layer modules that hold one parameter between them (weights tied
    by assignment, ``lm_head.weight = embed.weight``): each module is a record of its own
    (``docs/semantics.md`` §2), and the shared parameter is updated by the gradient of
    each — the paths of both records together. ``named``: ``model.named_modules()``."""
    modules = dict(named)
    holders: dict[int, list[str]] = {}
    kept = []  # alive while ids are compared: a parameter made anew at each access is freed
    for name in records:
        module = modules.get(name)
        # (``is not None``: a compiled module's truth asks its length, which raises)
        held = module.named_parameters(recurse=False) if module is not None else ()
        for attribute, parameter in held:
            kept.append(parameter)
            holders.setdefault(id(parameter), []).append(f"{name}.{attribute}")
    # (no "=": it read as an assignment, the wrong way round where the later module's
    # weight was set to the earlier's)
    tied = [" and ".join(names) for names in holders.values() if len(names) > 1]
    if not tied:
        return []
    return [
        f"layers hold tied parameters ({'; '.join(tied)}: one parameter): each module has "
        "its own record, "
        "and a tied parameter receives the gradient of every record holding it (its "
        "parameters are counted once, for the first)"
    ]


def _leaves_not_called_notes(
    options: AnalysisOptions, records: Mapping[str, LayerRecord]
) -> list[str]:
    """A note naming the leaf modules asked for by name (``leaf_modules`` / ``--leaf``)
    that are no layer of the report though layers inside them are: the model never calls
    them as one call (a container without ``forward``, as ``nn.ModuleList`` or the ones a
    ``torch.fx.GraphModule`` holds), so their layers are read one by one
    (``docs/semantics.md`` §1.1)."""
    _, names = split_leaves(options.leaf_modules)
    missed = sorted(
        name
        for name in names
        if name not in records and any(r.startswith(name + ".") for r in records)
    )
    if not missed:
        return []
    return [
        f"leaf module(s) {', '.join(missed)} never called as one call (the model calls the "
        "modules inside: a container as nn.ModuleList, or one a torch.fx GraphModule holds), "
        "so the layers inside are reported one by one"
    ]


def _classes_matching_nothing_notes(model: nn.Module, options: AnalysisOptions) -> list[str]:
    """A note naming the classes given as ``leaf_modules``, or as ``layer_types`` outside
    ``torch.nn``, that no module of ``model`` is of (as written: a TorchScript module by the
    class it was compiled from): such a class selects nothing, which a misspelt or wrong
    class would otherwise do without a word. (A torch class in a list shared by many models,
    ``layer_types = ["Conv2d", "GRU"]``, is not named for each model lacking it.)"""
    if not options.leaf_modules and not options.layer_types:
        return []  # (most analyses: no walk of the modules)
    used = {module_class(m) for m in model.modules()}

    def unmatched(given: Iterable[object], also_torch: bool) -> list[str]:
        return [
            class_path(c)
            for c in given
            if isinstance(c, type)
            and (also_torch or not c.__module__.startswith("torch."))
            and not any(issubclass(u, c) for u in used)
        ]

    notes = []
    leaves = unmatched(options.leaf_modules or (), also_torch=True)
    if leaves:
        notes.append(
            f"leaf_modules (--leaf) {', '.join(leaves)}: no module of the model is of this "
            "class, so it makes no leaf"
        )
    types = unmatched(options.layer_types or (), also_torch=False)
    if types:
        notes.append(
            f"layer_types (--layer-type) {', '.join(types)}: no module of the model is of "
            "this class, so it counts no layer"
        )
    return notes


#: Said where a model set to eval mode is analysed in train mode (the default).
EVAL_MODEL_NOTE = (
    "the model was in eval mode (model.training is False) and is analysed in train mode, "
    "the default: give train=False (--eval) for the paths it takes in eval mode (its "
    "dropout, batch norm and heads may differ; docs/semantics.md §1.1)"
)


def _mode_notes(
    model: nn.Module, options: AnalysisOptions, named: Sequence[tuple[str, nn.Module]]
) -> list[str]:
    """:data:`EVAL_MODEL_NOTE` where ``model`` is in eval mode and the analysis in train
    mode: ``model.eval()`` before ``gpa.analyze(model, …)`` does not choose the mode; where
    the model is in train mode and some of its modules in eval mode (a frozen backbone)
    that its ``train()`` switches to train mode, a note naming the outermost of them.
    ``named``: ``model.named_modules()``."""
    if not options.train:
        return []
    if not model.training:
        return [EVAL_MODEL_NOTE]
    if all(m.training for _, m in named):  # (most models: nothing to switch)
        return []
    # (switched as the frontends switch it: by the model's own ``train``, which may keep
    # a frozen part in eval mode, as mmdetection's norm_eval does)
    with modes_switched(model, True) as modules:
        switched = {id(m) for m in modules if m.training}  # (eval to train)
    evaluating = [
        f"{parent}.{name}" if parent else name
        for parent, module in model.named_modules()
        if id(module) not in switched
        for name, child in module.named_children()
        if id(child) in switched
    ]
    if not evaluating:
        return []
    listed = _listed(evaluating, ", ")
    return [
        f"modules in eval mode in a model in train mode ({listed}) are analysed in train "
        "mode, as the whole model is: gpa reads one mode for the whole model (their "
        "dropout, batch norm and heads may differ; docs/semantics.md §1.1)"
    ]


def _frozen_notes(
    model: nn.Module, records: Mapping[str, LayerRecord], named: Sequence[tuple[str, nn.Module]]
) -> list[str]:
    """A note naming the layers whose parameters are all frozen (``requires_grad=False``:
    a backbone frozen for fine-tuning, an EMA copy): their paths are those of any layer
    (``docs/semantics.md`` §3), though a real backward leaves their weights untouched.
    ``named``: ``model.named_modules()``."""
    if all(p.requires_grad for p in _parameters(model, named)):  # (the usual case)
        return []
    frozen = []
    for name in records:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if module is not None:
            parameters = list(module.parameters())
        else:
            try:
                parameters = [model.get_parameter(name)]
            except AttributeError:
                parameters = []
        if parameters and not any(p.requires_grad for p in parameters):
            frozen.append(name)
    if not frozen:
        return []
    listed = _listed(frozen, ", ")
    count = f"{len(frozen)} layer" + ("'s" if len(frozen) == 1 else "s'")
    which = "every layer's" if len(frozen) == len(records) else count
    return [
        f"{which} parameters are frozen (requires_grad=False): {listed}; gradient paths are "
        "structural, so they are analysed as any other layer's, though a real backward "
        "leaves their weights without gradient (and a re-entrant checkpoint given only "
        "what they compute passes none on in training, docs/semantics.md §1.7)"
    ]


def _parameters(model: nn.Module, named: Sequence[tuple[str, nn.Module]]) -> Iterable[Any]:
    """``model.parameters()`` (a parameter held twice may come twice), read off the
    registries of ``named`` (``model.named_modules()``, walked already) where the model's
    class walks its parameters as torch does."""
    cls = type(model)
    if any(getattr(cls, m) is not getattr(nn.Module, m) for m in _NAMING_PARAMETERS):
        return model.parameters()
    return (p for _, m in named for p in m._parameters.values() if p is not None)


# the methods through which ``model.parameters()`` walks the parameters
_NAMING_PARAMETERS = ("parameters", "named_parameters", "_named_members")


def _no_gradient(name: str, options: AnalysisOptions) -> str:
    which = (
        f"the selected outputs of {name} ({', '.join(map(repr, options.outputs))}) carry"
        if options.outputs is not None
        else f"{name} returns"
    )
    return (
        f"{which} no tensor that gradient can flow back from (only detached or integer "
        "values, or values computed without gradient): every layer would be unreachable, "
        "so there is nothing to analyse"
        + ("; select other outputs with outputs= / --outputs" if options.outputs else "")
    )
