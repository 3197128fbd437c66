"""Why an operation could not be worked out on the meta device, in the user's terms.

The gradient-flow pass (:class:`~gpa.frontends.fx.flow.GradientFlow`) runs each node on
the ``meta`` device. When one fails, the reason is one of three, each its own message:
torch has no meta kernel for it (its result's shape depends on values:
:func:`without_meta_kernel`, :func:`meta_failure`), a check of the model's asks where a
tensor lives (:func:`asks_the_device`, :func:`device_check_failure`), or the inputs do not
fit — a layer's weight, an operation's shapes, the model's own check
(:func:`shape_failure`). Each names the module the node belongs to (:func:`module_of`).

Example:
    >>> import torch
    >>> without_meta_kernel(NotImplementedError("Could not run 'aten::nonzero' with meta"))
    True
    >>> without_meta_kernel(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    False
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten

from gpa.frontends.fx.tracer import CALL_OF, call_site
from gpa.frontends.raised import CHECKS, briefly, input_too_small, model_raised

__all__ = [
    "asks_the_device",
    "device_check_failure",
    "differentiates",
    "differentiation_failure",
    "meta_failure",
    "module_of",
    "shape_failure",
    "without_meta_kernel",
]

_UNSET = object()


def module_of(gm: fx.GraphModule, node: fx.Node) -> tuple[str, nn.Module] | None:
    """The innermost module whose code produced ``node`` (None at the root)."""
    if node.op == "call_module":
        return node.target, gm.get_submodule(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    try:
        return path, gm.get_submodule(path)
    except AttributeError:
        return None


def _describe(value: Any) -> str:
    tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return ", ".join(str(tuple(t.shape)) for t in tensors) or repr(value)


def without_meta_kernel(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is torch saying an operation cannot run on the
    meta device: no meta kernel (``masked_select``, ``nonzero``, ``unique``: their
    result's shape depends on the values), a value read out of a meta tensor (``.item()``,
    ``repeat_interleave`` by a tensor), or a real tensor met there (a module handed to a
    function). Inputs that do not fit the model say other things."""
    seen: BaseException | None = exc
    while seen is not None:
        said = str(seen).lower()
        if isinstance(seen, NotImplementedError) and "meta" in said:
            return True
        if isinstance(seen, RuntimeError) and ("meta tensor" in said or "device meta" in said):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _in_module(gm: fx.GraphModule, node: fx.Node) -> str:
    """`` in module 'name' (Type)`` for a node inside a submodule, else empty. The path and
    type are those the trace recorded: the traced module holds only the submodules it calls,
    and export's holds plain modules in the model's place."""
    if node.op == "call_module":
        return " in module '{}' ({})".format(*_module_called(gm, node))
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, recorded = list(stack.values())[-1]  # a class (fx) or its qualified name (export)
    kind = recorded if isinstance(recorded, str) else getattr(recorded, "__name__", "")
    return f" in module '{path}' ({kind.rpartition('.')[2]})" if path else ""


def _module_called(gm: fx.GraphModule, node: fx.Node) -> tuple[str, str]:
    """The qualified name and class name of the module a ``call_module`` node calls (the
    model's, where the target is a stand-in for its call: :data:`CALL_OF`)."""
    return node.meta.get(CALL_OF) or (node.target, type(gm.get_submodule(node.target)).__name__)


def meta_failure(gm: fx.GraphModule, node: fx.Node, exc: BaseException) -> str:
    what = (
        "the call of module '{}' ({})".format(*node.meta[CALL_OF])
        if CALL_OF in node.meta
        else f"operation '{node.name}'{_in_module(gm, node)}"
    )
    return (
        f"{what} cannot run on the meta device, "
        "where gpa computes shapes without data\n"
        f"torch says: {briefly(exc)}\n"
        "Its result's shape may depend on the values. The autograd tracer runs such a model "
        "on real inputs (--tracer autograd)."
    )


