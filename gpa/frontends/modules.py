"""What the frontends know about ``nn.Module`` classes: layer types, leaves, owners.

Shared by every frontend so that they apply ``docs/semantics.md`` §1–§2 identically:
which module classes are layers (:data:`DEFAULT_LAYER_TYPES`), which ones fx keeps as
single calls (:func:`fx_leaf`), which module a functional layer is reported under
(:func:`owner`), and which layer modules ``forward`` never uses
(:func:`unused_layer_modules`).

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    >>> unused_layer_modules(net, used={"0"})
    [('1.0', 'Linear')]
    >>> owner(net, "1.0.weight")
    ('1.0', 'Linear')
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from gpa.errors import GpaError, TargetError, TraceError
from gpa.options import AnalysisOptions

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "POINTWISE_MODULES",
    "check_model",
    "fx_leaf",
    "owner",
    "resolve_layer_types",
    "resolve_leaf_modules",
    "resolve_module_class",
    "resolve_options",
    "split_leaves",
    "training_mode",
    "unused_layer_modules",
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


def fx_leaf(cls: type) -> bool:
    """Whether torch.fx's default policy keeps modules of ``cls`` as single calls."""
    return cls.__module__.startswith(("torch.nn", "torch.ao.nn")) and not issubclass(
        cls, nn.Sequential
    )


# One lock per model being analysed: a frontend switches the model's train/eval flags and
# may put hooks on its modules, so two threads analysing the same model take turns.
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


@contextlib.contextmanager
def training_mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """``model`` in train (or eval) mode for the block, used by this thread alone; every
    module's own mode is restored afterwards, so a mixed train/eval state survives."""
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault(model, threading.Lock())
    with lock:
        modes = [(m, m.training) for m in model.modules()]
        model.train(train)
        try:
            yield model
        finally:
            for m, mode in modes:
                m.training = mode


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


def owner(model: nn.Module, parameter: str) -> tuple[str, str]:
    """Record name and type of the module owning ``parameter`` (a qualified parameter name).

    A parameter of the root module is its own record, of type ``Parameter``.
    """
    path = parameter.rpartition(".")[0]
    if not path:
        return parameter, "Parameter"
    return path, type(model.get_submodule(path)).__name__


def unused_layer_modules(
    model: nn.Module, used: set[str], layer_types: Iterable[type[nn.Module]] | None = None
) -> list[tuple[str, str]]:
    """Layer modules of ``model`` that are not in ``used`` nor inside a used or layer module.

    ``used`` holds the qualified names of the modules a tracer saw called, or whose
    parameters it saw read. Modules inside a called leaf or inside another layer module
    (the output projection of ``nn.MultiheadAttention``) are part of that call. Returns
    (name, type) in module order.
    """
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        if not name or name in used or not isinstance(module, types):
            continue
        parts = name.split(".")
        ancestors = [".".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in used or isinstance(modules[a], types) for a in ancestors):
            continue
        found.append((name, type(module).__name__))
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
    matches = [c for c in in_model if text in (c.__name__, f"{c.__module__}.{c.__qualname__}")]
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
                return obj
            raise TargetError(f"{text!r} is not an nn.Module subclass")

    used = sorted({c.__name__ for c in in_model if not c.__module__.startswith("torch.")})
    hint = f"; module classes defined for this model: {', '.join(used)}" if used else ""
    raise TargetError(
        f"unknown module class {text!r}: not a torch.nn class (e.g. Conv2d), a class used in "
        f"the model, or an importable package.module.Class{hint}"
    )


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
        changes["layer_types"] = tuple(
            resolve_module_class(t, model) if isinstance(t, str) else t for t in options.layer_types
        )
    if options.leaf_modules is not None and any(isinstance(t, str) for t in options.leaf_modules):
        names = [t for t in options.leaf_modules if isinstance(t, str)]
        resolved = iter(resolve_leaf_modules(names, model))
        changes["leaf_modules"] = tuple(
            next(resolved) if isinstance(t, str) else t for t in options.leaf_modules
        )
    return options.replace(**changes) if changes else options


def check_model(model: nn.Module) -> None:
    """Refuse models no frontend can walk: uninitialised lazy parameters, or a module that
    contains one of its own ancestors (torch would recurse forever).

    Raises:
        GpaError: naming the parameters or the submodule concerned.
    """
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
