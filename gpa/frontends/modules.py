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
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
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
    "weight_holder",
    "weight_owners",
    "resolve_layer_types",
    "resolve_leaf_modules",
    "resolve_module_class",
    "resolve_options",
    "scripted_call",
    "scripted_notes",
    "hidden_weight_notes",
    "shallow_copy",
    "split_leaves",
    "display_name",
    "opaque_layer_types",
    "type_name",
    "with_tied",
    "unused_layer_modules",
    "compiled",
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
    model: nn.Module,
    layer_types: Iterable[type[nn.Module]] | None = None,
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> tuple[type[nn.Module], ...]:
    """The layer types whose calls a frontend must keep whole although fx's policy would
    trace into them: custom layer types, and the classes in ``model`` that subclass a layer
    type outside ``torch.nn`` (Whisper's positional embedding, a LoRA linear, a
    weight-standardised convolution) — each call of them is one layer (semantics §2).
    ``named``: ``model.named_modules()``, when the caller walked them already.

    Example:
        >>> class Scaled(nn.Linear):
        ...     pass
        >>> opaque_layer_types(nn.Sequential(Scaled(2, 2), nn.Linear(2, 2)))
        (<class 'gpa.frontends.modules.Scaled'>,)
    """
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    found = dict.fromkeys(t for t in types if not fx_leaf(t))
    for m in model.modules() if named is None else (m for _, m in named):
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


def submodule_lookup(root: nn.Module) -> Callable[[str], nn.Module | None]:
    """``dict(root.named_modules(remove_duplicate=False)).get``: the module at a qualified
    name (``""``: ``root``), or None. Found along the name through each module's registry
    of children, which is what that walk reads — without walking the whole tree for a few
    names (a walk per pass); by the walk itself, made once, where a module on the way
    names its modules otherwise (its class has a ``named_modules`` of its own, or a
    registry that is no dict).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
        >>> find = submodule_lookup(net)
        >>> find("1.0") is net[1][0], find("2"), find("") is net
        (True, None, True)
    """
    walked: dict[str, nn.Module] = {}

    def lookup(name: str) -> nn.Module | None:
        if walked:
            return walked.get(name)
        module = root
        for atom in name.split(".") if name else ():
            children = module._modules
            if type(children) is not dict or type(module).named_modules is not _NAMED_MODULES:
                break
            module = children.get(atom)
            if module is None:
                return None
        else:
            if type(module).named_modules is _NAMED_MODULES:
                return module
        walked.update(root.named_modules(remove_duplicate=False))
        return walked.get(name)

    return lookup


_NAMED_MODULES = nn.Module.named_modules


def is_layer_module(module: nn.Module, layer_types: tuple[type, ...]) -> bool:
    """Whether ``module`` is, or contains, a module of one of ``layer_types``."""
    return any(issubclass(module_class(m), layer_types) for m in module.modules())


