"""What the frontends know about ``nn.Module`` classes: layer types, leaves, owners.

Shared by every frontend so that they apply ``docs/semantics.md`` §1–§2 identically:
which module classes are layers (:data:`DEFAULT_LAYER_TYPES`, :func:`is_layer_module`),
which ones fx keeps as single calls (:func:`fx_leaf`), which module a functional layer is
reported under (:func:`functional_owners`), and which layer modules ``forward`` never uses
(:func:`unused_layer_modules`). A TorchScript module (``torch.jit.script`` /
``torch.jit.trace``) counts as the eager class it was compiled from
(:func:`module_class`, :func:`type_name`); gpa cannot look inside one, so each of its
calls is one call, as a leaf's (:func:`scripted_notes`).

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    >>> unused_layer_modules(net, used={"0"})
    [('1.0', 'Linear')]
    >>> functional_owners(net, ["1.0.weight"])
    {'1.0.weight': ('1.0', 'Linear')}
"""

from __future__ import annotations

import collections
import contextlib
import dis
import functools
import importlib
import inspect
import operator
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from gpa.errors import GpaError, TargetError, TraceError
from gpa.names import class_path
from gpa.options import AnalysisOptions

__all__ = [
    "PARALLEL",
    "DEFAULT_LAYER_TYPES",
    "POINTWISE_MODULES",
    "check_model",
    "fx_leaf",
    "forward_replaced",
    "has_forward",
    "is_layer_module",
    "module_class",
    "functional_owners",
    "resolve_layer_types",
    "resolve_leaf_modules",
    "resolve_module_class",
    "resolve_options",
    "same_entries",
    "scripted_call",
    "scripted_notes",
    "split_leaves",
    "display_name",
    "opaque_layer_types",
    "preserved_state",
    "StateSnapshot",
    "parameters_requiring_grad",
    "buffers_copied",
    "hooked_calls_message",
    "root_hooks_message",
    "modes_switched",
    "training_mode",
    "type_name",
    "with_tied",
    "unused_layer_modules",
    "unwrap_wrappers",
    "wrappers_unwrapped",
    "compiled",
    "functional_run",
    "eager_compiled_modules",
]

#: Module classes whose calls are layers (``docs/semantics.md`` §2).
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Bilinear,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,  # RNN, LSTM, GRU
    nn.RNNCellBase,  # RNNCell, LSTMCell, GRUCell
)

#: Modules whose result has the shape and dtype of their single input and depends
#: differentiably on it, position by position (activations, dropout).
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
)


def module_class(module: nn.Module) -> type:
    """The class ``module`` was written as: for a TorchScript module, the eager class it was
    compiled from (when its module is imported); for one ``torch.compile`` wrapped, the
    wrapped module's; else the module's own class.

    Example:
        >>> module_class(torch.jit.script(nn.Linear(2, 2)))
        <class 'torch.nn.modules.linear.Linear'>
    """
    held = compiled(module)
    if held is not None:  # torch.compile's wrapper: the module it wraps
        return module_class(held)
    if not isinstance(module, torch.jit.ScriptModule):
        return type(module)
    found = _compiled_from(module._c._type().qualified_name(), module.original_name)
    return found or type(module)


@functools.cache
def _compiled_from(qualified: str, name: str) -> type | None:
    """``__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv2d`` -> ``nn.Conv2d``."""
    parts = [p for p in qualified.split(".")[1:] if not p.startswith("___torch_mangle")]
    for cut in range(len(parts) - 1, -1, -1):  # the longest imported module path first
        found: Any = sys.modules.get(".".join(parts[:cut]) or "__main__")
        for attribute in parts[cut:] if found is not None else ():
            found = getattr(found, attribute, None)
        if isinstance(found, type) and issubclass(found, nn.Module) and found.__name__ == name:
            return found
    return None


