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
import collections
import contextlib
import heapq
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import networkx as nx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from gpa.core.graph import LOSS, GradientGraph, LayerCall, OutputKey
from gpa.errors import GpaError, ModelError, TraceError
from gpa.frontends.dynamic import dynamic_layers
from gpa.frontends.einsum import einsum_call, einsum_operands, split_einsum, sums_across
from gpa.frontends.frames import Site, caller_site
from gpa.frontends.fx.flow import ValueInfo, differentiable
from gpa.frontends.inputs import IntegerVariants, floating_dtype, integer_variants
from gpa.frontends.metadata import reads_metadata_only
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
    MIXING_FUNCTION_NAMES,
    backward_kind,
    custom_operator,
    custom_operator_note,
    function_name,
    mixed_arguments,
    mixes_nothing,
)
from gpa.frontends.outputs import returned_values
from gpa.frontends.raised import briefly, model_raised
from gpa.frontends.randomness import (
    TO_PYTHON,
    Marks,
    RandomBranches,
    data_branch_note,
    random_branch_message,
    random_states,
    set_random_states,
)
from gpa.frontends.state import parameters_kept, preserved_state, training_mode
from gpa.frontends.watch import (
    Checkpoints,
    ModuleCalls,
    in_function_forward,
    in_reentrant_checkpoint,
    recomputed_function_note,
    unfed_checkpoint_note,
)
from gpa.frontends.wrappers import functional_run
from gpa.options import AnalysisOptions

__all__ = ["autograd_gradient_graph"]

# Autograd node names (without the trailing version digit) of feature-mixing operations.
_MIXING_NODES = frozenset(
    "ConvolutionBackward ConvolutionBackwardOverrideable MkldnnConvolutionBackward "
    "SlowConv2DBackward SlowConvDilated2DBackward SlowConvDilated3DBackward "
    "SlowConv3DBackward SlowConvTranspose2DBackward SlowConvTranspose3DBackward "
    "ConvDepthwise2DBackward ConvDepthwise3DBackward ThnnConv2DBackward "
    "MkldnnLinearBackward LinearBackward MmBackward AddmmBackward BmmBackward "
    "BaddbmmBackward AddbmmBackward MvBackward AddmvBackward DotBackward VdotBackward "
    "EmbeddingBackward EmbeddingBagBackward TrilinearBackward GroupedMmBackward".split()
)
# The operands that are mixed (not a bias), in the order of the forward call:
# addmm(bias, x, w) comes from F.linear(x, w, bias), convolution(x, w, bias) from F.conv2d.
_MIXED_OPERANDS = {
    "AddmmBackward": (1, 2),
    "BaddbmmBackward": (1, 2),
    "AddbmmBackward": (1, 2),
    "AddmvBackward": (1, 2),
    **{kind: (0, 1) for kind in _MIXING_NODES if "Conv" in kind or "Linear" in kind},
}
# Their indices are not in the autograd graph: the weight's operand is always data.
_INDEXED = frozenset({"EmbeddingBackward", "EmbeddingBagBackward"})

_TAINTED = object()  # an operand depending on a model input or a layer's output


@dataclass
class _Call:
    """One call of a module the fx tracer would not trace into (outermost only)."""

    name: str
    module: nn.Module
    start: int  # sequence numbers of the autograd nodes it created: start <= seq < end
    end: int = 0
    value: ValueInfo | None = None  # its result
    input: ValueInfo | None = None  # its first tensor argument
    site: Site | None = None  # the user's source line that made the call


def _first_value(args: Any) -> ValueInfo | None:
    tensors = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
    return ValueInfo.of(tensors[0]) if tensors else None