def scripted_notes(
    model: nn.Module,
    layer_types: Iterable[type] | None = None,
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> list[str]:
    """Report notes on the TorchScript submodules containing layers (outermost only).
    ``named``: ``model.named_modules()``, when the caller walked them already."""
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    notes = []
    for name, module in model.named_modules() if named is None else named:
        scripted = isinstance(module, torch.jit.ScriptModule)
        if name and scripted and is_layer_module(module, types) and not _in_scripted(model, name):
            notes.append(
                f"'{name}' is a TorchScript module ({type_name(module)}): gpa cannot look "
                "inside compiled code, so each of its calls is one layer, as a leaf's "
                "(analyse the eager module to see the layers inside it)"
            )
    return notes


def hidden_weight_notes(
    model: nn.Module,
    layer_types: Iterable[type] | None = None,
    leaf_modules: Iterable[type[nn.Module] | str] | None = None,
) -> list[str]:
    """Notes on the modules kept whole — TorchScript modules, declared leaves (outermost
    only) — that hold no layer module but trainable parameters of their own (not a
    ``torch.nn`` module's, a norm's): a feature-mixing call on them inside
    (``F.linear(x, self.w)``) would be a layer (``docs/semantics.md`` §2) that no frontend
    sees there, so paths through the module count no layer in it.

    Example:
        >>> class Inner(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = nn.Parameter(torch.ones(2, 2))
        >>> net = nn.Sequential(Inner(), nn.Linear(2, 2))
        >>> [n[:39] for n in hidden_weight_notes(net, leaf_modules=[Inner])]
        ["'0' is kept whole (a declared leaf) and"]
    """
    leaf_types, leaf_names = split_leaves(leaf_modules)
    scripted = torch.jit.ScriptModule
    if not leaf_modules and not any(isinstance(m, scripted) for m in model.modules()):
        return []  # (most models: nothing kept whole; no names made)
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    notes, whole = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{w}.") for w in whole):
            continue
        scripted = isinstance(module, torch.jit.ScriptModule)
        if not (scripted or isinstance(module, leaf_types) or name in leaf_names):
            continue
        whole.append(name)
        if is_layer_module(module, types):
            continue
        own = [
            f"{name}.{inner}.{p}" if inner else f"{name}.{p}"
            for inner, held in module.named_modules()
            if not _of_torch_nn(held)
            for p, value in held.named_parameters(recurse=False)
            if value.requires_grad and (value.is_floating_point() or value.is_complex())
        ]
        if own:
            kind, instead = (
                ("a TorchScript module", "analyse the eager module")
                if scripted
                else ("a declared leaf", "analyse it without --leaf")
            )
            shown = ", ".join(own[:3]) + (f" and {len(own) - 3} more" if len(own) > 3 else "")
            notes.append(
                f"'{name}' is kept whole ({kind}) and holds parameters of its own ({shown}) "
                "but no layer module: a feature-mixing call on them inside it (F.linear(x, "
                "w), x @ w) would be a layer gpa cannot see there, so paths through it count "
                f"none ({instead} to see them)"
            )
    return notes


def _of_torch_nn(module: nn.Module) -> bool:
    """Whether ``module`` is one of ``torch.nn``'s (compiled by TorchScript too)."""
    if isinstance(module, torch.jit.ScriptModule):
        return inspect.isclass(getattr(nn, getattr(module, "original_name", ""), None))
    return type(module).__module__.startswith("torch.nn.")


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

    A class ``torch.nn.utils.parametrize`` made (``ParametrizedBlock``: a module holding
    a parametrized tensor) is kept whole as the class it was made from is: it lives in
    ``torch.nn``, where fx's policy would keep a user's block whole and its layers unseen.

    Example:
        >>> fx_leaf(nn.Conv2d), fx_leaf(nn.Sequential), fx_leaf(nn.Module), fx_leaf(nn.ModuleDict)
        (True, False, False, False)
    """
    if cls.__module__ == _PARAMETRIZE and cls.__name__.startswith("Parametrized"):
        cls = cls.__bases__[0]  # (parametrize subclasses the module's own class)
    return (
        cls.__module__.startswith(("torch.nn", "torch.ao.nn"))
        and not issubclass(cls, (nn.Sequential, *PARALLEL))
        and cls not in _CONTAINERS_WITHOUT_FORWARD
    )


_CONTAINERS_WITHOUT_FORWARD = frozenset({nn.Module, nn.ModuleList, nn.ModuleDict})
_PARAMETRIZE = "torch.nn.utils.parametrize"


def shallow_copy(module: nn.Module) -> nn.Module:
    """``copy.copy(module)``: a new module of its class sharing its attributes (its
    submodules, parameters and buffers themselves), also for one holding a parametrized
    tensor, whose class ``torch.nn.utils.parametrize`` made refuses to be copied.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> _ = nn.utils.parametrize.register_parametrization(m, "weight", nn.Identity())
        >>> copied = shallow_copy(m)
        >>> type(copied) is type(m), copied.parametrizations is m.parametrizations
        (True, True)
    """
    copied = object.__new__(type(module))
    copied.__dict__.update(module.__dict__)
    return copied


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
    if not read:  # (most models: no functional layer, no walk of the parameters)
        return {}
    # a parameter two modules hold goes by its first name, whichever one a frontend read
    first = {id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    canonical = {p: first.get(id(_parameter(model, p)), p) for p in read}
    held = collections.Counter(weight_holder(c) for c in dict.fromkeys(canonical.values()))
    named = {}
    for parameter in read:
        path = weight_holder(canonical[parameter])
        if not path:
            named[parameter] = canonical[parameter], "Parameter"
            continue
        module = model.get_submodule(path)
        alone = held[path] == 1 or issubclass(module_class(module), types)
        named[parameter] = path if alone else canonical[parameter], type_name(module)
    return named


def weight_holder(parameter: str) -> str:
    """The qualified name of the module a parameter is the weight of: its module's, or,
    for a parametrized weight's originals (``a.parametrizations.weight.original0``:
    weight norm, spectral norm by ``torch.nn.utils.parametrizations``), the parametrized
    module's (``a``).

    Example:
        >>> weight_holder("a.parametrizations.weight.original0"), weight_holder("b.c.weight")
        ('a', 'b.c')
    """
    path = parameter.rpartition(".")[0]
    if path.startswith("parametrizations."):  # the root module's own
        return ""
    head, found, _ = path.partition(".parametrizations.")
    return head if found else path


def weight_owners(
    model: nn.Module,
    weights: Mapping[Hashable, Sequence[str]],
    layer_types: tuple[type, ...] | None = None,
) -> dict[Hashable, tuple[tuple[str, str, float], ...]]:
    """For each functional layer call (``weights``: call -> the qualified names of the
    parameters its weight is computed from, in order), the records it is a call of, as
    (record, type, share of the weight's elements), the first parameter's first
    (``docs/semantics.md`` §2). A weight computed from several modules' parameters —
    fused projections ``torch.cat([q.weight, k.weight, v.weight])``, heads stacked for
    one ``einsum``, a re-parameterised block's ``c3.weight + pad(c1.weight)`` — makes the
    call one of each module's record; the parameters of one module make one (weight norm
    written by hand, ``g * v / v.norm()``, named as its first, :func:`functional_owners`),
    those a ``ParameterDict`` or ``ParameterList`` holds being its holder's (peft's LoHa
    keeps the four factors of one adapter's weight in four such containers).

    Example:
        >>> net = nn.ModuleDict({"q": nn.Linear(2, 2), "k": nn.Linear(2, 6)})
        >>> weight_owners(net, {"call": ["q.weight", "k.weight"]})
        {'call': (('q', 'Linear', 0.25), ('k', 'Linear', 0.75))}
    """
    holder = _holders(model, {p for ps in weights.values() for p in ps})
    first: dict[Hashable, list[str]] = {}  # call -> each module's first parameter read
    for call, params in weights.items():
        by_module: dict[str, str] = {}
        for p in params:
            by_module.setdefault(holder[p], p)
        first[call] = list(by_module.values())
    named = functional_owners(model, [p for ps in first.values() for p in ps], layer_types)
    owners = {}
    for call, params in weights.items():
        sizes: dict[str, int] = {}  # module path -> the elements of its parameters read
        for p in dict.fromkeys(params):
            found = _parameter(model, p)
            module = holder[p]
            sizes[module] = sizes.get(module, 0) + (found.numel() if found is not None else 0)
        total = sum(sizes.values())
        shares: dict[tuple[str, str], float] = {}
        for p in first[call]:
            size = sizes[holder[p]]
            shares[named[p]] = shares.get(named[p], 0.0) + (size / total if total else 1.0)
        owners[call] = tuple((record, kind, share) for (record, kind), share in shares.items())
    return owners


def _holders(model: nn.Module, parameters: Iterable[str]) -> dict[str, str]:
    """Each parameter's module (:func:`weight_holder`), a ``ParameterDict``'s or a
    ``ParameterList``'s being the module holding the container: a container computes
    nothing (§2)."""
    found = {}
    for p in parameters:
        path = weight_holder(p)
        while path and isinstance(_submodule(model, path), (nn.ParameterDict, nn.ParameterList)):
            path = path.rpartition(".")[0]
        found[p] = path
    return found


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    """The submodule at a qualified name, or None (a name a graph made up)."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


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
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> list[tuple[str, str]]:
    """Layer modules of ``model`` that are not in ``used`` nor inside a layer module or a
    module ``called`` as one call.

    ``used`` holds the qualified names of the modules a tracer saw called, or whose
    parameters it saw read; ``called``, those it saw called as one call (a leaf: fx's
    ``call_module``), by default ``used``. Modules inside such a call or inside another
    layer module (the output projection of ``nn.MultiheadAttention``) are part of that
    call; those inside a module whose own parameter is read (a ViT holding its
    ``pos_embed``) are not (``docs/semantics.md`` §2). Returns (name, type) in module order.
    ``named``: ``model.named_modules()``, when the caller walked them already.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
        >>> unused_layer_modules(net, {"0", "1"}, called={"0"})
        [('1.0', 'Linear')]
    """
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    whole = used if called is None else called
    modules = dict(model.named_modules() if named is None else named)
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

    ``name`` may be a ``torch.nn`` class name (``Conv2d``, ``nn.Conv2d`` as code spells
    it; a bare name the model uses no such class of, but one class of its own by, names
    that one: diffusers' ``GELU``), the name of a module class used in ``model``
    (``Bottleneck``; must be unambiguous), or a dotted import path
    (``torchvision.ops.StochasticDepth``).

    Raises:
        TargetError: nothing by that name is an ``nn.Module`` subclass.

    Example:
        >>> resolve_module_class("nn.Conv2d") is resolve_module_class("Conv2d") is nn.Conv2d
        True
    """
    text = name.strip()
    torch_name = text.removeprefix("nn.")
    candidate = getattr(nn, torch_name, None) if torch_name.isidentifier() else None
    in_model = _classes_in(model)
    if inspect.isclass(candidate) and issubclass(candidate, nn.Module):
        # a bare name the model uses no torch.nn class of: its own class of that name
        # (diffusers' GELU, a projection and an activation), where it has one
        own = [c for c in in_model if c.__name__ == text] if text == torch_name else []
        if model is None or candidate in in_model or not own:
            return candidate
        if len(own) == 1:
            return own[0]
        # (several of its own: ambiguous, below)

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
