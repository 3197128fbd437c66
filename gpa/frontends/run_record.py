"""The record of one forward run that the autograd frontend reads beside its graph.

Autograd's graph shows what gradient reaches, not why: which module call made a node,
which operand of a feature-mixing function is a weight and which is data, what ran under
``no_grad``. Two recorders watch the run of :func:`gpa.frontends.autograd.autograd_gradient_graph`:

- :class:`Recorder`, forward hooks: the stack of modules running and the outermost calls of
  those fx keeps whole (:class:`Call`, by the sequence numbers of the autograd nodes each
  made);
- :class:`ParameterUse`, a ``TorchFunctionMode``: every torch function the model calls,
  telling data (a model input, a layer's output, what is computed from them) from
  constants and weights where autograd records no edge (``docs/semantics.md`` §2).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 3)
    >>> recorder = Recorder(opaque={}, names={id(model): ""})
    >>> x = torch.zeros(1, 2)
    >>> use = ParameterUse(recorder, {id(model.weight): "weight"}, [x])
    >>> with use:
    ...     y = torch.nn.functional.linear(x, model.weight)
    >>> use.reads_data(y), use.reads_data(model.weight)
    (True, False)
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from gpa.frontends.einsum import einsum_call, einsum_operands, split_einsum, sums_across
from gpa.frontends.frames import Site, caller_site
from gpa.frontends.fx.flow import ValueInfo
from gpa.frontends.metadata import reads_metadata_only
from gpa.frontends.operators import (
    MIXING_FUNCTION_NAMES,
    backward_kind,
    custom_operator,
    function_name,
    mixed_arguments,
    mixes_nothing,
)
from gpa.frontends.randomness import TO_PYTHON, Marks
from gpa.frontends.watch import in_function_forward, in_reentrant_checkpoint

__all__ = [
    "MIXING_NODES",
    "Call",
    "MadeToRequireGradient",
    "ParameterUse",
    "Recorder",
    "is_leaf_node",
    "node_kind",
]

# Autograd node names (without the trailing version digit) of feature-mixing operations.
MIXING_NODES = frozenset(
    "ConvolutionBackward ConvolutionBackwardOverrideable MkldnnConvolutionBackward "
    "SlowConv2DBackward SlowConvDilated2DBackward SlowConvDilated3DBackward "
    "SlowConv3DBackward SlowConvTranspose2DBackward SlowConvTranspose3DBackward "
    "ConvDepthwise2DBackward ConvDepthwise3DBackward ThnnConv2DBackward "
    "MkldnnLinearBackward LinearBackward MmBackward AddmmBackward BmmBackward "
    "BaddbmmBackward AddbmmBackward MvBackward AddmvBackward DotBackward VdotBackward "
    "EmbeddingBackward EmbeddingBagBackward TrilinearBackward GroupedMmBackward".split()
)


@dataclass
class Call:
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
class Recorder:
    """Forward hooks: the stack of active modules and the outermost opaque calls."""

    opaque: dict[int, str]  # id(module) -> qualified name, for modules fx keeps whole
    names: dict[int, str]  # id(module) -> qualified name, every module
    calls: list[Call] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)
    # qualified name -> the model's line that made each call (GradientGraph.module_sites)
    sites: dict[str, list[Site | None]] = field(default_factory=dict)
    depth: int = 0  # how many opaque calls are open
    probe: torch.Tensor = field(default_factory=lambda: _probe_leaf())
    # told of each opaque call's arguments and result (see ParameterUse.returned)
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
                self.calls.append(Call(self.opaque[id(module)], module, self.sequence(), site=site))
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


class ParameterUse(TorchFunctionMode):
    """The autograd nodes the forward creates (also those the outputs do not reach),
    functional layers run without gradient, and whether a re-entrant checkpoint ran.

    It also tells data from constants where autograd cannot (a value carrying no gradient
    has no edge): *data* is a model input (``inputs``), a layer's output, or what is
    computed from them; buffers, tensors made from numbers and what is computed from them
    and parameters alone are not (``docs/semantics.md`` §2: a feature-mixing function is a
    functional layer when it reads a weight beside data — spectral norm's power iteration,
    ``torch.mv(w, u)`` with a buffer ``u``, reads none)."""

    def __init__(
        self, recorder: Recorder, parameters: dict[int, str], inputs: Iterable[torch.Tensor]
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
            if node is None or node._sequence_nr() < start or is_leaf_node(node):
                continue
            made.append(node)
            stack.extend(child for child, _ in node.next_functions)
        if not any(node_kind(n) in MIXING_NODES for n in made):
            self.contracting.update(id(n) for n in made if node_kind(n) == "MulBackward")
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
            raise MadeToRequireGradient("the model makes data require gradient")

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


def node_kind(fn: Any) -> str:
    """The kind of autograd node ``fn`` is, without its version digit; one a custom
    operator standing for one of torch's own makes, as that one's would be."""
    return backward_kind(type(fn).__name__.rstrip("0123456789"))


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


class MadeToRequireGradient(RuntimeError):
    """The model called ``requires_grad_()`` on data in a run whose inputs carry gradient."""


def is_leaf_node(fn: Any) -> bool:
    return hasattr(fn, "variable")
