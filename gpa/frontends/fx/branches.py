"""Whether fx's trace took the branches ``forward`` takes when it runs.

Symbolic tracing hands ``forward`` proxies, and some tests on a proxy answer differently
from the same test on the tensor it stands for: ``isinstance(h, torch.Tensor)`` is False,
``hasattr(out, "pooler_output")`` is True, a leaf module's output is never ``None``. No
error is raised; the trace simply records another branch, and layer modules the model
calls are left uncalled, or called fewer or more times (``docs/semantics.md`` §1.1).
Where fx's trace leaves layer modules uncalled, or the model's code tested a proxy so
(see :class:`~gpa.frontends.fx.tracer.GpaProxy`), one run of ``forward`` on the meta
device (nothing computed), drawing the random numbers the trace drew
(:func:`~gpa.frontends.randomness.random_states`), tells how many times the model calls them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Guarded(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         h = self.a(x)
    ...         return self.b(h) if isinstance(h, torch.Tensor) else h
    >>> calls_when_run(Guarded(), (torch.ones(1, 2),), ["a", "b"])
    {'a': 1, 'b': 1}
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import itertools
import textwrap
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode
from torch.utils._pytree import tree_map

from gpa.frontends.frames import Site
from gpa.frontends.fx.flow import FLOW, Shape
from gpa.frontends.fx.lookalike import code_names
from gpa.frontends.fx.shape_rules import FUNCTION_RULES
from gpa.frontends.fx.tracer import CLASS_TESTS
from gpa.frontends.randomness import drawing_from
from gpa.frontends.state import preserved_state
from gpa.frontends.wrappers import functional_run

__all__ = [
    "calls_when_run",
    "class_tests_answered_otherwise",
    "other_branch_message",
    "unchecked_channels_message",
    "type_tests_unseen",
    "EXACT_TYPE_TESTS",
    "UNSEEN_BY_PROXIES",
]


def calls_when_run(
    model: nn.Module,
    inputs: tuple,
    names: Iterable[str],
    states: tuple | None = None,
    leaves: Iterable[str] = (),
) -> dict[str, int] | None:
    """How many times ``forward`` calls each module of ``names`` (qualified names; a module
    held under two names counts under both) when it runs on meta copies of ``inputs`` and
    of the model's weights, drawing from the random ``states`` (:func:`~gpa.frontends.randomness.random_states`) if
    given; None when it cannot run there (its branches need values). The model and the
    random states are left as they were.

    A call made while one of ``leaves`` runs (modules the trace records as one call, by
    qualified name) is not counted: the trace does not see it. Calls are seen by global
    module hooks, which see TorchScript modules called from Python too (not the calls a
    scripted module makes inside)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    names = [n for n in names if n in modules]
    counts = {id(modules[n]): 0 for n in names}
    inside = {id(modules[n]) for n in leaves if n in modules}
    running = [0]  # calls of leaves under way

    def enter(m: nn.Module, args: tuple) -> None:
        key = id(m)
        if not running[0] and key in counts:
            counts[key] += 1
        running[0] += key in inside

    def leave(m: nn.Module, args: tuple, output: Any) -> None:
        running[0] -= id(m) in inside

    hooks = torch.nn.modules.module
    handles = [
        hooks.register_module_forward_pre_hook(enter),
        hooks.register_module_forward_hook(leave, always_call=True),
    ]
    held = itertools.chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    copies: dict[int, torch.Tensor] = {}  # (tied weights stay one tensor)
    state = {name: copies.setdefault(id(t), t.detach().to("meta")) for name, t in held}
    args = tree_map(lambda x: x.detach().to("meta") if isinstance(x, torch.Tensor) else x, inputs)
    try:
        with preserved_state(model), drawing_from(states), _norms_by_shape():
            functional_run(model, state, args)
    except Exception:  # the model's branches need values: the trace cannot be checked
        return None
    finally:
        for h in handles:
            h.remove()
    return {n: counts[id(modules[n])] for n in names}


