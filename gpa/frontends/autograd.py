"""A second tracer: the gradient graph read from autograd after one forward pass.

:func:`autograd_gradient_graph` runs the model once — on the ``meta`` device
when it allows it (parameters, buffers and inputs replaced by meta copies with
``torch.func.functional_call``), else on real inputs of the given shapes — and
walks the autograd graph of its outputs (``grad_fn.next_functions``). Every
edge of that graph carries gradient, so detaches, ``no_grad`` blocks, integer
values and shape-only arguments are honoured by construction, and models with
data-dependent Python that torch.fx cannot trace are analysed all the same.

Layers follow the contract of ``docs/semantics.md`` exactly as the fx tracer
applies it: forward hooks on the modules fx would keep as single calls tell
which autograd nodes one call created (by their sequence numbers), and a call
containing a layer module becomes one node; a feature-mixing autograd node
(convolution, mm, addmm, bmm, embedding …) created outside such calls is a
functional layer when one of its operands is computed from parameters alone,
reported under the module owning that parameter.

Two kinds of call need a :mod:`~gpa.frontends.watch` (a trace function of this thread):
a TorchScript module takes no hooks, so its calls are watched instead (each is one call,
as a leaf's); and a re-entrant activation checkpoint runs its function without gradient,
so a model that runs one is run again with its functions in backward's grad mode, the
checkpoint's autograd node standing for the graph its function built.

Example:
    >>> import torch.nn as nn
    >>> from gpa.options import AnalysisOptions
    >>> g = autograd_gradient_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),
    ...                             AnalysisOptions(input_shape=(1, 2)))
    >>> [c.record for c in g.calls.values()]
    ['0', '2']
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import networkx as nx
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from gpa.core.graph import LOSS, GradientGraph, LayerCall, OutputKey
from gpa.errors import GpaError, ModelError, ShapeError, TraceError
from gpa.frontends.dynamic import dynamic_layers
from gpa.frontends.frames import Site
from gpa.frontends.fx.flow import ValueInfo, differentiable
from gpa.frontends.inputs import IntegerVariants, floating_dtype, integer_variants
from gpa.frontends.modules import (
    DEFAULT_LAYER_TYPES,
    fx_leaf,
    is_layer_module,
    opaque_layer_types,
    scripted_notes,
    split_leaves,
    type_name,
    unused_layer_modules,
    weight_holder,
    weight_owners,
    with_tied,
)
from gpa.frontends.operators import (
    custom_operator_note,
)
from gpa.frontends.outputs import returned_values
from gpa.frontends.raised import briefly, input_too_small, model_raised
from gpa.frontends.randomness import (
    RandomBranches,
    data_branch_note,
    random_branch_message,
    random_states,
    set_random_states,
)
from gpa.frontends.run_record import (
    MIXING_NODES,
    Call,
    MadeToRequireGradient,
    ParameterUse,
    Recorder,
    is_leaf_node,
    node_kind,
)
from gpa.frontends.state import parameters_kept, preserved_state, training_mode
from gpa.frontends.watch import (
    Checkpoints,
    ModuleCalls,
    recomputed_function_note,
    unfed_checkpoint_note,
)
from gpa.frontends.wrappers import functional_run
from gpa.options import AnalysisOptions

__all__ = ["autograd_gradient_graph"]

# The operands that are mixed (not a bias), in the order of the forward call:
# addmm(bias, x, w) comes from F.linear(x, w, bias), convolution(x, w, bias) from F.conv2d.
_MIXED_OPERANDS = {
    "AddmmBackward": (1, 2),
    "BaddbmmBackward": (1, 2),
    "AddbmmBackward": (1, 2),
    "AddmvBackward": (1, 2),
    **{kind: (0, 1) for kind in MIXING_NODES if "Conv" in kind or "Linear" in kind},
}
# Their indices are not in the autograd graph: the weight's operand is always data.
_INDEXED = frozenset({"EmbeddingBackward", "EmbeddingBagBackward"})

_TAINTED = object()  # an operand depending on a model input or a layer's output


def _mixing_node(fn: Any, run: _Run) -> bool:
    """Whether autograd node ``fn`` is a feature-mixing operation's (§2)."""
    return node_kind(fn) in MIXING_NODES or id(fn) in run.use.contracting


