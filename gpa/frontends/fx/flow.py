"""Gradient flow of each traced node: which of its inputs does gradient reach?

One fx pass annotates every node with ``node.meta["gpa_flow"]`` (:data:`FLOW`), a
:class:`NodeFlow`: the input nodes through which gradient flows back from the node's
result (for the ``output`` node: the returned nodes whose value requires grad) and,
given example inputs, what the node's value looks like.

* :class:`GradientFlow` (used whenever example inputs are given), an
  ``fx.Interpreter``, runs each node on the ``meta`` device — shapes and dtypes only,
  no data — with every floating input replaced by a fresh autograd leaf, and then
  walks the autograd graph of the result to see which leaves it reaches. Detaches,
  ``no_grad`` blocks, integer values and shape-only arguments (``expand_as``'s
  argument, ``zeros_like``…) are thus decided by autograd itself, not by a list of
  names.
* :func:`~gpa.frontends.fx.named_flow.flow_from_names` (no inputs) decides the same from
  a fixed table of operations; it is exact for the common ones and the report says so.

Example:
    >>> import torch, torch.nn as nn
    >>> from gpa.frontends.fx.tracer import trace
    >>> gm = trace(nn.Sequential(nn.Linear(2, 2)))
    >>> GradientFlow(gm).run(torch.zeros(1, 2))
    >>> [sorted(a.name for a in n.meta[FLOW].grad_from) for n in gm.graph.nodes]
    [[], ['input_1'], ['_0']]
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_any, tree_flatten, tree_map

from gpa.errors import ShapeError, TraceError
from gpa.frontends.functions import called_function
from gpa.frontends.fx.failures import (
    asks_the_device,
    device_check_failure,
    differentiates,
    differentiation_failure,
    meta_failure,
    shape_failure,
    without_meta_kernel,
)
from gpa.frontends.fx.lookalike import Outcome, signature
from gpa.frontends.fx.shape_rules import (
    FUNCTION_RULES,
    MODULE_RULES,
    SETTINGS_ONLY,
)
from gpa.frontends.fx.stand_ins import (
    NORMS,
    STAND_INS,
    hooked,
    laid_out,
    passes_as_is,
    shape_preserving,
)
from gpa.frontends.fx.tracer import as_written
from gpa.frontends.fx.writes import (
    AUGMENTED,
    detaches,
    follow_write,
    later_read_of_attribute,
    later_reader,
    written_into,
)
from gpa.frontends.modules import DEFAULT_LAYER_TYPES
from gpa.frontends.wrappers import functional_run

__all__ = [
    "FLOW",
    "PARTS",
    "RETURNED_INPUTS",
    "GradientFlow",
    "NodeFlow",
    "Shape",
    "ValueInfo",
    "differentiable",
]

#: The ``node.meta`` key of this pass.
FLOW = "gpa_flow"

_NOTHING = object()


@dataclass(frozen=True)
class ValueInfo:
    """What shape propagation learned about a node's result (first tensor if several)."""

    shape: tuple[int, ...] | None
    dtype: str | None
    requires_grad: bool

    @staticmethod
    def of(value: Any) -> ValueInfo:
        tensors = _tensors_in(value)
        if not tensors:
            return ValueInfo(None, None, False)
        first = tensors[0]
        return ValueInfo(
            tuple(first.shape),
            str(first.dtype).removeprefix("torch."),
            any(t.requires_grad for t in tensors),
        )


#: ``node.meta`` key: for an operation with several results (a tuple or list), the input
#: nodes through which gradient flows back from each result, in order.
PARTS = "gpa_flow_parts"

#: ``node.meta`` key: for a module call returning some of its inputs as they are (a
#: head handing its input features on beside what it computes), those input nodes.
RETURNED_INPUTS = "gpa_flow_returned_inputs"


@dataclass(frozen=True)
class NodeFlow:
    """What :class:`GradientFlow` (or :func:`flow_from_names`) learned about one node.

    Attributes:
        grad_from: the input nodes through which gradient flows back from the node's
            result; for the ``output`` node, the returned nodes whose value requires grad.
        value: shape, dtype and requires_grad of the result (None without inputs).
        shapes: the result's structure with each tensor replaced by its :class:`Shape`
            and anything else by None (None without inputs).
        constant: the result itself when it is a plain Python number or a sequence of
            them (a size computed in ``forward``), else :data:`NOT_CONSTANT`.
    """

    grad_from: frozenset[fx.Node]
    value: ValueInfo | None = None
    shapes: Any = None
    constant: Any = _NOTHING

    @property
    def is_constant(self) -> bool:
        return self.constant is not _NOTHING


NOT_CONSTANT = _NOTHING


# --------------------------------------------------------------------- values


def differentiable(t: torch.Tensor) -> bool:
    """Whether gradient can flow into ``t``: floating and complex dtypes (any precision).

    Example:
        >>> [differentiable(torch.zeros(1, dtype=d)) for d in (torch.bfloat16, torch.cfloat,
        ...                                                    torch.int64, torch.bool)]
        [True, True, False, False]
    """
    return t.is_floating_point() or t.is_complex()


