"""Calls of ``torch.fx.wrap`` functions that read parameters, traced into after all.

fx records a call of a wrapped function as one node: it cannot trace into code that
branches on shapes or assigns into tensors, which is why such functions are wrapped
(torchvision's ``shifted_window_attention``: Swin's attention, weights passed in). Layers
inside are then unseen (``docs/semantics.md`` §1.6). Once the gradient-flow pass has run,
each call's arguments have values — meta tensors of known shapes — and the function can be
traced with them: a tracer whose proxies carry the value of the operation they stand for
answers shapes, sizes and ranks with numbers, so the function's Python runs as it would on
these inputs (its branches, its loops over windows), and item assignment is recorded as an
in-place call (:func:`setitem_`). Its operations replace the call in the graph; the flow
pass runs again over them. A call that cannot be traced so (a branch on a tensor's values,
an operation the meta device refuses) stays whole, as before.

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
    >>> values = {x: torch.empty(2, 3, device="meta"), w: torch.empty(4, 3, device="meta")}
    >>> inline_calls(gm, [call], values)
    ['project']
    >>> [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    ['linear']
"""

from __future__ import annotations

import collections
import functools
import operator
from collections.abc import Hashable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
import torch.fx as fx
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from gpa.frontends.fx.lookalike import code_names, reads_globals, signature
from gpa.frontends.fx.tracer import GpaProxy, GpaTracer, follow_mutations, grad_mode

__all__ = ["inline_calls", "setitem_"]

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


def inline_calls(
    gm: fx.GraphModule, calls: Iterable[fx.Node], values: Mapping[fx.Node, Any]
) -> list[str]:
    """Replace each of ``calls`` (``call_function`` nodes of ``gm``) by the operations its
    function runs on the arguments' ``values`` (each node's value, meta tensors for
    tensors). Returns the names of the calls replaced; the others stay.
    """
    replaced = []
    values = collections.ChainMap({}, values)  # the results of calls replaced, too
    graphs: dict[Hashable, fx.Graph | None] = {}  # by look (None: cannot be traced)
    names: dict = {}  # the root's tensors by identity, for every trace
    for call in list(calls):
        enabled = _grad_mode_at(call)
        look = signature(call, values, gm.get_submodule)
        key = None if look is None else (look, enabled)
        if key is None or key not in graphs:
            try:
                inner = _traced(gm, call, values, enabled, names)
            except Exception:  # anything a value-carrying trace cannot follow
                inner = None
            if key is not None:
                graphs[key] = inner  # a call that looks alike traces alike
        inner = graphs[key] if key is not None else inner
        if inner is not None and _replaceable(call, inner):
            _replace(gm, call, inner, values)
            replaced.append(call.name)
    return replaced


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
    with gm.graph.inserting_before(call):
        result = gm.graph.graph_copy(
            inner, dict(zip(placeholders, call.all_input_nodes, strict=True))
        )
    stack = call.meta.get("nn_module_stack", {})  # they ran in the caller's module
    node = first.next
    while node is not call:
        node.meta["nn_module_stack"] = stack
        node = node.next
    if isinstance(result, (tuple, list)):
        for user in list(call.users):
            part = result[user.args[1]]
            if call in values:
                values[part] = values[call][user.args[1]]
            user.replace_all_uses_with(part)
            gm.graph.erase_node(user)
    else:
        if call in values:
            values[result] = values[call]
        call.replace_all_uses_with(result)
    gm.graph.erase_node(call)


class _ValueProxy(GpaProxy):
    """A proxy holding the value of the operation it stands for (``value``)."""

    value: Any = None

    viewed: tuple[_ValueProxy, Any] | None = None  # (base, index) of ``base[index]``

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
    """Records operations as fx does, running each on its arguments' values.

    ``names``: the root's tensors by identity (see ``GpaTracer._qualified_name``), made
    once for all the calls traced into."""

    def __init__(self, root: torch.nn.Module, enabled: bool, names: dict) -> None:
        super().__init__((), frozenset(), {})
        self.root = root
        self.graph = fx.Graph()
        self.tensor_attrs: dict[torch.Tensor, str] = {}
        self._grad_enabled = enabled
        self._names = names

    def create_arg(self, a: Any) -> Any:
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
    ):  # noqa: ANN001, E501
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if target is operator.getitem and isinstance(args[0], _ValueProxy) and _basic(args[1]):
            proxy.viewed = (args[0], args[1])  # a view of args[0]
        if kind in ("call_function", "call_method"):
            a, kw = tree_map(_value_of, (args, kwargs))
            with torch.no_grad(), torch.device("meta"):  # a tensor made from numbers: meta
                if kind == "call_function":
                    proxy.value = target(*a, **kw)
                else:
                    proxy.value = getattr(a[0], target)(*a[1:], **kw)
        elif kind == "get_attr":
            proxy.value = _value_of(functools.reduce(getattr, target.split("."), self.root))
        return proxy


# Names a function checks its arguments' types with (fx's proxies are no tensors).
_TYPE_CHECKS = frozenset({"isinstance", "is_tensor", "type"})

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

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in _FACTORIES:
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


def _value_of(x: Any) -> Any:
    if isinstance(x, _ValueProxy):
        return x.value
    if isinstance(x, torch.Tensor) and x.device.type != "meta":
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return x


def _grad_mode_at(node: fx.Node) -> bool:
    """The grad mode the graph runs ``node`` in (the last :func:`grad_mode` before it)."""
    before = node.prev
    while before.op != "root":
        if before.op == "call_function" and before.target is grad_mode:
            return bool(before.args[0])
        before = before.prev
    return True


def _traced(
    gm: fx.GraphModule, call: fx.Node, values: Mapping[fx.Node, Any], enabled: bool, names: dict
) -> fx.Graph:
    """The graph of ``call``'s function traced on its arguments' values, in grad mode
    ``enabled``, with one placeholder per argument node (in ``all_input_nodes``' order).

    Raises:
        Exception: whatever the function raises on proxies; ValueError: it leaves the grad
            mode changed, or returns what no node can stand for.
    """
    tracer = _ValueTracer(gm, enabled, names)
    proxies: dict[fx.Node, _ValueProxy] = {}
    for arg in call.all_input_nodes:
        proxy = tracer.create_proxy("placeholder", arg.name, (), {})
        proxy.value = values[arg]
        proxies[arg] = proxy
    if reads_globals(call.target):  # as the caller left them, not as the call found them
        raise ValueError("the function reads global state")
    # a proxy is no tensor: a type check on it takes another branch. The function's own
    # code only: the helpers it calls check other things (torchvision logs its API use)
    if code_names(call.target, depth=0) & _TYPE_CHECKS:
        raise ValueError("the function checks the types of what it is given")
    args, kwargs = fx.node.map_arg((call.args, call.kwargs), proxies.__getitem__)
    with torch.set_grad_enabled(enabled), _Made(tracer):
        result = call.target(*args, **kwargs)
    if tracer._grad_enabled != enabled:
        raise ValueError("grad mode left changed")
    output = tracer.create_arg(result)
    parts = output if isinstance(output, (tuple, list)) else (output,)
    if not all(isinstance(part, fx.Node) for part in parts):
        raise ValueError("a result no node stands for")
    tracer.graph.output(output)
    follow_mutations(tracer.graph, gm)
    return tracer.graph