def autograd_gradient_graph(model: nn.Module, options: AnalysisOptions) -> GradientGraph:
    """The gradient graph of ``model`` read from autograd after one forward pass.

    Needs example inputs or input shapes: the model is run once, on the meta device when
    it allows it, else on real inputs (zeros of the given shapes). ``options.layer_types``
    and ``options.leaf_modules`` must hold classes and qualified names only.

    Raises:
        GpaError: no inputs were given.
        ModelError: the forward pass fails (the message names the module that failed
            and the model's own source line).
    """
    if not options.has_inputs:
        raise GpaError(
            "the autograd tracer runs the model, so it needs example inputs "
            "(give --input-shape or example_inputs)"
        )
    types = options.layer_types if options.layer_types is not None else DEFAULT_LAYER_TYPES
    leaf_types, leaf_names = split_leaves(options.leaf_modules)
    modules = dict(model.named_modules())
    unknown = sorted(n for n in leaf_names if n not in modules)
    if unknown:
        raise TraceError(f"leaf module name(s) not found in the model: {', '.join(unknown)}")
    root_name = type(model).__name__
    custom = opaque_layer_types(model, types)

    def is_opaque(name: str, m: nn.Module) -> bool:
        if not name:  # the model itself, when fx could only record it as one call
            return fx_leaf(type(m)) or isinstance(m, leaf_types)
        # gpa cannot look inside a TorchScript module: one call, as a leaf's
        opaque_types = (*leaf_types, *custom, torch.jit.ScriptModule)
        return fx_leaf(type(m)) or isinstance(m, opaque_types) or name in leaf_names

    opaque = {id(m): (n or root_name) for n, m in modules.items() if is_opaque(n, m)}
    with training_mode(model, options.train):
        drawn = random_states()  # (every run and attempt draws what the first drew)
        run = _run(model, options, opaque, modules, drawn)
        functions = run.use.weight_functions
        if run.use.checkpointed or functions:  # again, with checkpointed functions (and
            # Functions computing with weights) in backward's grad mode
            with Checkpoints(functions) as watch:
                run = _run(model, options, opaque, modules, drawn, watch)
            run.checkpoints = watch.results
            run.functions = watch.functions
            if watch.functions:
                run.notes.append(recomputed_function_note(functions))
    run.notes.extend(scripted_notes(model, types))
    return _build(model, run, options.outputs, types)


class _ForwardFailed(Exception):
    """The user's forward raised ``error`` while the modules of ``stack`` were running."""

    def __init__(self, error: BaseException, stack: list[str]) -> None:
        super().__init__(str(error))
        self.error, self.stack = error, stack


@dataclass
class _Run:
    """What one forward pass left: outputs, inputs, hooks' records, parameter tensors."""

    output: Any
    inputs: tuple
    recorder: Recorder
    use: ParameterUse
    parameters: dict[int, str]  # id(parameter tensor used) -> name
    input_ids: set[int]
    keep: list  # keeps the tensors alive so that their ids stay unique
    notes: list[str]
    checkpoints: list = field(default_factory=list)  # Checkpoints.results
    functions: list = field(default_factory=list)  # Checkpoints.functions
    random_branch: str | None = None  # where forward branched on random numbers
    input_grad: bool = True  # whether the inputs were given carrying gradient


def _run(
    model: nn.Module,
    options: AnalysisOptions,
    opaque: dict[int, str],
    modules: dict[str, nn.Module],
    drawn: tuple,
    watch: Checkpoints | None = None,
) -> _Run:
    """Run the forward pass on meta if possible, else on real tensors (zeros standing for
    weights the model holds on the meta device, up to :data:`ZERO_WEIGHTS_BUDGET` bytes);
    retry integer inputs. Each attempt draws from the random states ``drawn``
    (:func:`random_states`) and starts ``watch`` afresh (what a failed attempt's
    checkpoints recorded is no checkpoint of the graph read)."""
    weights = [*model.parameters(), *model.buffers()]
    real: str | None = "real"
    if any(t.is_meta for t in weights):  # built without weights (a transformers TARGET)
        size = sum(t.numel() * t.element_size() for t in weights)
        real = "zeros" if size <= ZERO_WEIGHTS_BUDGET else None
    first_error: _ForwardFailed | None = None
    meta_error: BaseException | None = None
    candidates = (
        [options.example_inputs]
        if options.example_inputs is not None
        else integer_variants(options.input_shape or (), "cpu", floating_dtype(model))
    )
    for candidate in candidates:
        for device in ("meta", real) if real else ("meta",):
            try:
                try:
                    # each run from the model's state as it was: what a failed one cached
                    # (torchvision's anchors, made on meta) must not reach the next
                    _start_afresh(drawn, watch)
                    with _model_kept(model, device):
                        run = _forward(model, candidate, device, opaque, modules)
                except _ForwardFailed as failed:
                    if not _takes_inputs_without_grad(failed.error):
                        raise
                    # the model sets requires_grad on a value made from its input, which
                    # must then be a leaf (Wav2Vec2's feature encoder), or writes into its
                    # input in place (``x.div_(255)``): as in training, inputs carrying no
                    # gradient
                    _start_afresh(drawn, watch)
                    with _model_kept(model, device):
                        run = _forward(model, candidate, device, opaque, modules, input_grad=False)
            except _ForwardFailed as failed:  # the user's forward failed on these inputs
                if isinstance(candidates, IntegerVariants):
                    candidates.failed(failed.error)
                if first_error is None:
                    first_error = failed
                if device == "meta" and meta_error is None:
                    meta_error = failed.error
                if device != "meta" and first_error.error is meta_error:
                    first_error = failed  # the real run's failure says more
                continue
            if run.random_branch is not None:
                raise TraceError(random_branch_message(model, run.random_branch, options.train))
            if device != "meta":
                run.notes.append(
                    "autograd tracer: the model cannot run on the meta device "
                    f"({briefly(meta_error)}); it was run once on real inputs"
                    + (" with zero weights (the model holds none)" if device == "zeros" else "")
                )
            return run
    assert first_error is not None
    if real is None and first_error.error is meta_error and "meta" in str(meta_error):
        raise TraceError(
            f"{type(model).__name__} holds its weights on the meta device, where its forward "
            f"cannot run ({briefly(meta_error)}), and they are too large "
            f"({size / 2**30:.1f} GiB) for the autograd tracer to stand zeros in for them "
            f"(at most {ZERO_WEIGHTS_BUDGET / 2**30:.1f} GiB): analyse a smaller configuration, "
            "or let gpa choose a frontend (--tracer auto)"
        )
    stack = first_error.stack
    where = stack[-1] if stack else None
    message = model_raised(type(model).__name__, first_error.error, where=where)
    if input_too_small(first_error.error):  # it runs on larger inputs
        raise ShapeError(message)
    raise ModelError(message)


