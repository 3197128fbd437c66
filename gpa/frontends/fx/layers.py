"""Which traced calls are *layers*: the weight layers gradient paths count.

A layer is a call of a module of a layer type (or of a leaf module containing
one), or a functional feature-mixing call (conv, linear, matmul, einsum,
embedding …) one of whose operands is a parameter or is computed from
parameters alone. Functional layers are reported under the module that owns
the parameter. See ``docs/semantics.md``.

Example:
    >>> import torch.nn as nn
    >>> from gpa.frontends.fx.tracer import trace
    >>> gm = trace(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))
    >>> {n.name: c.record for n, c in find_layers(gm).items()}
    {'_0': '0'}
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from gpa.core.graph import LayerCall
from gpa.errors import TraceError
from gpa.frontends.dynamic import dynamic_layers
from gpa.frontends.fx.flow import FLOW
from gpa.frontends.fx.modes import grad_modes
from gpa.frontends.fx.tracer import call_site
from gpa.frontends.fx.writes import METADATA_QUERIES
from gpa.frontends.metadata import reads_metadata_only
from gpa.frontends.modules import (
    DEFAULT_LAYER_TYPES,
    is_layer_module,
    submodule_lookup,
    type_name,
    unused_layer_modules,
    weight_holder,
    weight_owners,
    with_tied,
)
from gpa.frontends.operators import (
    MIXING_FUNCTION_NAMES,
    added_argument,
    custom_operator,
    mixed_arguments,
    mixes_nothing,
    torch_operator,
)

__all__ = [
    "CONV_FUNCTIONS",
    "DYNAMIC",
    "STANDS_FOR",
    "added_operands",
    "custom_operator_calls",
    "find_layers",
    "graph_reads",
    "weight_nodes",
    "opaque_calls",
    "wrapped_calls",
    "uncalled_layers",
    "used_modules",
    "wrapped",
]


#: ``meta`` key of a dynamic convolution's node (§2): the bias it adds is the layer's
#: own, as its kernel is (not added around it: :func:`added_operands`).
DYNAMIC = "gpa_dynamic_convolution"

#: ``meta`` key of a ``call_module`` node whose target is a stand-in made of the call's
#: operations (the export frontend's fused call of a module from outside ``torch.nn``,
#: timm's ``Conv2dSame``): the module called, whose kind and groups are the call's.
STANDS_FOR = "gpa_stands_for"


def _functions_named(names: Iterable[str]) -> frozenset:
    """The functions model code calls by each of ``names`` (:func:`function_name`'s
    spelling): torch's, ``torch.nn.functional``'s, ``torch.linalg``'s (``linalg_matmul``),
    ``operator``'s (``@``), and every overload of the ATen operator (the export frontend's
    graph holds them; model code may call ``torch.ops.aten.einsum(...)`` itself)."""
    found = set()
    for name in names:
        linalg = name.removeprefix("linalg_")
        spaces = [(torch, name), (F, name), (operator, name)]
        spaces += [(torch.linalg, linalg)] if linalg != name else []
        found |= {f for space, n in spaces if callable(f := getattr(space, n, None))}
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            found |= {packet, *(getattr(packet, o) for o in packet.overloads())}
    return frozenset(f for f in found if not isinstance(f, type))


_CONV_NAMES = "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d".split()
CONV_FUNCTIONS = _functions_named(_CONV_NAMES)
# one list of names for every frontend (the autograd frontend sees the same by name)
_MIXING_FUNCTIONS = _functions_named(MIXING_FUNCTION_NAMES)
_MIXING_METHODS = frozenset(n for n in MIXING_FUNCTION_NAMES if hasattr(torch.Tensor, n))


_MAX_PASSES = 8  # of find_layers over the functional layers; one or two in practice


def _parameter_roots(
    gm: fx.GraphModule, layer_nodes: set[fx.Node], reads: list[Reads] | None = None
) -> tuple[dict[fx.Node, tuple[str, ...]], set[fx.Node], set[fx.Node]]:
    """For nodes computed from parameters alone: the parameter targets they come from;
    which of them are weights picked at positions computed from data; and the nodes
    that are data.

    A node qualifies when it has at least one parameter among its ancestors and
    no placeholder and no layer call among them (buffers and constants are fine).
    Dependencies through non-tensor values (``x.size(0)``) carry only a shape
    and do not count; nor do integer and boolean tensors (indices, masks) computed from
    data where they pick a weight's elements — ``w[idx]``, a mixture of experts' weights
    chosen by its router —, which makes the node *selected* (``docs/semantics.md`` §2).
    The data nodes are the placeholders, the layer calls, and what is computed from them
    otherwise. ``reads``: :func:`graph_reads` of ``gm``, when the caller has it.
    """
    roots: dict[fx.Node, tuple[str, ...]] = {}
    selected: set[fx.Node] = set()
    tainted: set[fx.Node] = set()  # depends on model inputs or on a layer's output
    for node, kind, inputs, tensors in reads if reads is not None else graph_reads(gm):
        if kind is _DATA or node in layer_nodes:
            tainted.add(node)
            continue
        if kind is _PARAMETER:
            roots[node] = (node.target,)
            continue
        if kind is _PARAMETRIZED:  # (its originals: ``a.parametrizations.weight.original0``)
            held = gm.get_submodule(node.target).named_parameters()
            roots[node] = tuple(f"{node.target}.{name}" for name, _ in held)
            continue
        if kind is _ATTRIBUTE:
            continue
        found = tuple(dict.fromkeys(t for n in inputs for t in roots.get(n, ())))
        data = [n for n in tensors if n in tainted]
        if data and not (found and all(_positions(n) for n in data)):
            tainted.add(node)
            continue
        if found:
            roots[node] = found
            if data or any(n in selected for n in inputs):
                selected.add(node)
    return roots, selected, tainted


def weight_nodes(gm: fx.GraphModule, layer_nodes: set[fx.Node]) -> set[fx.Node]:
    """The nodes of ``gm`` that are weights (``docs/semantics.md`` §2): computed from
    parameters alone — without gradient too (``w.detach()``) — or picked from them at
    positions computed from data (``w[idx]``); ``layer_nodes``: the layer calls, whose
    results are data.

    Example:
        >>> class Bank(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = nn.Parameter(torch.ones(3, 2, 2))
        ...     def forward(self, x):
        ...         return torch.bmm(self.w[:1].detach(), x.detach())
        >>> gm = fx.symbolic_trace(Bank())
        >>> sorted(n.name for n in weight_nodes(gm, set()))
        ['detach', 'getitem', 'w']
    """
    return set(_parameter_roots(gm, layer_nodes)[0])


class Reads(NamedTuple):
    """What one node of a graph reads, as :func:`_parameter_roots` follows it (fixed while
    the graph is: worked out once for the passes of :func:`find_layers`)."""

    node: fx.Node
    # _DATA (a placeholder), _PARAMETER, _PARAMETRIZED (a parametrization's call),
    # _ATTRIBUTE (another get_attr), _OPERATION
    kind: object
    inputs: list[fx.Node]  # an operation's inputs whose values it reads
    tensors: list[fx.Node]  # those of them that are tensors


_DATA, _PARAMETER, _PARAMETRIZED, _ATTRIBUTE, _OPERATION = (object() for _ in range(5))


def graph_reads(gm: fx.GraphModule) -> list[Reads]:
    """Every node of ``gm``'s graph, in order, with what it reads (see :class:`Reads`)."""
    reads = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            reads.append(Reads(node, _DATA, [], []))
        elif node.op == "get_attr":
            owner_path, _, attr = node.target.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            parameter = isinstance(getattr(owner, attr, None), nn.Parameter)
            reads.append(Reads(node, _PARAMETER if parameter else _ATTRIBUTE, [], []))
        elif node.op == "call_module" and not node.all_input_nodes and _parametrization(gm, node):
            reads.append(Reads(node, _PARAMETRIZED, [], []))
        else:
            inputs = _value_inputs(node)
            reads.append(Reads(node, _OPERATION, inputs, [n for n in inputs if _is_tensor(n)]))
    return reads


def _parametrization(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` calls a parametrization (``torch.nn.utils.parametrize``: weight
    norm, spectral norm): a weight computed from its originals alone, as reading a
    parametrized module's ``weight`` does."""
    return isinstance(gm.get_submodule(node.target), parametrize.ParametrizationList)


def _value_inputs(node: fx.Node) -> list[fx.Node]:
    """``node``'s inputs but those it reads only the metadata of (``w.type_as(x)``'s
    ``x``, ``ones_like(x)``'s: :mod:`gpa.frontends.metadata`)."""
    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
    else:
        return node.all_input_nodes
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    read = {a for i, a in enumerate(tensors) if not reads_metadata_only(name, i)}
    shaped = {a for a in tensors if a not in read}  # (``x.expand_as(x)`` reads x's values)
    return [n for n in node.all_input_nodes if n not in shaped]


def _positions(node: fx.Node) -> bool:
    """Whether a node's value is an integer or boolean tensor (indices, a mask), through
    which no gradient flows."""
    flow = node.meta.get(FLOW)
    dtype = flow.value.dtype if flow is not None and flow.value is not None else None
    return dtype is not None and (dtype == "bool" or "int" in dtype)


def _is_tensor(node: fx.Node) -> bool:
    """Whether a node's value is a tensor (from shape propagation, else from its name)."""
    flow = node.meta.get(FLOW)
    if flow is not None and flow.value is not None:
        return flow.value.shape is not None
    if node.op == "call_method":
        return node.target not in METADATA_QUERIES
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] not in METADATA_QUERIES
    return True


def _is_mixing(node: fx.Node) -> bool:
    if node.op == "call_function":
        mixing = torch_operator(node.target) in _MIXING_FUNCTIONS
    else:
        mixing = node.op == "call_method" and node.target in _MIXING_METHODS
    return mixing and not _mixes_nothing(node)


def _mixes_nothing(node: fx.Node) -> bool:
    """Whether ``node`` multiplies without summing across its operands
    (:func:`~gpa.frontends.operators.mixes_nothing`; its operands' shapes from the flow
    pass)."""
    name = _operator_name(node)
    flows = [m.meta.get(FLOW) for m in node.all_input_nodes] if name == "inner" else []
    scalar = any(f is not None and getattr(f, "shapes", None) == () for f in flows)
    return mixes_nothing(name, node.args, scalar)


def find_layers(
    gm: fx.GraphModule,
    layer_types: Iterable[type[nn.Module]] | None = None,
    model: nn.Module | None = None,
    known: Iterable[fx.Node] = (),
    reads: list[Reads] | None = None,
) -> dict[fx.Node, LayerCall]:
    """Map every layer call of ``gm``'s graph to the record it belongs to, in graph order.

    Args:
        gm: a traced module (see :func:`gpa.frontends.fx.tracer.trace`).
        layer_types: module classes that are layers; defaults to
            :data:`DEFAULT_LAYER_TYPES`.
        model: the traced model, to name the types of modules that own the
            parameters of functional layers (``gm`` keeps only their tensors).
        known: nodes the caller already knows for layer calls (export's fused module
            calls), not returned; their results are data, as any layer's (§2).
        reads: :func:`graph_reads` of ``gm``, when the caller has it (for
            :func:`opaque_calls` too).
    """
    types = tuple(layer_types) if layer_types is not None else DEFAULT_LAYER_TYPES
    calls: dict[fx.Node, LayerCall] = {}
    submodule = submodule_lookup(gm)  # a tied module by each name
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = submodule(node.target)
            if is_layer_module(module, types):
                calls[node] = LayerCall(node.target, type_name(module), call_site(node))
    # a functional layer's output is data too: read again with the layers found, until
    # they are the layers found (a chain of functional layers: one pass per link)
    functional: dict[fx.Node, tuple[str, ...]] = {}  # -> the parameters of its weight
    reads = reads if reads is not None else graph_reads(gm)
    modes = grad_modes(gm.graph)
    for _ in range(_MAX_PASSES):
        roots, selected, data = _parameter_roots(gm, {*calls, *known, *functional}, reads)
        again = {
            node: _owning(weight, roots, modes[node])
            for node in gm.graph.nodes
            if _is_mixing(node) and (weight := _mixed_weight(node, roots, selected, data))
        }
        if again.keys() == functional.keys():
            break
        functional = again
    _refuse_chains(functional)
    calls.update({node: LayerCall(p, "") for node, p in functional.items()})  # named below
    # dynamic convolutions (CondConv), once every other layer is known
    makers = {n: found for n in gm.graph.nodes if (found := _weight_makers(n, calls, roots))}
    if makers:
        impure = {m for found in makers.values() for m in found if not _kernel_only(m, makers)}
        chosen, unmade = dynamic_layers(makers, impure)
        for node, found in chosen.items():
            functional[node] = functional[found[0]]
            node.meta[DYNAMIC] = True
        for maker in unmade:
            del calls[maker], functional[maker]
    owners = weight_owners(model if model is not None else gm, functional, types)
    for node, (first, *others) in owners.items():
        shared = (first, *others) if others else ()
        calls[node] = LayerCall(*first[:2], call_site(node), owners=shared)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return dict(sorted(calls.items(), key=lambda item: order[item[0]]))


def _refuse_chains(functional: Iterable[fx.Node]) -> None:
    """Refuse a functional layer multiplying three or more matrices at once
    (``linalg.multi_dot``, ``chain_matmul``): torch picks the order by their sizes, and
    which operands meet decides the layers (§2), which one call cannot show.

    Raises:
        TraceError: such a call reads a weight.
    """
    for node in functional:
        count = len(_mixed_operands(node))
        if _operator_name(node) in _CHAINS and count > 2:
            raise TraceError(
                f"'{node.name}' multiplies {count} matrices at once, among them weights: "
                "torch picks the order by their sizes, and which ones meet decides the "
                "layers; the autograd frontend follows the order torch took "
                "(--tracer autograd; auto moves on)"
            )


_CHAINS = frozenset({"linalg_multi_dot", "chain_matmul"})


def _mixed_weight(
    node: fx.Node,
    roots: Mapping[fx.Node, Any],
    selected: set[fx.Node],
    data: set[fx.Node],
) -> fx.Node | None:
    """The operand naming a feature-mixing call that is a layer, else None
    (``docs/semantics.md`` §2). It is a layer when it reads a weight beside data — the
    first weight names it —, or a weight beside one picked at positions computed from data
    (``table[ids] @ w``: the rows picked are data, the embedding's output). With weights,
    buffers and constants alone it computes a weight (``A @ B``, spectral norm's
    ``W @ v``)."""
    operands = _mixed_operands(node)
    weights = [n for n in operands if n in roots]
    if not weights:
        return None
    if any(n in data and _is_tensor(n) for n in operands):
        return weights[0]
    fixed = [n for n in weights if n not in selected]
    return fixed[0] if fixed and len(fixed) < len(weights) else None


def _owning(
    weight: fx.Node, roots: Mapping[fx.Node, tuple[str, ...]], enabled: bool
) -> tuple[str, ...]:
    """Of the parameters a weight is computed from (``roots``: each node computed from
    parameters alone -> those parameters, :func:`_parameter_roots`), those it carries
    gradient back to: a call of each of their modules (§2). In grad mode (``enabled``, the
    call's), along the edges gradient flows back through — not a detached part, nor one
    made under ``no_grad`` (a teacher's weights moved toward the student's, detached, are
    the teacher's alone); under ``no_grad``, along every edge but a detach. All of them
    where none is reached (every part detached)."""
    parameters = roots[weight]
    if len({weight_holder(p) for p in parameters}) < 2:
        return parameters
    reached, seen, stack = set(), set(), [weight]
    while stack:
        node = stack.pop()
        if node in seen or _cuts_gradient(node):
            continue
        seen.add(node)
        if node.op in ("get_attr", "call_module"):  # a parameter, a parametrization
            reached.update(roots.get(node, ()))
        stack.extend(_grad_inputs(node) if enabled else node.all_input_nodes)
    return tuple(p for p in parameters if p in reached) or parameters


def _cuts_gradient(node: fx.Node) -> bool:
    """``x.detach()``, ``x.data`` (and export's ATen ``detach``): what they read sends
    gradient nowhere."""
    if node.op == "call_method":
        return node.target in ("detach", "detach_")
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] == "data"
    return node.target in _DETACHING


_DETACHING = frozenset(
    {torch.detach, torch.detach_, torch.ops.aten.detach.default, torch.ops.aten.detach_.default}
)


def _mixed_operands(node: fx.Node) -> list[fx.Node]:
    """The operands a feature-mixing call mixes, without the bias it adds (``F.linear``'s
    and a convolution's ``bias``, ``addmm``'s ``input``): a bias alone makes no layer
    (``docs/semantics.md`` §2), as the autograd frontend reads it too."""
    mixed = mixed_arguments(_operator_name(node), node.args, node.kwargs)
    # (by position: ``addmm(h, h, w)`` adds h and mixes it too)
    return list(dict.fromkeys(n for a in mixed for n in _nodes_in(a)))


def added_operands(node: fx.Node) -> dict[fx.Node, bool]:
    """The nodes a feature-mixing call only adds to its product (``F.linear``'s and a
    convolution's ``bias``, ``addmm``'s ``input``), each with whether the call mixes it
    too (``addmm(h, h, w)``); empty for any other node, and for a dynamic convolution,
    whose bias its makers made (:data:`DYNAMIC`).

    Example:
        >>> g = fx.Graph()
        >>> h, w, b = g.placeholder("h"), g.placeholder("w"), g.placeholder("b")
        >>> added_operands(g.call_function(torch.addmm, (b, h, w)))
        {b: False}
        >>> added_operands(g.call_function(torch.addmm, (h, h, w)))
        {h: True}
    """
    name = _operator_name(node) if node.op != "call_module" else ""
    given = added_argument(name, node.args, node.kwargs)
    if given is None or node.meta.get(DYNAMIC):
        return {}
    mixed = set(_mixed_operands(node))
    return {n: n in mixed for n in _nodes_in(given)}


def _nodes_in(argument: Any) -> list[fx.Node]:
    """The nodes an argument holds (itself, or those in a list or tuple)."""
    found: list[fx.Node] = []
    fx.node.map_arg(argument, found.append)
    return found


def _operator_name(node: fx.Node) -> str:
    """The name of the operator a call node calls: a method's, a function's, an ATen
    overload's packet (``aten.addmm.default``: ``addmm``)."""
    if node.op == "call_method":
        return node.target
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet if packet is not None else target, "__name__", "")


def _weight_makers(
    node: fx.Node, calls: Mapping[fx.Node, LayerCall], roots: Mapping[fx.Node, Any]
) -> list[fx.Node]:
    """For a convolution whose weight is computed from parameters *and* data — a dynamic
    convolution: CondConv mixes its expert kernels by weights computed from the input — the
    functional layers computing that weight and its bias (``routing @ experts``), in graph
    order; else none.

    Such a convolution is the layer (it mixes the features); the mixing that makes its
    weight is not (``docs/semantics.md`` §2). Found by walking back from the weight
    argument through tensors that are no layer's result, up to the nearest functional
    layers; the walk stops at the data the convolution reads (its input and what that is
    computed from: the layers before it).
    """
    if not _is_conv_call(node) or node in calls:
        return []
    data, weight, bias = _conv_arguments(node)
    if not isinstance(weight, fx.Node) or weight in roots or weight.op == "get_attr":
        return []
    makers, seen = [], _data_ancestors(data) if isinstance(data, fx.Node) else set()
    stack = [m for m in (weight, bias) if isinstance(m, fx.Node) and m in _grad_inputs(node)]
    while stack:
        n = stack.pop()
        if n in seen or n.op in ("placeholder", "get_attr") or not _is_tensor(n):
            continue
        seen.add(n)
        if n in calls:  # a layer: a functional one makes the weight, a module's is data
            if n.op != "call_module":
                makers.append(n)
            continue
        if not _is_conv_call(n):  # another convolution's result is data
            stack.extend(_grad_inputs(n))
    if not makers:
        return []
    position = {n: i for i, n in enumerate(node.graph.nodes)}
    return sorted(makers, key=position.__getitem__)


def _conv_arguments(node: fx.Node) -> tuple[Any, Any, Any]:
    """A functional convolution's input, weight and bias arguments (positional or named)."""
    names = ("input", "weight", "bias")
    return tuple(
        node.args[i] if len(node.args) > i else node.kwargs.get(name)
        for i, name in enumerate(names)
    )


def _kernel_only(maker: fx.Node, convolutions: Mapping[fx.Node, Any]) -> bool:
    """Whether ``maker``'s result sends gradient back from nothing but the weight and bias
    arguments of ``convolutions`` (those found to have makers), through operations that
    are no layers: no other layer or mixing reads it with gradient, and it is not returned
    (uses without gradient — detached, under ``no_grad`` — do not count, as for every path)."""
    seen, stack = set(), [maker]
    while stack:
        n = stack.pop()
        for user in n.users:
            if user in seen or n not in _grad_inputs(user):
                continue  # a size read off it, a detached use: no gradient comes back
            seen.add(user)
            if user.op == "output":
                return False
            if user in convolutions:
                data, weight, bias = _conv_arguments(user)
                if n is not data and n in (weight, bias):
                    continue  # a kernel or a bias: the maker's use
            if user.op == "call_module" or _is_mixing(user):
                return False  # a layer, a leaf or a mixing reads it as data
            stack.append(user)
    return True


def _is_conv_call(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in CONV_FUNCTIONS


def _grad_inputs(node: fx.Node) -> Iterable[fx.Node]:
    """The inputs gradient flows back to from ``node`` (the flow pass's; for the output
    node, the returned values carrying gradient), or all of them before that pass."""
    flow = node.meta.get(FLOW)
    return flow.grad_from if flow is not None else node.all_input_nodes


def _data_ancestors(node: fx.Node) -> set[fx.Node]:
    """``node`` and the nodes it is computed from, not through a convolution's kernel or
    bias (a convolution's result is data made from data: ``conv(conv(x, w), w)`` reads
    ``w`` as a kernel twice, never as data)."""
    found, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in found:
            continue
        found.add(n)
        if _is_conv_call(n):
            data = _conv_arguments(n)[0]
            stack.extend([data] if isinstance(data, fx.Node) else [])
        else:
            stack.extend(n.all_input_nodes)
    return found


def opaque_calls(
    gm: fx.GraphModule, calls: Mapping[fx.Node, LayerCall], reads: list[Reads] | None = None
) -> list[tuple[fx.Node, list[str]]]:
    """Calls of functions fx kept opaque (``torch.fx.wrap``) that read parameters.

    gpa cannot see what such a function does with the weights it is given, so a
    layer inside it would go unnoticed; the caller traces into them or reports them.
    Returns (call node, modules owning the parameters it reads). ``reads``:
    :func:`graph_reads` of ``gm``, when the caller has it.
    """
    if not any(wrapped(n) for n in gm.graph.nodes):
        return []
    return _weight_readers(gm, calls, lambda n: wrapped(n) and not _is_mixing(n), reads)


def custom_operator_calls(
    gm: fx.GraphModule, calls: Mapping[fx.Node, LayerCall]
) -> dict[str, list[str]]:
    """Custom operators (:mod:`gpa.frontends.operators`) given weights beside data: their
    qualified names, each with the modules owning the parameters they read."""
    if not any(custom_operator(n.target) for n in gm.graph.nodes if n.op == "call_function"):
        return {}
    found: dict[str, dict[str, None]] = {}
    for node, owners in _weight_readers(
        gm, calls, lambda n: n.op == "call_function" and custom_operator(n.target) is not None
    ):
        found.setdefault(custom_operator(node.target), {}).update(dict.fromkeys(owners))
    return {name: list(owners) for name, owners in found.items()}


def _weight_readers(
    gm: fx.GraphModule,
    calls: Mapping[fx.Node, LayerCall],
    chosen: Callable[[fx.Node], bool],
    reads: list[Reads] | None = None,
) -> list[tuple[fx.Node, list[str]]]:
    """The ``chosen`` nodes, not layers, given a weight beside anything else, each with
    the modules owning the parameters it reads."""
    roots, selected, _ = _parameter_roots(gm, set(calls), reads)
    found = []
    for node in gm.graph.nodes:
        if node in calls or not chosen(node):
            continue
        params = [t for n in node.all_input_nodes for t in roots.get(n, ())]
        # beside data, or beside rows picked by data (``table[ids]``: an embedding's output)
        if params and any(n not in roots or n in selected for n in node.all_input_nodes):
            found.append((node, sorted({p.rpartition(".")[0] or p for p in params})))
    return found


def wrapped(node: fx.Node) -> bool:
    """A call of a function from outside torch, Python and gpa: one fx kept whole."""
    if node.op != "call_function":
        return False
    module = getattr(node.target, "__module__", None) or ""
    return module.split(".")[0] not in ("torch", "_operator", "operator", "builtins", "math", "gpa")


def wrapped_calls(gm: fx.GraphModule) -> list[fx.Node]:
    """The calls of functions fx kept whole (``torch.fx.wrap``, from outside torch).

    Example:
        >>> import torch.nn as nn
        >>> wrapped_calls(fx.symbolic_trace(nn.Linear(2, 2)))
        []
    """
    return [n for n in gm.graph.nodes if wrapped(n)]


def uncalled_layers(
    model: nn.Module,
    gm: fx.GraphModule,
    layer_types: Iterable[type[nn.Module]] | None = None,
    calls: Mapping[Any, LayerCall] | None = None,
    named: Iterable[tuple[str, nn.Module]] | None = None,
) -> list[tuple[str, str]]:
    """Layer modules of ``model`` that the traced forward never uses, as (name, type).

    Modules inside a called leaf module or inside another layer module (e.g. the
    output projection of ``nn.MultiheadAttention``) are part of that call, not
    separate layers; see :func:`used_modules` for what uses a module. ``named``:
    ``model.named_modules()``, when the caller walked them already.
    """
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    used = used_modules(gm, calls, model)
    return unused_layer_modules(model, used, layer_types, called, named)


def used_modules(
    gm: fx.GraphModule,
    calls: Mapping[Any, LayerCall] | None = None,
    model: nn.Module | None = None,
) -> set[str]:
    """The qualified names of the modules the traced forward uses.

    A module is used when it is called, when it owns the parameter of a functional layer
    (one of ``calls``), or when gradient flows into one of its parameters by another route
    (a positional embedding's weight added to activations). A parameter that is merely
    read — passed to a helper that ignores it, read for its shape — does not use it.
    """
    used = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    used |= {c.record for c in (calls or {}).values()}
    used |= {n.target.rpartition(".")[0] for n in _receiving_gradient(gm) if n.op == "get_attr"}
    return with_tied(model if model is not None else gm, used)


def _receiving_gradient(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes gradient flows into from the returned values (all of them)."""
    nodes = list(gm.graph.nodes)
    output = next(n for n in reversed(nodes) if n.op == "output")
    reached = set(output.meta[FLOW].grad_from)
    for node in reversed(nodes):
        if node in reached:
            reached |= node.meta[FLOW].grad_from
    return reached
