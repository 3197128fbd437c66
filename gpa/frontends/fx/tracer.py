"""Symbolic tracing of a model into a torch.fx graph.

The tracer follows torch.fx's leaf policy (modules of ``torch.nn`` are leaves)
plus the leaf modules the user declares. It also records what plain fx loses:
the grad mode under which ``forward`` creates each operation. Whenever it differs
from the mode of the previous operation (``torch.no_grad()``,
``torch.set_grad_enabled(False)``, ``torch.inference_mode()`` …), a :func:`grad_mode`
node is inserted first, so later passes know which code ran without gradient. The
mode is read, never intercepted (grad mode is per thread). While a trace runs, custom
autograd Functions' ``apply`` and ``forward`` are replaced, so that each call is
recorded whole (:func:`functions_recorded`). The user's model is not modified (fx's
tensor constants go on a shallow copy of it), and one lock serialises fx's own tracing,
which patches ``torch.nn.Module`` for its duration.

A TorchScript module is a leaf too: fx cannot look into compiled code. A model that
runs a re-entrant activation checkpoint is traced a second time under
:class:`~gpa.frontends.watch.Checkpoints`, so that the checkpointed function's
operations get the grad mode backward's recomputation gives them, not torch's
``no_grad`` of the forward pass.

Example:
    >>> import torch.nn as nn
    >>> gm = trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> [n.op for n in gm.graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import dis
import functools
import inspect
import linecache
import sys
import types
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch.utils._pytree import tree_leaves, tree_unflatten

from gpa.errors import TraceError
from gpa.frontends.frames import Site, caller_site, stack_trace_site, user_frame
from gpa.frontends.functions import custom_function_calls, function_call, run_function
from gpa.frontends.fx.modes import grad_mode
from gpa.frontends.fx.norm_act import norm_then_activations
from gpa.frontends.fx.writes import AUGMENTED, follow_mutations
from gpa.frontends.modules import PARALLEL, compiled, fx_leaf, shallow_copy, split_leaves
from gpa.frontends.randomness import (
    RandomBranches,
    random_branch_message,
    random_states,
    set_random_states,
)
from gpa.frontends.state import (
    TRACING,
    StateSnapshot,
    buffers_copied,
    parameters_kept,
    preserved_state,
    same_entries,
)
from gpa.frontends.watch import Checkpoints, in_reentrant_checkpoint
from gpa.names import TARGET_MODULE_PREFIX, class_path

__all__ = [
    "as_written",
    "CHECKPOINTS",
    "GpaProxy",
    "GpaTracer",
    "SITE",
    "TESTED",
    "MODULE_SITES",
    "CLASS_TESTS",
    "trace",
    "unwritable_names",
    "single_call",
    "LeafSpec",
    "graph_module",
    "graph_module_clashes",
    "graph_module_names",
    "clash_message",
    "set_arguments",
    "call_site",
    "functions_recorded",
]

#: ``node.meta`` key of the user's source line that made the node's operation,
#: ``(file, line)`` or None (see :func:`gpa.frontends.frames.caller_site`).
SITE = "gpa_site"

#: ``node.meta`` key of a ``call_module`` node that calls a stand-in for one call of the
#: model's module (export's fused calls, targets ``_gpa_call_N``): that module's
#: qualified name and class name, which messages give instead of the stand-in's.
CALL_OF = "gpa_call_of"

#: ``GraphModule.meta`` key: where the model's code first tested a proxy as fx answers
#: otherwise than the run would — its class (``isinstance(h, torch.Tensor)``) or an
#: attribute no tensor has (``hasattr(out, "logits")``) —, a :data:`~gpa.frontends.frames.Site`
#: (True where that place is no model code), else False: the trace may have taken another
#: branch (see :mod:`~gpa.frontends.fx.branches`).
TESTED = "gpa_tested"

#: An ``isinstance`` test the model's code made on a proxy: the proxy's node, the classes
#: it named, what the proxy answered, and the model's line that asked (or None).
ClassTest = tuple[fx.Node, tuple[type, ...], bool, "Site | None"]

#: ``GraphModule.meta`` key: the :data:`ClassTest` list of the trace — tests whose
#: answer on the value a proxy stands for is known once values are (see
#: :func:`~gpa.frontends.fx.branches.class_tests_answered_otherwise`), noted in
#: :data:`TESTED` only where it differs.
CLASS_TESTS = "gpa_class_tests"

#: ``GraphModule.meta`` key: qualified module name -> the model's line that made each of
#: its calls, in order (:attr:`gpa.core.graph.GradientGraph.module_sites`).
MODULE_SITES = "gpa_module_sites"

LeafSpec = Iterable[type[nn.Module] | str]

# fx patches torch.nn.Module.__call__ and __getattr__ while it traces: one trace at a time,
# and no other frontend reading a model meanwhile.
_FX_LOCK = TRACING

try:  # private to torch (torch.compile's passes use it), hence the fallback
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # pragma: no cover - every supported torch has it
    _GraphModule = fx.GraphModule
try:  # how a GraphModule copies one target from its root (private too)
    from torch.fx.graph_module import _copy_attr
except ImportError:  # pragma: no cover - every supported torch has it
    _copy_attr = None


@functools.cache
def graph_module_names() -> frozenset[str]:
    """The names a ``GraphModule`` uses itself beyond any module's (``code``, ``graph``,
    ``meta``, ``recompile``, ``print_readable``): its class's and those it sets on itself."""
    own = {
        name
        for kind in {_GraphModule, fx.GraphModule}  # (fx's own sets its code at once)
        for name in (*dir(kind), *vars(kind(nn.Module(), fx.Graph())))
    }
    return frozenset(own - set(dir(nn.Module)) - set(vars(nn.Module())))