@contextlib.contextmanager
def _model_kept(model: nn.Module, device: str) -> Iterator[None]:
    """The model's state kept around one attempt of :func:`_run` (``docs/semantics.md``
    §1.8); on real tensors its parameters' values too: their stand-ins share their storage,
    and forward may write into them (an embedding's ``max_norm``, weight clipping)."""
    with (
        preserved_state(model),
        parameters_kept(model) if device == "real" else contextlib.nullcontext(),
    ):
        yield


def _start_afresh(drawn: tuple, watch: Checkpoints | None) -> None:
    """Before an attempt of :func:`_run`: the random states as drawn, nothing recorded."""
    set_random_states(drawn)
    if watch is not None:
        watch.forget()


#: The most bytes of weights held on the meta device that the autograd tracer stands zeros
#: in for, to run a model that cannot run on the meta device (1 GiB).
ZERO_WEIGHTS_BUDGET = 2**30


def _takes_inputs_without_grad(error: BaseException) -> bool:
    """Whether ``error`` is torch refusing what a model may do to inputs that carry no
    gradient, as in training: set ``requires_grad`` of a value made from one (a non-leaf
    then), or write into one in place (a leaf that requires grad then); or the model making
    data require gradient (:class:`MadeToRequireGradient`)."""
    said = str(error)
    return (
        isinstance(error, MadeToRequireGradient)
        or isinstance(error, RuntimeError)
        and (
            "requires_grad flags of leaf" in said
            or "leaf Variable that requires grad is being used in an in-place" in said
        )
    )


def _forward(
    model: nn.Module,
    inputs: tuple,
    device: str,
    opaque: dict[int, str],
    modules: dict[str, nn.Module],
    input_grad: bool = True,
) -> _Run:
    keep: list = []

    def stand_in(t: torch.Tensor, grad: bool, share: bool = False) -> torch.Tensor:
        if device == "meta":
            copy = t.detach().to("meta")
        elif t.is_meta:  # "zeros": a weight the model holds without values
            copy = torch.zeros(t.shape, dtype=t.dtype)
        else:  # parameters share their storage; buffers and inputs may be written in place
            copy = t.detach() if share else t.detach().clone()
        keep.append(copy)
        return copy.requires_grad_(grad and differentiable(copy))

    parameters = {
        name: nn.Parameter(stand_in(p, True, share=True), requires_grad=differentiable(p))
        for name, p in model.named_parameters()
    }
    keep.extend(parameters.values())
    state = {**parameters, **{n: stand_in(b, False) for n, b in model.named_buffers()}}
    args = tree_map(lambda x: stand_in(x, input_grad) if isinstance(x, torch.Tensor) else x, inputs)
    input_ids = {id(t) for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)}
    recorder = Recorder(opaque, {id(m): n for n, m in modules.items()})
    ids = {id(p): n for n, p in parameters.items()}
    use = ParameterUse(recorder, ids, tree_flatten(args)[0])
    watch = RandomBranches(is_data=use.reads_data)
    with _hooks(modules.values(), recorder), torch.enable_grad(), watch, use:
        try:
            output = functional_run(model, state, args)
        except Exception as exc:
            raise _ForwardFailed(exc, list(recorder.stack)) from exc
    return _Run(
        output,
        args,
        recorder,
        use,
        ids,
        input_ids,
        keep,
        [],
        random_branch=watch.where,
        input_grad=input_grad,
    )