def class_tests_answered_otherwise(gm: fx.GraphModule) -> Site | bool:
    """Where an ``isinstance`` test the model's code made on a proxy
    (:data:`~gpa.frontends.fx.tracer.CLASS_TESTS`) answers otherwise on the value the
    proxy stands for, as the gradient-flow pass left it in ``node.meta``: the model's line
    that made the first such test (True where unknown), else False. A test is taken as
    answered otherwise wherever that value's class is not known for sure: an attribute
    read (``self.gate``, a parameter), a value of no container pytree knows, a class
    deriving from ``torch.Tensor``, a node the pass did not run.

    Example:
        >>> import torch.fx as fx
        >>> class_tests_answered_otherwise(fx.symbolic_trace(nn.Identity()))
        False
    """
    for node, classes, answered, site in gm.meta.get(CLASS_TESTS, ()):
        if _answer_on_value(node, classes) != answered:
            return site or True
    return False


def _answer_on_value(node: fx.Node, classes: tuple[type, ...]) -> bool | None:
    """``isinstance(v, classes)`` for the value ``v`` of ``node`` as the gradient-flow pass
    saw it, or None where its class is not known for sure."""
    flow = node.meta.get(FLOW)
    if flow is None or node.op == "get_attr":
        return None
    if isinstance(flow.shapes, Shape):  # a tensor (the pass sees no subclass)
        if any(c is not torch.Tensor and issubclass(c, torch.Tensor) for c in classes):
            return None
        return issubclass(torch.Tensor, classes)
    if flow.is_constant:
        return isinstance(flow.constant, classes)
    if flow.shapes is None:  # (None, or an object pytree does not know)
        return None
    return issubclass(type(flow.shapes), classes)  # (a container pytree rebuilt)


#: Class tests no proxy sees (``type(h) is torch.Tensor``, ``is_dataclass(h)``): Python
#: asks the proxy nothing; and code that asks whether fx traces it
#: (``isinstance(h, torch.fx.Proxy)``, answered from the proxy's own class;
#: ``is_fx_tracing()``). Sought in the code fx traces.
UNSEEN_BY_PROXIES = frozenset({"type", "is_dataclass", "Proxy", "is_fx_tracing"})

#: Tests of a value's exact class (``type(h) is torch.Tensor``, ``h.__class__ is …``),
#: which export's fake tensors (a subclass) answer otherwise.
EXACT_TYPE_TESTS = frozenset({"type", "__class__"})

_TESTS = UNSEEN_BY_PROXIES | EXACT_TYPE_TESTS


def type_tests_unseen(
    model: nn.Module, leaves: Iterable[str], tests: frozenset[str] = UNSEEN_BY_PROXIES
) -> bool:
    """Whether the code of a module a trace goes into (``model`` or one of its modules not
    inside ``leaves``, qualified names of the modules the trace records as one call) uses
    a value's class as ``tests`` name — ``type(v)`` (the builtin), ``v.__class__``,
    ``is_dataclass(v)`` — in its ``forward``, in the methods it calls on ``self`` or in
    functions it holds as attributes (helpers they call are not read: timm's call
    ``type`` for messages).

    Example:
        >>> class Typed(nn.Module):
        ...     def forward(self, x):
        ...         return x if type(x) is torch.Tensor else x[0]
        >>> type_tests_unseen(Typed(), []), type_tests_unseen(nn.Sequential(Typed()), ["0"])
        (True, False)
    """
    leaves = set(leaves)
    stack, seen = [("", model)], set()
    while stack:  # the module tree, not into the modules recorded as one call
        path, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        made = _class_tests(type(module))
        if made is None:  # torch's own module (see _class_tests)
            pass
        elif made & tests or any(
            _function_tests(v) & tests for v in vars(module).values() if type(v) is _FUNCTION
        ):
            return True
        for name, child in module._modules.items():
            inner = f"{path}.{name}" if path else name
            if child is not None and inner not in leaves:
                stack.append((inner, child))
    return False


_FUNCTION = types.FunctionType