def graph_module_clashes(names: Iterable[str]) -> list[str]:
    """Those of ``names`` (qualified names of a model's modules, parameters or buffers)
    whose first part torch.fx's ``GraphModule`` uses itself — ``code``, ``graph``,
    ``meta``, its methods: a ``GraphModule`` built from the model (fx's, and torch.export's
    unlifted module) finds its own attribute there, not the model's.

    Example:
        >>> graph_module_clashes(["stem.weight", "code.0", "graph", "head"])
        ['code.0', 'graph']
    """
    taken = graph_module_names()
    return [n for n in names if n.partition(".")[0] in taken]


def clash_message(clashes: Sequence[str], holder: str = "torch.fx's GraphModule") -> str:
    """The refusal of a frontend whose ``holder`` (a ``GraphModule``) would have to hold
    ``clashes`` (see :func:`graph_module_clashes`).

    Example:
        >>> clash_message(["graph.lin"])[:62]
        "'graph.lin' starts with 'graph', a name torch.fx's GraphModule"
    """
    atom = clashes[0].partition(".")[0]
    named = f"'{atom}' is" if clashes[0] == atom else f"'{clashes[0]}' starts with '{atom}',"
    return (
        f"{named} a name {holder} uses itself, so it cannot hold it; the autograd frontend "
        "reads it (--tracer autograd; auto moves on)"
    )


class _TestsAnswered:
    """What :class:`GpaProxy` and :class:`GpaAttribute` share: the model's type tests on a
    proxy answered as the run would where it can.

    The placeholder of an input answers the model's code with the input's class
    (``stands_for``): ``isinstance(x, dict)`` and ``isinstance(x, torch.Tensor)`` as on the
    input itself. Any other proxy notes on its tracer (``tested``) where the model's code
    asks its class (``isinstance(h, torch.Tensor)`` does) or an attribute no tensor has
    (``hasattr(out, "logits")``, ``hasattr(h, "_fields")``), which it answers otherwise
    than the value it stands for. torch's own code, which fx relies on, and gpa's are
    answered as usual."""

    stands_for: type | None = None  # the class of the input a placeholder stands for

    def __getattr__(self, k: str) -> GpaAttribute:
        if not hasattr(torch.Tensor, k) and _asked_by_model():
            self.tracer.note_test()
        return GpaAttribute(self, k)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        if _asked_by_model():
            if self.stands_for is not None:
                return self.stands_for
            if self.class_test_noted():
                classes = _tested_classes()
                if classes is not None:
                    self.tracer.note_test(self, classes)
        return type(self)

    def __hash__(self) -> int:
        # a proxy hashes by its identity, the value it stands for by its own: a dict keyed
        # by ``h.device``, ``h.dtype`` or ``h.shape[1]`` (timm's feature hooks) finds under
        # another proxy nothing of what the run finds there
        if _asked_by_model():
            self.tracer.note_test()
        return id(self)

    def class_test_noted(self) -> bool:
        """Whether the model's code asking this proxy its class is noted (``tested``)."""
        return True


class GpaProxy(_TestsAnswered, fx.Proxy):
    """fx's proxy, recording augmented assignments (see :data:`AUGMENTED`), and answering
    the model's type tests as :class:`_TestsAnswered` says."""

    def __len__(self) -> int:
        count = _pieces(self.node)  # ``list(x.chunk(2, 1))`` asks first (see GpaTracer.iter)
        return count if count is not None else super().__len__()

    # (a property, not ``__setattr__``: fx sets each proxy's attributes as it makes it)
    @property
    def requires_grad(self) -> Any:
        if "_requires_grad" in self.__dict__:  # as the model set it
            return self.__dict__["_requires_grad"]
        return self.__getattr__("requires_grad")  # as fx records any attribute

    @requires_grad.setter
    def requires_grad(self, value: Any) -> None:
        # ``h.requires_grad = True`` (Wav2Vec2's feature encoder, before re-entrant
        # checkpoints) is recorded as the method call fx records for
        # ``h.requires_grad_(True)``: gradient then reaches what the model feeds h to.
        # (False on data changes nothing the analysis reads)
        if value is True:
            self.tracer.create_proxy("call_method", "requires_grad_", (self, value), {})
        self.__dict__["_requires_grad"] = value


#: torch's code that asks a proxy its class for its caller: ``torch.is_tensor(h)``,
#: ``isinstance(p, nn.Parameter)`` (the class of parameters answers through its metaclass),
#: ``torch.jit.isinstance(h, torch.Tensor)`` (through helpers private to torch).
_ASKING_FOR_CALLER = tuple(
    function.__code__
    for function in (
        torch.is_tensor,
        type(nn.Parameter).__instancecheck__,
        torch.jit.isinstance,
        getattr(torch._jit_internal, "_isinstance", None),
        getattr(torch._jit_internal, "container_checker", None),
    )
    if hasattr(function, "__code__")
)


def _asks_for_caller(frame: types.FrameType) -> bool:
    """Whether ``frame`` is torch's code asking for its caller: :data:`_ASKING_FOR_CALLER`,
    or torch's pytree (``tree_map_only(torch.Tensor, f, h)`` tests ``h`` for the model)."""
    return frame.f_code in _ASKING_FOR_CALLER or frame.f_globals.get("__name__") == _PYTREE


#: The module of torch's pytree utilities.
_PYTREE = "torch.utils._pytree"


def _asked_by_model() -> bool:
    """Whether the code that called the caller of this function (a proxy's ``__class__``
    or ``__getattr__``) is outside torch and gpa: torch's code asking for its caller
    (:func:`_asks_for_caller`) is passed over."""
    frame = sys._getframe(2)
    while frame is not None and _asks_for_caller(frame):
        frame = frame.f_back
    asker = frame.f_globals.get("__name__", "") if frame is not None else ""
    return asker.partition(".")[0] not in ("torch", "gpa")