def _tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value`` (a tensor, or any pytree of them), in pytree order."""
    if isinstance(value, torch.Tensor):  # the common case, without pytree's walk
        return [value]
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``tree_map`` of ``fn`` over the tensors of ``value`` (other leaves kept); a value
    without tensors is returned as it is (pytree would rebuild a ``torch.Size`` as a
    plain tuple, without ``numel()``)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if not _tensors_in(value):
        return value
    return tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, value)


# Module types whose forward reads nothing of the module's state but its registered
# parameters and buffers: a shallow copy holding meta stand-ins of them runs exactly
# as the module does, without ``functional_call``'s swap of the module's state on every
# call. Other modules with state (RNNs keep a flat list of their weights, attention holds
# a submodule, parametrized and scripted modules hold them elsewhere) go through
# ``functional_call``. Matched by exact type: a subclass may read more.
_PLAIN_STATE = frozenset(DEFAULT_LAYER_TYPES) - {nn.MultiheadAttention, nn.RNNBase} | {
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.PReLU,
}


class _MetaState:
    """Meta-device stand-ins for the model's tensors and modules, made once each."""

    def __init__(self) -> None:
        # id -> (original, meta copy); holding the original keeps its id unique.
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._modules: dict[int, tuple[nn.Module, nn.Module | None]] = {}

    def runner(self, m: nn.Module) -> nn.Module | None:
        """What runs ``m`` on meta tensors without ``functional_call``: ``m`` itself when
        it holds no tensors, a shallow copy of it holding meta stand-ins when its type is
        one of :data:`_PLAIN_STATE`, else None."""
        entry = self._modules.get(id(m))
        if entry is None:
            runner: nn.Module | None = None
            if next(itertools.chain(m.parameters(), m.buffers()), None) is None:
                runner = m
            elif type(m) in _PLAIN_STATE and not m._modules:
                runner = copy.copy(m)
                runner.__dict__["_parameters"] = {
                    k: None if p is None else self.tensor(p) for k, p in m._parameters.items()
                }
                runner.__dict__["_buffers"] = {
                    k: None if b is None else self.tensor(b) for k, b in m._buffers.items()
                }
            entry = self._modules[id(m)] = (m, runner)
        return entry[1]

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        entry = self._cache.get(id(t))
        if entry is None:
            meta = t.detach().to("meta")
            # Every floating (or complex) weight counts: gradient paths are a property of
            # the architecture, not of which parameters a training run freezes.
            if isinstance(t, nn.Parameter) and differentiable(meta):
                meta.requires_grad_(True)
            entry = self._cache[id(t)] = (t, meta)
        return entry[1]

    def module_state(self, m: nn.Module) -> dict[str, torch.Tensor]:
        state = {n: self.tensor(p) for n, p in m.named_parameters(remove_duplicate=False)}
        state.update({n: self.tensor(b) for n, b in m.named_buffers(remove_duplicate=False)})
        return state


def _as_meta_input(value: Any) -> Any:
    """Meta copies of example inputs; floating ones require grad like any value gradient can reach."""

    def convert(x: torch.Tensor) -> torch.Tensor:
        meta = x.detach().to("meta")
        return meta.requires_grad_(True) if differentiable(meta) else meta

    return _map_tensors(convert, value)


def _fresh(value: Any, owner: fx.Node, leaves: dict[int, fx.Node], keep: list) -> Any:
    """Copy ``value`` with each floating tensor behind a new autograd leaf owned by ``owner``."""

    def renew(x: torch.Tensor) -> torch.Tensor:
        if not (x.requires_grad and differentiable(x)):
            return x.detach()
        leaf = x.detach().requires_grad_(True)
        leaves[id(leaf)] = owner
        keep.append(leaf)
        return leaf.clone()  # a non-leaf, so in-place ops in the node are allowed

    return _map_tensors(renew, value)


def _held(value: Any) -> tuple:
    """What a list or dict holds: its structure and the identity of each thing in it (a
    write into it, ``cache["y"] = t`` or ``xs.append(t)``, changes one or the other)."""
    leaves, spec = tree_flatten(value)
    return spec, tuple(map(id, leaves))


def _reached(result: Any, leaves: dict[int, fx.Node]) -> set[fx.Node]:
    """Owners of the leaves that the autograd graph of ``result`` reaches."""
    return {leaves[id(v)] for v in _leaf_variables(result) if id(v) in leaves}


def _leaf_variables(result: Any) -> Iterator[torch.Tensor]:
    """The leaf tensors (inputs' stand-ins, parameters) the autograd graph of ``result``
    reaches, each once."""
    stack = [t.grad_fn for t in _tensors_in(result) if t.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)
        if variable is not None:
            yield variable
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)


