"""Calls of ``torch.fx.wrap`` functions that read parameters, traced into after all.

fx records a call of a wrapped function as one node: it cannot trace into code that
branches on shapes or assigns into tensors, which is why such functions are wrapped
(torchvision's ``shifted_window_attention``: Swin's attention, weights passed in). Layers
inside are then unseen (``docs/semantics.md`` §1.6). When the gradient-flow pass
(:class:`InliningFlow`) reaches such a call, its arguments have values — meta tensors of
known shapes — and the function can be traced with them: a tracer whose proxies carry the
value of the operation they stand for answers shapes, sizes and ranks with numbers, so the
function's Python runs as it would on these inputs (its branches, its loops over windows),
and item assignment is recorded as an in-place call (:func:`setitem_`). Each operation
recorded is worked out as the pass works out any
(:meth:`~gpa.frontends.fx.flow.GradientFlow.evaluate`), so the pass reads the call's result
off its operations instead of running the function whole, and once :func:`inline_calls`
has put them in the call's place, each carries the annotation the pass gave it: no pass
over the new graph is needed. A call that cannot be traced so (a branch on a tensor's values, an
operation the meta device refuses), or whose operations do not do what running it did (a
type check that took a proxy for no tensor), stays whole.

Example:
    >>> import torch, torch.fx as fx, torch.nn.functional as F
    >>> def project(x, w):  # a call fx kept whole
    ...     if x.shape[-1] > 2:  # a branch on a shape: fx alone cannot trace it
    ...         return F.linear(x, w)
    ...     return x
    >>> g = fx.Graph()
    >>> x, w = g.placeholder("x"), g.placeholder("w")
    >>> call = g.call_function(project, (x, w))
    >>> _ = g.output(call)
    >>> gm = fx.GraphModule(torch.nn.Module(), g)
    >>> flow = InliningFlow(gm)
    >>> flow.run(torch.empty(2, 3), torch.empty(4, 3))
    >>> inline_calls(gm, [call], flow).replaced
    ['project']
    >>> [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    ['linear']
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import operator
from collections.abc import Hashable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch.overrides import (
    TorchFunctionMode,
    _get_current_function_mode,
    _pop_mode_temporarily,
)

from gpa.frontends.einsum import einsum_operands, split_einsum
from gpa.frontends.functions import called_function
from gpa.frontends.fx.contractions import EINSUM, contraction_arguments
from gpa.frontends.fx.flow import FLOW, PARTS, GradientFlow
from gpa.frontends.fx.graph import result_part
from gpa.frontends.fx.layers import wrapped
from gpa.frontends.fx.lookalike import code_names, look, reads_globals, signature
from gpa.frontends.fx.modes import grad_modes
from gpa.frontends.fx.tracer import (
    GpaProxy,
    GpaTracer,
    as_written,
    functions_recorded,
    set_arguments,
)
from gpa.frontends.fx.writes import follow_mutations, writes_followed

__all__ = ["Inlined", "InliningFlow", "inline_calls", "setitem_"]

# What a proxy answers with its value's own: numbers and flags, never a node.
_CONCRETE = frozenset(
    "shape ndim dtype device size dim numel nelement is_floating_point is_complex "
    "is_contiguous layout".split()
)


def setitem_(tensor: torch.Tensor, index: Any, value: Any) -> torch.Tensor:
    """``tensor[index] = value``, returning ``tensor``: an in-place call, whose later
    readers read its result (``docs/semantics.md`` §1.3).

    Example:
        >>> setitem_(torch.zeros(3), slice(1, None), 1.0)
        tensor([0., 1., 1.])
    """
    tensor[index] = value
    return tensor


class InliningFlow(GradientFlow):
    """The gradient-flow pass, reading a call of a function fx kept whole by tracing into
    it by value: the call's result and the arguments gradient reaches come from its
    operations, each worked out as the pass works out any (and kept for look-alikes), and
    the operations are kept (:attr:`graphs`) for :func:`inline_calls` to put in the call's
    place. A call that cannot be traced so — its function writes where its operations do
    not show (into an argument: the pass checks that write, see ``_refuse_hidden_write``;
    through an alias other than a view), or checks types (in its own code or a helper's) —
    runs whole.

    ``every``: read every wrapped call so (the channel analysis traces into each); else
    only those given a parameter or buffer (a ``get_attr`` node), which may hold layers —
    any other runs whole, and is traced later if :func:`inline_calls` is asked to.

    Attributes:
        graphs: each call's operations (None: it cannot be traced) by its look and grad
            mode, shared with the pass ``like`` gives.
        composed: each traced graph's result as reading its operations gave it (meta
            values), shared so too.
    """

    def __init__(
        self, gm: fx.GraphModule, like: InliningFlow | None = None, every: bool = False
    ) -> None:
        super().__init__(gm, like)
        self.graphs: dict[Hashable, fx.Graph | None] = like.graphs if like is not None else {}
        self._names: dict = like._names if like is not None else {}  # the root's tensors
        self.composed: dict[fx.Graph, Any] = like.composed if like is not None else {}
        self.every = every

    def _run_under_autograd(self, n: fx.Node) -> tuple[Any, frozenset[fx.Node]]:
        given = self.every or any(m.op == "get_attr" for m in n.all_input_nodes)
        # a type check anywhere in the function's code may see a proxy and take another
        # branch than the run would: run whole (the inlining checks its own code only)
        if given and wrapped(n) and not code_names(n.target) & _TYPE_CHECKS:
            inner = self.operations(n, self.env, torch.is_grad_enabled())
            if inner is not None and _replaceable(n, inner):
                return self._through(n, inner)
        return super()._run_under_autograd(n)

    def operations(
        self, call: fx.Node, values: Mapping[fx.Node, Any], enabled: bool
    ) -> fx.Graph | None:
        """The operations ``call`` runs on its arguments' ``values`` in grad mode
        ``enabled`` (traced once per look), or None when it cannot be traced by value —
        or is a custom autograd Function's, whose gradient is its backward's."""
        if called_function(call.target) is not None:
            return None
        with torch.set_grad_enabled(enabled):
            look = signature(call, values, self.fetch_attr)
        key = None if look is None else (look, enabled)
        if key is not None and key in self.graphs:
            return self.graphs[key]
        try:
            inner = _traced(self.module, call, values, enabled, self._names, self)
        except Exception:  # anything a value-carrying trace cannot follow
            inner = None
        if inner is not None and not writes_followed(inner):
            inner = None  # a write its operations do not show whole: kept as one call
        if key is not None:
            self.graphs[key] = inner  # a call that looks alike traces alike
        return inner

    def _through(self, n: fx.Node, inner: fx.Graph) -> tuple[Any, frozenset[fx.Node]]:
        """``n``'s result and flows read off its operations ``inner``, as running the
        function whole under autograd gives them (its graph is theirs, composed)."""
        values = [self.env[m] for m in n.all_input_nodes]
        result = self.composed[inner] = self.over(inner).run_on(values, torch.is_grad_enabled())
        flows, parts = _flows(n, inner)
        if parts is not None:
            n.meta[PARTS] = parts
        return result, flows


def _flows(call: fx.Node, inner: fx.Graph) -> tuple[frozenset[fx.Node], tuple | None]:
    """The input nodes of ``call`` that gradient reaches from the result of its operations
    ``inner`` (annotated by a flow pass), and from each result apart when there are several
    (None for one), as the pass records them (``node.meta[FLOW]``, ``node.meta[PARTS]``)."""
    inputs = dict(zip(inner.find_nodes(op="placeholder"), call.all_input_nodes, strict=True))
    returned = inner.output_node().args[0]
    if isinstance(returned, (tuple, list)) and len(returned) > 1:
        parts = tuple(frozenset(inputs[p] for p in _reached(r)) for r in returned)
        return frozenset().union(*parts), parts
    return frozenset(inputs[p] for p in _reached(returned)), None


def _reached(returned: Any) -> set[fx.Node]:
    """The placeholders gradient reaches from the nodes in ``returned``, along the edges
    the flow pass marked (one result of a multi-result operation: from its own inputs)."""
    nodes = returned if isinstance(returned, (tuple, list)) else [returned]
    stack = [m for m in nodes if isinstance(m, fx.Node)]
    seen: set[fx.Node] = set()
    found: set[fx.Node] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "placeholder":
            found.add(node)
            continue
        grad_from = node.meta[FLOW].grad_from
        part = result_part(node)
        if part is not None:
            source, inputs = part
            stack.extend(inputs if source in grad_from else ())
        else:
            stack.extend(grad_from)
    return found


class Inlined(NamedTuple):
    """What :func:`inline_calls` did.

    Attributes:
        replaced: the names of the calls replaced by their operations; each operation put
            in place carries the annotation the flow pass over the new graph would give
            (``node.meta[FLOW]``, ``node.meta[PARTS]``), and so do the calls' readers.
        refused: the names of the calls kept whole because their operations, traced with
            proxies, do not do what running the function did: their result does not look
            as the call's (each tensor's shape, strides, dtype, requires_grad) or gradient
            reaches other inputs — a helper took a proxy for no tensor and branched.
    """

    replaced: list[str]
    refused: list[str]


def inline_calls(gm: fx.GraphModule, calls: Iterable[fx.Node], flow: InliningFlow) -> Inlined:
    """Replace each of ``calls`` (``call_function`` nodes of ``gm``) by the operations its
    function runs on the arguments' values (``flow``: the gradient-flow pass that has run
    over ``gm``, holding the operations of the calls it traced into); the others stay.
    The operations put in place carry the flow pass's annotations, as it worked them out
    for the call (see :class:`Inlined`).
    """
    replaced, refused = [], []
    values = collections.ChainMap({}, flow.env)  # the results of calls replaced, too
    # the operations put in place leave the grad mode as they found it (see _traced)
    modes = grad_modes(gm.graph)
    for call in list(calls):
        enabled = modes[call]
        inner = flow.operations(call, values, enabled)
        if inner is None or not _replaceable(call, inner):
            continue
        if not _as_run(flow, call, inner, values, enabled):
            refused.append(call.name)
            continue
        _replace(gm, call, inner, values)
        replaced.append(call.name)
    return Inlined(replaced, refused)


def _as_run(
    flow: InliningFlow, call: fx.Node, inner: fx.Graph, values: Mapping, enabled: bool
) -> bool:
    """Whether ``inner`` (the operations of ``call``, annotated here unless a call of the
    same look had them read) does what the flow pass found ``call`` doing: a result that
    looks as the call's did, each tensor apart, and gradient flowing to the same inputs.
    Else the trace took another branch than the run (a helper's type check answered for
    a proxy), and its operations would give other paths."""
    result = flow.composed.get(inner)
    if result is None:  # traced for the inlining, never read through
        inputs = [values[m] for m in call.all_input_nodes]
        result = flow.composed[inner] = flow.over(inner).run_on(inputs, enabled)
    seen = look(values[call])
    if seen is None or seen != look(result):
        return False
    return _flows(call, inner) == (call.meta[FLOW].grad_from, call.meta.get(PARTS))


def _renamed(node: fx.Node, names: Mapping[fx.Node, fx.Node]) -> None:
    """Rewrite ``node``'s annotations to name other nodes (``names``: old -> new)."""
    flow = node.meta.get(FLOW)
    if flow is not None:
        grad_from = frozenset(names.get(m, m) for m in flow.grad_from)
        node.meta[FLOW] = dataclasses.replace(flow, grad_from=grad_from)
    parts = node.meta.get(PARTS)
    if parts is not None:
        node.meta[PARTS] = tuple(frozenset(names.get(m, m) for m in p) for p in parts)