def type_name(module: nn.Module) -> str:
    """The name of :func:`module_class`'s class (``Conv2d`` for a scripted convolution)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module.original_name
    return module_class(module).__name__


def opaque_layer_types(
    model: nn.Module, layer_types: Iterable[type[nn.Module]] | None = None
) -> tuple[type[nn.Module], ...]:
    """The layer types whose calls a frontend must keep whole although fx's policy would
    trace into them: custom layer types, and the classes in ``model`` that subclass a layer
    type outside ``torch.nn`` (Whisper's positional embedding, a LoRA linear, a
    weight-standardised convolution) — each call of them is one layer (semantics §2).

    Example:
        >>> class Scaled(nn.Linear):
        ...     pass
        >>> opaque_layer_types(nn.Sequential(Scaled(2, 2), nn.Linear(2, 2)))
        (<class 'gpa.frontends.modules.Scaled'>,)
    """
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    found = dict.fromkeys(t for t in types if not fx_leaf(t))
    for m in model.modules():
        cls = module_class(m)
        if issubclass(cls, types) and not fx_leaf(cls) and isinstance(m, nn.Module):
            found.setdefault(type(m))
    return tuple(found)


def display_name(model: nn.Module) -> str:
    """The name a report of ``model`` goes by when none is given: the zoo entry it was
    built from (``gpa.models.build`` sets ``model.zoo_entry``), the architecture a timm
    model was created as (``pretrained_cfg["architecture"]``), else its class name.

    Example:
        >>> display_name(nn.Linear(2, 2))
        'Linear'
    """
    entry = getattr(model, "zoo_entry", None)
    if isinstance(entry, str):
        return entry
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):
        return cfg["architecture"]
    return type(model).__name__


def is_layer_module(module: nn.Module, layer_types: tuple[type, ...]) -> bool:
    """Whether ``module`` is, or contains, a module of one of ``layer_types``."""
    return any(issubclass(module_class(m), layer_types) for m in module.modules())


def scripted_notes(model: nn.Module, layer_types: Iterable[type] | None = None) -> list[str]:
    """Report notes on the TorchScript submodules containing layers (outermost only)."""
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    notes = []
    for name, module in model.named_modules():
        scripted = isinstance(module, torch.jit.ScriptModule)
        if name and scripted and is_layer_module(module, types) and not _in_scripted(model, name):
            notes.append(
                f"'{name}' is a TorchScript module ({type_name(module)}): gpa cannot look "
                "inside compiled code, so each of its calls is one layer, as a leaf's "
                "(analyse the eager module to see the layers inside it)"
            )
    return notes


def scripted_call(model: nn.Module, exc: BaseException) -> str | None:
    """The qualified name of the TorchScript submodule of ``model`` whose call raised
    ``exc`` (the innermost one on its traceback), or None."""
    names = {id(m): n for n, m in model.named_modules() if n}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is _MODULE_CALL:
            module = frame.f_locals.get("self")
            if isinstance(module, torch.jit.ScriptModule) and id(module) in names:
                found = names[id(module)]
        tb = tb.tb_next
    return found


_MODULE_CALL = nn.Module._call_impl.__code__


def _in_scripted(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(
        isinstance(model.get_submodule(".".join(parts[:i])), torch.jit.ScriptModule)
        for i in range(1, len(parts))
    )


def fx_leaf(cls: type) -> bool:
    """Whether torch.fx's default policy keeps modules of ``cls`` as single calls, but for
    a data-parallel wrapper (gpa reads through it: it calls the module it holds) and
    torch's containers without ``forward`` (``nn.Module`` itself, as a ``GraphModule``
    holds the path to its calls; ``nn.ModuleList``): they hold modules called one by one,
    never one call of them all.

    Example:
        >>> fx_leaf(nn.Conv2d), fx_leaf(nn.Sequential), fx_leaf(nn.Module), fx_leaf(nn.ModuleDict)
        (True, False, False, False)
    """
    return (
        cls.__module__.startswith(("torch.nn", "torch.ao.nn"))
        and not issubclass(cls, (nn.Sequential, *PARALLEL))
        and cls not in _CONTAINERS_WITHOUT_FORWARD
    )


_CONTAINERS_WITHOUT_FORWARD = frozenset({nn.Module, nn.ModuleList, nn.ModuleDict})


def has_forward(module: nn.Module) -> bool:
    """Whether ``module`` can be called: its class or the module itself (``torch.compile``'s
    wrapper) defines ``forward`` (``nn.ModuleList``, ``nn.ModuleDict`` and the plain
    ``nn.Module`` containers a ``torch.fx.GraphModule`` holds do not).

    Example:
        >>> has_forward(nn.Sequential()), has_forward(nn.ModuleList())
        (True, False)
    """
    return type(module).forward is not nn.Module.forward or "forward" in vars(module)


def forward_replaced(module: nn.Module) -> bool:
    """Whether ``module`` has a ``forward`` of its own (an attribute set on the instance)
    other than its class's ``forward``, bound again or compiled (``torch.compile``'s
    wrapper keeps what it compiles): fx traces the class's ``forward`` of the model it is
    given. Any other wrapper may compute something else (``torch.no_grad()(m.forward)``,
    a hook detaching the output), whatever ``__wrapped__`` says it came from.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> forward_replaced(m)
        False
        >>> m.forward = lambda x: x
        >>> forward_replaced(m)
        True
    """
    own = vars(module).get("forward")
    if own is None:
        return False
    compiled = getattr(own, "_torchdynamo_orig_callable", None)
    if compiled is not None:  # torch's own wrappers of what it compiles: their word holds
        own = inspect.unwrap(compiled)
    bound = getattr(own, "__self__", None) is module
    return not (bound and getattr(own, "__func__", None) is type(module).forward)


#: Held while a frontend reads a model. fx's symbolic tracing patches torch.nn.Module's
#: ``__call__`` and ``__getattr__`` for the whole process while it runs, and frontends
#: switch train/eval flags and put hooks on modules: so frontends take turns, whichever
#: models they read (the analyses after them run in parallel).
TRACING = threading.RLock()


@contextlib.contextmanager
def modes_switched(model: nn.Module, train: bool) -> Iterator[list[nn.Module]]:
    """``model.train(train)`` for the block — the model's own ``train``, which may keep a
    part in eval mode (mmdetection's ``norm_eval``) —, read by this thread alone (under
    :data:`TRACING`); yields the modules whose mode it switched. Every module's own mode is
    restored afterwards, so a mixed train/eval state survives.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).eval()
        >>> with modes_switched(m, True) as switched:
        ...     len(switched), m[1].training
        (3, True)
        >>> m[1].training
        False
    """
    with TRACING:
        modes = [(m, m.training) for m in model.modules()]
        if any(type(m).train is not nn.Module.train or "train" in vars(m) for m, _ in modes):
            model.train(train)
        else:  # torch's own ``train`` everywhere: what it does, without its recursion
            for m, was in modes:
                if was != train:
                    m.training = train
        try:
            yield [m for m, was in modes if m.training != was]
        finally:
            for m, was in modes:
                if m.training != was:  # (each assignment is a module's __setattr__)
                    m.training = was


@contextlib.contextmanager
def training_mode(model: nn.Module, train: bool) -> Iterator[StateSnapshot]:
    """``model`` in train (or eval) mode for the block (:func:`modes_switched`), and its
    state as :func:`preserved_state` keeps it (the snapshot is given, to restore within the
    block). Compiled modules run eagerly meanwhile."""
    with modes_switched(model, train), preserved_state(model) as snapshot, eager_compiled_modules():
        yield snapshot


def hooked_calls_message(
    model: nn.Module,
    layer_types: tuple[type, ...],
    leaves: Iterable[type[nn.Module] | str] | None,
    frontend: str,
) -> str | None:
    """The refusal of ``frontend`` (fx or export) for a model whose layer or leaf modules
    (layer types, the leaves asked for) carry forward hooks or pre-hooks
    of the model's — their own, or hooks registered for every module
    (``register_module_forward_hook``) —, else None (``docs/semantics.md`` §1.1): fx
    records such a module's call without running its hooks, and export folds what they
    compute (``out + self.side(x)``) into the call; the autograd frontend reads them apart.
    Hooks on the modules both trace into (a block, a Hugging Face layer's output capture)
    are code like any other, and on torch.nn's other modules (an activation) they run in
    the call, whose shape they may change."""
    leaf_types, leaf_names = split_leaves(leaves)
    every = _global_hooks_of_users()
    # (modules fx and export trace into run their hooks there, as any other code)
    hooked = [
        name
        for name, m in model.named_modules()
        if (every or _carries_hooks_of_its_own(m))
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
    if _of_users(inspect.getattr_static(type(model), "__call__", None)):
        carries, them = f"defines {name}.__call__", "it"
    elif _global_hooks_of_users():
        carries, them = "runs forward hooks registered for every module", "them"
    elif _carries_hooks_of_its_own(model):
        carries, them = "carries forward hooks itself", "them"
        hooks = [*model._forward_hooks.values(), *model._forward_pre_hooks.values()]
        wrappers = {getattr(h, "carried_from", None) for h in hooks if _of_users(h)}
        if None not in wrappers:  # (all the hooks of wrappers gpa reads through)
            around = " and ".join(sorted(wrappers))
            carries = f"is wrapped in {around} carrying forward hooks"
    else:
        return None
    return (
        f"{name} {carries}, which torch.fx does not run (it traces {name}.forward alone); "
        f"--tracer export or autograd run {them} (auto moves on)"
    )


def _carries_hooks_of_its_own(module: nn.Module) -> bool:
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
        _of_users(hook) and not (forward and _marks_gradient_only(hook) and _torch_layer(module))
        for hook, forward in hooks
    )


def _global_hooks_of_users() -> bool:
    """Whether forward hooks or pre-hooks registered for every module (torch's
    ``register_module_forward_hook`` and ``…_pre_hook``) include one of the user's."""
    registry = torch.nn.modules.module
    hooks = [*registry._global_forward_hooks.values(), *registry._global_forward_pre_hooks.values()]
    return any(map(_of_users, hooks))


def _of_users(hook: Any) -> bool:
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


@contextlib.contextmanager
def buffers_copied(model: nn.Module) -> Iterator[None]:
    """Every module's buffers replaced by copies for the block, then put back
    (``docs/semantics.md`` §1.8): symbolic tracing runs ``forward``'s operations on buffers
    that are no proxies for real, so a step counter (``self.step.add_(1)``) or a queue
    (``self.queue[:n] = keys``) would otherwise keep what the trace wrote. A buffer
    registered under several names stays one tensor.

    Example:
        >>> m = nn.BatchNorm1d(2)
        >>> with buffers_copied(m):
        ...     _ = m.num_batches_tracked.add_(1)
        >>> int(m.num_batches_tracked)
        0
    """
    saved = [
        (m._buffers, dict(m._buffers))
        for m in model.modules()
        if not isinstance(m, torch.jit.ScriptModule)  # its state lives in C++
    ]
    copies: dict[int, torch.Tensor] = {}
    try:
        for held, before in saved:
            for name, b in before.items():
                if b is not None and not isinstance(b, nn.parameter.UninitializedTensorMixin):
                    held[name] = copies.setdefault(id(b), b.detach().clone())
        yield
    finally:
        for held, before in saved:
            held.clear()
            held.update(before)


@contextlib.contextmanager
def parameters_requiring_grad(model: nn.Module) -> Iterator[None]:
    """Every floating and complex parameter of ``model`` requiring gradient for the block,
    then as it was (``docs/semantics.md`` §3: a frozen parameter counts as any other). For
    a frontend that runs torch's autograd on the parameters themselves (export): a
    re-entrant checkpoint given only a frozen layer's output would otherwise cut its
    outputs off.

    Example:
        >>> m = nn.Linear(2, 2).requires_grad_(False)
        >>> with parameters_requiring_grad(m):
        ...     m.weight.requires_grad
        True
        >>> m.weight.requires_grad
        False
    """
    frozen = [
        p
        for p in model.parameters()
        if not p.requires_grad and (p.is_floating_point() or p.is_complex())
    ]
    try:
        for p in frozen:
            p.requires_grad_(True)
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


class StateSnapshot:
    """Every module's attributes, parameters and buffers of ``model`` as they were when
    the snapshot was taken; :meth:`restore` puts them back, as often as asked (TorchScript
    modules, whose state lives in C++, are left out)."""

    def __init__(self, model: nn.Module) -> None:
        self._saved = [
            (m.__dict__, m.__dict__.copy(), *_containers(m))
            for m in model.modules()
            if not isinstance(m, torch.jit.ScriptModule)
        ]

    def restore(self) -> None:
        """Put back every attribute and container entry that differs from the snapshot."""
        for attributes, before, filled, empty in self._saved:
            if not same_entries(attributes, before):
                attributes.clear()
                attributes.update(before)
            for now, held in filled:
                _restore(now, held)
            if any(empty):  # most containers a module holds are empty: hooks
                for now in empty:
                    now.clear()


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, snapshot: StateSnapshot | None = None
) -> Iterator[StateSnapshot]:
    """Every module's attributes, parameters and buffers as they were before the block,
    whatever ``forward`` assigned meanwhile (``docs/semantics.md`` §1.8): a model that
    caches values in forward (RT-DETR's decoder keeps its anchors, ``self.anchors = …``)
    would otherwise keep the fake or meta tensors a frontend ran it with. ``snapshot``: one
    taken of ``model`` in the state it is in now, restored instead of taking another (a
    walk of every module).

    Example:
        >>> class Caching(nn.Module):
        ...     def forward(self, x):
        ...         self.last = x
        ...         return x
        >>> m = Caching()
        >>> with preserved_state(m):
        ...     _ = m(1)
        >>> hasattr(m, "last")
        False
    """
    snapshot = snapshot if snapshot is not None else StateSnapshot(model)
    try:
        yield snapshot
    finally:
        snapshot.restore()


