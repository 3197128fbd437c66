"""Look-alike nodes: one result shape for every node that computes the same thing.

The gradient-flow pass (:mod:`gpa.frontends.fx.flow`) runs each node on meta tensors:
shapes and dtypes, no data. What such a run yields — the result's shapes, strides and
dtypes, and which inputs gradient reaches — is then a function of the operation, its
literal arguments, what its input values look like, and the grad mode. Deep networks
repeat the same block many times (ResNet stages, the twelve encoder layers of ViT-B,
a residual chain of a thousand layers), so most nodes look like one run before:
:func:`signature` names what a node computes, :class:`Outcome` keeps what its run
yielded and rebuilds it for the next node with the same signature.

Only operations that are functions of their arguments are named: torch's functions,
tensor methods, ``operator`` and ``getattr``, gpa's own (item assignment as an operation),
modules of ``torch.nn`` whose state is their registered tensors and plain settings, and
functions fx was told to record as one call (``torch.fx.wrap``: Swin's attention,
torchvision's ``stochastic_depth``) — fx's graph keeps nothing of such a call but its
arguments, and gpa reads it so too, unless the function reads a global that is data (a
flag another call may set). Any other function of a user, a user's module, or a module
with a hook has no signature and runs every time; so does a torch function that returns
no tensor (``torch._C._set_grad_enabled`` runs for its side effect).

Example:
    >>> import torch, torch.fx as fx
    >>> g = fx.Graph()
    >>> a, b = g.placeholder("a"), g.placeholder("b")
    >>> s1, s2 = g.call_function(torch.relu, (a,)), g.call_function(torch.relu, (b,))
    >>> env = {a: torch.empty(2, 3, device="meta"), b: torch.empty(2, 3, device="meta")}
    >>> signature(s1, env, None) == signature(s2, env, None)
    True
"""

from __future__ import annotations

import functools
import math
import operator
import types
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

__all__ = ["look", "reads_globals", "Outcome", "signature"]


class _Unnamed(Exception):
    """A value or operation :func:`signature` cannot name."""


# Literal argument types that are their own name (hashable, immutable, value-compared).
_ATOMS = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    torch.dtype,
    torch.device,
    torch.memory_format,
    torch.layout,
    type(Ellipsis),
)


_ATOM_TYPES = frozenset(_ATOMS)


def _name(value: Any) -> Hashable:
    """A hashable name of ``value`` that equals another's exactly when they look alike to a
    meta run: tensors by shape, strides, dtype and requires_grad; Python values by value
    (and type: ``1``, ``1.0`` and ``True`` differ)."""
    kind = type(value)
    if kind is float:  # -0.0 == 0.0, yet a function may branch on the sign
        return (kind, value, math.copysign(1.0, value))
    if kind in _ATOM_TYPES:  # the common case first, by exact type
        return (kind, value)
    if isinstance(value, torch.Tensor):
        if not value.is_meta:
            raise _Unnamed
        return ("T", tuple(value.shape), value.stride(), value.dtype, value.requires_grad)
    if isinstance(value, _ATOMS):
        return (kind, value)
    if isinstance(value, (tuple, list)):  # torch.Size and named tuples included
        return (kind, tuple(_name(v) for v in value))
    if isinstance(value, slice):
        return (slice, _name(value.start), _name(value.stop), _name(value.step))
    if isinstance(value, dict):
        return (dict, tuple((k, _name(v)) for k, v in value.items()))
    raise _Unnamed


def look(value: Any) -> Hashable | None:
    """What ``value`` looks like to a meta run — tensors by shape, strides, dtype and
    requires_grad, in their containers; Python values by value — or None when it cannot
    be named (a tensor off the meta device, an object of another kind). Two values with
    equal looks give every operation reading them the same outcome.

    Example:
        >>> a, b = torch.empty(2, 3, device="meta"), torch.empty(3, 2, device="meta").t()
        >>> look((a, 1)) == look((torch.empty(2, 3, device="meta"), 1)), look(a) == look(b)
        (True, False)
    """
    try:
        return _name(value)
    except _Unnamed:
        return None


def _named_argument(arg: Any, inputs: Mapping[fx.Node, int], env: Mapping[fx.Node, Any]) -> Any:
    if isinstance(arg, fx.Node):  # which input (aliasing counts) and what its value looks like
        return ("N", inputs[arg], _name(env[arg]))
    if isinstance(arg, (tuple, list)):
        return (type(arg), tuple(_named_argument(a, inputs, env) for a in arg))
    if isinstance(arg, dict):
        return (dict, tuple((k, _named_argument(v, inputs, env)) for k, v in arg.items()))
    return _name(arg)