@contextlib.contextmanager
def _hooks(modules: Iterable[nn.Module], recorder: Recorder) -> Iterator[None]:
    """The recorder's forward hooks on ``modules``; TorchScript modules take none, so a
    watch shows their calls to the recorder instead."""
    handles = []
    scripted = [m for m in modules if isinstance(m, torch.jit.ScriptModule)]
    try:
        for m in modules:
            if not isinstance(m, torch.jit.ScriptModule):
                handles.append(m.register_forward_pre_hook(recorder.pre))
                # before the model's own hooks: what they compute (``out + self.side(x)``)
                # is outside the call, as it is outside the module's forward
                handles.append(m.register_forward_hook(recorder.post, prepend=True))
        watch = ModuleCalls(scripted, recorder.pre, recorder.post)
        with watch if scripted else contextlib.nullcontext():
            yield
    finally:
        for h in handles:
            h.remove()


class _Edges:
    """Where each autograd node sends gradient (its ``next_functions``), with the node of
    a re-entrant checkpoint replaced by the graph its function built (recorded by
    :class:`~gpa.frontends.watch.Checkpoints`): the graph backward rebuilds."""

    def __init__(
        self,
        checkpoints: list[tuple[Any, list]],
        parameters: Mapping[int, str] | None = None,
        data_picks: set[int] = frozenset(),
        functions: Sequence[tuple[Any, list]] = (),
        inputs: Collection[int] = frozenset(),
    ) -> None:
        self._data_picks = data_picks
        self._through: dict[int, list] = {}
        self._keep = [checkpoints, functions]  # keeps the ids unique
        # checkpoints given nothing computed from parameters or from a tensor the model
        # made require gradient (the model's inputs alone, ``inputs``): in training
        # nothing they get requires gradient, so their outputs carry none
        # (so are a custom Function's: its outputs carry gradient only if its inputs do)
        self.cut = 0
        ran = sorted(  # in the order they ran: inputs before their users
            [*((c, True) for c in checkpoints), *((f, False) for f in functions)],
            key=lambda item: -1 if item[0][0] is None else item[0][0]._sequence_nr(),
        )
        for (ctx, edges), checkpoint in ran:
            if parameters is not None and not self._reaches(ctx, parameters, inputs):
                edges = [None] * len(edges)
                self.cut += checkpoint
            self._through[id(ctx)] = edges

    def _reaches(self, fn: Any, parameters: Mapping[int, str], inputs: Collection[int]) -> bool:
        """Whether gradient from ``fn`` reaches a parameter, or a leaf that is none of the
        model's ``inputs`` (a tensor the model made require gradient: Wav2Vec2's
        ``h.requires_grad = True``)."""
        stack, seen = list(self.of(fn)), set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if is_leaf_node(node):
                if id(node.variable) in parameters or id(node.variable) not in inputs:
                    return True
                continue
            stack.extend(self.of(node))
        return False

    def resolve(self, fn: Any, output_nr: int = 0) -> Any:
        """The node that computed output ``output_nr`` of ``fn``, seen through checkpoints."""
        return self.resolve_output(fn, output_nr)[0]

    def resolve_output(self, fn: Any, output_nr: int = 0) -> tuple[Any, int]:
        """:meth:`resolve`'s node, with the number of the output it computed."""
        while fn is not None and id(fn) in self._through:
            edges = self._through[id(fn)]
            edge = edges[output_nr] if output_nr < len(edges) else None
            fn, output_nr = edge if edge is not None else (None, 0)
        return fn, output_nr

    def of(self, fn: Any) -> list[Any]:
        """``fn``'s inputs in order (None where one receives no gradient); one element
        picked from a stack (``torch.stack(heads)[-1]``) reads the one tensor stacked
        there: autograd's edge to the stack sends the others zeros."""
        children = [self.resolve(child, nr) for child, nr in fn.next_functions]
        if _constant_pick(fn, self._data_picks):
            stack = self._picked(children[0])  # (a pick of a pick: ``stack(...)[0][1]``)
            if type(stack).__name__ == "StackBackward0":
                stacked = _stacked_operand(fn, stack)
                if stacked is not None:
                    return [self.resolve(*stacked)]
        return children

    def _picked(self, node: Any) -> Any:
        """``node``, or, where it picks one element of a stack by a constant index — of a
        stack itself picked so, at any depth (``stack(...)[1][0][2]``) —, the node of the
        tensor stacked there."""
        if not _constant_pick(node, self._data_picks):
            return node
        stack = self._picked(self.resolve(*node.next_functions[0]))
        stacked = (
            _stacked_operand(node, stack) if type(stack).__name__ == "StackBackward0" else None
        )
        return node if stacked is None else self._picked(self.resolve(*stacked))


def _constant_pick(fn: Any, data_picks: set[int]) -> bool:
    """Whether autograd node ``fn`` picks one element by an index the data did not choose
    (``data_picks``: the ids of those it did)."""
    return type(fn).__name__ == "SelectBackward0" and id(fn) not in data_picks