# Containers whose entries are restored in place (and their subclasses that keep the
# methods it takes: Hugging Face's ModelOutput forbids update), how deep inside an
# attribute they are sought.
_CONTAINERS = (
    dict,
    list,
    set,
    collections.OrderedDict,
    collections.defaultdict,
    collections.deque,
)
_RESTORING = ("copy", "clear", "update", "extend", "__len__", "__iter__")
_DEPTH = 6
# what :func:`_kind` says of a type
_OTHER, _RESTORED, _LOOKED_INTO = 0, 1, 2


def _containers(module: nn.Module) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """The dicts, lists, sets and deques ``module`` holds — as attributes, or inside those
    (a list in a cache dict), or in tuples: those holding entries, each with a copy of
    them, and the empty ones. ``forward`` may fill one in place: its parameters, buffers
    and children, a cache, or hooks (a Hugging Face model installs output-capturing hooks
    on its first call and notes it in a flag; with the flag restored and the hooks left,
    the next call installs them twice)."""
    filled: list[tuple[Any, Any]] = []
    empty: list[Any] = []
    # only containers are looked into: a module holds a dozen (hooks, parameters,
    # children), most empty, the entries of the rest mostly tensors and modules; every
    # frontend call takes this walk, twice. Level by level, each container once (one held
    # forty times in a list of lists is walked once, not forty times per level).
    seen: set[int] = set()
    values: Iterable[Any] = module.__dict__.values()
    for depth in range(1, _DEPTH + 1):
        inside: list[Any] = []
        _sort(values, seen, filled, empty, inside if depth < _DEPTH else None)
        if not inside:
            break
        values = inside
    return filled, empty