def _replaceable(call: fx.Node, inner: fx.Graph) -> bool:
    """Whether ``call``'s users can read ``inner``'s result: one node, or several read one
    by one (fx's ``getitem`` nodes)."""
    if isinstance(inner.output_node().args[0], fx.Node):
        return True
    return all(
        user.target is operator.getitem and isinstance(user.args[1], int) for user in call.users
    )


def _replace(gm: fx.GraphModule, call: fx.Node, inner: fx.Graph, values: MutableMapping) -> None:
    """Put a copy of ``inner``'s operations in place of ``call``."""
    first = call.prev
    placeholders = [n for n in inner.nodes if n.op == "placeholder"]
    copies = dict(zip(placeholders, call.all_input_nodes, strict=True))
    with gm.graph.inserting_before(call):
        result = _copy_into(gm.graph, inner, copies)
    stack = call.meta.get("nn_module_stack", {})  # they ran in the caller's module
    node = first.next
    while node is not call:
        node.meta["nn_module_stack"] = stack
        _renamed(node, copies)  # its annotations name the inner graph's nodes
        node = node.next
    if isinstance(result, (tuple, list)):
        for user in list(call.users):
            part = result[user.args[1]]
            if call in values:
                values[part] = values[call][user.args[1]]
            for reader in user.users:
                _renamed(reader, {user: part})
            user.replace_all_uses_with(part)
            gm.graph.erase_node(user)
    else:
        if call in values:
            values[result] = values[call]
        for reader in call.users:
            _renamed(reader, {call: result})
        call.replace_all_uses_with(result)
    gm.graph.erase_node(call)