def _outputs_read(nodes: list[Any], edges: _Edges) -> set[tuple[int, int]]:
    """(id of node, output number) of each output of ``nodes`` that one of them reads."""
    return {
        (id(fn), nr)
        for user in nodes
        for fn, nr in (edges.resolve_output(c, n) for c, n in user.next_functions)
        if fn is not None
    }


def _stacked_operand(select: Any, stack: Any) -> tuple[Any, int] | None:
    """The edge to the tensor ``select`` picks from ``stack``'s result, if it picks along
    the stacked axis."""
    rank = len(select._saved_self_sym_sizes)
    count = len(stack.next_functions)
    index = _signed(select._saved_index)
    if _signed(select._saved_dim) % rank != _signed(stack._saved_dim) % rank:
        return None
    if not -count <= index < count:
        return None
    return stack.next_functions[index % count]


def _signed(saved: int) -> int:
    """An integer autograd saved as unsigned (a negative index or axis: ``select(-3, i)``,
    ``stack(..., dim=-1)``) as the signed number it was."""
    return saved - 2**64 if saved >= 2**63 else saved


def _autograd_nodes(roots: list[Any], edges: _Edges) -> list[Any]:
    """Every autograd node reachable from ``roots``, inputs before their users."""
    seen: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen[id(fn)] = fn
        stack.extend(edges.of(fn))

    # Creation order, leaves (AccumulateGrad, the largest number) first, is a topological
    # order but where autograd made a node again: a view read after an in-place write into
    # its base gets a fresh node, older than what it reads. Kahn's algorithm, taking the
    # earliest created ready node first, keeps creation order wherever it is one.
    def created(fn: Any) -> int:
        return -1 if is_leaf_node(fn) else fn._sequence_nr()

    inputs = {i: {id(c) for c in edges.of(fn) if c is not None} for i, fn in seen.items()}
    users: dict[int, list[int]] = {i: [] for i in seen}
    for i, found in inputs.items():
        for j in found:
            users[j].append(i)
    waiting = {i: len(found) for i, found in inputs.items()}
    ready = [(created(seen[i]), i) for i, n in waiting.items() if not n]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(seen[i])
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (created(seen[u]), u))
    return order