@dataclass
class _Recorder:
    """Forward hooks: the stack of active modules and the outermost opaque calls."""

    opaque: dict[int, str]  # id(module) -> qualified name, for modules fx keeps whole
    names: dict[int, str]  # id(module) -> qualified name, every module
    calls: list[_Call] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)
    # qualified name -> the model's line that made each call (GradientGraph.module_sites)
    sites: dict[str, list[Site | None]] = field(default_factory=dict)
    depth: int = 0  # how many opaque calls are open
    probe: torch.Tensor = field(default_factory=lambda: _probe_leaf())
    # told of each opaque call's arguments and result (see _ParameterUse.returned)
    returned: Callable[[nn.Module, Any, Any], None] = lambda module, args, output: None

    def sequence(self) -> int:
        """The sequence number autograd gives the next node it creates (one is spent)."""
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch._C.DisableTorchFunction(),
            torch._C._DisableFuncTorch(),  # (inside torch.func.grad or jvp: autograd's own)
        ):
            return (self.probe * 1).grad_fn._sequence_nr() + 1

    def pre(self, module: nn.Module, args: Any) -> None:
        name = self.names[id(module)]
        self.stack.append(name)
        site = caller_site()
        self.sites.setdefault(name, []).append(site)
        if id(module) in self.opaque:
            if self.depth == 0:
                # a view of a tensor written in place since gets its autograd node anew
                # when first asked for it: asked here, it is made before the call begins,
                # not folded into the call that reads it (``docs/semantics.md`` §1.3)
                for t in tree_flatten(args)[0]:
                    if isinstance(t, torch.Tensor):
                        _ = t.grad_fn
                self.calls.append(
                    _Call(self.opaque[id(module)], module, self.sequence(), site=site)
                )
            self.depth += 1

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        self.stack.pop()
        if id(module) in self.opaque:
            self.depth -= 1
            if self.depth == 0:
                call = self.calls[-1]
                call.end = self.sequence() - 1
                call.value, call.input = ValueInfo.of(output), _first_value(args)
            self.returned(module, args, output)


def _probe_leaf() -> torch.Tensor:
    return torch.zeros((), device="meta", requires_grad=True)