def _copy_into(graph: fx.Graph, inner: fx.Graph, copies: dict[fx.Node, fx.Node]) -> Any:
    """Copy ``inner``'s nodes into ``graph`` at its insertion point and return what
    ``inner`` returns, in copies (``copies``: inner node -> copy, the placeholders' given;
    filled in). As ``fx.Graph.graph_copy``, less its check of every copy's arguments for
    symbolic sizes: a graph traced on meta values holds none (see :func:`set_arguments`)."""
    for node in inner.nodes:
        if node in copies:
            continue
        if node.op == "output":
            return fx.node.map_arg(node.args[0], copies.__getitem__)
        copy = graph.create_node(node.op, node.target, name=node.name, type_expr=node.type)
        set_arguments(copy, *fx.node.map_arg((node.args, node.kwargs), copies.__getitem__))
        copy.meta = dict(node.meta)
        copies[node] = copy
    return None


class _ValueProxy(GpaProxy):
    """A proxy holding the value of the operation it stands for (``value``).

    A type check on it outside torch, when it holds a tensor (``isinstance(y,
    torch.Tensor)`` in a helper the function calls, which Python answers by asking its
    ``__class__``), would take another branch than the run: it is noted on the tracer
    (``tested``), and the trace is not used. torch's own code, which fx relies on,
    is answered as usual.
    """

    value: Any = None

    viewed: tuple[_ValueProxy, Any] | None = None  # (base, index) of ``base[index]``

    def class_test_noted(self) -> bool:
        # only a tensor's: torch's C argument parser, called from the function's own
        # frame, asks those holding sizes whether they are symbolic
        return isinstance(self.value, torch.Tensor)

    def __getattr__(self, name: str) -> Any:
        if name in _CONCRETE:
            return getattr(self.value, name)
        if callable(getattr(self.value, name, None)):
            if self.viewed is not None and name.endswith("_") and not name.startswith("_"):
                return functools.partial(self._write_through, name)
            return super().__getattr__(name)  # a method: its call is recorded
        return self.tracer.create_proxy("call_function", getattr, (self, name), {})

    def _write_through(self, method: str, *args: Any, **kwargs: Any) -> _ValueProxy:
        """``base[index].method(...)``, in place, recorded as ``base[index] = part`` where
        ``part`` is a copy of ``base[index]`` the method wrote into: a write into ``base``,
        which later readers of ``base`` follow (§1.3: a write into a view they cannot).
        Swin V2's attention zeroes a slice of its bias so."""
        base, index = self.viewed
        part = base[index].clone()
        getattr(part, method)(*args, **kwargs)
        base[index] = part
        return base[index]

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self.value)))

    def __setitem__(self, index: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", setitem_, (self, index, value), {})


class _ValueTracer(GpaTracer):
    """Records operations as fx does, evaluating each on its arguments' values as
    ``evaluator`` (a gradient-flow pass over ``root``) does.

    ``names``: the root's tensors by identity (see ``GpaTracer._qualified_name``), made
    once for all the calls traced into."""

    def __init__(
        self, root: torch.nn.Module, enabled: bool, names: dict, evaluator: GradientFlow
    ) -> None:
        super().__init__((), frozenset(), {})
        self.root = root
        self.graph = fx.Graph()
        self.tensor_attrs: dict[torch.Tensor, str] = {}
        self._grad_enabled = enabled
        self._names = names
        self.evaluator = evaluator
        self.evaluating = False  # while an operation runs

    def create_arg(self, a: Any) -> Any:
        # the arguments of most operations: proxies, numbers and tuples of them, answered
        # before fx's general search (a third of the trace's time on Swin)
        kind = type(a)
        if kind in _ATOMS:
            return a
        if kind is _ValueProxy:
            return a.node
        if kind is tuple or kind is list:
            return kind([self.create_arg(x) for x in a])
        made = isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter)
        if made and self._qualified_name(a) is None:  # made by the function: a constant
            name = self.tensor_attrs.get(a) or self.get_fresh_qualname("_tensor_constant")
            setattr(self.root, name, a)
            self.tensor_attrs[a] = name
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(obj.value)  # a meta tensor's truth raises: no tracing by value then

    def create_proxy(
        self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None
    ):
        steps = split_einsum(args) if kind == "call_function" and target in EINSUM else None
        if steps is not None and not kwargs:  # recorded as the contractions torch makes
            operands = einsum_operands(args)
            held = operands[0]
            for step, i in steps:
                pair = contraction_arguments(target, step, held, operands[i])
                held = self.create_proxy(kind, target, pair, {})
            return held
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if target is operator.getitem and isinstance(args[0], _ValueProxy) and _basic(args[1]):
            proxy.viewed = (args[0], args[1])  # a view of args[0]
        if kind in ("call_function", "call_method"):
            proxy.value = self._evaluated(proxy.node)
        elif kind == "get_attr":
            proxy.value = self.evaluator.get_attr(target, (), {})
        if kind != "placeholder":
            self.evaluator.env[proxy.node] = proxy.value
        return proxy

    def _evaluated(self, node: fx.Node) -> Any:
        """``node``'s value, worked out by the evaluator (in the grad mode it was recorded
        in, as the flow pass will run it)."""
        env = self.evaluator.env
        for m in node.all_input_nodes:
            if m not in env and m.op == "get_attr":  # a constant made by create_arg
                env[m] = self.evaluator.get_attr(m.target, (), {})
        self.evaluating = True  # what the operation calls is not recorded
        try:
            if isinstance(_get_current_function_mode(), _Made):
                with _pop_mode_temporarily():  # nor seen: torch calls it without a detour
                    return self.evaluator.evaluate(node)
            return self.evaluator.evaluate(node)
        finally:
            self.evaluating = False