def _build(
    model: nn.Module, run: _Run, outputs: Iterable[OutputKey] | None, types: tuple[type, ...]
) -> GradientGraph:
    recorder = run.recorder
    calls = sorted(recorder.calls, key=lambda c: c.start)
    starts = [c.start for c in calls]

    def opaque_call(fn: Any) -> int | None:
        if is_leaf_node(fn):
            return None
        i = bisect.bisect_right(starts, fn._sequence_nr()) - 1
        return i if i >= 0 and fn._sequence_nr() < calls[i].end else None

    layer_calls = {i for i, c in enumerate(calls) if is_layer_module(c.module, types)}
    returned = returned_values(run.output)
    # (inputs given carrying none, as in training: a leaf requiring gradient is one the
    # model made so, its own input included)
    inputs = run.input_ids if run.input_grad else frozenset()
    edges = _Edges(run.checkpoints, run.parameters, run.use.data_picks, run.functions, inputs)
    selected = returned.select(outputs)
    returned_at = [edges.resolve_output(t.grad_fn, t.output_nr) for _, t in selected]
    roots = [fn for fn, _ in returned_at]
    nodes = _autograd_nodes([*(r for r in roots if r is not None), *run.use.created], edges)

    g = nx.DiGraph()
    names: dict[int, _Key] = {}
    layer_seq: dict[_Key, int] = {}
    layer_call: dict[_Key, LayerCall] = {}
    for i, c in enumerate(calls):
        if i in layer_calls:
            key = _Key("call", i, c.name)
            _add_call(g, key, c.value, c.input)
            layer_seq[key] = c.start
            layer_call[key] = LayerCall(c.name, type_name(c.module), c.site)

    def key_of(fn: Any) -> _Key:
        i = opaque_call(fn)
        if i in layer_calls:
            return _Key("call", i, calls[i].name)
        found = names.get(id(fn))
        if found is None:
            found = names[id(fn)] = _Key("op", len(names), type(fn).__name__)
        return found

    roots_of: dict[int, Any] = {}  # id(node) -> the parameters it is computed from, or _TAINTED
    candidates: list[Any] = []  # convolutions whose kernel carries no parameter alone
    picked: set[int] = set()  # id(node) of values the forward pass saw computed from data
    for fn in nodes:  # inputs before their users
        key = key_of(fn)
        children = edges.of(fn)
        roots_of[id(fn)] = _parameter_root(fn, children, key, layer_call, roots_of, run)
        if id(fn) in run.use.data_nodes or any(id(c) in picked for c in children if c):
            picked.add(id(fn))  # (data; a weight picked at data positions if it has a root)
        parameter = None
        if opaque_call(fn) is None and _mixing_node(fn, run):
            read = _weight_read(run.use.weight_reads, fn._sequence_nr())
            if read is _UNSEEN:
                constants = _weight_read(run.use.constant_reads, fn._sequence_nr()) is None
                parameter = _mixing_parameter(fn, children, roots_of, constants, picked)
            else:
                parameter = read
            if parameter is None and "Conv" in node_kind(fn):
                candidates.append(fn)  # a dynamic convolution? (decided below)
        if parameter is not None:  # a functional layer (named once all are known)
            *values, site = _function_values(run.use.values, fn._sequence_nr())
            layer_call[key] = LayerCall(parameter, "", site)
            layer_seq[key] = fn._sequence_nr()
            roots_of[id(fn)] = _TAINTED  # a layer's output is data
            _add_call(g, key, *values)
        g.add_node(key)
        for child in children:
            if child is not None and key_of(child) != key:
                g.add_edge(key_of(child), key, grad=True)
        if opaque_call(fn) is None:
            _mark_added(
                g, key, [c and key_of(c) for c in children], _MIXED_OPERANDS.get(node_kind(fn))
            )
    g.add_node(LOSS)
    # each node's outputs other nodes read: a node here may hold several returned tensors
    # (a layer call's, a split's), of which the model may read some and not others (§1.5)
    read = _outputs_read(nodes, edges)
    for (root, nr), (output, value) in zip(returned_at, selected, strict=True):
        if root is None and id(value) in run.input_ids and value.requires_grad:
            # an input returned as it is carries gradient to itself, as fx and export
            # read it (where the run's inputs carry none, it is the model's doing)
            g.add_edge(_Key("returned input", id(value), ""), LOSS, grad=True, output=output)
        elif root is not None and not g.has_edge(key_of(root), LOSS):  # (its first path names it)
            inside = (id(root), nr) in read
            g.add_edge(key_of(root), LOSS, grad=True, output=output, read_inside=inside)
    outputs_at = {id(r) for r in roots if r is not None}
    chosen, unmade = _dynamic_convolutions(candidates, nodes, edges, key_of, layer_call, outputs_at)
    for fn, made in chosen:  # the convolution is the layer; what made its kernel is none
        key = key_of(fn)
        for _, _, edge in g.in_edges(key, data=True):  # (its bias is its own, as its kernel)
            edge.pop("added", None)
        *values, site = _function_values(run.use.values, fn._sequence_nr())
        layer_call[key] = LayerCall(made.record, made.type, site)
        layer_seq[key] = fn._sequence_nr()
        _add_call(g, key, *values)
    for maker in unmade:
        del layer_call[maker], layer_seq[maker]
        g.remove_node(_Key("input", maker.index, maker.kind))
        g.nodes[maker].clear()
    for seq, parameter, operands, result in run.use.no_grad_layers:  # run without gradient
        key = _Key("nograd", seq, parameter[0])
        _add_call(g, key, ValueInfo.of(result), ValueInfo.of(operands[0]))
        layer_call[key] = LayerCall(parameter, "")
        layer_seq[key] = seq
    # the functional layers (their records hold their weights' parameters so far), named
    # together: a weight of several modules' parameters makes a call of each (§2)
    read = {key: c.record for key, c in layer_call.items() if key.kind != "call"}
    for key, (first, *others) in weight_owners(model, read, types).items():
        shared = (first, *others) if others else ()
        layer_call[key] = LayerCall(*first[:2], layer_call[key].site, owners=shared)
    ordered = dict(sorted(layer_call.items(), key=lambda item: layer_seq[item[0]]))
    received = _receiving([t for _, t in returned.values], edges, run)
    uncalled = _uncalled(model, types, [*calls, *layer_call.values()], received)
    return GradientGraph(
        ops=g,
        calls=ordered,
        tracer="autograd",
        uncalled=uncalled,
        inputs=run.inputs,
        notes=[
            *run.notes,
            # where it skipped a layer module (an expert no token was routed to) or picked a
            # weight by the data (a fused expert bank looped over the experts hit)
            *(
                [data_branch_note(run.use.data_branch)]
                if run.use.data_branch and (uncalled or run.use.loops_over_weights)
                else []
            ),
            *([unfed_checkpoint_note(edges.cut)] if edges.cut else []),
            *returned.notes(outputs),
            *(custom_operator_note(n, owners) for n, owners in run.use.operators.items()),
        ],
        module_sites=recorder.sites,
    )


def _mark_added(
    g: nx.DiGraph, key: _Key, children: list[_Key | None], mixed_at: tuple[int, ...] | None
) -> None:
    """Mark the edges into ``key`` from what a feature-mixing node only adds to its product
    (``children``: its inputs' nodes in order, ``mixed_at``: the positions it mixes; None
    for another node), for :func:`~gpa.core.graph.added_apart`."""
    if mixed_at is None:
        return
    mixed = {c for i, c in enumerate(children) if i in mixed_at}
    for i, child in enumerate(children):
        if child is not None and child != key and i not in mixed_at:
            g.edges[child, key].update(added=True, mixed=child in mixed)