class _ParameterUse(TorchFunctionMode):
    """The autograd nodes the forward creates (also those the outputs do not reach),
    functional layers run without gradient, and whether a re-entrant checkpoint ran.

    It also tells data from constants where autograd cannot (a value carrying no gradient
    has no edge): *data* is a model input (``inputs``), a layer's output, or what is
    computed from them; buffers, tensors made from numbers and what is computed from them
    and parameters alone are not (``docs/semantics.md`` §2: a feature-mixing function is a
    functional layer when it reads a weight beside data — spectral norm's power iteration,
    ``torch.mv(w, u)`` with a buffer ``u``, reads none)."""

    def __init__(
        self, recorder: _Recorder, parameters: dict[int, str], inputs: Iterable[torch.Tensor]
    ) -> None:
        super().__init__()
        self.recorder = recorder
        self.parameters = parameters
        inputs = list(inputs)
        self._data = Marks(inputs)
        # inputs carrying gradient (the first run): what the model makes require it may
        # already (see _refuse_made_to_require_gradient)
        self._inputs_carry = any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
        recorder.returned = self.returned
        # (first, last sequence number) of feature-mixing functions run with gradient whose
        # operands carrying none are constants: autograd's missing edges are no data there
        self.constant_reads: list[tuple[int, int, None]] = []
        # (sequence, parameter, operands, result) of functional layers run without gradient
        self.no_grad_layers: list[tuple[int, tuple[str, ...], list, Any]] = []
        self.created: list[Any] = []  # grad_fn of every value computed
        # id -> the parameters of a value computed from them without gradient
        self.derived: dict[int, tuple[str, ...]] = {}
        # id -> those of them it reads only through a detach (``cat([a.w.detach(), b.w])``
        # under no_grad: a's part sends gradient nowhere even with it enabled, §2)
        self.detached: dict[int, tuple[str, ...]] = {}
        # id -> the parameters of a value computed with gradient from them and from such
        # values (``torch.cat([a.weight.detach(), b.weight])``): its history shows b alone,
        # where the whole, made to lose its gradient, is a weight of both (§2)
        self.partly: dict[int, tuple[str, ...]] = {}
        # (first, last sequence number, result, first operand) of feature-mixing functions
        self.values: list[tuple[int, int, ValueInfo, ValueInfo]] = []
        # (first, last sequence number, parameter or None) of feature-mixing functions run
        # with gradient on a weight that carries none: a layer of that parameter beside
        # data (``F.linear(x, w.detach())``), none beside weights alone (``w @ w.detach()``)
        self.weight_reads: list[tuple[int, int, tuple[str, ...] | None]] = []
        self.keep: list[torch.Tensor] = []  # keeps those ids unique
        # id() of the autograd node of a weight a feature-mixing function computed with
        # gradient from several parameters alone -> them in the order the call reads them
        # (its node's inputs follow torch's kernel: an ``einsum`` may swap its operands)
        self.weight_order: dict[int, tuple[str, ...]] = {}
        # id() of the autograd nodes of contractions torch computed as a product: an
        # ``einsum`` summing subscripts of size 1 (``"bi,io->bo"`` with one ``i``) is a mul
        self.contracting: set[int] = set()
        # id() of the autograd nodes of data values: a weight picked at positions computed
        # from data (``w[idx]``: no autograd edge to ``idx``) is one
        self.data_nodes: set[int] = set()
        self.checkpointed = False  # a re-entrant checkpoint ran its function without gradient
        # custom autograd Functions whose forward (run without gradient) reads parameters
        self.weight_functions: dict[type, None] = {}
        # where forward first turned data into a Python value (a branch, a loop, an index)
        self.data_branch: str | None = None
        # id() of the autograd nodes of elements picked by an index computed from data
        # (``stack[argmax(x)]``): which element is the data's choice, not the model's
        self.data_picks: set[int] = set()
        # id() of the autograd nodes of values computed, with gradient, beside data that
        # carries none and picks no positions (``w * mask.float()``): no weight, as under fx
        self.mixed_nodes: set[int] = set()
        self._sized = Marks()  # tensors whose sizes the data decides
        self._picked = Marks()  # weights picked at positions computed from data (``w[idx]``)
        self._picked_from: dict[int, str] = {}  # id -> the parameter a picked weight reads
        # parameter -> times a weight it makes was indexed at positions computed from data
        # (``bank[expert]``; an embedding's lookup is no indexing)
        self._indexed: collections.Counter[str] = collections.Counter()
        # custom operators given weights beside data -> the modules whose weights they read
        self.operators: dict[str, dict[str, None]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        steps = split_einsum(args) if func in _EINSUM and not kwargs else None
        if steps is not None and self.recorder.depth == 0:
            # the contractions torch makes, each a call read as fx and export read it (§2:
            # which operand meets which decides the layers)
            operands = einsum_operands(args)
            held = operands[0]
            for equation, i in steps:
                held = self.__torch_function__(func, types, (equation, held, operands[i]))
            return held
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if self._inputs_carry:
            self._refuse_made_to_require_gradient(func, args, kwargs)
        mixing = self.recorder.depth == 0 and function_name(func) in MIXING_FUNCTION_NAMES
        start = self.recorder.sequence() if mixing else 0
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        data = [t in self._data and not reads_metadata_only(name, i) for i, t in enumerate(tensors)]
        if getattr(func, "__name__", "") == "__getitem__" and torch.is_grad_enabled():
            index = [t for t in tree_flatten(args[1:])[0] if isinstance(t, torch.Tensor)]
            if any(t in self._data for t in index) and isinstance(result, torch.Tensor):
                self.data_picks.add(id(result.grad_fn))
        if self.data_branch is None and self._branches_on_data(func, tensors, data):
            site = caller_site()
            self.data_branch = f"{site[0]}, line {site[1]}" if site else "in forward"
        if any(t in self._sized for t in tensors) or (any(data) and _sizes_by_data(func, args)):
            self._sized.add(tree_flatten(result)[0])
        operator = custom_operator(func)
        # (one torch's own operations make is read by autograd as any)
        if operator and any(data) and self.recorder.depth == 0 and not _decomposed(result):
            self._weights_read_by(operator, tensors, data)
        if any(data):
            results = tree_flatten(result)[0]
            self._data.add(results)
            if (picked := self._picks_weight(tensors, data)) is not None:
                self._picked.add(results)
                self._picked_from.update((id(t), picked) for t in results if picked)
                # a weight itself indexed (not an activation a lookup started from)
                if name in _INDEXING and not data[0] and _carries_gradient(tensors[0]):
                    self._indexed[picked] += 1
            if torch.is_grad_enabled():  # (else no node; and asking may raise)
                made = [
                    id(t.grad_fn)
                    for t in results
                    if isinstance(t, torch.Tensor) and t.grad_fn is not None
                ]
                self.data_nodes.update(made)
                pairs = zip(data, tensors, strict=True)
                if any(d and _values_without_gradient(t) for d, t in pairs):
                    self.mixed_nodes.update(made)
        if mixing and func in _EINSUM and torch.is_grad_enabled():
            self._contraction_by_product(args, result, start)
        if mixing and tensors:  # the shapes of a functional layer that may be found here
            value = (ValueInfo.of(result), ValueInfo.of(tensors[0]), caller_site())
            self.values.append((start, self.recorder.sequence() - 1, *value))
            if torch.is_grad_enabled() and not any(
                d for d, t in zip(data, tensors, strict=True) if not _carries_gradient(t)
            ):
                self.constant_reads.append((start, self.recorder.sequence() - 1, None))
        if not torch.is_grad_enabled():
            self.checkpointed = self.checkpointed or in_reentrant_checkpoint()
            if any(id(t) in self.parameters for t in tensors):
                self.weight_functions.update(dict.fromkeys(in_function_forward()))
            if self.recorder.depth == 0:
                self._without_grad(_Seen(func, args, kwargs, tensors, result, data))
        elif self.recorder.depth == 0:
            call = _Seen(func, args, kwargs, tensors, result, data)
            self._weight_without_gradient(call, start)
        if not torch.is_grad_enabled():  # autograd made no node; and a view made under
            # no_grad whose base was written raises when asked its grad_fn
            return result
        for t in tree_flatten(result)[0]:
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.created.append(t.grad_fn)
        return result

    def _contraction_by_product(self, args: tuple, result: Any, start: int) -> None:
        """Note the product node of an ``einsum`` of two operands summing across that torch
        computed with no matrix product (its summed subscripts all of size 1): a
        contraction still (§2), as fx and export read it, and ``(h @ A) @ B`` records it."""
        call = einsum_call(args)
        if call is None or call[1] != 2 or not sums_across(call[0]):
            return
        made, stack = [], [getattr(result, "grad_fn", None)]
        while stack:  # the nodes the call made (numbered from ``start`` on)
            node = stack.pop()
            if node is None or node._sequence_nr() < start or _is_leaf(node):
                continue
            made.append(node)
            stack.extend(child for child, _ in node.next_functions)
        if not any(_kind(n) in _MIXING_NODES for n in made):
            self.contracting.update(id(n) for n in made if _kind(n) == "MulBackward")
            self.keep.append(result)

    def _refuse_made_to_require_gradient(self, func: Any, args: tuple, kwargs: dict) -> None:
        """``h.requires_grad_()`` on data, in a run whose inputs carry gradient: there it
        changes nothing, where in training (inputs carrying none) it makes ``h`` a leaf
        requiring gradient, which re-entrant checkpoints then pass on (Wav2Vec2's feature
        encoder). Raises what :func:`_run` reruns on inputs carrying none for, as it does
        for ``h.requires_grad = True`` (which torch refuses on a non-leaf)."""
        if getattr(func, "__name__", "") != "requires_grad_" or not args:
            return
        wanted = args[1] if len(args) > 1 else kwargs.get("requires_grad", True)
        if wanted and isinstance(args[0], torch.Tensor) and args[0] in self._data:
            raise _MadeToRequireGradient("the model makes data require gradient")

    def _branches_on_data(self, func: Any, tensors: list, data: list[bool]) -> bool:
        """Whether ``func`` gives Python a value computed from the data: the value itself
        (``mask.any()`` in an ``if``), or the size of a tensor the data sized (the tokens
        routed to an expert: ``len(tokens) == 0``)."""
        name = getattr(func, "__name__", "")
        if name in TO_PYTHON:
            return any(data)
        if name == "__get__":  # an attribute: ``t.shape``
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        return name in _SIZE_QUERIES and any(t in self._sized for t in tensors)

    def _weights_read_by(self, operator: str, tensors: list, data: list[bool]) -> None:
        """Note the weights a custom operator reads beside data: tensors carrying gradient
        that are no data are computed from parameters (named by the module running, for
        a weight computed from one: ``w.transpose(-2, -1)``)."""
        for t, is_data in zip(tensors, data, strict=True):
            if (is_data and t not in self._picked) or not _carries_gradient(t):
                continue
            name = self.parameters.get(id(t))
            name = name or (self._picked_from.get(id(t)) if t in self._picked else None)
            where = name.rpartition(".")[0] or name if name else None
            where = where or next((m for m in reversed(self.recorder.stack) if m), "the model")
            self.operators.setdefault(operator, {})[where] = None

    def _picks_weight(self, tensors: list, data: list[bool]) -> str | None:
        """Whether a result computed beside data is a weight picked by it: the data are
        positions (integer and boolean tensors) or picked weights, and a weight carrying
        gradient is among the operands (``w[idx]``, ``w[idx] * 2``; fx's *selected*).
        Returns the weight's parameter name ("" when it is computed), else None."""
        weight = None
        for t, is_data in zip(tensors, data, strict=True):
            picked = t in self._picked
            if is_data and not picked and (t.is_floating_point() or t.is_complex()):
                return None
            if weight is None and (picked or (not is_data and _carries_gradient(t))):
                weight = self._picked_from.get(id(t)) if picked else self.parameters.get(id(t))
                weight = weight or ""
        return weight

    @property
    def loops_over_weights(self) -> bool:
        """Whether the run indexed one weight at positions computed from data more than once:
        a loop over the data's values picking weights (a fused expert bank looped over the
        experts the router hit), whose number of calls the data decides. One gather of all
        the picks at once (``bank[expert_ids]``) is a call whatever the data."""
        return any(count > 1 for count in self._indexed.values())

    def reads_data(self, t: Any) -> bool:
        """Whether ``t`` is data: a model input, a layer's output, or made from them."""
        return t in self._data

    def returned(self, module: nn.Module, args: Any, output: Any) -> None:
        """An opaque call's result is data when it holds a layer or reads data (TorchScript
        modules run out of this mode's sight)."""
        holds_weights = next(module.parameters(), None) is not None
        reads_data = any(t in self._data for t in tree_flatten(args)[0])
        if holds_weights or reads_data:
            self._data.add(tree_flatten(output)[0])

    def _without_grad(self, call: _Seen) -> None:
        """Autograd records nothing here: follow values computed from parameters alone
        (buffers and constants beside them)."""
        func, args, kwargs, tensors, result, data = call
        named = self._parameters_of(tensors, computed=True)
        if not named:
            return
        if not any(data):  # a weight computed without gradient
            detached = named if _detaches(func) else self._detached_parts(tensors)
            for t in tree_flatten(result)[0]:
                if isinstance(t, torch.Tensor):
                    self.derived[id(t)] = named
                    self.detached[id(t)] = detached
                    self.keep.append(t)
        elif _mixes(func, args, tensors):  # a layer of the weights it mixes beside data
            mixed = _mixed_tensors(func, args, kwargs)
            weights = [t for t in mixed if t not in self._data]
            layer = self._parameters_of(weights, computed=True)
            # of the modules its parts come from, those it would send gradient to: not a
            # detached part's, unless every part is (as fx and export read it, §2)
            detached = self._detached_parts(weights)
            layer = tuple(p for p in layer if p not in detached) or layer
            if layer and len(weights) < len(mixed):
                self.no_grad_layers.append((self.recorder.sequence(), layer, mixed, result))

    def _detached_parts(self, tensors: list[torch.Tensor]) -> tuple[str, ...]:
        """The parameters ``tensors`` (computed without gradient) read only through a
        detach, not along another way."""
        cut: dict[str, None] = {}
        live: set[str] = set()
        for t in tensors:
            parts = self.detached.get(id(t), ())
            cut.update(dict.fromkeys(parts))
            live.update(p for p in self._parameters_of([t]) if p not in parts)
        return tuple(p for p in cut if p not in live)

    def _parameters_of(
        self, tensors: list[torch.Tensor], computed: bool = False
    ) -> tuple[str, ...]:
        """The parameters ``tensors`` are (or were computed from without gradient), in
        order (a weight of several modules' parameters: a call of each, §2); with
        ``computed``, also those a tensor carrying gradient and no data was computed from
        (``torch.cat([a.weight, b.weight])``, about to lose its gradient), read off its
        autograd graph."""
        found: dict[str, None] = {}
        for t in tensors:
            derived = self.derived.get(id(t))
            if derived is not None:
                found.update(dict.fromkeys(derived))
            elif (parameter := self.parameters.get(id(t))) is not None:
                found[parameter] = None
            elif (parts := self.partly.get(id(t))) is not None:
                found.update(dict.fromkeys(parts))
            elif computed and t not in self._data and (node := _history(t)) is not None:
                found.update(dict.fromkeys(self._leaves(node)))
        return tuple(found)

    def _leaves(self, node: Any) -> list[str]:
        """The parameters at the leaves of the autograd graph below ``node``, in the order
        its operations read them."""
        found, stack, seen = [], [node], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if (order := self.weight_order.get(id(node))) is not None:  # as its call read them
                found += order
                continue
            name = self.parameters.get(id(getattr(node, "variable", None)))
            found += [name] if name is not None else []
            stack.extend(child for child, _ in reversed(node.next_functions))
        return found

    def _weight_without_gradient(self, call: _Seen, start: int) -> None:
        """Grad mode is on, yet a value made from parameters alone may carry no gradient
        (``w.detach()``, a weight made under ``no_grad`` earlier): autograd records no edge
        to it. Follow such values, and take a feature-mixing function that reads one
        beside data for a functional layer, as fx and export do (semantics §2); ``start``:
        the sequence number of the first autograd node the call made."""
        func, args, kwargs, tensors, result, data = call
        results = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        # a weight computed with gradient losing it (``torch.cat([a.w, b.w]).detach()``)
        lost = not any(data) and results and not any(map(_carries_gradient, results))
        mixing = _mixes(func, args, tensors)
        weights = self._parameters_of(tensors, computed=lost or (mixing and not any(data)))
        if not weights:  # the common case: data alone
            return
        if mixing and not any(data) and len(weights) > 1:  # a weight of several parameters
            for t in results:
                if t.grad_fn is not None:
                    self.weight_order[id(t.grad_fn)] = weights
                    self.keep.append(t)
        detached = [t for t in tensors if id(t) in self.derived]
        mixed = _mixed_tensors(func, args, kwargs) if mixing else []
        if mixing and (frozen := [t for t in mixed if id(t) in self.derived]):
            # beside data, or weights alone (what the call only adds is no weight, §2)
            beside = any(t in self._data for t in mixed)
            layer = self._parameters_of(frozen) if beside else None
            if any(t.grad_fn is not None for t in results):
                self.weight_reads.append((start, self.recorder.sequence() - 1, layer))
            elif layer is not None:  # nothing it reads carries gradient: run without it
                self.no_grad_layers.append((self.recorder.sequence(), layer, mixed, result))
        if not any(data):  # from parameters alone: followed if it lost gradient
            partly = detached or any(id(t) in self.partly for t in tensors)
            followed = [t for t in results if partly or (t.grad_fn is None and not t.requires_grad)]
            cut = (
                (weights if _detaches(func) else self._detached_parts(tensors)) if followed else ()
            )
            for t in followed:
                if t.grad_fn is None and not t.requires_grad:
                    self.derived[id(t)] = weights
                else:  # (with a part without gradient: see self.partly)
                    self.partly[id(t)] = weights
                self.detached[id(t)] = cut  # (read where a call under no_grad reads it)
                self.keep.append(t)


class _Seen(NamedTuple):
    """A call the mode saw: the function, its arguments, the tensors among them, its
    result, and whether each of those tensors is data."""

    func: Any
    args: tuple
    kwargs: dict
    tensors: list[torch.Tensor]
    result: Any
    data: list[bool]


_EINSUM = frozenset({torch.einsum, torch.functional.einsum})


def _detaches(func: Any) -> bool:
    """Whether ``func`` is ``x.detach()`` or ``x.data``: its result sends gradient nowhere."""
    name = getattr(func, "__name__", "")
    if name == "__get__":  # an attribute
        return getattr(getattr(func, "__self__", None), "__name__", "") == "data"
    return name in ("detach", "detach_")


def _mixed_tensors(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors a feature-mixing call mixes: not the bias it only adds (§2)."""
    mixed = mixed_arguments(function_name(func), args, kwargs)
    found = (t for t in tree_flatten(mixed)[0] if isinstance(t, torch.Tensor))
    return list({id(t): t for t in found}.values())


def _mixes(func: Any, args: tuple, tensors: list[torch.Tensor]) -> bool:
    """Whether ``func`` given ``args`` is a feature-mixing call (§2): a mixing function
    (:data:`~gpa.frontends.operators.MIXING_FUNCTION_NAMES`) summing across its operands."""
    name = function_name(func)
    scalar = name == "inner" and any(t.dim() == 0 for t in tensors)
    return name in MIXING_FUNCTION_NAMES and not mixes_nothing(name, args, scalar)


# Operations whose result's size the values of their operands decide, and the questions
# that give a size to Python.
_DATA_SIZED = frozenset("nonzero argwhere masked_select unique unique_consecutive".split())
_SIZE_QUERIES = frozenset("size numel __len__ shape".split())


def _decomposed(result: Any) -> bool:
    """Whether a custom operator's result was made by torch's own operations, which
    autograd records (an operator implemented by composing them), rather than by the
    operator's registered backward."""
    tensors = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
    return any(
        t.grad_fn is not None
        and not isinstance(t.grad_fn, torch.autograd.function.BackwardCFunction)
        and not type(t.grad_fn).__name__.startswith("torch::autograd::CppNode")
        for t in tensors
    )


def _sizes_by_data(func: Any, args: tuple) -> bool:
    """Whether ``func``'s result has a size the data decides: a nonzero-like operation, or
    indexing by a boolean mask."""
    name = getattr(func, "__name__", "")
    if name in _DATA_SIZED or (name == "where" and len(args) == 1):  # where(cond): nonzero
        return True
    return name == "__getitem__" and any(
        isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_flatten(args[1:])[0]
    )


# Functions indexing a tensor: a weight indexed so by data is picked by the data's values.
_INDEXING = frozenset({"__getitem__", "index_select", "take", "take_along_dim", "gather"})


def _kind(fn: Any) -> str:
    """The kind of autograd node ``fn`` is, without its version digit; one a custom
    operator standing for one of torch's own makes, as that one's would be."""
    return backward_kind(type(fn).__name__.rstrip("0123456789"))


def _mixing_node(fn: Any, run: _Run) -> bool:
    """Whether autograd node ``fn`` is a feature-mixing operation's (§2)."""
    return _kind(fn) in _MIXING_NODES or id(fn) in run.use.contracting


def _history(t: torch.Tensor) -> Any:
    """``t.grad_fn``, or None where asking raises (a view made under ``no_grad`` whose base
    was written since)."""
    try:
        return t.grad_fn
    except RuntimeError:
        return None


def _carries_gradient(t: torch.Tensor) -> bool:
    return t.requires_grad or t.grad_fn is not None


def _values_without_gradient(t: torch.Tensor) -> bool:
    """Whether ``t`` holds values (not positions: integer and boolean tensors pick a
    weight's elements, ``docs/semantics.md`` §2) that autograd gives no edge."""
    return (t.is_floating_point() or t.is_complex()) and not _carries_gradient(t)


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
    recorder: _Recorder
    use: _ParameterUse
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
    raise ModelError(model_raised(type(model).__name__, first_error.error, where=where))


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


class _MadeToRequireGradient(RuntimeError):
    """The model called ``requires_grad_()`` on data in a run whose inputs carry gradient."""


def _takes_inputs_without_grad(error: BaseException) -> bool:
    """Whether ``error`` is torch refusing what a model may do to inputs that carry no
    gradient, as in training: set ``requires_grad`` of a value made from one (a non-leaf
    then), or write into one in place (a leaf that requires grad then); or the model making
    data require gradient (:class:`_MadeToRequireGradient`)."""
    said = str(error)
    return (
        isinstance(error, _MadeToRequireGradient)
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
    recorder = _Recorder(opaque, {id(m): n for n, m in modules.items()})
    ids = {id(p): n for n, p in parameters.items()}
    use = _ParameterUse(recorder, ids, tree_flatten(args)[0])
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
def _hooks(modules: Iterable[nn.Module], recorder: _Recorder) -> Iterator[None]:
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
            if _is_leaf(node):
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
        return -1 if _is_leaf(fn) else fn._sequence_nr()

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


def _is_leaf(fn: Any) -> bool:
    return hasattr(fn, "variable")


def _build(
    model: nn.Module, run: _Run, outputs: Iterable[OutputKey] | None, types: tuple[type, ...]
) -> GradientGraph:
    recorder = run.recorder
    calls = sorted(recorder.calls, key=lambda c: c.start)
    starts = [c.start for c in calls]

    def opaque_call(fn: Any) -> int | None:
        if _is_leaf(fn):
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
            if parameter is None and "Conv" in _kind(fn):
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
            _mark_added(g, key, [c and key_of(c) for c in children], _MIXED_OPERANDS.get(_kind(fn)))
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
    when it read a weight without gradient (``_ParameterUse._weight_without_gradient``):
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
    if _is_leaf(fn):
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
    kind = _kind(fn)
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
        if n is None or id(n) in seen or _is_leaf(n):
            continue
        seen.add(id(n))
        key = key_of(n)
        if key.kind == "call":
            continue
        if key in layers:  # a functional layer (a module's call ended the walk above)
            makers[n] = n._sequence_nr()
            continue
        if "Conv" not in _kind(n):  # another convolution's result is data
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
        stack.extend(children[:1] if "Conv" in _kind(n) else children)
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
            if key_of(user).kind == "call" or _kind(user) in _MIXING_NODES:
                return False  # a layer or a mixing reads it as data
            stack.append(user)
    return True


def _receiving(outputs: Iterable[torch.Tensor], edges: _Edges, run: _Run) -> set[str]:
    """The parameters that gradient from ``outputs`` reaches."""
    roots = [edges.resolve(t.grad_fn, t.output_nr) for t in outputs]
    return {
        run.parameters[id(fn.variable)]
        for fn in _autograd_nodes(roots, edges)
        if _is_leaf(fn) and id(fn.variable) in run.parameters
    }


def _uncalled(
    model: nn.Module,
    types: tuple[type, ...],
    calls: Iterable[_Call | LayerCall],
    received: set[str],
) -> list[tuple[str, str]]:
    """Layer modules neither called (outside another call) nor used by a functional layer,
    and to none of whose parameters gradient flows (``docs/semantics.md`` §2)."""
    calls = list(calls)
    called = {c.name for c in calls if isinstance(c, _Call)}
    used = called | {c.record for c in calls if not isinstance(c, _Call)}
    used |= {p.rpartition(".")[0] for p in received}
    return unused_layer_modules(model, with_tied(model, used), types, called)