# Arguments fx records as they are (see ``_ValueTracer.create_arg``).
_ATOMS = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device})

# Names a function checks its arguments' types with (fx's proxies are no tensors).
_TYPE_CHECKS = frozenset({"isinstance", "is_tensor", "type", "__class__"})

# Functions making a tensor from numbers alone (the function's own buffer, filled after).
_FACTORIES = frozenset(
    {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.eye, torch.tensor}
    | {torch.linspace, torch.randn, torch.rand}
)


class _Made(TorchFunctionMode):
    """Records the tensors a traced function makes from numbers alone as operations, not
    constants: what is written into them afterwards (``out[i] = ...``) is followed then."""

    def __init__(self, tracer: _ValueTracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and not self.tracer.evaluating:
            return self.tracer.create_proxy("call_function", func, args, kwargs)
        return func(*args, **kwargs)


def _basic(index: Any) -> bool:
    """Basic indexing (numbers, slices of numbers, None, ...): the result is a view."""
    if isinstance(index, tuple):
        return all(_basic(i) for i in index)
    if isinstance(index, slice):
        return all(isinstance(b, (int, type(None))) for b in (index.start, index.stop, index.step))
    return (
        index is None
        or index is Ellipsis
        or (isinstance(index, int) and not isinstance(index, bool))
    )


def _traced(
    gm: fx.GraphModule,
    call: fx.Node,
    values: Mapping[fx.Node, Any],
    enabled: bool,
    names: dict,
    evaluator: GradientFlow,
) -> fx.Graph:
    """The graph of ``call``'s function traced on its arguments' values, in grad mode
    ``enabled``, with one placeholder per argument node (in ``all_input_nodes``' order).

    Raises:
        Exception: whatever the function raises on proxies; ValueError: it leaves the grad
            mode changed, or returns what no node can stand for.
    """
    tracer = _ValueTracer(gm, enabled, names, evaluator)
    proxies: dict[fx.Node, _ValueProxy] = {}
    for arg in call.all_input_nodes:
        proxy = tracer.create_proxy("placeholder", arg.name, (), {})
        proxy.value = evaluator.env[proxy.node] = values[arg]
        proxies[arg] = proxy
    if reads_globals(call.target):  # as the caller left them, not as the call found them
        raise ValueError("the function reads global state")
    # a proxy is no tensor: a type check on it takes another branch. The function's own
    # code only: the helpers it calls mostly check other things (torchvision logs its API
    # use); where one took a proxy for no tensor, inline_calls finds the result not as run
    if code_names(call.target, depth=0) & _TYPE_CHECKS:
        raise ValueError("the function checks the types of what it is given")
    args, kwargs = as_written(fx.node.map_arg((call.args, call.kwargs), proxies.__getitem__))
    with torch.set_grad_enabled(enabled), _Made(tracer), functions_recorded():
        result = call.target(*args, **kwargs)
    if tracer.tested:
        raise ValueError("a type check outside torch asked a proxy its class")
    if tracer._grad_enabled != enabled:
        raise ValueError("grad mode left changed")
    output = tracer.create_arg(result)
    parts = output if isinstance(output, (tuple, list)) else (output,)
    if not all(isinstance(part, fx.Node) for part in parts):
        raise ValueError("a result no node stands for")
    tracer.graph.output(output)
    follow_mutations(tracer.graph, gm)
    return tracer.graph