class _Key(NamedTuple):
    """A node of the op graph: a module call, an autograd node, a call run without
    gradient, the first operand of a layer call (``kind`` "input"), or a model input
    returned as it is (``kind`` "returned input")."""

    kind: str
    index: int
    name: str


def _add_call(g: nx.DiGraph, key: _Key, value: Any, first_input: Any) -> None:
    """A layer call node with its result's shape, and its first operand's as the first
    predecessor (an edge carrying no gradient), as the fx tracer's graph has them."""
    g.add_node(key, op="call", target=key.name, value=value)
    operand = _Key("input", key.index, key.kind)
    g.add_node(operand, op="input", target=key.name, value=first_input)
    g.add_edge(operand, key, grad=False)


def _function_values(values: list[tuple], seq: int) -> tuple[Any, Any, Site | None]:
    """Result and first operand of the feature-mixing function that created node ``seq``,
    and the model's line that called it."""
    i = bisect.bisect_right(values, (seq, float("inf"))) - 1
    if i >= 0 and values[i][0] <= seq < values[i][1]:
        return values[i][2], values[i][3], values[i][4]
    return None, None, None


_UNSEEN = object()


def _weight_read(reads: list[tuple[int, int, tuple[str, ...] | None]], seq: int) -> Any:
    """What the forward pass saw of the feature-mixing function that created node ``seq``
    when it read a weight without gradient (``ParameterUse._weight_without_gradient``):
    the layer's parameters, None (weights alone: no layer), or ``_UNSEEN`` (it read none:
    its autograd edges tell)."""
    i = bisect.bisect_right(reads, (seq, float("inf"))) - 1
    if i >= 0 and reads[i][0] <= seq < reads[i][1]:
        return reads[i][2]
    return _UNSEEN


def _parameter_root(
    fn: Any,
    children: list[Any],
    key: _Key,
    layer_call: dict[_Key, LayerCall],
    roots_of: dict[int, Any],
    run: _Run,
) -> Any:
    """The parameters ``fn``'s value (computed from ``children``) is computed from, in
    order, ``_TAINTED``, or None."""
    if is_leaf_node(fn):
        variable = id(fn.variable)
        if variable in run.input_ids:
            return _TAINTED
        parameter = run.parameters.get(variable)
        return None if parameter is None else (parameter,)
    if (key.kind == "call" and key in layer_call) or id(fn) in run.use.mixed_nodes:
        return _TAINTED
    found: dict[str, None] = {}
    for child in children:
        if child is None:
            continue
        roots = roots_of[id(child)]
        if roots is _TAINTED:
            return _TAINTED
        found.update(dict.fromkeys(roots or ()))
    order = run.use.weight_order.get(id(fn))
    if order is not None and set(found) <= set(order):  # as the call read them, with the
        # parameters of a module gradient reaches through another (§2: a detached part of
        # one module's weight is still its own; of another module's, no one's)
        holders = {weight_holder(p) for p in found}
        return tuple(p for p in order if p in found or weight_holder(p) in holders)
    return tuple(found) or None


def _mixing_parameter(
    fn: Any,
    children: list[Any],
    roots_of: dict[int, Any],
    constants: bool,
    data_nodes: set[int] = frozenset(),
) -> tuple[str, ...] | None:
    """The parameters naming a feature-mixing node (its weight's), or None when it is no
    layer.

    It is a layer when one mixed operand is computed from parameters alone (the
    first such names it) and another is data: a model input, a layer's output,
    or a value without gradient computed from them — or a weight picked at positions
    computed from data (``data_nodes``: ``table[ids] @ w``, the rows picked are data).
    With parameters, buffers and constants alone on every side, it only transforms a
    weight (``A @ B``, spectral norm's ``W @ v``). ``constants``: the forward pass saw
    that the operands carrying no gradient (no autograd edge) are constants, not data.
    """
    kind = node_kind(fn)
    operands = [children[i] for i in _MIXED_OPERANDS.get(kind, range(len(children)))]
    if constants:
        operands = [c for c in operands if c is not None]
    found = [None if c is None else roots_of[id(c)] for c in operands]
    weights = [f for f in found if f is not None and f is not _TAINTED]
    if not weights:
        return None
    if (kind in _INDEXED and not constants) or len(weights) < len(found):
        return weights[0]
    fixed = [f for c, f in zip(operands, found, strict=True) if id(c) not in data_nodes]
    return fixed[0] if fixed and len(fixed) < len(found) else None