# Attributes of every nn.Module that are registries, not settings.
_REGISTRIES = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})
_FORWARD_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _module_name(m: nn.Module) -> Hashable:
    """A module of ``torch.nn`` by its type, settings, tensors and children; raises
    :class:`_Unnamed` for any other module, one with hooks, or one holding anything but
    plain settings (an object whose effect cannot be named)."""
    kind = type(m)
    hooks = nn.modules.module  # global hooks apply to every module
    if (
        not kind.__module__.startswith("torch.nn.")
        or any(getattr(m, h, None) for h in _FORWARD_HOOKS)
        or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
    ):
        raise _Unnamed
    attributes = m.__dict__
    settings = _SETTINGS.get((kind, tuple(attributes)))
    if settings is None:  # hook and state-dict registries are no settings
        settings = _SETTINGS[kind, tuple(attributes)] = tuple(
            k
            for k, v in attributes.items()
            if k not in _REGISTRIES and not isinstance(v, (dict, set))
        )
    tensors = tuple(
        (k, None if t is None else (tuple(t.shape), t.dtype, t.is_floating_point()))
        for registry in (m._parameters, m._buffers)
        for k, t in registry.items()
    )
    children = tuple((k, None if c is None else _module_name(c)) for k, c in m._modules.items())
    # Settings by value and type, hashed as they are (a tuple of ints for a kernel size);
    # an unhashable one (a list) makes the signature unnamed, see signature().
    values = tuple(attributes[k] for k in settings)
    return (kind, settings, values, tuple(map(type, values)), tensors, children)


# (module type, its attribute names) -> the names that are settings (see _module_name).
_SETTINGS: dict[tuple[type, tuple[str, ...]], tuple[str, ...]] = {}


def _target_name(node: fx.Node, submodule: Callable[[str], Any] | None) -> Hashable:
    target = node.target
    if node.op == "call_method":
        return ("M", target)
    if node.op == "call_module":
        if submodule is None:
            raise _Unnamed
        return ("C", _module_name(submodule(target)))
    if node.op != "call_function":
        raise _Unnamed
    if isinstance(target, torch._ops.OpOverload) or target is getattr:
        return ("F", target)
    owner = getattr(target, "__module__", None) or ""
    if owner in _OPERATOR or owner.split(".")[0] == "torch" or _wrapped(target):
        return ("F", target)
    if owner.startswith(_RECORDING):  # gpa's own operations: setitem_, grad_mode
        return ("F", target)
    raise _Unnamed


# The analyser's own functions a graph calls, functions of their arguments (``setitem_``
# writes item assignment as an operation; ``grad_mode`` returns no tensor: it runs, for
# its effect, every time).
_RECORDING = "gpa.frontends."


def _wrapped(function: Any) -> bool:
    """Whether fx was told to record calls of ``function`` whole (``torch.fx.wrap``, which
    registers the function's name in its module's globals; torch keeps no public record)
    and the function computes from its arguments alone (:func:`reads_globals`)."""
    table = getattr(torch.fx._symbolic_trace, "_wrapped_fns_to_patch", {})
    scope = getattr(function, "__globals__", None)
    name = getattr(function, "__name__", None)
    return scope is not None and (id(scope), name) in table and not reads_globals(function)


@functools.lru_cache(maxsize=256)
def reads_globals(function: types.FunctionType, depth: int = 3) -> bool:
    """Whether ``function``, or a Python function it calls by a global name (``depth``
    deep), reads or writes a global that is data — a number, a flag, a dict, a tensor:
    anything but a module or a callable — whose value may differ from one call to the
    next. Functions, classes and modules are code, not state; so are a module's own
    ``__name__``-like attributes (their names are also attribute names a function reads).

    Example:
        >>> LIMIT = 3
        >>> def clipped(x):
        ...     return x[:LIMIT]
        >>> def padded(x):
        ...     return clipped(torch.nn.functional.pad(x, (1, 1)))
        >>> def doubled(x):
        ...     return torch.nn.functional.relu(x) * 2
        >>> reads_globals(clipped), reads_globals(padded), reads_globals(doubled)
        (True, True, False)
    """
    scope = function.__globals__
    codes = [function.__code__]
    while codes:  # nested functions, lambdas and comprehensions too
        code = codes.pop()
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in code.co_names:  # global names, and attribute names (not in scope)
            value = scope.get(name, _ABSENT)
            if value is _ABSENT or (name.startswith("__") and name.endswith("__")):
                continue
            if not (callable(value) or isinstance(value, types.ModuleType)):
                return True
            called = isinstance(value, types.FunctionType) and value is not function
            if called and (depth == 0 or reads_globals(value, depth - 1)):
                return True
    return False


_ABSENT = object()


def code_names(function: Any, depth: int = 3) -> frozenset[str]:
    """The names ``function``'s code reads (globals, attributes), with those of its nested
    functions and of the Python functions it calls by a global name (``depth`` deep); empty
    for anything but a Python function.

    Example:
        >>> def checked(x):
        ...     return isinstance(x, torch.Tensor)
        >>> sorted(code_names(checked))
        ['Tensor', 'isinstance', 'torch']
    """
    if not isinstance(function, types.FunctionType):
        return frozenset()
    names: set[str] = set()
    codes = [function.__code__]
    while codes:  # nested functions, lambdas and comprehensions too
        code = codes.pop()
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        names.update(code.co_names)
    if depth:
        for name in list(names):
            value = function.__globals__.get(name)
            if isinstance(value, types.FunctionType) and value is not function:
                names |= code_names(value, depth - 1)
    return frozenset(names)