def _sort(
    values: Iterable[Any],
    seen: set[int],
    filled: list[tuple[Any, Any]],
    empty: list[Any],
    inside: list | None,
) -> None:
    """Put each container among ``values`` not ``seen`` into ``filled`` (with a copy of its
    entries) or ``empty``, and the containers they hold into ``inside`` (unless None)."""
    known = _KINDS.get  # (a dict's lookup: this loop runs for every value of every module)
    for value in values:
        cls = type(value)
        kind = known(cls)
        if kind is None:
            kind = _kind(cls)
        if not kind:
            # a transparent proxy (``wrapt.ObjectProxy``) passes for what it wraps: looked into
            if value.__class__ is cls or not _kind(value.__class__):
                continue
            kind = _LOOKED_INTO
        if not value:  # (an empty one met twice is cleared twice)
            if kind == _RESTORED:
                empty.append(value)
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        if kind == _RESTORED:
            filled.append((value, value.copy()))
        if inside is not None:
            for entry in value.values() if isinstance(value, dict) else value:
                of = type(entry)
                held = known(of)
                if held is None:
                    held = _kind(of)
                if held or entry.__class__ is not of:
                    inside.append(entry)


#: :func:`_kind` by type, as worked out so far.
_KINDS: dict[type, int] = {}


def _kind(kind: type) -> int:
    """What :func:`_containers` does with a value of type ``kind``: ``_RESTORED`` — one of
    :data:`_CONTAINERS`, or a subclass keeping the methods restoring takes from the nearest
    of them (a cache class ``class Cache(dict): pass``) —, ``_LOOKED_INTO`` (a tuple, a
    container subclass restoring cannot take), or ``_OTHER`` (modules and tensors too)."""
    found = _KINDS.get(kind)
    if found is not None:
        return found
    if issubclass(kind, (nn.Module, torch.Tensor)):
        found = _OTHER
    else:
        base = next((b for b in kind.__mro__ if b in _CONTAINERS), None)
        if base is not None and all(
            getattr(kind, m, None) is getattr(base, m, None) for m in _RESTORING
        ):
            found = _RESTORED
        else:
            found = _LOOKED_INTO if issubclass(kind, (*_CONTAINERS, tuple)) else _OTHER
    _KINDS[kind] = found
    return found


def _restore(now: Any, held: Any) -> None:
    """Put the entries ``held`` back into the container ``now``, where they differ."""
    if isinstance(now, dict):
        if not same_entries(now, held):
            now.clear()
            now.update(held)
    elif len(now) != len(held) or not all(map(operator.is_, now, held)):
        now.clear()
        if isinstance(now, set):
            now.update(held)
        else:
            now.extend(held)


