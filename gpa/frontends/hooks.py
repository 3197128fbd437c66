"""Forward hooks on a model, as the frontends must take them (``docs/semantics.md`` §1.1).

fx records a layer's or leaf's call without running its hooks, export folds what they
compute into the call, and neither runs hooks around the model itself; the autograd
frontend runs them all. :func:`hooked_calls_message` and :func:`root_hooks_message` are
fx's and export's refusals of such models; a hook of torch's or gpa's, or one that only
marks an output as requiring gradient (Hugging Face's ``enable_input_require_grads``),
is no user's code to refuse (:func:`is_users_hook`, :func:`carries_hooks_of_its_own`).

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> def double(module, args, out):
    ...     return out * 2
    >>> double.__module__ = "my_model"  # (as the user's module defines it)
    >>> _ = net[0].register_forward_hook(double)
    >>> print(hooked_calls_message(net, (nn.Linear,), None, "fx"))
    '0' carry forward hooks, which the fx frontend cannot read apart from the module's call (a hook may call layers or change the output); the autograd frontend runs them (--tracer autograd; auto moves on)
"""

from __future__ import annotations

import dis
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gpa.frontends.modules import module_class, split_leaves

__all__ = [
    "carries_hooks_of_its_own",
    "global_hooks_of_users",
    "hooked_calls_message",
    "is_users_hook",
    "root_hooks_message",
]