_OPERATOR = frozenset({operator.__name__, operator.add.__module__})  # "operator", "_operator"


def _without_side_effects(node: fx.Node) -> bool:
    """Whether ``node`` computes a value and nothing else: tensor methods (in-place ones
    return their tensor), attributes and ``operator``'s functions. A torch function that
    returns no tensor is run for what it does (``torch._C._set_grad_enabled``)."""
    if node.op == "call_method" or node.target is getattr:
        return True
    return (getattr(node.target, "__module__", None) or "") in _OPERATOR


def signature(
    node: fx.Node,
    env: Mapping[fx.Node, Any],
    submodule: Callable[[str], Any] | None,
) -> Hashable | None:
    """What ``node`` computes, named so that two nodes with equal signatures give results
    that look alike on the meta device; None when the node cannot be named.

    Args:
        node: a ``call_function``, ``call_method`` or ``call_module`` node.
        env: the meta values of the node's inputs (an ``fx.Interpreter``'s ``env``).
        submodule: the module at a qualified name (``gm.get_submodule``), for
            ``call_module`` targets; None names no module call.
    """
    try:
        inputs = {m: i for i, m in enumerate(node.all_input_nodes)}
        name = (
            _target_name(node, submodule),
            _named_argument(node.args, inputs, env),
            _named_argument(node.kwargs, inputs, env),
            torch.is_grad_enabled(),
        )
        hash(name)
    except (_Unnamed, TypeError):  # TypeError: an unhashable module setting
        return None
    return name


@dataclass(frozen=True)
class _TensorLook:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


def _rebuildable(value: Any) -> bool:
    """Whether ``value`` is tensors and immutable Python values in containers that pytree
    flattens and rebuilds as they were (it rebuilds a ``torch.Size`` as a plain tuple)."""
    if isinstance(value, torch.Tensor) or type(value) in _ATOM_TYPES:
        return True
    if isinstance(value, torch.Size):
        return False
    if isinstance(value, (tuple, list)):
        return all(_rebuildable(v) for v in value)
    if isinstance(value, dict):
        return all(_rebuildable(v) for v in value.values())
    return False


def _immutable(value: Any) -> bool:
    """Python values that can stand for another node's result as they are (sizes, flags)."""
    if type(value) in _ATOM_TYPES:
        return True
    return type(value) in (tuple, torch.Size) and all(_immutable(v) for v in value)


@dataclass(frozen=True)
class Outcome:
    """What running one node yielded, kept to stand for any node with its signature.

    Attributes:
        leaves: the result's pytree leaves, each tensor as its look (shape, strides,
            dtype, requires_grad), anything else as itself.
        spec: the result's pytree structure; None when the result holds no tensor, then
            ``leaves`` is the result itself (an immutable value, as a sizes tuple).
        flows: positions (in ``node.all_input_nodes``) of the inputs gradient reaches.
        parts: the same per result of a multi-result operation, or None.
    """

    leaves: Any
    spec: TreeSpec | None
    flows: frozenset[int]
    parts: tuple[frozenset[int], ...] | None

    @staticmethod
    def of(
        node: fx.Node,
        result: Any,
        flows: frozenset[fx.Node],
        parts: tuple[frozenset[fx.Node], ...] | None,
    ) -> Outcome | None:
        """The outcome of ``node``'s run; None when it cannot stand for another node's: a
        torch function's result without a tensor (it may have run for a side effect), or
        a result pytree would not rebuild as it was."""
        position = {m: i for i, m in enumerate(node.all_input_nodes)}
        flows_at = frozenset(position[m] for m in flows)
        parts_at = (
            None if parts is None else tuple(frozenset(position[m] for m in p) for p in parts)
        )
        leaves, spec = tree_flatten(result)
        if not any(isinstance(x, torch.Tensor) for x in leaves):
            if _without_side_effects(node) and _immutable(result):
                return Outcome(result, None, flows_at, parts_at)
            return None
        if not _rebuildable(result):
            return None
        looks = tuple(
            _TensorLook(tuple(x.shape), x.stride(), x.dtype, x.requires_grad)
            if isinstance(x, torch.Tensor)
            else x
            for x in leaves
        )
        return Outcome(looks, spec, flows_at, parts_at)

    def rebuild(
        self, node: fx.Node
    ) -> tuple[Any, frozenset[fx.Node], tuple[frozenset[fx.Node], ...] | None]:
        """The result (fresh meta tensors), flows and parts this outcome gives ``node``."""
        inputs = node.all_input_nodes

        def made(x: Any) -> Any:
            if not isinstance(x, _TensorLook):
                return x
            t = torch.empty_strided(x.shape, x.stride, dtype=x.dtype, device="meta")
            return t.requires_grad_(x.requires_grad)

        if self.spec is None:
            result = self.leaves
        else:
            result = tree_unflatten([made(x) for x in self.leaves], self.spec)
        flows = frozenset(inputs[i] for i in self.flows)
        parts = (
            None
            if self.parts is None
            else tuple(frozenset(inputs[i] for i in p) for p in self.parts)
        )
        return result, flows, parts