def _tested_classes() -> tuple[type, ...] | bool | None:
    """What the model's code asking a proxy its class (the caller of the caller of this
    function, a proxy's ``__class__``) tests: the classes given to ``isinstance`` where
    its source names them (a class, or a tuple of classes, named through modules and
    classes, or a tuple of those), None for no test — torch's C code asking on behalf of
    a call of torch's the model makes (``torch.cat(y.chunk(2)[::-1])`` asks each proxy
    in the list its class) —, True for any other. torch's Python code in
    :data:`_ASKING_FOR_CALLER` tests for its caller; its pytree's ``isinstance`` tests
    are read as the model's."""
    frame = sys._getframe(2)
    if frame.f_code in _ASKING_FOR_CALLER:
        return True
    call = _call_at(frame.f_code, frame.f_lasti)  # (None: no call, as ``match`` asks)
    if call is None:
        return True
    called = _named(call.func, frame)
    if called is isinstance and len(call.args) == 2 and not call.keywords:
        return _classes_named(call.args[1], frame) or True
    # (a class of torch's, torch.Size(...), or arguments unpacked, f(*map(...)), may
    # consume an iterator of the model's that tests)
    unpacked = any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    )
    if _of_torch(called) and not isinstance(called, type) and not unpacked:
        return None
    return True


def _of_torch(function: Any) -> bool:
    """Whether ``function`` is torch's (its ``__module__`` is torch or inside it)."""
    return str(getattr(function, "__module__", None)).partition(".")[0] == "torch"


#: The opcodes of a call (Python 3.11: ``PRECALL`` then ``CALL``; ``CALL_FUNCTION_EX``
#: for ``f(*args)``), as bytes.
_CALLS = frozenset(
    bytes([dis.opmap[name]])
    for name in ("CALL", "PRECALL", "CALL_FUNCTION_EX")
    if name in dis.opmap
)