def same_entries(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether ``a`` and ``b`` hold the same names in the same order, with the same objects.

    Example:
        >>> x = []
        >>> same_entries({"a": x}, {"a": x}), same_entries({"a": x}, {"a": []})
        (True, False)
    """
    return list(a) == list(b) and all(map(operator.is_, a.values(), b.values()))


def split_leaves(
    leaf_modules: Iterable[type[nn.Module] | str] | None,
) -> tuple[tuple[type, ...], frozenset[str]]:
    """Leaf modules given as classes, and as qualified names.

    Raises:
        TraceError: an entry is neither.
    """
    types, names = [], []
    for leaf in () if leaf_modules is None else leaf_modules:
        if isinstance(leaf, str):
            names.append(leaf)
        elif isinstance(leaf, type) and issubclass(leaf, nn.Module):
            types.append(leaf)
        else:
            raise TraceError(
                f"leaf_modules entries must be nn.Module classes or names, got {leaf!r}"
            )
    return tuple(types), frozenset(names)


def functional_owners(
    model: nn.Module, parameters: Iterable[str], layer_types: tuple[type, ...] | None = None
) -> dict[str, tuple[str, str]]:
    """Record name and type of the functional layers reading each of ``parameters``
    (qualified parameter names: every weight the model's functional layers read;
    ``docs/semantics.md`` §2).

    A parameter of a layer module (of one of ``layer_types``, default
    :data:`DEFAULT_LAYER_TYPES`) is that module's record: its functional calls are calls of
    the module (a tied weight used as an output projection). So is the one weight a
    module holds (a custom layer: a Fourier layer's ``weight``). Where functional layers
    read several weights of one module, each is its own record, named by its qualified
    name (an MLP written with ``F.linear`` and three parameters, an expert bank's two
    projections, LoRA's ``A`` and ``B``): two weights are two layers. A parameter of the
    root module is its own record, of type ``Parameter``; the others have the type of the
    module holding them.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ParameterList([torch.ones(2, 2)] * 2))
        >>> functional_owners(net, ["0.weight", "1.0", "1.1"])
        {'0.weight': ('0', 'Linear'), '1.0': ('1.0', 'ParameterList'), '1.1': ('1.1', 'ParameterList')}
    """
    types = layer_types if layer_types is not None else DEFAULT_LAYER_TYPES
    read = list(dict.fromkeys(parameters))
    # a parameter two modules hold goes by its first name, whichever one a frontend read
    first = {id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    canonical = {p: first.get(id(_parameter(model, p)), p) for p in read}
    held = collections.Counter(c.rpartition(".")[0] for c in dict.fromkeys(canonical.values()))
    named = {}
    for parameter in read:
        path = canonical[parameter].rpartition(".")[0]
        if not path:
            named[parameter] = canonical[parameter], "Parameter"
            continue
        module = model.get_submodule(path)
        alone = held[path] == 1 or issubclass(module_class(module), types)
        named[parameter] = path if alone else canonical[parameter], type_name(module)
    return named


def _parameter(model: nn.Module, name: str) -> Any:
    """The parameter at a qualified name, or None (a name a graph made up)."""
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None


def with_tied(model: nn.Module, used: set[str]) -> set[str]:
    """``used`` (qualified names of modules) and the modules holding a parameter tied to a
    used module's (T5's ``shared`` embedding and its stacks' ``embed_tokens``), whichever
    name a frontend read it by: no layer of its own when not called (§2).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> net[1].weight = net[0].weight
        >>> sorted(with_tied(net, {"0"}))
        ['0', '1']
    """
    # one walk, its parameters kept alive: one a module makes anew at each access (peft's
    # LoRA on nn.MultiheadAttention) has another identity at the next, or a freed one's
    named = list(model.named_parameters(remove_duplicate=False))
    holders: dict[int, set[str]] = {}
    for name, p in named:
        holders.setdefault(id(p), set()).add(name.rpartition(".")[0])
    tied = set()
    for name, p in named:
        if len(holders[id(p)]) > 1 and name.rpartition(".")[0] in used:
            tied |= holders[id(p)]
    return used | tied


def unused_layer_modules(
    model: nn.Module,
    used: set[str],
    layer_types: Iterable[type[nn.Module]] | None = None,
    called: set[str] | None = None,
) -> list[tuple[str, str]]:
    """Layer modules of ``model`` that are not in ``used`` nor inside a layer module or a
    module ``called`` as one call.

    ``used`` holds the qualified names of the modules a tracer saw called, or whose
    parameters it saw read; ``called``, those it saw called as one call (a leaf: fx's
    ``call_module``), by default ``used``. Modules inside such a call or inside another
    layer module (the output projection of ``nn.MultiheadAttention``) are part of that
    call; those inside a module whose own parameter is read (a ViT holding its
    ``pos_embed``) are not (``docs/semantics.md`` §2). Returns (name, type) in module order.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
        >>> unused_layer_modules(net, {"0", "1"}, called={"0"})
        [('1.0', 'Linear')]
    """
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    whole = used if called is None else called
    modules = dict(model.named_modules())
    # (torch.compile's wrapper is no layer of its own: the module it wraps, ``._orig_mod``,
    # is the one called, and named so, as a compiled block's layers are)
    layers = {
        name
        for name, m in modules.items()
        if issubclass(module_class(m), types) and compiled(m) is None
    }
    # the modules inside a call, by identity: one held under another name first (a layer
    # also set inside a leaf) is called with it
    inside = {
        id(m)
        for name in whole
        if name in modules
        for m in modules[name].modules()
        if m is not modules[name]
    }
    found = []
    for name, module in modules.items():
        if not name or name in used or name not in layers or id(module) in inside:
            continue
        parts = name.split(".")
        ancestors = [".".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in whole or a in layers for a in ancestors):
            continue
        found.append((name, type_name(module)))
    return found


def _classes_in(model: nn.Module | None) -> list[type[nn.Module]]:
    if model is None:
        return []
    seen: dict[type[nn.Module], None] = {}
    for module in model.modules():
        for cls in type(module).__mro__:
            if isinstance(cls, type) and issubclass(cls, nn.Module) and cls is not nn.Module:
                seen.setdefault(cls, None)
    return list(seen)


def resolve_module_class(name: str, model: nn.Module | None = None) -> type[nn.Module]:
    """Resolve a class name given on the command line to an ``nn.Module`` subclass.

    ``name`` may be a ``torch.nn`` class name (``Conv2d``), the name of a
    module class used in ``model`` (``Bottleneck``; must be unambiguous), or a
    dotted import path (``torchvision.ops.StochasticDepth``).

    Raises:
        TargetError: nothing by that name is an ``nn.Module`` subclass.
    """
    text = name.strip()
    candidate = getattr(nn, text, None) if text.isidentifier() else None
    if inspect.isclass(candidate) and issubclass(candidate, nn.Module):
        return candidate

    in_model = _classes_in(model)
    # by its name, its module path, or as a report records it (a target file's module by
    # the file's stem: ``mine.Block``, gpa.names.class_path), so a recorded option reads back
    matches = [
        c
        for c in in_model
        if text in (c.__name__, c.__qualname__, f"{c.__module__}.{c.__qualname__}", class_path(c))
        or _by_its_file(text, c)
    ]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join(sorted(f"{c.__module__}.{c.__qualname__}" for c in matches))
        raise TargetError(f"class name {text!r} is ambiguous in this model: {options}")

    if "." in text:
        parts = text.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            except Exception:  # importing a third-party module failed in its own code
                break
            try:
                for part in parts[cut:]:
                    obj = getattr(obj, part)
            except AttributeError:
                break
            if inspect.isclass(obj) and issubclass(obj, nn.Module):
                return _as_in_model(obj, in_model)
            raise TargetError(f"{text!r} is not an nn.Module subclass")

    used = sorted({c.__name__ for c in in_model if not c.__module__.startswith("torch.")})
    hint = f"; module classes defined for this model: {', '.join(used)}" if used else ""
    raise TargetError(
        f"unknown module class {text!r}: not a torch.nn class (e.g. Conv2d), a class used in "
        f"the model, or an importable package.module.Class{hint}"
    )


def _as_in_model(cls: type[nn.Module], in_model: Iterable[type[nn.Module]]) -> type[nn.Module]:
    """The class of the model that ``cls`` is another import of, else ``cls``: a target
    file is imported under a private module name, so importing it again by its package
    path (``nets.ckpt.Block`` for the file ``nets/ckpt.py``) makes a second class that no
    module of the model is an instance of. The same qualified name in the same file is
    the same class."""
    if cls in in_model:
        return cls
    file = _source_file(cls)
    same = [c for c in in_model if c.__qualname__ == cls.__qualname__ and _source_file(c) == file]
    return same[0] if file is not None and len(same) == 1 else cls


def _by_its_file(text: str, cls: type) -> bool:
    """Whether ``text`` names ``cls`` by the dotted path of its file — its last directories
    and the file's stem — and its qualified name: ``nets.blocks.Block`` for ``Block`` of
    ``…/nets/blocks.py``, as a user names a target file's class, from wherever gpa runs
    (a ``[tool.gpa]`` table, a subdirectory)."""
    if not text.endswith("." + cls.__qualname__):
        return False
    folders = text[: -len(cls.__qualname__) - 1].split(".")
    file = _source_file(cls)
    if file is None or not file.endswith(".py"):
        return False
    parts = file[:-3].split(os.sep)
    return parts[-len(folders) :] == folders


def _source_file(cls: type) -> str | None:
    try:
        return os.path.realpath(inspect.getfile(cls))
    except (TypeError, OSError):  # a built-in class, or one defined in no file
        return None


def resolve_layer_types(names: Iterable[str], model: nn.Module | None = None) -> list[type]:
    """Resolve ``--layer-type`` values to module classes (see :func:`resolve_module_class`)."""
    return [resolve_module_class(n, model) for n in names]


def resolve_leaf_modules(names: Iterable[str], model: nn.Module | None = None) -> list[type | str]:
    """Resolve ``--leaf`` values to module classes or qualified module names.

    A value naming a submodule of ``model`` (as in ``model.named_modules()``,
    e.g. ``"backbone.stage2"``) stays a name; anything else is resolved as a
    class with :func:`resolve_module_class`.
    """
    submodules = {n for n, _ in model.named_modules() if n} if model is not None else set()
    result: list[type | str] = []
    for name in names:
        text = name.strip()
        if text in submodules:
            result.append(text)
            continue
        try:
            result.append(resolve_module_class(text, model))
        except TargetError as exc:
            if model is None:
                raise
            raise TargetError(
                f"{text!r} is not the name of a submodule of the model, and {exc}"
            ) from None
    return result


def resolve_options(options: AnalysisOptions, model: nn.Module) -> AnalysisOptions:
    """``options`` with class names in ``layer_types`` and ``leaf_modules`` resolved
    against ``model`` (see :func:`resolve_module_class`); classes pass through.

    Raises:
        TargetError: a name matches no class (or, for a leaf, no submodule).
    """
    changes: dict[str, Any] = {}
    if options.layer_types is not None and any(isinstance(t, str) for t in options.layer_types):
        with _naming_the_option("layer_types", "--layer-type"):
            changes["layer_types"] = tuple(
                resolve_module_class(t, model) if isinstance(t, str) else t
                for t in options.layer_types
            )
    if options.leaf_modules is not None and any(isinstance(t, str) for t in options.leaf_modules):
        names = [t for t in options.leaf_modules if isinstance(t, str)]
        with _naming_the_option("leaf_modules", "--leaf"):
            resolved = iter(resolve_leaf_modules(names, model))
        changes["leaf_modules"] = tuple(
            next(resolved) if isinstance(t, str) else t for t in options.leaf_modules
        )
    return options.replace(**changes) if changes else options


@contextlib.contextmanager
def _naming_the_option(key: str, flag: str) -> Iterator[None]:
    """A value of the option ``key`` (``flag`` on the command line) that names nothing is
    an error naming the option: it may come from ``[tool.gpa]`` as well as from a flag."""
    try:
        yield
    except TargetError as exc:
        raise TargetError(f"{key} ({flag}): {exc}") from None


def check_model(model: nn.Module) -> None:
    """Refuse models no frontend can walk: a TorchScript model, uninitialised lazy
    parameters, or a module that contains one of its own ancestors (torch would recurse
    forever).

    Raises:
        GpaError: naming the parameters or the submodule concerned.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise GpaError(
            f"{type_name(model)} is a TorchScript module (torch.jit.script or torch.jit.trace): "
            "gpa reads the model's Python code, which TorchScript compiles away, so it cannot "
            "look inside; analyse the nn.Module it was made from (scripted submodules of an "
            "eager model are analysed as one call each)"
        )
    lazy = [
        n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)
    ]
    if lazy:
        raise GpaError(
            f"{type(model).__name__} has uninitialized lazy parameters ({', '.join(lazy[:3])}"
            f"{', …' if len(lazy) > 3 else ''}); run one forward pass to materialize them first"
        )
    stack: list[tuple[str, nn.Module, tuple[int, ...]]] = [("", model, (id(model),))]
    done: set[int] = set()
    while stack:
        name, module, ancestors = stack.pop()
        if id(module) in done:
            continue
        done.add(id(module))
        for child_name, child in module._modules.items():
            if child is None:
                continue
            path = f"{name}.{child_name}" if name else child_name
            if id(child) in ancestors:
                raise GpaError(
                    f"{type(model).__name__} contains itself: submodule '{path}' is one of its "
                    "own ancestors; keep such a reference out of the module tree (e.g. in a "
                    "plain list or with object.__setattr__)"
                )
            stack.append((path, child, (*ancestors, id(child))))


#: Wrappers that run their ``module`` on parts of the batch across devices: the model is
#: the module they wrap (on one device, or none, they call it as it is).
PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


#: Classes, by defining module and name (matched along a class's MRO, so nothing is
#: imported), whose objects are modules only to hold the network they run, with the
#: attribute holding it. Ultralytics' engine object (``YOLO("yolov8n.yaml")``) is called on
#: images (``predict``) and its ``train`` runs a training loop: the network is its
#: ``.model``.
ENGINES = {("ultralytics.engine.model", "Model"): "model"}


def _held_by_engine(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The attribute of :data:`ENGINES` holding the network ``module`` runs, and that
    network; None for any other module (or an engine holding no module: a path, an
    exported model's runtime)."""
    for cls in type(module).__mro__:
        attribute = ENGINES.get((cls.__module__, cls.__qualname__))
        if attribute is not None:
            held = getattr(module, attribute, None)
            return (attribute, held) if isinstance(held, nn.Module) else None
    return None


def functional_run(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    args: Any,
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """``torch.func.functional_call(module, state, args, kwargs)`` for any module:
    one torch's stateless API refuses — a data-parallel wrapper (a subclass of one with a
    forward of its own is a model), a TorchScript module, whose state its parent swaps —
    is called through a module holding it.

    Example:
        >>> m = nn.DataParallel(nn.Linear(2, 1, bias=False))
        >>> functional_run(m, {"module.weight": torch.ones(1, 2)}, (torch.ones(1, 2),))
        tensor([[2.]])
    """
    if isinstance(module, (*PARALLEL, torch.jit.ScriptModule)):
        module, state = _Holder(module), {f"held.{k}": v for k, v in state.items()}
    return torch.func.functional_call(module, dict(state), args, kwargs)


class _Holder(nn.Module):
    """A module whose forward calls the one it holds (not a copy: its state is swapped)."""

    def __init__(self, held: nn.Module) -> None:
        super().__init__()
        self.held = held

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.held(*args, **kwargs)


def compiled(module: nn.Module) -> nn.Module | None:
    """The module ``torch.compile`` wrapped in ``module`` (its ``_orig_mod``), or None for
    any other module. (torch's compiler is not imported for this: a process that has not
    imported it holds no compiled module.)

    Example:
        >>> compiled(nn.Linear(2, 2)) is None
        True
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None or not isinstance(module, eval_frame.OptimizedModule):
        return None
    return module._orig_mod


@contextlib.contextmanager
def eager_compiled_modules() -> Iterator[None]:
    """Modules compiled with ``torch.compile`` run as the eager modules they wrap, for the
    block: what the model computes, without compiling it (seconds per model) to read it."""
    if "torch._dynamo.eval_frame" not in sys.modules:  # nothing was compiled
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


def unwrap_wrappers(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model a data-parallel wrapper, an averaged copy (``AveragedModel``: SWA, EMA),
    ``torch.compile`` or an engine object (:data:`ENGINES`: Ultralytics' ``YOLO``) holds
    (wrapped in each other or not), with a note per wrapper saying so; else ``model``.
    Each but the engine calls the module it holds as it is; the engine's network is what
    its ``predict`` and ``train`` run.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap_wrappers(nn.DataParallel(inner))[0] is inner
        True
    """
    inner, chain = _wrapper_chain(model)
    return inner, _unwrapped_notes(chain)


def _unwrapped_notes(chain: list[tuple[nn.Module, str, str]]) -> list[str]:
    """A note per wrapper of ``chain`` (:func:`_wrapper_chain`) saying what was analysed."""
    return [
        f"analysed the module {kind} wraps (its .{prefix}): layer names are relative to "
        f"it; the wrapper's state_dict puts '{prefix}.' in front of each"
        for _, kind, prefix in chain
    ]


def _wrapper_chain(model: nn.Module) -> tuple[nn.Module, list[tuple[nn.Module, str, str]]]:
    """The module the wrappers around ``model`` hold (``model`` itself if none) and the
    wrappers, outermost first, each with its kind and the attribute holding what it wraps."""
    chain = []
    while True:
        engine = _held_by_engine(model)
        if engine is not None:
            kind, (prefix, inner) = type(model).__name__, engine
        elif _defines_its_own_call(model):  # (a subclass calling its module otherwise)
            break
        elif isinstance(model, (*PARALLEL, torch.optim.swa_utils.AveragedModel)):
            kind, inner, prefix = type(model).__name__, model.module, "module"
        elif (held := compiled(model)) is not None:
            kind, inner, prefix = "torch.compile", held, "_orig_mod"
        else:
            break
        chain.append((model, kind, prefix))
        model = inner
    return model, chain


def _defines_its_own_call(module: nn.Module) -> bool:
    """Whether the class of ``module`` defines ``forward`` or ``__call__`` outside torch:
    a wrapper's subclass doing so is a model of its own, not a wrapper to read through."""
    cls = type(module)
    return any(
        _of_users(inspect.getattr_static(cls, name, None)) for name in ("forward", "__call__")
    )


@contextlib.contextmanager
def wrappers_unwrapped(model: nn.Module) -> Iterator[tuple[nn.Module, list[str]]]:
    """:func:`unwrap_wrappers` for the block, with the forward hooks and pre-hooks each
    wrapper carries (the user's) registered on the module they wrap — around its own, in
    the order the wrappers would run them, each given its wrapper as its ``module``
    argument — and a note saying so. A wrapper runs its hooks around the call of that
    module, so the model's inputs and output pass through them as they do when it is
    called (``docs/semantics.md`` §1). While hooks are carried, other analyses wait
    (:data:`TRACING`): they would read them on the module too.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> wrapper = nn.DataParallel(inner)
        >>> def double(module, args, out):
        ...     return 2 * out
        >>> double.__module__ = "my_model"  # (as the user's module defines it)
        >>> _ = wrapper.register_forward_hook(double)
        >>> with wrappers_unwrapped(wrapper) as (model, notes):
        ...     model is inner, len(model._forward_hooks)
        (True, 1)
        >>> len(inner._forward_hooks)
        0
    """
    inner, chain = _wrapper_chain(model)  # (one walk for the notes and the hooks)
    notes = _unwrapped_notes(chain)
    hooked = [
        w
        for w, _, _ in chain
        # (an engine's own call predicts: it never runs hooks registered on it)
        if _carries_hooks_of_its_own(w) and _held_by_engine(w) is None
    ]
    if not hooked:
        yield inner, notes
        return
    notes += [
        f"ran the forward hooks {type(w).__name__} carries around the call of the module it "
        "wraps, as it does"
        for w in hooked
    ]
    with TRACING:
        handles = []
        try:
            for wrapper in reversed(hooked):  # (innermost first: each around those before)
                handles += _hooks_carried(wrapper, inner)
            yield inner, notes
        finally:
            for handle in handles:
                handle.remove()


def _hooks_carried(wrapper: nn.Module, inner: nn.Module) -> list[Any]:
    """Register the forward hooks and pre-hooks of ``wrapper`` (the user's: not torch's or
    gpa's) on ``inner``, each called with ``wrapper`` as its module: its pre-hooks before
    those ``inner`` has, its forward hooks after; their handles."""
    handles = []
    pre = [(k, h) for k, h in wrapper._forward_pre_hooks.items() if _of_users(h)]
    for key, hook in reversed(pre):  # (each prepended: their order kept)
        with_kwargs = key in wrapper._forward_pre_hooks_with_kwargs
        handles.append(
            inner.register_forward_pre_hook(
                _called_with(wrapper, hook), prepend=True, with_kwargs=with_kwargs
            )
        )
    for key, hook in wrapper._forward_hooks.items():
        if _of_users(hook):
            handles.append(
                inner.register_forward_hook(
                    _called_with(wrapper, hook),
                    with_kwargs=key in wrapper._forward_hooks_with_kwargs,
                    always_call=key in wrapper._forward_hooks_always_called,
                )
            )
    return handles


def _called_with(wrapper: nn.Module, hook: Any) -> Any:
    """``hook`` called with ``wrapper`` as its module, whichever module runs it; it keeps
    the hook's name and module (the user's) and names the wrapper (``carried_from``)."""

    @functools.wraps(hook)
    def carried(module: nn.Module, *args: Any) -> Any:
        return hook(wrapper, *args)

    carried.carried_from = type(wrapper).__name__  # type: ignore[attr-defined]
    return carried
