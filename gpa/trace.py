"""Symbolic tracing of a model into a torch.fx graph.

The tracer follows torch.fx's leaf policy (modules of ``torch.nn`` are leaves)
plus the leaf modules the user declares. It also records what plain fx loses:
changes of autograd's grad mode inside ``forward`` (``torch.no_grad()``,
``torch.set_grad_enabled(False)``, ``torch.inference_mode()``) become
:func:`grad_mode` nodes, so later passes know which code ran without gradient.

Example:
    >>> import torch.nn as nn
    >>> gm = trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> [n.op for n in gm.graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import os
import traceback
from collections.abc import Iterable, Iterator

import torch
import torch.fx as fx
from torch import nn

from gpa.errors import TraceError

__all__ = ["trace", "grad_mode", "single_call", "LeafSpec"]

LeafSpec = Iterable[type[nn.Module] | str]

_TORCH_DIR = os.path.dirname(torch.__file__)
_GPA_DIR = os.path.dirname(__file__)


def grad_mode(enabled: bool) -> None:
    """Set autograd's grad mode; recorded in traced graphs where ``forward`` changes it."""
    torch._C._set_grad_enabled(enabled)


class _Tracer(fx.Tracer):
    """fx tracer with user leaf modules and grad-mode recording."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str]) -> None:
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._leaf_names or isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def record_grad_mode(self, enabled: bool) -> None:
        self.create_node("call_function", grad_mode, (bool(enabled),), {})


@contextlib.contextmanager
def _recording_grad_mode(tracer: _Tracer) -> Iterator[None]:
    """Patch torch's grad-mode switches so that calls made while tracing are recorded."""
    real_set = torch._C._set_grad_enabled
    inference_mode = torch.autograd.grad_mode.inference_mode
    real_enter, real_exit = inference_mode.__enter__, inference_mode.__exit__

    def set_and_record(mode: bool) -> None:
        real_set(mode)
        tracer.record_grad_mode(mode)

    # inference_mode(m) sets grad mode to (not m) for its block: inference_mode(False)
    # inside inference_mode() enables gradient again.
    def enter(self) -> None:
        self._gpa_prev = torch.is_grad_enabled()
        real_enter(self)
        tracer.record_grad_mode(not self.mode)

    def exit(self, *exc) -> None:
        real_exit(self, *exc)
        tracer.record_grad_mode(self._gpa_prev)

    torch._C._set_grad_enabled = set_and_record
    inference_mode.__enter__, inference_mode.__exit__ = enter, exit
    try:
        yield
    finally:
        torch._C._set_grad_enabled = real_set
        inference_mode.__enter__, inference_mode.__exit__ = real_enter, real_exit


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame that belongs to the user's code (not torch, not gpa)."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [
        f
        for f in frames
        if not f.filename.startswith((_TORCH_DIR, _GPA_DIR)) and not f.filename.startswith("<")
    ]
    return user[-1] if user else None


def _split_leaves(leaf_modules: LeafSpec | None) -> tuple[tuple[type, ...], frozenset[str]]:
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


def trace(model: nn.Module, leaf_modules: LeafSpec | None = None) -> fx.GraphModule:
    """Trace ``model`` symbolically with torch.fx.

    Args:
        model: the module to trace; it is not modified.
        leaf_modules: extra module classes or qualified module names that fx
            must record as single calls instead of tracing into them.

    Returns:
        A ``GraphModule`` whose graph contains :func:`grad_mode` calls where
        ``forward`` switched grad mode.

    Raises:
        TraceError: fx cannot trace the model; the message points at the
            model's own source line when the traceback has one.
    """
    types, names = _split_leaves(leaf_modules)
    unknown = sorted(n for n in names if n not in dict(model.named_modules()))
    if unknown:
        raise TraceError(f"leaf module name(s) not found in the model: {', '.join(unknown)}")
    tracer = _Tracer(types, names)
    before = set(vars(model))
    try:
        with torch.enable_grad(), _recording_grad_mode(tracer):
            graph = tracer.trace(model)
    except Exception as exc:  # any failure inside user code under symbolic tracing
        raise TraceError(_trace_failure_message(model, exc)) from exc
    _follow_mutations(graph, model)
    gm = fx.GraphModule(tracer.root, graph, model.__class__.__name__)
    for added in set(vars(model)) - before:  # fx parks tensor constants on the root
        vars(model).pop(added, None)
    return gm


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
    return fx.GraphModule(holder, graph, name)


def _trace_failure_message(model: nn.Module, exc: BaseException) -> str:
    where = _user_frame(exc)
    lines = [f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}"]
    if where is not None:
        lines.append(f'  File "{where.filename}", line {where.lineno}, in {where.name}')
        if where.line:
            lines.append(f"    {where.line.strip()}")
    lines.append(
        "Symbolic tracing cannot follow control flow or Python logic that depends on tensor "
        "values. Declare the module that does it a leaf (--leaf NAME / leaf_modules=[...]) "
        "so it is treated as one opaque call, or rewrite that code without data-dependent "
        "Python."
    )
    return "\n".join(lines)


_VIEW_METHODS = frozenset(
    "view reshape narrow select transpose permute flatten unflatten squeeze unsqueeze expand "
    "chunk split unbind t view_as as_strided diagonal movedim swapaxes unfold".split()
)


def _mutated(node: fx.Node, root: nn.Module) -> fx.Node | None:
    """The traced value an in-place call overwrites (``x.add_(y)``, ``F.relu(x, inplace=True)``)."""
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_"):
        return first
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.kwargs.get("inplace") or (name.endswith("_") and not name.startswith("_")):
            return first
    if node.op == "call_module" and getattr(root.get_submodule(node.target), "inplace", False):
        return first
    return None


def _is_view(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    return node.op == "call_function" and (
        node.target is operator.getitem or getattr(node.target, "__name__", "") in _VIEW_METHODS
    )


def _follow_mutations(graph: fx.Graph, root: nn.Module) -> None:
    """Make later readers of a tensor that an in-place call overwrote read the call's result.

    In-place calls return the tensor they modify, so rewiring the later uses
    turns the mutation into ordinary data flow. A write into a *view* whose base
    is read afterwards cannot be followed this way and is refused.
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        target = _mutated(node, root)
        if target is None:
            continue
        for user in list(target.users):
            if order[user] > order[node]:
                user.replace_input_with(target, node)
        base = target
        while _is_view(base) and isinstance(base.args[0], fx.Node):
            base = base.args[0]
            later = [u for u in base.users if order[u] > order[node]]
            if later:
                raise TraceError(
                    f"'{node.name}' writes in place into a view of '{base.name}', which is read "
                    f"again afterwards by '{later[0].name}'; gpa cannot follow writes through "
                    "views. Write the update functionally (e.g. with torch.cat) or declare the "
                    "module doing it a leaf."
                )
