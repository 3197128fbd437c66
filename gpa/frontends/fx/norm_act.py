"""Norm-activation modules that fx may record as single calls without changing any record.

timm builds the convolution blocks of its CNNs with a subclass of ``nn.BatchNorm2d``
(``BatchNormAct2d``: batch norm, then a dropout and an activation held as child modules).
fx's policy traces into such a subclass (its class is not from ``torch.nn``): a dozen nodes
per call, half of CSPDarkNet-53's trace, for what gradient paths and channel segments see
as one norm. Recorded as one call, it gives the same records: it is no layer
(``docs/semantics.md`` §2: normalisations and activations are not), gradient passes through
it, and its channels keep their positions (§8), as through the norm it subclasses.

That holds only when its ``forward`` is what it looks like, so the tracer judges it:
- a **candidate** (:func:`norm_act_kinds`) is a batch norm (``_NormBase``, not an instance
  norm) whose class is not from ``torch.nn``, neither a layer nor holding one, without
  hooks, whose children are all ``torch.nn`` activations, dropouts or identities, and
  whose methods read no global that is data (a flag the caller may set between calls);
- the **first call** of each *kind* of candidate is traced into as fx would, and its nodes
  judged (:func:`norm_then_activations`): one chain from its one input to its result —
  ``F.batch_norm`` of the input on the module's own tensors, then activations of one
  tensor (functions, methods or its children) —, and besides the chain only reads of the
  input's metadata, assertions on them, and in-place counts in its own buffers
  (``num_batches_tracked``); no other tensor read, no change of grad mode;
- the later calls of a kind that passed, with one tensor argument, are single calls.

A kind is what fx's trace of ``forward`` can depend on: the class, the plain attribute
values (numbers, strings, flags, None, tuples of them) of the module and of its children
(a module holding any other object — a list it may append to, shared with others — is no
candidate), the children's names and classes, which parameters and buffers are None, train or eval. The
first call must leave the attributes of the module and its children as they were: a
value kept for a later reader is not kept by a call recorded whole.

Example:
    >>> import torch, torch.nn as nn, torch.nn.functional as F
    >>> class BatchNormAct(nn.BatchNorm2d):
    ...     def __init__(self, c):
    ...         super().__init__(c)
    ...         self.act = nn.ReLU()
    ...     def forward(self, x):
    ...         x = F.batch_norm(x, self.running_mean, self.running_var, self.weight,
    ...                          self.bias, self.training)
    ...         return self.act(x)
    >>> model = nn.Sequential(BatchNormAct(8), BatchNormAct(8), BatchNormAct(4))
    >>> kinds = norm_act_kinds(model, (nn.Linear,))
    >>> kinds["0"] == kinds["1"] != kinds["2"]
    True
"""

from __future__ import annotations

import functools
import operator
import types
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from gpa.frontends.fx.lookalike import reads_globals
from gpa.frontends.fx.writes import METADATA_QUERIES
from gpa.frontends.modules import POINTWISE_MODULES, fx_leaf, module_class

__all__ = ["norm_act_kinds", "norm_then_activations"]

_NORMS = nn.modules.batchnorm._NormBase
_NOT_NORMS = nn.modules.instancenorm._InstanceNorm  # a _NormBase, windowed over positions

# Functions and methods of one tensor that keep its shape and each element's position.
_ACTIVATIONS = frozenset(
    "relu relu6 leaky_relu elu selu celu gelu silu mish sigmoid tanh hardswish hardsigmoid "
    "hardtanh softplus dropout dropout1d dropout2d dropout3d alpha_dropout".split()
)
# What may run beside the chain on values that are no tensors of it: assertions on the
# input's metadata (timm asserts ``x.ndim == 4``).
_CHECKS = frozenset(
    {torch._assert, getattr, operator.eq, operator.ne, operator.lt, operator.le, operator.gt}
    | {operator.ge, operator.not_, operator.truth}
)
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # the tables and hooks every module has
_HOOKS = tuple(k for k in sorted(_MODULE_INTERNALS) if k.startswith(("_forward", "_backward")))