def hooked_calls_message(
    model: nn.Module,
    layer_types: tuple[type, ...],
    leaves: Iterable[type[nn.Module] | str] | None,
    frontend: str,
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> str | None:
    """The refusal of ``frontend`` (fx or export) for a model whose layer or leaf modules
    (layer types, the leaves asked for) carry forward hooks or pre-hooks
    of the model's — their own, or hooks registered for every module
    (``register_module_forward_hook``) —, else None (``docs/semantics.md`` §1.1): fx
    records such a module's call without running its hooks, and export folds what they
    compute (``out + self.side(x)``) into the call; the autograd frontend reads them apart.
    Hooks on the modules both trace into (a block, a Hugging Face layer's output capture)
    are code like any other, and on torch.nn's other modules (an activation) they run in
    the call, whose shape they may change. ``named``: ``model.named_modules()``, when the
    caller walked them already."""
    leaf_types, leaf_names = split_leaves(leaves)
    every = global_hooks_of_users()
    # (modules fx and export trace into run their hooks there, as any other code)
    hooked = [
        name
        for name, m in (model.named_modules() if named is None else named)
        if (every or carries_hooks_of_its_own(m))
        and (
            issubclass(module_class(m), layer_types)
            or isinstance(m, leaf_types)
            or name in leaf_names
        )
    ]
    if not hooked:
        return None
    shown = ", ".join(f"'{n or type(model).__name__}'" for n in hooked[:3])
    more = f" (+{len(hooked) - 3})" if len(hooked) > 3 else ""
    carry = "run forward hooks registered for every module" if every else "carry forward hooks"
    return (
        f"{shown}{more} {carry}, which the {frontend} frontend cannot read apart "
        "from the module's call (a hook may call layers or change the output); the "
        "autograd frontend runs them (--tracer autograd; auto moves on)"
    )


def root_hooks_message(model: nn.Module) -> str | None:
    """fx's refusal of a model that carries forward hooks or pre-hooks itself (or runs
    hooks registered for every module), or whose class defines its own ``__call__``, else
    None (``docs/semantics.md`` §1.1): fx traces ``forward`` alone, so such code around
    it — changing the model's inputs or output, or calling a layer — would be missing
    from the trace. Export and autograd call the model, hooks and all.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> root_hooks_message(net) is None
        True
        >>> def detach(module, args, out):
        ...     return out.detach()
        >>> detach.__module__ = "my_model"  # (as the user's module defines it)
        >>> _ = net.register_forward_hook(detach)
        >>> print(root_hooks_message(net))
        Sequential carries forward hooks itself, which torch.fx does not run (it traces Sequential.forward alone); --tracer export or autograd run them (auto moves on)
    """
    name = type(model).__name__
    if is_users_hook(inspect.getattr_static(type(model), "__call__", None)):
        carries, them = f"defines {name}.__call__", "it"
    elif global_hooks_of_users():
        carries, them = "runs forward hooks registered for every module", "them"
    elif carries_hooks_of_its_own(model):
        carries, them = "carries forward hooks itself", "them"
        hooks = [*model._forward_hooks.values(), *model._forward_pre_hooks.values()]
        wrappers = {getattr(h, "carried_from", None) for h in hooks if is_users_hook(h)}
        if None not in wrappers:  # (all the hooks of wrappers gpa reads through)
            around = " and ".join(sorted(wrappers))
            carries = f"is wrapped in {around} carrying forward hooks"
    else:
        return None
    return (
        f"{name} {carries}, which torch.fx does not run (it traces {name}.forward alone); "
        f"--tracer export or autograd run {them} (auto moves on)"
    )


def carries_hooks_of_its_own(module: nn.Module) -> bool:
    """Whether ``module`` carries forward hooks or pre-hooks of the model's own: not
    torch's (spectral norm's pre-hook computes the weight the module then reads, as every
    frontend runs it) nor gpa's (another analysis's, in another thread) — nor a forward
    hook that only marks the output of a torch.nn module with weights as requiring
    gradient (:func:`_marks_gradient_only`), which that output does anyway (§3). On a
    module without weights, or whose own forward may switch gradient off, such a mark is
    what gives its output gradient: it counts."""
    if not (module._forward_hooks or module._forward_pre_hooks):  # (most modules: asked of each)
        return False
    hooks = [
        *((h, True) for h in module._forward_hooks.values()),
        *((h, False) for h in module._forward_pre_hooks.values()),
    ]
    return any(
        is_users_hook(hook)
        and not (forward and _marks_gradient_only(hook) and _torch_layer(module))
        for hook, forward in hooks
    )


def global_hooks_of_users() -> bool:
    """Whether forward hooks or pre-hooks registered for every module (torch's
    ``register_module_forward_hook`` and ``…_pre_hook``) include one of the user's."""
    registry = torch.nn.modules.module
    hooks = [*registry._global_forward_hooks.values(), *registry._global_forward_pre_hooks.values()]
    return any(map(is_users_hook, hooks))


def is_users_hook(hook: Any) -> bool:
    """Whether ``hook`` is neither torch's nor gpa's (by the module defining it)."""
    return str(getattr(hook, "__module__", "")).split(".")[0] not in ("torch", "gpa")


def _torch_layer(module: nn.Module) -> bool:
    """Whether ``module`` has weights and torch.nn's own forward (nn.Embedding's: Hugging
    Face's input embeddings), which runs with gradient: its output carries it whenever the
    model's code does not switch it off. (A scripted module's forward is no function.)"""
    forward = inspect.getattr_static(type(module), "forward", None)
    if not str(getattr(forward, "__module__", "")).startswith("torch.nn"):
        return False
    return any(p.is_floating_point() or p.is_complex() for p in module.parameters())


# What a function's bytecode holds besides its operations (Python 3.11's bookkeeping).
_BOOKKEEPING = frozenset({"RESUME", "NOP", "CACHE", "PRECALL", "PUSH_NULL", "KW_NAMES"})

# The rest of ``arg.requires_grad_(True)`` (or ``()``), its result dropped, None returned.
_MARKING = [
    [
        ("LOAD_METHOD", "requires_grad_"),
        *([("LOAD_CONST", True), ("CALL", 1)] if given else [("CALL", 0)]),
        ("POP_TOP", None),
        ("LOAD_CONST", None),
        ("RETURN_VALUE", None),
    ]
    for given in (True, False)
]


def _marks_gradient_only(hook: Any) -> bool:
    """Whether ``hook`` is a function whose whole body is ``arg.requires_grad_(True)``:
    Hugging Face's ``enable_input_require_grads`` (which gradient checkpointing calls)
    puts such a hook on the input embeddings. It changes no value, and under
    ``docs/semantics.md`` §3 the layer's output carries gradient anyway.

    Example:
        >>> def mark(module, args, output):
        ...     output.requires_grad_(True)
        >>> _marks_gradient_only(mark), _marks_gradient_only(lambda m, a, out: out * 2)
        (True, False)
    """
    code = getattr(hook, "__code__", None)
    if code is None:
        return False
    steps = [
        (i.opname.replace("LOAD_ATTR", "LOAD_METHOD"), i.argval)
        for i in dis.get_instructions(code)
        if i.opname not in _BOOKKEEPING
    ]
    if steps[-1:] == [("RETURN_CONST", None)]:  # (Python 3.12's)
        steps[-1:] = [("LOAD_CONST", None), ("RETURN_VALUE", None)]
    if not steps or steps[0][0] != "LOAD_FAST":
        return False
    marked = steps[0][1] in code.co_varnames[: code.co_argcount]
    return marked and steps[1:] in _MARKING