class GradientFlow(fx.Interpreter):
    """An fx pass that propagates example inputs on the meta device and annotates
    every node with its :class:`NodeFlow` under ``node.meta[FLOW]``.

    ``GradientFlow(gm).run(*inputs)`` takes forward's positional arguments (tensors on
    any device; only shapes and dtypes are used) and returns None.

    Raises:
        ShapeError: an operation fails on the given shapes; the message names the
            module and the shapes involved.
    """

    def __init__(
        self, gm: fx.GraphModule, like: GradientFlow | None = None, followed_by: str = ""
    ) -> None:
        # values are kept (meta tensors cost nothing): an augmented assignment found to
        # write into a tensor rewires later nodes to read it (see run_node)
        super().__init__(gm, garbage_collect_values=False)
        # the frontends that follow a write this graph does not show (for refusals)
        self.followed_by = followed_by or (like.followed_by if like else "export or autograd")
        self.extra_traceback = False  # our errors say where they happened
        # ``like``: a pass over the same model (an earlier version of the graph), whose
        # meta stand-ins and outcomes stand here too
        self.state = like.state if like is not None else _MetaState()
        self.given = 0
        self.outcomes: dict[Hashable, Outcome] = like.outcomes if like is not None else {}
        # nodes whose outcome stands for no look-alike's: run with constants' real values,
        # or calls fx records whole writing into an argument (each is checked where it
        # stands, see _refuse_hidden_write)
        self._unshared: set[fx.Node] = set()
        self._order: dict[fx.Node, int] | None = None  # node positions, when needed
        # what evaluate worked out, by node: (grad mode, the input nodes and their values,
        # result, flows, parts); a pass over the node's graph (see over) takes it as it stands
        self._evaluated: dict[fx.Node, tuple] = {}

    def run(self, *inputs: Any) -> None:  # type: ignore[override]
        self.given = len(inputs)
        with torch.enable_grad():
            super().run(*_as_meta_input(inputs))

    def over(self, graph: fx.Graph) -> GradientFlow:
        """A pass like this one — its model, meta stand-ins, look-alikes and what
        :meth:`evaluate` worked out — over ``graph``, another graph of the same model
        (made without the walk of every submodule a new ``fx.Interpreter`` takes)."""
        other = copy.copy(self)
        other.graph, other.env = graph, {}
        other._unshared, other._order = set(), None
        return other

    def run_on(self, values: Sequence[Any], enabled: bool) -> Any:
        """Run over the graph with its placeholders' ``values`` as they are (meta tensors,
        requiring grad or not), in grad mode ``enabled``; returns what the graph returns."""
        self.given = len(values)
        with torch.set_grad_enabled(enabled):
            super().run(*values)
        returned = self.graph.output_node().args[0]
        return fx.node.map_arg(returned, self.env.__getitem__)

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "output":
            returned = frozenset(
                m for m in n.all_input_nodes if ValueInfo.of(self.env[m]).requires_grad
            )
            n.meta[FLOW] = NodeFlow(returned)
            return None
        if n.op in ("placeholder", "get_attr"):
            value, flows = super().run_node(n), frozenset()
        else:
            self._refuse_gradient_into_attribute(n)
            self._follow_augmented_assignment(n)
            self._refuse_write_through_alias(n)
            value, flows = self._flow_of(n)
        n.meta[FLOW] = NodeFlow(
            flows, ValueInfo.of(value), _shapes_of(value), value if _is_plain(value) else _NOTHING
        )
        return value

    def evaluate(self, n: fx.Node) -> Any:
        """The value of operation ``n`` as this pass works it out — ``n`` may be a node of
        another graph over the same model, whose input nodes' values are in ``env`` — and
        its outcome kept for look-alikes (a later pass over a graph holding a copy of ``n``
        finds it). Annotates nothing.

        Raises:
            ShapeError, TraceError: as the pass does for the operation.
        """
        value, flows = self._flow_of(n)
        inputs = tuple((m, self.env[m]) for m in n.all_input_nodes)
        parts = n.meta.pop(PARTS, None)
        self._evaluated[n] = (torch.is_grad_enabled(), inputs, value, flows, parts)
        return value

    def _follow_augmented_assignment(self, n: fx.Node) -> None:
        """``b += y`` on a tensor writes into it (``b`` may be another name of ``a``, or a
        view of it): later readers of it read the write's result. The tracer cannot tell
        it from a number's ``n += 1`` (a rebinding); the values here can."""
        target = n.args[0] if n.op == "call_function" and n.args else None
        if n.target not in AUGMENTED or not isinstance(target, fx.Node):
            return
        if isinstance(self.env[target], torch.Tensor):
            follow_write(n, target, self._positions(), torch.is_grad_enabled())

    def _followers(self) -> str:
        """What to use instead, for a write this graph cannot show."""
        return f"--tracer {self.followed_by} follows it (auto moves on)."

    def _positions(self) -> dict[fx.Node, int]:
        """Each node's position in the graph (made once, when first needed)."""
        if self._order is None:
            self._order = {m: i for i, m in enumerate(self.graph.nodes)}
        return self._order

    def _refuse_write_through_alias(self, n: fx.Node) -> None:
        """``n`` writes in place, a value carrying gradient, into a tensor that another
        node holds too, and that node is read again afterwards: an operation returned its
        input itself or a view of it (``y = self.drop(h)`` in eval mode, ``h.contiguous()``
        of a contiguous ``h``, ``h.float()`` of a float ``h``, ``nn.Identity``,
        ``nn.Flatten`` of a 3-D ``h``), before the write or after, once or through a
        chain of such operations, and ``n`` writes into one name while the other is read
        (``y = h.contiguous(); y += f(x); c(h)``, or ``h += f(x); c(y)``): the write
        changed both, which fx's graph does not show (the reader would miss what was
        written). Export and autograd follow it; fx refuses (auto moves on). Whether an
        operation returned its input is asked of the operation itself, on the meta
        device, and only where a name it links is read afterwards: the same call may
        return a new tensor in another mode."""
        target = written_into(n, self.fetch_attr)
        if target is None or not isinstance(self.env.get(target), torch.Tensor):
            return
        if not torch.is_grad_enabled() or not any(  # a write bringing no gradient (``y += 1``,
            # anything under no_grad, see _history_kept) changes no path
            ValueInfo.of(self.env[m]).requires_grad
            for m in n.all_input_nodes
            if m is not target
        ):
            return
        order = self._positions()
        asked: dict[fx.Node, bool] = {}  # operation -> whether it returned its input

        def returns_input(op: fx.Node) -> bool:
            if op not in asked:
                asked[op] = self._returns_input(op)
            return asked[op]

        # the nodes an operation links to the target, before the write: its input (for an
        # operation making the target or a name linked to it) or its result (for one
        # reading them), each with the operations on the path that links it
        paths: dict[fx.Node, tuple[fx.Node, ...]] = {target: ()}
        stack = [target]
        while stack:
            node = stack.pop()
            for other, op in self._linked(node, n, order):
                if other in paths:
                    continue
                paths[other] = (*paths[node], op)
                reader = later_reader(n, other, order)
                if reader is not None and all(map(returns_input, paths[other])):
                    raise TraceError(
                        f"'{n.name}' writes in place into '{target.name}', which holds the "
                        f"same memory as '{other.name}' (an operation on the way returned "
                        f"its input itself or a view of it: '{op.name}'), and "
                        f"'{reader.name}' reads it afterwards: the graph does not show "
                        f"the write reaching it. {self._followers()}"
                    )
                stack.append(other)

    def _linked(
        self, node: fx.Node, write: fx.Node, order: Mapping[fx.Node, int]
    ) -> Iterator[tuple[fx.Node, fx.Node]]:
        """(other node, operation) pairs the operation may link to ``node`` as one memory
        before ``write``: the input of the operation that made ``node``, the result of an
        operation taking ``node`` first. Norms and layers make new tensors."""
        if self._may_return_input(node):
            yield node.args[0], node
        for user in node.users:
            before = order[user] < order[write] and user.args and user.args[0] is node
            if before and self._may_return_input(user):
                yield user, user

    def _may_return_input(self, op: fx.Node) -> bool:
        """Whether ``op`` is an operation on a tensor (its first argument) that may return
        it itself or a view of it: not a norm or a layer, which make new tensors."""
        if op.op not in ("call_function", "call_method", "call_module"):
            return False
        if not op.args or not isinstance(op.args[0], fx.Node):
            return False
        if op.op == "call_module" and isinstance(
            self.fetch_attr(op.target), (*NORMS, *DEFAULT_LAYER_TYPES)
        ):
            return False
        return isinstance(self.env.get(op.args[0]), torch.Tensor)

    def _returns_input(self, op: fx.Node) -> bool:
        """Whether ``op``, run again as called (on meta, without autograd), returns its
        input (its first argument) itself or a view of it."""
        args = fx.node.map_arg(op.args, self.env.__getitem__)
        kwargs = fx.node.map_arg(op.kwargs, self.env.__getitem__)
        try:
            with torch.no_grad():
                result = self._run_op(op, args, kwargs)
        except Exception:  # it ran before, as the pass ran it: nothing more to learn here
            return False
        return _aliases(result, args[0])

    def _refuse_gradient_into_attribute(self, n: fx.Node) -> None:
        """A value carrying gradient written into a tensor fx holds as an attribute and
        read again afterwards: fx's later read misses the write (a layer feeding it would
        look unreachable). Export and autograd follow it; fx refuses (auto moves on)."""
        if not n.args or not isinstance(n.args[0], fx.Node):
            return
        reader = later_read_of_attribute(n, self._positions(), self.fetch_attr)
        if reader is None or not torch.is_grad_enabled():  # a running statistic's update
            return
        written = [m for m in n.all_input_nodes if m is not n.args[0]]
        if not any(ValueInfo.of(self.env[m]).requires_grad for m in written):
            return
        raise TraceError(
            f"'{n.name}' writes a value carrying gradient in place into '{n.args[0].name}', "
            "a tensor fx holds as an attribute (a buffer, or a tensor made while tracing) "
            f"and reads anew at each use, or computes from while tracing ('{reader.name}'), "
            "without the write. "
            f"{self._followers()}"
        )

    def placeholder(self, target: str, args: tuple, kwargs: dict) -> Any:  # type: ignore[override]
        try:
            return next(self.args_iter)
        except StopIteration:
            if args:  # a default value in forward's signature
                return args[0]
            raise ShapeError(
                f"the model's forward takes an input '{target}' but only {self.given} "
                "example input(s) were given"
            ) from None

    def fetch_attr(self, target: str) -> Any:
        """The attribute at ``target`` (a qualified name); a submodule from the table the
        interpreter made of them (a deep name costs a getattr per level), anything else
        looked up each time (forward may assign it anew)."""
        module = self.submodules.get(target)
        return module if module is not None else super().fetch_attr(target)

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> Any:  # type: ignore[override]
        value = self.fetch_attr(target)
        return self.state.tensor(value) if isinstance(value, torch.Tensor) else value

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:  # type: ignore[override]
        module = self.fetch_attr(target)
        runner = self.state.runner(module)
        if runner is not None:
            return runner(*args, **kwargs)
        return functional_run(module, self.state.module_state(module), args, kwargs)

    def _flow_of(self, n: fx.Node) -> tuple[Any, frozenset[fx.Node]]:
        value, flows = self._worked_out(n)
        if torch.is_grad_enabled():
            return value, flows
        return self._returned_as_is(n) or self._history_kept(n, value, flows)

    def _returned_as_is(self, n: fx.Node) -> tuple[Any, frozenset[fx.Node]] | None:
        """Under ``no_grad``, a node returning its first operand itself, when that carries
        gradient (``w.type_as(h)``, ``w.float()``, ``w.to(h)``, ``w.contiguous()`` with
        nothing to change: the same tensor), as it is: gradient reaching the result reaches
        the operand, as autograd reads the run (§3). None for any other node."""
        source = n.args[0] if n.args and n.op in ("call_method", "call_function") else None
        if not isinstance(source, fx.Node) or detaches(n):
            return None
        operand = self.env.get(source)
        if not isinstance(operand, torch.Tensor) or not operand.requires_grad:
            return None
        args = fx.node.map_arg(n.args, self.env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, self.env.__getitem__)
        try:
            result = self._run_op(n, args, kwargs)
        except Exception:
            return None
        return (operand, frozenset({source})) if result is operand else None

    def _history_kept(
        self, n: fx.Node, value: Any, flows: frozenset[fx.Node]
    ) -> tuple[Any, frozenset[fx.Node]]:
        """``n``'s result and flows when ``n`` writes in place, under ``no_grad``, into a
        tensor carrying gradient (``with torch.no_grad(): y.clamp_(0, 1)``, ``y[i] = 0``):
        autograd records nothing, so the tensor keeps its history — gradient reaching it
        after the write flows on into what made it, as before (what was written in brings
        none). Any other node's are as worked out."""
        target = written_into(n, self.fetch_attr)
        if target is None or not isinstance(value, torch.Tensor) or detaches(n):
            return value, flows
        if not ValueInfo.of(self.env[target]).requires_grad:
            return value, flows
        if not value.requires_grad:  # worked out under no_grad: made without history
            value = value.detach().requires_grad_(True)
        return value, frozenset({target})

    def _worked_out(self, n: fx.Node) -> tuple[Any, frozenset[fx.Node]]:
        done = self._evaluated.get(n)
        if done is not None and self._same_run(n, done[0], done[1]):
            _, _, result, flows, parts = done
            if parts is not None:
                n.meta[PARTS] = parts
            return result, flows
        passed = self._passed_through(n)
        if passed is not None:
            return passed
        key = signature(n, self.env, self.fetch_attr)
        known = self.outcomes.get(key) if key is not None else None
        if known is not None:
            result, flows, parts = known.rebuild(n)
            if parts is not None:
                n.meta[PARTS] = parts
            return result, flows
        ruled = self._by_rule(n)
        result, flows = ruled if ruled is not None else self._run_under_autograd(n)
        # a result read off constants' values (a mask's kept count) is no lookalike's
        if key is not None and n not in self._unshared:
            outcome = Outcome.of(n, result, flows, n.meta.get(PARTS))
            if outcome is not None:
                self.outcomes[key] = outcome
        return result, flows

    def _same_run(self, n: fx.Node, enabled: bool, inputs: tuple) -> bool:
        """Whether ``n`` runs now as :meth:`evaluate` ran it: in grad mode ``enabled``, on
        the same input nodes holding the very same values (``inputs``: (node, value)
        pairs), so its result and flows are that run's. A node rewired since to read a
        write's result reads another node, even where the write passed its value through."""
        now = n.all_input_nodes
        return (
            enabled == torch.is_grad_enabled()
            and len(now) == len(inputs)
            and all(
                m is node and self.env[m] is value
                for m, (node, value) in zip(now, inputs, strict=True)
            )
        )

    def _run_under_autograd(self, n: fx.Node) -> tuple[Any, frozenset[fx.Node]]:
        if differentiates(n):  # on the pass's own leaves: another graph than the model's
            raise TraceError(differentiation_failure(n))
        leaves: dict[int, fx.Node] = {}
        keep: list[torch.Tensor] = []
        fresh = {m: _fresh(self.env[m], m, leaves, keep) for m in n.all_input_nodes}
        args = fx.node.map_arg(n.args, fresh.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, fresh.__getitem__)
        if _names_a_device((n.args, n.kwargs)):
            # devices written into the graph (export bakes in ``device="cpu"``) become meta
            # (pytree keeps result types such as torch.return_types.topk, fx's mapping does not)
            args, kwargs = tree_map(_on_meta, args), tree_map(_on_meta, kwargs)
        # a node without tensor inputs (torch.zeros(3)) or a user's leaf module may make
        # tensors on the default device: those run with meta as the default device
        factory = not any(_tensors_in(self.env[m]) for m in n.all_input_nodes) or (
            n.op == "call_module" and not _of_torch(self.fetch_attr(n.target))
        )
        versions = [(m, t, t._version) for m in fresh for t in _tensors_in(fresh[m])]
        held = {m: _held(fresh[m]) for m in fresh if isinstance(self.env[m], (list, dict))}
        try:
            result = self._apply(n, args, kwargs, on_meta=factory)
        except ShapeError:
            raise
        except Exception as exc:
            result = self._with_constant_indices(n, fresh)
            if result is None:
                fallback = self._without_autograd(n, args, kwargs)
                if fallback is None:
                    if without_meta_kernel(exc):  # torch's limit, not the inputs' fault
                        raise TraceError(meta_failure(self.module, n, exc)) from exc
                    if asks_the_device(n):  # a check the meta device alone may fail
                        raise TraceError(device_check_failure(n, exc)) from exc
                    raise ShapeError(shape_failure(self.module, n, self.env, exc)) from exc
                return fallback
        for m, before in held.items():
            if _held(fresh[m]) != before:
                self._refuse_container_write(n, m)
        written = [m for m, t, seen in versions if t._version != seen]
        if written and _recorded_whole(n, self.fetch_attr):
            # checked where it stands (its readers): its outcome stands for no other call's
            self._unshared.add(n)
            self._refuse_hidden_write(n, written, fresh, leaves)
        mutated = _mutated_argument(n, args)
        _refuse_hidden_tensors(n, result, self.fetch_attr)
        if n.op == "call_module":
            self._note_returned_inputs(n, fresh, result)
        flows = frozenset(_reached((result, mutated), leaves))
        if isinstance(result, (tuple, list)) and mutated is None and len(result) > 1:
            # each result of a multi-result op (broadcast_tensors, split …) apart
            n.meta[PARTS] = tuple(frozenset(_reached(r, leaves)) for r in result)
        return _map_tensors(_cut_history, result), flows

    def _note_returned_inputs(self, n: fx.Node, fresh: dict[fx.Node, Any], result: Any) -> None:
        """Note (:data:`RETURNED_INPUTS`) the input nodes whose tensors carrying gradient
        module call ``n`` returns as they are: gradient reaching them there skips the
        call, which fx's graph, showing one call whose result holds them, cannot tell.
        Such a call's outcome stands for no look-alike's (each is noted where it stands)."""
        given = {id(t): m for m in fresh for t in _tensors_in(fresh[m]) if t.requires_grad}
        returned = {given[id(t)] for t in _tensors_in(result) if id(t) in given}
        if returned:
            n.meta[RETURNED_INPUTS] = frozenset(returned)
            self._unshared.add(n)

    def _refuse_container_write(self, n: fx.Node, target: fx.Node) -> None:
        """``n`` wrote into the list or dict ``target`` holds (``cache["y"] = t`` in a
        function fx keeps whole, ``xs.append(t)``), and ``target`` is read again afterwards:
        fx's graph does not pass the write on to its later readers, so they would miss what
        was written. Export and autograd follow it; fx refuses (auto moves on)."""
        order = self._positions()
        later = [u for u in target.users if order[u] > order[n]]
        if not later:
            return
        kind = type(self.env[target]).__name__
        raise TraceError(
            f"{_called(n, self.fetch_attr)} writes into the {kind} '{target.name}' holds, "
            f"which '{later[0].name}' reads afterwards: fx's graph does not pass the write "
            "on to that reader, so what was written would be missed. "
            f"{self._followers()}"
        )

    def _refuse_hidden_write(
        self, n: fx.Node, written: list[fx.Node], fresh: dict, leaves: dict[int, fx.Node]
    ) -> None:
        """A function or module fx records whole (``torch.fx.wrap``, a user's leaf module)
        that writes a value carrying gradient into an argument whose memory is read again
        afterwards: fx's later reads miss the write (its graph shows none), so the paths
        would be wrong. Export and autograd follow it; fx refuses (auto moves on). A write
        bringing no gradient from elsewhere — from another argument or from the call's own
        weights — (``mask.clamp_(0, 1)``, ``buf.add_(1)``, anything under ``no_grad``)
        changes no path and is let through. (A write fx's graph shows — an in-place
        operation of torch — is followed by the graph, see ``follow_mutations``.)"""
        order = self._positions()
        for m in dict.fromkeys(written):
            if all(leaves.get(id(v)) is m for v in _leaf_variables(fresh[m])):
                continue
            reader = later_reader(n, m, order)
            if reader is not None:
                raise TraceError(
                    f"{_called(n, self.fetch_attr)}, which fx records as one call, writes in "
                    f"place into an argument (the value of '{m.name}') that is read again "
                    f"afterwards, by '{reader.name}': fx's graph does not show the write. "
                    + (  # export refuses custom autograd Functions
                        "--tracer autograd follows it (auto moves on)."
                        if called_function(n.target) is not None
                        else self._followers()
                    )
                )

    def _by_rule(self, n: fx.Node) -> tuple[Any, frozenset[fx.Node]] | None:
        """The node's result by a rule of :mod:`.shape_rules` (None: no rule covers it).
        Gradient reaches each input tensor that carries it, and the result carries it if
        an input or the module's parameters do — while grad mode is on."""
        weighted = False
        if n.op == "call_module":
            module = self.fetch_attr(n.target)
            rule = MODULE_RULES.get(type(module))
            if rule is None or hooked(module):
                return None
            runner = module if type(module) in SETTINGS_ONLY else self.state.runner(module)
            if runner is None:
                return None
            apply = functools.partial(rule, runner)
            # (every floating weight counts, frozen or not: see _MetaState.tensor)
            weighted = any(p is not None and differentiable(p) for p in runner._parameters.values())
        elif n.op in ("call_function", "call_method"):
            apply = FUNCTION_RULES.get(n.target)
            if apply is None:
                return None
        else:
            return None
        args = fx.node.map_arg(n.args, self.env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, self.env.__getitem__)
        try:
            result = apply(args, kwargs)
        except Exception:  # an unusual module or call: the meta run decides (and reports)
            result = None
        if result is None:
            return None
        # an input may hold several tensors (``torch.cat(x.split(2)[::-1])``: one node, a tuple)
        carrying = frozenset(
            m
            for m in n.all_input_nodes
            if torch.is_grad_enabled() and any(t.requires_grad for t in _tensors_in(self.env[m]))
        )
        if isinstance(result, tuple):  # a recurrent module's results, each from every input
            n.meta[PARTS] = (carrying,) * len(result)
        needed = torch.is_grad_enabled() and (bool(carrying) or weighted)
        return tree_map(lambda t: t.requires_grad_(needed), result), carrying

    def _passed_through(self, n: fx.Node) -> tuple[Any, frozenset[fx.Node]] | None:
        """A shape-preserving node (:mod:`.stand_ins`)
        without running it: its result has its input's shape and dtype, gradient reaches
        the input whenever autograd records anything (the input requires grad and grad
        mode is on), and the result carries gradient if the input or the module's own
        weights do. None for any other node."""
        source = n.args[0] if n.args else None
        if not isinstance(source, fx.Node):
            return None
        args = fx.node.map_arg(n.args, self.env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, self.env.__getitem__)
        if not shape_preserving(self.fetch_attr, n, args, kwargs):
            return None
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        if not passes_as_is(module, args[0]):
            return None
        x = laid_out(module, args[0])
        if not torch.is_grad_enabled():
            return (x.detach() if x.requires_grad else x), frozenset()
        if x.requires_grad:
            return x, frozenset({source})
        if module is not None and any(
            differentiable(p) for p in module.parameters()
        ):  # a norm's own weights carry gradient after a no_grad block
            return x.detach().requires_grad_(True), frozenset()
        return x, frozenset()

    def _with_constant_indices(self, n: fx.Node, fresh: dict[fx.Node, Any]) -> Any:
        """Node ``n`` run with its integer and boolean constants at their real values, or
        None: an index or mask the result's shape depends on (``y[:, self.keep]``, the
        kept channels of a pruned layer) cannot be read on the meta device. A node turning
        a constant into a Python number (``stride.item()``: Ultralytics' anchors, a fill
        value) takes it at its real value whatever its dtype."""
        from gpa.frontends.fx.constants import constant_value  # it reads this pass's notes

        real = {}
        to_python = _to_python(n)
        for m in n.all_input_nodes:
            value = constant_value(m, self.fetch_attr)
            if value is None:
                continue
            if to_python or (not value.is_floating_point() and not value.is_complex()):
                real[m] = value
        if not real:
            return None
        self._unshared.add(n)
        args = fx.node.map_arg(n.args, lambda m: real.get(m, fresh[m]))
        kwargs = fx.node.map_arg(n.kwargs, lambda m: real.get(m, fresh[m]))
        try:
            result = self._run_op(n, args, kwargs)
        except Exception:
            return None
        if all(t.is_meta for t in _tensors_in(result)):
            return result
        if all(m in real for m in n.all_input_nodes if _tensors_in(self.env[m])):
            # a constant itself (``self.keep.nonzero()``): its shape, on meta as every value
            return _map_tensors(lambda t: t.to("meta"), result)
        return None

    def _apply(self, n: fx.Node, args: tuple, kwargs: dict, on_meta: bool) -> Any:
        """Run node ``n`` on meta ``args``. With ``on_meta``, meta is the default device;
        else torch's default device stays as it is (the ``torch.device("meta")`` mode
        costs a Python call on every torch function) unless the node fails or makes a
        tensor elsewhere (a function calling ``torch.ones(3)``): then it runs again with
        meta as the default device."""
        if not on_meta:
            try:
                result = self._run_op(n, args, kwargs)
                if all(t.is_meta for t in _tensors_in(result)):
                    return result
            except ShapeError:
                raise
            except Exception:
                pass
        with torch.device("meta"):
            return self._run_op(n, args, kwargs)

    def _run_op(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        args, kwargs = as_written(args), as_written(kwargs)
        if n.op == "call_function" and n.target in STAND_INS:
            return STAND_INS[n.target](*args, **kwargs)
        return getattr(self, n.op)(n.target, args, kwargs)

    def _without_autograd(
        self, n: fx.Node, args: tuple, kwargs: dict
    ) -> tuple[Any, frozenset[fx.Node]] | None:
        """An operation that runs, but not under autograd (which has no formula for
        ``slice_scatter`` of complex values): gradient flows from every input carrying it.
        None when it does not run at all."""
        try:
            with torch.no_grad(), torch.device("meta"):
                result = self._run_op(n, args, kwargs)
        except Exception:
            return None
        flows = frozenset(m for m in n.all_input_nodes if ValueInfo.of(self.env[m]).requires_grad)

        def carrying(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and differentiable(x):
                return x.detach().requires_grad_(bool(flows))
            return x

        return tree_map(carrying, result), flows


def _aliases(result: Any, x: Any) -> bool:
    """Whether ``result`` is the tensor ``x`` itself or a view of its memory (the meta
    device tracks views as any device does)."""
    if not isinstance(result, torch.Tensor) or not isinstance(x, torch.Tensor):
        return False
    if result is x:
        return True
    base = x._base if x._base is not None else x
    return result._base is not None and result._base is base


def _of_torch(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch's own (``torch.nn``), not a user's."""
    return type(module).__module__.startswith("torch.")


def _recorded_whole(n: fx.Node, fetch_attr: Callable[[str], Any]) -> bool:
    """Whether ``n`` calls a user's function, or a module holding a user's module, that fx
    keeps as one call: what it does inside is not in the graph (torch's own operations
    are, or are followed by name; a ``torch.nn`` container declared a leaf holds any)."""
    if n.op == "call_module":
        return not all(_of_torch(m) for m in fetch_attr(n.target).modules())
    owner = getattr(n.target, "__module__", None) or ""
    return n.op == "call_function" and owner.split(".")[0] not in _TRACED_OWNERS


_TRACED_OWNERS = frozenset({"torch", "operator", "_operator", "builtins", "math", "gpa"})


def _called(n: fx.Node, fetch_attr: Callable[[str], Any]) -> str:
    """What ``n`` calls, for messages: ``module 'p' (Pruner)``, ``function 'attend'``."""
    if n.op == "call_module":
        return f"module '{n.target}' ({type(fetch_attr(n.target)).__name__})"
    return f"function '{getattr(n.target, '__name__', n.target)}'"


def _on_meta(value: Any) -> Any:
    return torch.device("meta") if isinstance(value, torch.device) else value


def _names_a_device(args: Any) -> bool:
    """Whether a node's literal arguments (nested tuples, lists, dicts) hold a device."""
    return tree_any(lambda v: isinstance(v, torch.device), args)


def _is_plain(value: Any) -> bool:
    """Python numbers and (nested) sequences of them, such as sizes computed in forward."""
    if isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, (tuple, list)) and all(_is_plain(v) for v in value)


class Shape(tuple):
    """A tensor's shape inside a value's structure (a leaf for pytree, unlike a tuple)."""


def _shapes_of(value: Any) -> Any:
    """The value's structure with every tensor replaced by its :class:`Shape` (others: None)."""
    if isinstance(value, torch.Tensor):
        return Shape(value.shape)
    return tree_map(lambda x: Shape(x.shape) if isinstance(x, torch.Tensor) else None, value)


def _refuse_hidden_tensors(n: fx.Node, result: Any, fetch_attr: Callable[[str], Any]) -> None:
    """Refuse a call fx records whole (a leaf module, a function kept whole) that returns
    an object holding tensors as its attributes (a plain class, a dataclass pytree does
    not know): the pass sees no tensor in it, so gradient through its readers' attributes
    would be lost in silence. Export and autograd follow them; fx refuses (auto moves on)."""
    if n.op not in ("call_module", "call_function") or _tensors_in(result):
        return
    if isinstance(result, (nn.Module, type)):
        return
    held = list(getattr(result, "__dict__", {}).values())
    slots = (s for c in type(result).__mro__ for s in getattr(c, "__slots__", ()))
    held += [getattr(result, s, None) for s in slots if isinstance(s, str)]
    if any(_tensors_in(v) for v in held):
        raise TraceError(
            f"{_called(n, fetch_attr)} returns an object of class {type(result).__name__} "
            "holding tensors as attributes, which fx's graph cannot follow into (register "
            "the class as a pytree node, or return a tuple or dict); export and autograd "
            "read it (auto moves on)"
        )


def _cut_history(x: torch.Tensor) -> torch.Tensor:
    """Drop the autograd history of a result but keep whether it requires grad."""
    return x.detach().requires_grad_(x.requires_grad)


def _mutated_argument(node: fx.Node, args: tuple) -> Any:
    """The tensor an in-place method (``x.add_(y)``) wrote to, else None."""
    if node.op == "call_method" and node.target.endswith("_") and args:
        return args[0]
    return None


def _to_python(n: fx.Node) -> bool:
    """Whether ``n`` turns a tensor into a Python number (``item``, ``tolist``; export's
    ``aten.item``, ``aten._local_scalar_dense``)."""
    if n.op == "call_method":
        return n.target in ("item", "tolist")
    name = getattr(n.target, "__name__", "")
    return n.op == "call_function" and name.split(".")[0] in ("item", "_local_scalar_dense")