def norm_act_kinds(
    model: nn.Module,
    layer_types: Iterable[type],
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> dict[str, Hashable]:
    """The candidates among ``model``'s modules (qualified name -> kind; see the module
    docstring); ``layer_types``: the layer module types (``docs/semantics.md`` §2).
    ``named``: ``model.named_modules()``, when the caller walked them already.

    Example:
        >>> norm_act_kinds(nn.Sequential(nn.BatchNorm2d(3)), (nn.Linear,))
        {}
    """
    types = tuple(layer_types)
    if _global_hooks():
        return {}
    return {
        name: _kind(module)
        for name, module in (model.named_modules() if named is None else named)
        if name and _candidate(module, types)
    }


def norm_then_activations(
    module: nn.Module, name: str, made: Sequence[fx.Node], start: fx.Node, result: fx.Node
) -> bool:
    """Whether the nodes fx made for one call of ``module`` (qualified name ``name``) are a
    norm of ``start`` and activations, and nothing else (see the module docstring).

    Args:
        module: the module called.
        name: its qualified name in the traced root.
        made: the nodes fx made during the call, in order.
        start: the call's one argument's node.
        result: the node of the value the call returned.
    """
    own = name + "."
    inside = set(made)
    for node in made:
        for arg in node.all_input_nodes:
            if arg not in inside and arg is not start and not _reads_own(arg, own):
                return False  # a value from outside the call other than its input
        if node.op == "get_attr" and not _reads_own(node, own):
            return False  # someone else's tensor, or a constant fx made of one
    chain = _chain(start, result, inside)
    if result not in chain:
        return False
    for node in made:
        if node in chain:
            if not _link(module, own, node, chain, start):
                return False
        elif node.op != "get_attr" and not _beside(node, chain | {start}):
            return False
    return True


def _global_hooks() -> bool:
    table = vars(nn.modules.module)
    return any(table.get(k) for k in table if k.startswith("_global_") and k.endswith("hooks"))


def _hooked(module: nn.Module) -> bool:
    return any(getattr(module, name, None) for name in _HOOKS)


def _candidate(module: nn.Module, layer_types: tuple[type, ...]) -> bool:
    cls = type(module)
    if not isinstance(module, _NORMS) or isinstance(module, _NOT_NORMS) or fx_leaf(cls):
        return False
    if isinstance(module, torch.jit.ScriptModule) or _hooked(module):
        return False
    if issubclass(module_class(module), layer_types) or _reads_global_state(cls):
        return False
    if not all(_plain(v) is not None for m in module.modules() for v in _state(m).values()):
        return False  # an object it holds (a list of features) may be shared and written
    return all(
        isinstance(child, POINTWISE_MODULES)
        and fx_leaf(type(child))
        and not issubclass(type(child), layer_types)
        and not _hooked(child)
        for child in module.children()
    )


@functools.lru_cache(maxsize=128)
def _reads_global_state(cls: type) -> bool:
    """Whether ``forward``, or a method of the class it calls by name (outside torch),
    reads a global that is data: a flag the caller may set between two calls of a kind."""
    seen: set[types.FunctionType] = set()
    todo = [getattr(cls, "forward", None)]
    while todo:
        function = todo.pop()
        if not isinstance(function, types.FunctionType) or function in seen:
            continue
        if function.__module__.startswith("torch"):
            continue
        seen.add(function)
        if reads_globals(function):
            return True
        todo.extend(getattr(cls, name, None) for name in function.__code__.co_names)
    return False


def _plain(value: Any) -> Hashable | None:
    """``value`` (with its type) when it is plain data fx's trace may branch on — numbers,
    strings, flags, None, dtypes, devices, tuples of them —, else None."""
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
        return (type(value), value)
    if isinstance(value, tuple):
        parts = tuple(_plain(v) for v in value)
        return None if None in parts else (tuple, parts)
    return None


def _state(module: nn.Module) -> dict[str, Any]:
    """The module's own attributes (not the tables and hooks every module has)."""
    return {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS or k == "training"}


def _attributes(module: nn.Module) -> tuple:
    plain = tuple((key, _plain(value)) for key, value in _state(module).items())
    tensors = tuple(
        (key, value is None)
        for table in (module._parameters, module._buffers)
        for key, value in table.items()
    )
    return (type(module), plain, tensors)


def _kind(module: nn.Module) -> Hashable:
    """What fx's trace of ``module.forward`` can depend on."""
    return (_attributes(module), tuple((n, _attributes(c)) for n, c in module.named_children()))


def _reads_own(node: fx.Node, own: str) -> bool:
    return node.op == "get_attr" and isinstance(node.target, str) and node.target.startswith(own)


def _chain(start: fx.Node, result: fx.Node, inside: set[fx.Node]) -> set[fx.Node]:
    """The nodes of ``inside`` on a path from ``start`` to ``result`` (``result`` included)."""
    after = _reached(start, lambda n: n.users, inside)
    return after & (_reached(result, lambda n: n.all_input_nodes, inside) | {result})


def _reached(
    start: fx.Node, step: Callable[[fx.Node], Iterable[fx.Node]], inside: set[fx.Node]
) -> set[fx.Node]:
    """The nodes of ``inside`` reached from ``start`` by ``step`` (users, or inputs)."""
    seen: set[fx.Node] = set()
    stack = [start]
    while stack:
        for node in step(stack.pop()):
            if node in inside and node not in seen:
                seen.add(node)
                stack.append(node)
    return seen


def _link(module: nn.Module, own: str, node: fx.Node, chain: set[fx.Node], start: fx.Node) -> bool:
    """``F.batch_norm`` of ``start`` on the module's own tensors, or an activation of the
    chain value before it: each link reads one chain value, as its first argument."""
    data = [a for a in node.all_input_nodes if a in chain or a is start]
    if len(data) != 1 or not node.args or node.args[0] is not data[0]:
        return False
    if data[0] is start:  # the norm first: an activation there would write into the input
        return node.target is F.batch_norm
    if node.op == "call_module":
        return node.target.startswith(own) and isinstance(
            module.get_submodule(node.target[len(own) :]), POINTWISE_MODULES
        )
    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function" and getattr(node.target, "__module__", "").startswith("torch"):
        name = node.target.__name__
    else:
        return False
    return name in _ACTIVATIONS and len(node.all_input_nodes) == 1


def _beside(node: fx.Node, chain: set[fx.Node]) -> bool:
    """Off the chain: a read of a chain value's metadata, an assertion on it, or a count
    kept in one of the module's own buffers (``num_batches_tracked.add_(1)``)."""
    if any(a in chain for a in node.all_input_nodes):
        if node.op == "call_method":
            return node.target in METADATA_QUERIES
        return (
            node.op == "call_function"
            and node.target is getattr
            and node.args[1] in METADATA_QUERIES
        )
    if node.op == "call_function":
        return node.target in _CHECKS
    if node.op == "call_method" and node.target == "add_":
        counter = node.args[0]
        return (
            isinstance(counter, fx.Node)
            and counter.op == "get_attr"
            and not any(isinstance(a, fx.Node) for a in node.args[1:])
        )
    return False