def _dynamic_convolutions(
    candidates: list[Any],
    nodes: list[Any],
    edges: _Edges,
    key_of: Callable[[Any], _Key],
    layers: Mapping[_Key, LayerCall],
    returned: set[int],
) -> tuple[list[tuple[Any, LayerCall]], list[_Key]]:
    """Of the convolution nodes ``candidates`` (no layers by their operands), those that
    are dynamic convolutions (§2), each with the layer call of its first maker, and the
    makers' keys that stop being layers (see :mod:`gpa.frontends.dynamic`)."""
    makers = {
        fn: found for fn in candidates if (found := _weight_makers(fn, edges, key_of, layers))
    }
    if not makers:
        return [], []
    parents = _parents(nodes, edges)
    convolutions = {id(fn) for fn in makers}
    impure = {
        m
        for found in makers.values()
        for m in found
        if not _kernel_only(m, parents, key_of, convolutions, returned)
    }
    chosen, unmade = dynamic_layers(makers, impure)
    made = [(fn, layers[key_of(found[0])]) for fn, found in chosen.items()]
    return made, [key_of(m) for m in unmade]


def _weight_makers(
    fn: Any, edges: _Edges, key_of: Callable[[Any], _Key], layers: Mapping[_Key, LayerCall]
) -> list[Any]:
    """For a convolution node whose kernel is computed from parameters *and* data (a
    dynamic convolution: CondConv), the functional layers' nodes computing that kernel and
    its bias, in forward order; else none (``docs/semantics.md`` §2; the fx frontend's
    ``_weight_makers``). Walks back from the kernel and bias operands through nodes that
    are no layers; a module's call (its key a ``"call"``), a leaf, and the data the
    convolution reads (its input and what that is computed from, not through another
    convolution's kernel) end a walk."""
    children = edges.of(fn)
    if len(children) < 2 or children[1] is None:
        return []
    makers: dict[Any, int] = {}
    seen = _data_ancestors(children[0], edges)
    stack = children[1:3]  # the kernel, and the bias if it carries gradient
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen or is_leaf_node(n):
            continue
        seen.add(id(n))
        key = key_of(n)
        if key.kind == "call":
            continue
        if key in layers:  # a functional layer (a module's call ended the walk above)
            makers[n] = n._sequence_nr()
            continue
        if "Conv" not in node_kind(n):  # another convolution's result is data
            stack.extend(edges.of(n))
    return sorted(makers, key=makers.__getitem__)


def _data_ancestors(fn: Any, edges: _Edges) -> set[int]:
    """The ids of ``fn`` and of the nodes it is computed from, not through a convolution's
    kernel or bias (its first operand is its data)."""
    found: set[int] = set()
    stack = [fn]
    while stack:
        n = stack.pop()
        if n is None or id(n) in found:
            continue
        found.add(id(n))
        children = edges.of(n)
        stack.extend(children[:1] if "Conv" in node_kind(n) else children)
    return found


def _parents(nodes: Iterable[Any], edges: _Edges) -> dict[int, list[tuple[Any, int]]]:
    """id(node) -> the nodes using its result, each with the operand position it takes."""
    parents: dict[int, list[tuple[Any, int]]] = {}
    for fn in nodes:
        for position, child in enumerate(edges.of(fn)):
            if child is not None:
                parents.setdefault(id(child), []).append((fn, position))
    return parents


def _kernel_only(
    maker: Any,
    parents: Mapping[int, list[tuple[Any, int]]],
    key_of: Callable[[Any], _Key],
    convolutions: set[int],
    returned: set[int],
) -> bool:
    """Whether ``maker``'s result reaches nothing but the kernel and bias operands of
    ``convolutions`` (ids of those found to have makers), through nodes that are no
    layers: no other layer or mixing reads it, and it is not returned (the fx frontend's
    ``_kernel_only``; the autograd graph holds the uses with gradient only)."""
    seen: set[int] = set()
    stack = [maker]
    while stack:
        n = stack.pop()
        if id(n) in returned:
            return False
        for user, position in parents.get(id(n), ()):
            if id(user) in seen:
                continue
            seen.add(id(user))
            if id(user) in convolutions and position in (1, 2):
                continue  # a kernel or a bias: the maker's use
            if key_of(user).kind == "call" or node_kind(user) in MIXING_NODES:
                return False  # a layer or a mixing reads it as data
            stack.append(user)
    return True


def _receiving(outputs: Iterable[torch.Tensor], edges: _Edges, run: _Run) -> set[str]:
    """The parameters that gradient from ``outputs`` reaches."""
    roots = [edges.resolve(t.grad_fn, t.output_nr) for t in outputs]
    return {
        run.parameters[id(fn.variable)]
        for fn in _autograd_nodes(roots, edges)
        if is_leaf_node(fn) and id(fn.variable) in run.parameters
    }


def _uncalled(
    model: nn.Module,
    types: tuple[type, ...],
    calls: Iterable[Call | LayerCall],
    received: set[str],
) -> list[tuple[str, str]]:
    """Layer modules neither called (outside another call) nor used by a functional layer,
    and to none of whose parameters gradient flows (``docs/semantics.md`` §2)."""
    calls = list(calls)
    called = {c.name for c in calls if isinstance(c, Call)}
    used = called | {c.record for c in calls if not isinstance(c, Call)}
    used |= {p.rpartition(".")[0] for p in received}
    return unused_layer_modules(model, with_tied(model, used), types, called)