@functools.cache
def _class_tests(cls: type) -> frozenset[str] | None:
    """The class tests ``cls.forward`` and the methods it calls on ``self`` make, and the
    comparisons of a value's class the module-level functions they call by name make
    (``def plain(x): return type(x) is torch.Tensor``); None for a class of torch's (its
    modules test no classes of values, nor hold the model's functions: their code names
    ``type`` for messages)."""
    if cls.__module__.partition(".")[0] == "torch":
        return None
    forward = inspect.unwrap(getattr(cls, "forward", None) or (lambda: None))
    if str(getattr(forward, "__module__", "")).partition(".")[0] == "torch":
        return frozenset()  # torch's forward (``_forward_unimplemented``: a holder of weights)
    made = _function_tests(forward)
    callers = [forward]
    for name in code_names(forward, depth=0):  # methods on self (timm's forward_features)
        method = getattr(cls, name, None)
        if isinstance(method, types.FunctionType) and method is not forward:
            made |= _function_tests(method)
            callers.append(method)
    for caller in callers:  # (helpers name ``type`` for messages too: comparisons only)
        found = getattr(caller, "__globals__", {})
        for name in code_names(caller, depth=0):
            helper = found.get(name)
            if type(helper) is _FUNCTION and not str(helper.__module__).startswith("torch"):
                made |= _compared_classes(helper)
    return made


@functools.lru_cache(maxsize=4096)
def _compared_classes(function: types.FunctionType) -> frozenset[str]:
    """The class tests of :data:`EXACT_TYPE_TESTS` ``function``'s own code compares
    (``type(x) is torch.Tensor``, ``type(x).__name__ == "Tensor"``, ``x.__class__ in
    kinds``), read from its source; none where it cannot be read."""
    tree = _source_tree(function) if code_names(function, depth=0) & EXACT_TYPE_TESTS else None
    if tree is None:
        return frozenset()
    made = set()
    for compare in (n for n in ast.walk(tree) if isinstance(n, ast.Compare)):
        for side in (compare.left, *compare.comparators):
            while isinstance(side, ast.Attribute) and side.attr != "__class__":
                side = side.value  # (type(x).__name__)
            if isinstance(side, ast.Call) and _called_name(side.func) == "type":
                made.add("type")
            elif isinstance(side, ast.Attribute):  # (__class__)
                made.add("__class__")
    return frozenset(made)


@functools.lru_cache(maxsize=4096)
def _function_tests(function: Any) -> frozenset[str]:
    """The class tests (of :data:`_TESTS`) ``function``'s own code makes, read from its
    source — any use of a value's class, ``type(x).__name__ == "Tensor"`` included —; all
    it names when its source cannot be read."""
    named = code_names(function, depth=0) & _TESTS
    if not named:
        return frozenset()
    tree = _source_tree(function)
    if tree is None:
        return named
    made = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and _called_name(n.func) == "type":
            made.add("type")  # (the builtin: not a tensor's ``x.type(dtype)``)
        elif isinstance(n, ast.Call) and _called_name(n.func, any_owner=True) == "is_dataclass":
            made.add("is_dataclass")
        elif isinstance(n, ast.Attribute) and n.attr == "__class__":
            made.add("__class__")
        elif (name := getattr(n, "attr", None) or getattr(n, "id", None)) in _TRACING_ASKED:
            made.add(name)
    return frozenset(made)


def _source_tree(function: Any) -> ast.AST | None:
    """The syntax tree of ``function``'s source, or None where it cannot be read (no
    source file; a lambda inside an expression, whose lines do not parse alone)."""
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None


#: Names of code asking whether fx traces it (see :data:`UNSEEN_BY_PROXIES`).
_TRACING_ASKED = frozenset({"Proxy", "is_fx_tracing"})


def _called_name(function: ast.expr, any_owner: bool = False) -> str | None:
    """The name a call calls: ``name(...)``, ``builtins.name(...)`` (any ``owner.name(...)``
    with ``any_owner``)."""
    if isinstance(function, ast.Name):
        return function.id
    if isinstance(function, ast.Attribute) and (
        any_owner or isinstance(function.value, ast.Name) and function.value.id == "builtins"
    ):
        return function.attr
    return None


# The functional normalisations, by the flow pass's own rules: each checks the call as
# torch would (the weights fit, torch would not refuse it) and covers contiguous meta
# tensors of one floating dtype, whose result is a contiguous tensor of the input's shape.
_BY_SHAPE = {
    op: FUNCTION_RULES[op] for op in (F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm)
}