@functools.lru_cache(maxsize=4096)
def _call_at(code: types.CodeType, offset: int) -> ast.Call | None:
    """The call the instruction at byte ``offset`` of ``code`` makes, read from the
    instruction's place in the source; None where it is no call or cannot be read."""
    if code.co_code[offset : offset + 1] not in _CALLS:
        return None
    try:
        line, end, col, end_col = list(code.co_positions())[offset // 2]
    except (IndexError, ValueError):
        return None
    if None in (line, end, col, end_col):
        return None
    lines = [linecache.getline(code.co_filename, n).encode() for n in range(line, end + 1)]
    if not all(lines):
        return None
    lines[-1] = lines[-1][:end_col]  # (offsets count UTF-8 bytes)
    lines[0] = lines[0][col:]
    try:
        called = ast.parse(b"(" + b"".join(lines) + b")", mode="eval").body
    except (SyntaxError, ValueError):
        return None
    return called if isinstance(called, ast.Call) else None


def _classes_named(expression: ast.expr, frame: types.FrameType) -> tuple[type, ...] | None:
    """The classes ``expression`` names in ``frame``: a class, or a tuple of classes, named
    by a name or an attribute of a module or class (``torch.Tensor``, ``self.kinds`` is
    not read), or a tuple of those; None for anything else."""
    items = expression.elts if isinstance(expression, ast.Tuple) else [expression]
    found: list[type] = []
    for value in (_named(e, frame) for e in items):
        if isinstance(value, type):
            found.append(value)
        elif isinstance(value, tuple) and value and all(isinstance(v, type) for v in value):
            found.extend(value)
        else:
            return None
    return tuple(found)


def _named(expression: ast.expr, frame: types.FrameType) -> Any:
    """What a name, or an attribute chain through modules and classes, names in
    ``frame`` (None for anything else: reading an instance's attribute may run code)."""
    if isinstance(expression, ast.Name):
        scopes = (frame.f_locals, frame.f_globals, vars(builtins))
        found = next((scope[expression.id] for scope in scopes if expression.id in scope), None)
        return None if issubclass(type(found), fx.Proxy) else found  # (a proxy records reads)
    if isinstance(expression, ast.Attribute):
        owner = _named(expression.value, frame)
        if issubclass(type(owner), (types.ModuleType, type)):
            return getattr(owner, expression.attr, None)
    return None


class GpaAttribute(_TestsAnswered, fx.proxy.Attribute):
    """An attribute of a proxy (``x.T``, a view: ``x.T += y`` writes into ``x``), recording
    augmented assignments and answering type tests as :class:`GpaProxy` does."""


def _augmented(op: Callable[[Any, Any], Any]) -> Callable[[fx.Proxy, Any], fx.Proxy]:
    def record(self: fx.Proxy, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    return record


for _op, _method in AUGMENTED.items():
    setattr(GpaProxy, _method, _augmented(_op))
    setattr(GpaAttribute, _method, _augmented(_op))


@contextlib.contextmanager
def functions_recorded() -> Iterator[None]:
    """While it lasts, a call of a custom autograd Function given a proxy is recorded as
    one call (of :func:`~gpa.frontends.functions.function_call`'s function) instead of
    being traced into: gradient goes through its ``backward``, which fx never sees, not
    through the operations of ``forward`` (see :mod:`gpa.frontends.functions`). Run as one
    call on the meta device, the gradient-flow pass reads what autograd links: the
    result to every tensor argument that requires grad (``docs/semantics.md`` §1.2).

    Raises:
        TraceError: a custom Function runs on a proxy other than through
            ``Function.apply`` looked up at the call (an ``apply`` bound before tracing):
            its call cannot be recorded whole, and its forward is not its gradient.
    """

    def record(function: type[torch.autograd.Function], args: tuple, kwargs: dict) -> Any:
        proxy = _proxy_in(args, kwargs)
        if proxy is None:
            return run_function(function, args, kwargs)
        return proxy.tracer.create_proxy("call_function", function_call(function), args, kwargs)

    def refuse(function: type[torch.autograd.Function], args: tuple, kwargs: dict) -> None:
        if _proxy_in(args, kwargs) is not None:
            name = function.__qualname__
            raise TraceError(
                f"the custom autograd Function {name} is applied through an apply bound "
                f"before tracing (such as f = {function.__name__}.apply): fx cannot take "
                "its call whole, and the operations of its forward are not the gradient "
                f"its backward gives. Call {function.__name__}.apply(...) where it is used, "
                "or --tracer autograd reads it (auto moves on)."
            )

    with custom_function_calls(record, refuse):
        yield


def _proxy_in(args: tuple, kwargs: dict) -> fx.Proxy | None:
    return next((a for a in tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)), None)


def _pieces(node: fx.Node) -> int | None:
    """How many tensors ``node`` gives, where its arguments say: ``chunk`` into a number
    of pieces, ``split`` or ``tensor_split`` by a list of sizes or indices."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op not in ("call_method", "call_function") or name not in _PIECES:
        return None
    given = node.args[1] if len(node.args) > 1 else node.kwargs.get(_PIECES[name])
    if name == "chunk":
        return given if isinstance(given, int) and given > 0 else None
    if isinstance(given, (list, tuple)) and all(isinstance(g, int) for g in given):
        return len(given) + (name == "tensor_split")
    return None


# The operations giving several tensors whose count :func:`_pieces` reads: keyword of it.
_PIECES = {"chunk": "chunks", "split": "split_size_or_sections", "tensor_split": "indices"}


def _returns_no_weights(m: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether ``m`` is an attention module called with ``need_weights=False``, which
    returns ``(output, None)``: a leaf's call is one proxy, which ``is None`` never is
    (``out, w = attn(q, k, v, need_weights=False); if w is None: …``)."""
    if not isinstance(m, nn.MultiheadAttention):
        return False
    need = kwargs.get("need_weights", args[4] if len(args) > 4 else True)
    return isinstance(need, int) and not need  # (a bool is an int)


def _without_weights(result: Any) -> Any:
    return (result[0], None) if isinstance(result, fx.Proxy) else result


class _Scope(fx.proxy.Scope):
    """fx's record of the module being traced, copied as fx copies it at every module call
    (``copy.copy``), by its two fields: the generic copy protocol (``__reduce_ex__``) took
    a fiftieth of an analysis."""

    def __copy__(self) -> _Scope:
        return _Scope(self.module_path, self.module_type)


class _ModuleStack(collections.OrderedDict):
    """fx's stack of the module calls being traced, copied into every node's
    ``nn_module_stack`` (``copy.copy``): the same plain ``OrderedDict`` as the generic copy
    protocol makes, made directly (that protocol took a fiftieth of an analysis)."""

    def __copy__(self) -> collections.OrderedDict:
        return collections.OrderedDict(self)


class GpaTracer(fx.Tracer):
    """fx tracer with user leaf modules that records the grad mode of every operation, and
    keeps norm-activation modules whole once the first of their kind is judged (see
    :mod:`~gpa.frontends.fx.norm_act`; ``kinds``: qualified name -> kind)."""

    def __init__(
        self,
        leaf_types: tuple[type, ...],
        leaf_names: frozenset[str],
        kinds: Mapping[str, Hashable],
        classes: Mapping[str, type] | None = None,
    ) -> None:
        super().__init__()
        self.scope, self.module_stack = _Scope("", None), _ModuleStack()  # (cheap copies)
        self._classes = classes or {}  # placeholder -> the class of the input it stands for
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names
        self._kinds = kinds
        self._verdicts: dict[Hashable, bool] = {}
        self._whole: str | None = None  # the module call kept whole now
        self._made: list[fx.Node] | None = None  # the nodes of the call being judged
        self._grad_enabled = True  # tracing starts under torch.enable_grad()
        self.checkpointed = False  # a re-entrant checkpoint's function created nodes
        self._names: dict[bool, dict[int, str]] = {}  # see _qualified_name
        self._keyword_only: list[fx.Node] = []  # placeholders of forward's keyword-only
        self.tested: Site | bool = False  # see GpaProxy and TESTED
        self.class_tests: list[ClassTest] = []  # see CLASS_TESTS
        self.module_sites: dict[str, list[Site | None]] = {}  # see MODULE_SITES

    def note_test(self, proxy: Any = None, classes: tuple[type, ...] | bool = True) -> None:
        """Note that the model's code tested a proxy as the value it stands for may not
        answer, at the model's line that asked (:func:`caller_site`): an ``isinstance``
        test of ``proxy`` naming ``classes`` in :attr:`class_tests`, answered against that
        value once it is known (see :data:`CLASS_TESTS`); any other test in ``tested``,
        where the first was made."""
        site = caller_site()
        if classes is not True and type(proxy) is GpaProxy:
            self.class_tests.append((proxy.node, classes, issubclass(GpaProxy, classes), site))
        elif not self.tested:
            self.tested = site or True

    def _qualified_name(self, t: torch.Tensor) -> str | None:
        """The qualified name of a parameter (or buffer) of the root, as fx's linear search
        through ``named_parameters()`` (``named_buffers()``) finds it, from a table made
        once per trace: fx searches the whole module tree on every attribute read, which
        is quadratic in the number of modules (timm's CSPDarkNet-53: most of its trace)."""
        parameter = isinstance(t, nn.Parameter)
        table = self._names.get(parameter)
        if table is None:
            named = self.root.named_parameters() if parameter else self.root.named_buffers()
            table = self._names[parameter] = {}
            for name, value in named:
                table.setdefault(id(value), name)
        return table.get(id(t))

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if isinstance(attr_val, torch.Tensor) and (
            isinstance(attr_val, nn.Parameter) or self.proxy_buffer_attributes
        ):
            name = self._qualified_name(attr_val)
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)  # fx's own search

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, fx.Proxy):  # the most common argument, as fx's base answers it
            return a.node
        if isinstance(a, torch.Tensor):
            name = self._qualified_name(a)
            if name is not None:
                return self.create_node("get_attr", name, (), {})
            if a.grad_fn is not None:  # computed while tracing from what carries gradient
                raise TraceError(_COMPUTED_FROM_PARAMETERS)
        return super().create_arg(a)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        made = GpaProxy(node, self)
        if node.op == "placeholder" and node.target in self._classes:
            made.stands_for = self._classes[node.target]
        return made

    def iter(self, obj: fx.Proxy) -> Iterator[fx.Proxy]:  # type: ignore[override]
        """Iterating a proxy fx cannot count (``list(x.chunk(2, 1))``, Ultralytics' C2f)
        yields one element per piece where the call says how many there are; the pass
        that works out shapes finds it out where a dimension is smaller (§1.1)."""
        count = _pieces(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def _proxy_placeholder(
        self, name: str, concrete_args: dict | None, sig: inspect.Signature, fn: Callable
    ) -> Any:
        """``forward``'s ``*args`` given as a tuple (one ``fx.PH`` or Python value per input
        reaching it, see :func:`gpa.frontends.fx.trace`) becomes a tuple of placeholders
        and values: fx makes one proxy of them all, which forward cannot unpack
        (``PeftModel.forward(*args, **kwargs)``). Their placeholders come before those of
        keyword-only parameters (which fx makes first), in the order inputs are given."""
        given = concrete_args.get(name) if concrete_args else None
        if not (name.startswith("*") and isinstance(given, tuple) and given):
            before = len(self.graph.nodes)
            made = super()._proxy_placeholder(name, concrete_args, sig, fn)
            parameter = sig.parameters.get(name)
            if parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                self._keyword_only += list(self.graph.nodes)[before:]
            return made
        stem = name.lstrip("*")
        # inputs give every positional parameter before *args: their defaults would come
        # before the placeholders without (code Python refuses)
        for node in self.graph.nodes:
            if node.op == "placeholder" and node not in self._keyword_only:
                node.args = ()
        proxies = [
            self.create_proxy("placeholder", f"{stem}_{i}", (), {}) for i in range(len(given))
        ]
        if self._keyword_only:
            for proxy in proxies:
                self._keyword_only[0].prepend(proxy.node)
        # a Python value among them is traced as given (its placeholder takes the input)
        return tuple(p if v is fx.PH else v for p, v in zip(proxies, given, strict=True))

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        self._note_site(m)
        try:
            return self._call_module(m, forward, args, kwargs)
        except Exception as exc:  # the innermost module the failure left: the leaf to name
            if not hasattr(exc, "gpa_module"):
                try:
                    exc.gpa_module = (self.path_of_module(m), type(m))  # type: ignore[attr-defined]
                except Exception:  # (a module fx cannot name: none)
                    exc.gpa_module = None  # type: ignore[attr-defined]
            raise

    def _note_site(self, m: nn.Module) -> None:
        """Note where the model's code called ``m`` (a module fx cannot name: nowhere; one
        of torch's holding no module, whose ``forward`` calls no layer of the model's: not
        needed, see :func:`gpa.frontends.sites.past_wrappers`)."""
        if not m._modules and _of_torch(type(m)):
            return
        try:
            name = self.path_of_module(m)
        except NameError:
            return
        self.module_sites.setdefault(name, []).append(caller_site())

    def _call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        held = compiled(m)
        if held is not None and not self.is_leaf_module(m, self.path_of_module(m)):
            # read through to the module torch.compile wraps, as it runs
            return self.call_module(held, held.forward, args, kwargs)
        kind = self._kinds.get(self.path_of_module(m)) if self._kinds else None
        if kind is None or kwargs or len(args) != 1 or not isinstance(args[0], fx.Proxy):
            result = super().call_module(m, forward, args, kwargs)
            return _without_weights(result) if _returns_no_weights(m, args, kwargs) else result
        name = self.path_of_module(m)
        verdict = self._verdicts.get(kind)
        if verdict:
            self._whole = name
            try:
                return super().call_module(m, forward, args, kwargs)
            finally:
                self._whole = None
        if verdict is not None or self._made is not None:
            return super().call_module(m, forward, args, kwargs)
        self._made, state = [], [(x, dict(vars(x))) for x in m.modules()]
        try:
            result = super().call_module(m, forward, args, kwargs)
        finally:
            made, self._made = self._made, None
        self._verdicts[kind] = (
            isinstance(result, fx.Proxy)
            # nothing of the call is kept for later readers
            and all(same_entries(before, vars(x)) for x, before in state)
            and norm_then_activations(m, name, made, args[0].node, result.node)
        )
        return result

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self._whole:
            return True
        if module_qualified_name in self._leaf_names or isinstance(
            m, (*self._leaf_types, torch.jit.ScriptModule)
        ):
            return True
        if compiled(m) is not None:  # read through (a leaf by its class: the module inside)
            return False
        if isinstance(m, PARALLEL):  # read through to the module it runs
            return False
        # fx's policy (a ``torch.nn`` module), reading through the class ``parametrize``
        # makes of a module holding a parametrized tensor
        return fx_leaf(type(m))

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        enabled = torch.is_grad_enabled()  # False under no_grad and inference_mode
        if not enabled and not self.checkpointed:
            self.checkpointed = in_reentrant_checkpoint()
        if kind not in ("placeholder", "output") and enabled != self._grad_enabled:
            self._grad_enabled = enabled
            switch = super().create_node("call_function", grad_mode, (enabled,), {})
            if self._made is not None:
                self._made.append(switch)
        node = super().create_node(kind, target, (), {}, name, type_expr)
        set_arguments(node, args, kwargs)
        if self._made is not None:
            self._made.append(node)
        if kind in ("call_module", "call_function", "call_method"):
            node.meta[SITE] = caller_site()
        return node


# Why fx cannot hold a tensor forward computed from parameters it met as no proxies.
_COMPUTED_FROM_PARAMETERS = (
    "forward computes a tensor from the model's parameters out of torch.fx's sight (it "
    "reads them through parameters(), named_parameters() or the like, which give the "
    "parameters themselves, not proxies): fx would hold the result as a constant, and "
    "those parameters would receive no gradient. --tracer export or autograd reads it "
    "(auto moves on)"
)


def call_site(node: fx.Node) -> Site | None:
    """The user's source line that made ``node``'s operation: recorded by gpa's fx tracer
    (``node.meta["gpa_site"]``) or read from the stack trace torch.export records."""
    return node.meta.get(SITE) or stack_trace_site(node.meta.get("stack_trace"))


def set_arguments(node: fx.Node, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Give ``node``, made without arguments, its ``args`` and ``kwargs`` (nodes among them
    record ``node`` as a user, as ``fx.Graph.create_node`` does). Made so, a node skips
    ``create_node``'s walk of its arguments with pytree, which warns about symbolic sizes:
    gpa traces with concrete values, and the walk was a fifth of a model's trace.

    Example:
        >>> g = fx.Graph()
        >>> x = g.placeholder("x")
        >>> y = g.create_node("call_function", torch.relu)
        >>> set_arguments(y, (x,), {})
        >>> y.args, list(x.users)
        ((x,), [relu])
    """
    if args:
        node.args = tuple(args)
    if kwargs:
        node.kwargs = dict(kwargs)


def as_written(value: Any) -> Any:
    """``value`` (a node's arguments, the values of its input nodes put in) as the code
    fx generates passes it: every list and dict written into the graph — which fx holds as
    ``immutable_list`` / ``immutable_dict`` — a new mutable one, as that code builds them
    at each call (torchvision's Swin3D passes a list literal to a function that writes into
    it). The values of nodes inside are left as they are: a list or dict a node made is
    never an immutable one, and only what fx rebuilt around them (tuples) is looked into.

    Example:
        >>> from torch.fx.immutable_collections import immutable_list
        >>> made = {"cache": (1, 2)}  # a node's value
        >>> written = as_written((immutable_list([4, immutable_list([7]), made]), 2))
        >>> written, type(written[0][1]).__name__, written[0][2] is made
        (([4, [7], {'cache': (1, 2)}], 2), 'list', True)
    """
    kind = type(value)
    if kind is immutable_list:
        return [as_written(v) for v in value]
    if kind is immutable_dict:
        return {k: as_written(v) for k, v in value.items()}
    if isinstance(value, tuple) and any(isinstance(v, _WRITTEN) for v in value):
        parts = [as_written(v) for v in value]
        if all(p is v for p, v in zip(parts, value, strict=True)):
            return value
        return kind(*parts) if hasattr(value, "_fields") else kind(parts)
    return value


_WRITTEN = (immutable_list, immutable_dict, tuple)


#: ``GraphModule.meta`` key: per re-entrant checkpoint call, in order, the nodes it was
#: given and the nodes it returned (see :func:`gpa.frontends.fx.checkpoints.unfed_checkpoints`).
CHECKPOINTS = "gpa_checkpoints"


def trace(
    model: nn.Module,
    leaf_modules: LeafSpec | None = None,
    kinds: Mapping[str, Hashable] | None = None,
    constants: Mapping[str, Any] | None = None,
    classes: Mapping[str, type] | None = None,
    snapshot: StateSnapshot | None = None,
) -> fx.GraphModule:
    """Trace ``model`` symbolically with torch.fx.

    Args:
        model: the module to trace; it is not modified.
        leaf_modules: extra module classes or qualified module names that fx
            must record as single calls instead of tracing into them.
        kinds: norm-activation modules (qualified name -> kind, from
            :func:`~gpa.frontends.fx.norm_act.norm_act_kinds`) to record as single calls
            once the first call of their kind is judged to be a norm and activations.
        constants: ``forward``'s arguments given as Python constants (None, a flag, a
            number), by name: traced as these values, not as proxies (``if inputs_embeds
            is None:`` takes the branch the call takes).
        classes: the classes of the inputs traced as placeholders, by placeholder name
            (``forward``'s parameter; ``args_0`` … for ``*args``): the model's type tests
            on its inputs are answered with them (see :class:`GpaProxy`).
        snapshot: ``model``'s state as it is now (taken by the caller), restored after the
            trace instead of taking one here.

    Returns:
        A ``GraphModule`` whose graph contains :func:`grad_mode` calls where
        the grad mode of ``forward``'s operations changes.

    Raises:
        TraceError: fx cannot trace the model; the message points at the
            model's own source line when the traceback has one.
    """
    types, names = split_leaves(leaf_modules)
    unknown = sorted(n for n in names if n not in dict(model.named_modules()))
    if unknown:
        raise TraceError(f"leaf module name(s) not found in the model: {', '.join(unknown)}")

    def traced(watch: contextlib.AbstractContextManager) -> tuple[GpaTracer, nn.Module, fx.Graph]:
        tracer = GpaTracer(types, names, kinds or {}, classes)
        root = shallow_copy(model)  # fx stores tensor constants on its root: not on the user's
        # what forward assigns while traced (``self.buf += y`` stores a proxy) must not
        # reach the passes that run the modules afterwards
        with (
            _FX_LOCK,
            torch.enable_grad(),
            watch,
            preserved_state(model, snapshot),
            buffers_copied(model, snapshot),
            parameters_kept(model, snapshot),
            functions_recorded(),
            RandomBranches() as randomness,
        ):
            graph = tracer.trace(root, concrete_args=dict(constants) if constants else None)
        if randomness.where is not None:  # what was traced is one random architecture
            raise TraceError(random_branch_message(model, randomness.where, model.training))
        return tracer, root, graph

    states = random_states()  # the second trace draws what the first did
    try:
        tracer, root, graph = traced(contextlib.nullcontext())
        watch = None
        if tracer.checkpointed:  # again, the checkpointed functions in their real grad mode
            watch = Checkpoints()
            set_random_states(states)
            tracer, root, graph = traced(watch)
    except TraceError:  # gpa's own refusal (see functions_recorded): it says why
        raise
    except Exception as exc:  # any failure inside user code under symbolic tracing
        raise TraceError(_trace_failure_message(model, exc)) from exc
    _unflattened(graph)
    follow_mutations(graph, root)
    try:
        gm = graph_module(root, graph, model.__class__.__name__)
    except SyntaxError as exc:  # fx writes module names into Python code
        raise TraceError(unwritable_names(model, exc)) from None
    gm.meta[TESTED] = tracer.tested
    gm.meta[CLASS_TESTS] = tracer.class_tests
    gm.meta[MODULE_SITES] = tracer.module_sites
    if watch is not None:
        gm.meta[CHECKPOINTS] = [
            tuple([v.node for v in values if isinstance(v, fx.Proxy)] for values in boundary)
            for boundary in watch.boundaries
        ]
    return gm


def _unflattened(graph: fx.Graph) -> None:
    """Give ``graph`` back its returned structure. Given concrete arguments that are
    containers (``*args`` as ``()``), fx flattens what forward returns into a list and
    keeps the structure in the code it writes; gpa reads outputs by their place in it
    (§1.5), from the output node."""
    info = getattr(graph._codegen, "pytree_info", None)
    if info is None:
        return
    if info.out_spec is not None:
        output = next(n for n in reversed(graph.nodes) if n.op == "output")
        output.args = (tree_unflatten(list(output.args[0]), info.out_spec),)
    graph.set_codegen(fx.graph.CodeGen())


def graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A ``GraphModule`` of ``graph`` whose Python code is written when first needed.

    gpa's passes interpret the graph and never call the module, so writing and compiling
    its code (a third of a symbolic trace) is left until someone calls it or reads
    ``.code``; torch's own ``_LazyGraphModule`` does exactly that, and plain
    ``fx.GraphModule`` stands in where a torch build lacks it.

    ``root``'s children are the module's own, not copied: a ``GraphModule`` rebuilds the
    path to every called module and attribute, a new ``nn.Module`` per level (a twentieth
    of an analysis). Every module and attribute is then found where a ``GraphModule`` puts
    it, as the same object; what differs is that modules the graph does not use are there
    too, and a module on the way to a target is the model's, not an empty stand-in — so
    no pass may add or delete a submodule below the top level (it would be the model's).

    Raises:
        TraceError: a target starts with a name a ``GraphModule`` uses itself (``code``,
            ``graph``, ``meta``; see :func:`graph_module_clashes`): it cannot hold it.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
        >>> gm = graph_module(m, fx.symbolic_trace(m).graph, "Net")
        >>> gm.get_submodule("1.0") is m[1][0], isinstance(gm.get_submodule("1"), nn.Sequential)
        (True, True)
    """
    targets = [n.target for n in graph.nodes if n.op in ("get_attr", "call_module")]
    clashes = graph_module_clashes(targets)
    if clashes:  # fx's own constructor would put them where its attributes hide them
        raise TraceError(clash_message(clashes))
    if _copy_attr is None:
        return _GraphModule(root, graph, name)
    gm = _GraphModule(root, fx.Graph(), name)
    taken = graph_module_names()
    gm._modules.update((k, v) for k, v in root._modules.items() if k not in taken)
    for target in targets:
        _copy_attr(root, gm, target)  # returns at once below a shared child
    gm.graph = graph
    return gm


def unwritable_names(model: nn.Module, exc: SyntaxError) -> str:
    """Why fx's generated code does not compile: module names that are no Python names."""
    odd = [n for n, _ in model.named_modules() if any(c in n for c in "\"'\\")]
    names = f" ({', '.join(repr(n) for n in odd[:3])})" if odd else ""
    return (
        f"torch.fx cannot write {type(model).__name__}'s graph as Python code: a module "
        f"name{names} does not fit in it ({exc.msg})"
    )


def single_call(model: nn.Module) -> fx.GraphModule:
    """A module whose forward makes one call of ``model``, which it holds under its class name.

    Used to analyse a model that is itself a leaf (``nn.Linear(3, 2)``): its one
    call then has a name, and the wrapper keeps the model's positional signature.
    """
    name = type(model).__name__
    holder = nn.Module()
    holder.add_module(name, model)
    graph = fx.Graph()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    args = [
        graph.placeholder(p.name, default_value=p.default)
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in positional
    ]
    graph.output(graph.call_module(name, tuple(args)))
    return graph_module(holder, graph, name)


def _trace_failure_message(model: nn.Module, exc: BaseException) -> str:
    where = user_frame(exc)
    decorated = _raised_by_decorator(model, exc) or (
        isinstance(exc, ValueError) and "co_varnames is too small" in str(exc)  # fx's binding
    )
    # (a decorator's failure is fx's binding, not the model: the reason first, then Python's)
    lines = (
        [f"torch.fx cannot trace {type(model).__name__}: {_DECORATED_REASON}"] if decorated else []
    )
    known = next(
        (hint for kind, said, hint in _FX_LIMITS if isinstance(exc, kind) and said in str(exc)),
        None,
    )
    # a limit the hint explains: its first line (TorchScript adds the whole declaration)
    said = str(exc).partition("\n")[0] if known else str(exc)
    lines.append(
        ("  (Python raised " if decorated else f"torch.fx cannot trace {type(model).__name__}: ")
        + f"{type(exc).__name__}: {said}"
        + (")" if decorated else "")
    )
    if where is not None:
        lines.append(f'  File "{where.filename}", line {where.lineno}, in {where.name}')
        if where.line:
            lines.append(f"    {where.line.strip()}")
    module, cls = getattr(exc, "gpa_module", None) or (None, None)
    if module:
        # the class as --leaf takes it: by name where it comes from a target file
        named = cls.__qualname__ if cls.__module__.startswith(TARGET_MODULE_PREFIX) else None
        lines.append(f"  while tracing module '{module}' ({named or class_path(cls)})")
    hint = _OTHER_FAILURE if decorated or known is None else known
    lines.append(_leaf_named(hint, module, in_root=not hasattr(exc, "gpa_module")))
    return "\n".join(lines)


def _leaf_named(hint: str, module: str | None, in_root: bool) -> str:
    """``hint`` advising the module that failed (``module``, its qualified name) as the
    leaf to declare; where the failure is in the root's own forward (``in_root``), which
    no leaf can hold, the reason (its first sentence) and what reads it instead."""
    if module:
        return hint.replace("--leaf NAME", f"--leaf {module}")
    if not in_root or "--leaf NAME" not in hint:
        return hint
    return f"{hint.split('. ')[0]}. {_IN_ROOT}"


# Said where fx fails in the root's own forward (diffusers' UNets test len(t.shape)).
_IN_ROOT = (
    "That code is the model's own forward, which cannot be a leaf: rewrite it without "
    "that Python, or let --tracer export or autograd read it (auto moves on)."
)


def _raised_by_decorator(model: nn.Module, exc: BaseException) -> bool:
    """Whether ``exc`` was raised in the code of a decorator wrapping a ``forward`` of the
    model's modules (Hugging Face's ``@merge_with_config_defaults`` reads ``kwargs``, which
    fx's binding leaves None): the model's code is not at fault, nor tensor values."""
    wrappers = set()
    for cls in {type(m) for m in model.modules()}:
        forward = getattr(cls, "forward", None)
        while hasattr(forward, "__wrapped__"):  # (each decorator's code, the inner forward's not)
            wrappers.add(_where(getattr(forward, "__code__", None)))
            forward = forward.__wrapped__
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    # by place: fx runs the root's forward from a copy of its code
    return tb is not None and _where(tb.tb_frame.f_code) in wrappers


def _where(code: Any) -> tuple | None:
    return (code.co_filename, code.co_firstlineno, code.co_name) if code is not None else None


# What fx's failures say, and what to do: (exception type, words of its message, hint).
# Not a matter of values: fx records no item assignment at all, and cannot bind the
# arguments of a forward whose signature is a decorator's (``*args, **kwargs``: Hugging
# Face's ``@can_return_tuple`` and its kin), for which the data-dependent hint misled.
_DECORATED_REASON = (
    "it cannot bind the arguments of a forward wrapped by a decorator taking *args and "
    "**kwargs (as Hugging Face's are)"
)
_FX_LIMITS = (
    (
        TypeError,
        "does not support item assignment",
        "torch.fx records no item assignment (x[...] = y) in forward; --tracer export "
        "or autograd reads it (auto moves on), or write it with index_put / torch.cat.",
    ),
    (
        RuntimeError,
        "Unable to cast Proxy",
        "The function called there is compiled TorchScript (torch.jit.script or "
        "torch.jit.trace), which takes tensors only: fx's proxies cannot enter it. "
        "--tracer export or autograd runs it (auto moves on), or call the plain Python "
        "function while analysing.",
    ),
    (
        KeyError,
        "Proxy(",
        "The code there looks a value up by a number torch.fx holds as a proxy (a size: "
        "x.ndim, x.shape[1]; einops' layers look their recipe up by x.ndim), which finds "
        "nothing: a proxy is no number. --tracer export or autograd reads it (auto moves "
        "on), or declare that module a leaf (--leaf NAME).",
    ),
    (
        TypeError,
        "__cuda_array_interface__",
        "The code there makes a tensor of a traced tensor's values (torch.as_tensor, "
        "torch.tensor: pack_padded_sequence does so with its lengths), which fx's proxies "
        "do not hold; --tracer autograd runs it (auto moves on).",
    ),
)
_DATA_DEPENDENT = (
    "Symbolic tracing cannot follow control flow or Python logic that depends on "
    "tensor values (or sizes, which fx holds as proxies too). Declare the module that "
    "does it a leaf (--leaf NAME / leaf_modules=[...]): fx then reads it as one opaque "
    "call, the layers inside it as one (where it returns none of its inputs as they "
    "are, and its code tests sizes, not values: the meta device, where gpa computes "
    "shapes, holds no values either); or rewrite that code without data-dependent Python; --tracer export or "
    "autograd may read it with every layer apart (auto moves on)."
)
# What fx says where Python asks a proxy for a value: a truth value, a length, its items.
_FX_LIMITS += tuple(
    (Exception, said, _DATA_DEPENDENT)
    for said in (
        "cannot be used as inputs to control flow",
        "cannot be iterated",
        "is not supported in symbolic tracing",
    )
)
# Anything else (a failure of the model's code on proxies, or of fx itself): no guess.
_OTHER_FAILURE = "--tracer export or autograd reads models fx cannot (auto moves on)."