def shape_failure(gm: fx.GraphModule, node: fx.Node, env: dict, exc: Exception) -> str:
    if node.op == "call_function" and node.target in CHECKS:
        return _check_failure(gm, node, env, exc)
    got = "; ".join(_describe(env[n]) for n in node.all_input_nodes) or "no tensor"
    found = module_of(gm, node)
    too_small = input_too_small(exc)
    # (an input too small fits the weights: torch refuses its size, said below)
    fits = "the input is too small for" if too_small else "input shapes do not fit"
    if node.op == "call_module" and found is not None:
        weight = getattr(found[1], "weight", None)
        expects = (
            f"; its weight has shape {tuple(weight.shape)}"
            if isinstance(weight, torch.Tensor) and not too_small
            else ""
        )
        name, kind = _module_called(gm, node)
        head = f"{fits} layer '{name}' ({kind}): it received input of shape {got}{expects}"
    else:
        head = (
            f"{fits} operation '{node.name}'{_in_module(gm, node)}: "
            f"it received inputs of shapes {got}"
        )
    message = f"{head}.\ntorch says: {type(exc).__name__}: {exc}".rstrip()
    return f"{message}\n{too_small}" if too_small else message


def _check_failure(gm: fx.GraphModule, node: fx.Node, env: dict, exc: Exception) -> str:
    """The model's own check failing on the inputs (``torch._assert(H == 224, …)``),
    worded as the model raising it, at the model's line. fx formatted the check's message
    while it traced, with proxies where numbers were (``Input height (Proxy(getitem_3))``):
    each shows the value the pass gave its node."""
    values = {m.name: env[m] for m in env}

    def value(match: re.Match) -> str:
        held = values.get(match.group(1), _UNSET)
        if isinstance(held, (bool, int, float, str, torch.Size)):
            return str(tuple(held) if isinstance(held, torch.Size) else held)
        return match.group(0)

    detail = next((line for line in str(exc).splitlines() if line.strip()), "").strip()
    found = module_of(gm, node)
    return model_raised(
        type(gm).__name__,
        exc,
        where=found[0] if found else None,
        site=call_site(node),
        detail=_PROXY_TEXT.sub(value, detail),
    )


def differentiates(node: fx.Node) -> bool:
    """Whether ``node`` differentiates inside forward (``torch.autograd.grad``, a
    ``backward()``: MAML's inner step, a gradient penalty): fx's pass runs each operation
    on fresh leaves of its own, so the graph it asks about is not the model's."""
    if node.op == "call_method":
        return node.target == "backward"
    return node.op == "call_function" and node.target in _DIFFERENTIATING


_DIFFERENTIATING = frozenset({torch.autograd.grad, torch.autograd.backward})


def differentiation_failure(node: fx.Node) -> str:
    site = call_site(node)
    where = f" (line {site[1]} of {site[0]})" if site else ""
    call = "backward()" if node.op == "call_method" else f"torch.autograd.{node.target.__name__}"
    return (
        f"forward differentiates{where} with {call}, which gpa's fx frontend cannot "
        "follow: it works out each operation apart, so the graph asked about is not the "
        "model's; export and autograd run forward whole (--tracer export or autograd; "
        "auto moves on)"
    )


def asks_the_device(node: fx.Node) -> bool:
    """Whether ``node`` is one of torch's checks (:data:`CHECKS`) whose condition is
    computed from where a tensor lives (``y.device.type == "cpu"``, ``not y.is_meta``):
    the pass's values live on the meta device, so the check may fail there alone."""
    if node.op != "call_function" or node.target not in CHECKS:
        return False
    seen, stack = set(), list(node.all_input_nodes)
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        if (
            m.op == "call_function" and m.target is getattr and m.args[1] in _DEVICE_ATTRIBUTES
        ) or (m.op == "call_method" and m.target in _DEVICE_METHODS):
            return True
        stack.extend(m.all_input_nodes)
    return False


_DEVICE_ATTRIBUTES = frozenset({"device", "is_meta", "is_cuda", "is_cpu", "is_mps", "is_xpu"})
_DEVICE_METHODS = frozenset({"get_device", "is_pinned", "data_ptr", "untyped_storage"})


def device_check_failure(node: fx.Node, exc: Exception) -> str:
    site = call_site(node)
    where = f" (line {site[1]} of {site[0]})" if site else ""
    return (
        f"a check of the model's{where} asks where a tensor lives, and failed on the meta "
        f"device, where gpa's fx frontend works out values ({briefly(exc)}); export and "
        "autograd run the check on the inputs (--tracer export or autograd; auto moves on)"
    )


# How a proxy shows in text: ``Proxy(name)``, its node's name.
_PROXY_TEXT = re.compile(r"Proxy\((\w+)\)")