class _ShapesOfNorms(TorchFunctionMode):
    """While it lasts, a functional normalisation given plain meta tensors answers with
    what torch's meta kernel gives (:data:`_BY_SHAPE`'s rules: an empty tensor of the
    input's shape, where they cover the call; torch's own op otherwise): torch computes
    them on the meta device through Python decompositions, a millisecond each (a YOLO
    model's 57 batch norms were most of its check)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _BY_SHAPE.get(func)
        if rule is not None:  # (every other call of the run passes straight through)
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if tensors and all(map(_as_rules_answer, tensors)):
                found = rule(args, kwargs)
                if found is not None:
                    return found
        return func(*args, **kwargs)


def _as_rules_answer(t: torch.Tensor) -> bool:
    """A tensor the rules' answer matches torch's for: of class Tensor (a subclass has its
    own ``__torch_function__``), requiring no gradient (the answer does not), in row-major
    strides exactly (torch keeps an input's strides where size-1 dimensions leave a choice)."""
    return type(t) is torch.Tensor and not t.requires_grad and t.stride() == _row_major(t.shape)


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    """The strides torch gives a new tensor of ``shape`` (a size-0 dimension counts as 1)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _norms_by_shape() -> contextlib.AbstractContextManager:
    """:class:`_ShapesOfNorms`, unless a mode of the caller's is on (it sees every call)."""
    return _ShapesOfNorms() if _get_current_function_mode() is None else contextlib.nullcontext()


def other_branch_message(
    model: nn.Module,
    differ: Mapping[str, tuple[int, int]],
    frontend: str = "torch.fx",
    tests: str = "isinstance(h, torch.Tensor), hasattr, a leaf's output being None",
    wiring: Sequence[str] = (),
) -> str:
    """The refusal for a trace that calls layer modules otherwise than the run: ``differ``
    maps their names to (calls in the trace, calls when run), ``wiring`` says where layer
    calls hand gradient to other calls (:func:`~gpa.frontends.wiring.wiring_differences`);
    ``tests``: the kinds of test that answer otherwise in ``frontend``'s trace."""
    skipped = [n for n, (traced, _) in differ.items() if not traced]
    said = list(wiring)
    if skipped:
        are = "is" if len(skipped) == 1 else "are"
        names = ", ".join(repr(n) for n in skipped)
        said.append(f"{names} {are} called when it runs, not in the trace")
    said += [
        f"{n!r} is called {run} time{'s' * (run != 1)} when it runs, {traced} in the trace"
        for n, (traced, run) in differ.items()
        if traced
    ]
    return (
        f"{frontend}'s trace of {type(model).__name__} took another branch than its forward "
        f"takes: {'; '.join(said)} (forward tests a value {frontend} holds as "
        f"{_held_as(frontend)} — {tests} — which answers otherwise)"
    )


def unchecked_channels_message(
    model: nn.Module,
    frontend: str = "torch.fx",
    tests: str = "isinstance(h, torch.Tensor), hasattr",
    site: Site | bool | None = None,
) -> str:
    """The refusal of ``frontend`` to give channel segments (``docs/semantics.md`` §1.1 and
    §8) for a model whose ``forward`` tests a value the trace holds as a proxy (fx) or a
    fake tensor (export) — ``tests``: the kinds that answer otherwise there; ``site``: the
    model's line that made the first one, where known. One run confirms which layer calls
    feed which (:func:`~gpa.frontends.wiring.refuse_other_wiring`), not which of their
    channels: a branch adding a residual to half the channels, taken otherwise, feeds the
    same layers and routes other channels.

    Example:
        >>> said = unchecked_channels_message(nn.Identity(), site=("net.py", 12))
        >>> said.split(": ")[0], "(first at net.py, line 12)" in said
        ("torch.fx's trace of Identity cannot give channel segments", True)
    """
    where = f" (first at {site[0]}, line {site[1]})" if isinstance(site, tuple) else ""
    instead = (
        "--tracer export reads the channels as the model runs (auto moves on)"
        if frontend == "torch.fx"
        else "drop --channels for the layer level, which a run checks (auto moves on)"
    )
    return (
        f"{frontend}'s trace of {type(model).__name__} cannot give channel segments: "
        f"forward tests a value {frontend} holds as {_held_as(frontend)}{where} — {tests} — "
        "which answers otherwise than when the model runs, and a run checks which layer "
        "calls feed which, "
        "not which of their channels (a branch adding a residual to half the channels, "
        f"taken otherwise, feeds the same layers); {instead}"
    )


def _held_as(frontend: str) -> str:
    """What ``frontend``'s trace holds in place of a tensor, for messages."""
    return "a proxy" if frontend == "torch.fx" else "a fake tensor"
