"""In-place writes in a traced graph (``docs/semantics.md`` §1.3).

Which tensor an operation writes into (an in-place method or function, an ATen schema's
written argument, ``out=``, item assignment, an augmented assignment ``b += y``), through
which views, who reads it afterwards, which writes an fx graph cannot show (into a view
read again, into a tensor fx holds as an attribute, through a detached alias), and which
tensors are made of constants alone (no gradient goes through what is written into them).
The fx frontend's flow pass, the export frontend and the channel routing read them.

Example:
    >>> g = fx.Graph()
    >>> x, y = g.placeholder("x"), g.placeholder("y")
    >>> v = g.call_method("narrow", (x, 1, 0, 2))
    >>> w = g.call_method("add_", (v, y))
    >>> _ = g.output(g.call_method("relu", (x,)))
    >>> written_into(w).name, write_into_view(g).name
    ('narrow', 'add_')
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from gpa.errors import TraceError
from gpa.frontends.fx.modes import grad_modes
from gpa.frontends.modules import submodule_lookup

__all__ = [
    "AUGMENTED",
    "METADATA_QUERIES",
    "VIEW_METHODS",
    "detached_write_targets",
    "detaches",
    "follow_mutations",
    "follow_write",
    "later_read_of_attribute",
    "later_reader",
    "made_of_constants",
    "view_base",
    "write_into_view",
    "writes_followed",
    "written_into",
]

# Augmented assignments fx records as such, so that the flow pass can tell a write into a
# tensor (``b += y`` changes every other name of ``b`` too) from a number's rebinding;
# a plain fx proxy has no ``__iadd__``, so Python records ``b = b + y``.
AUGMENTED = {
    getattr(operator, f"i{name}"): f"__i{name}__"
    for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow")
}


# Operations whose result is a view of their first argument (ATen's schemas mark their
# result ``Tensor(a)``, aliasing it): a write into it writes into the argument too. Those
# that return their argument itself only at times (``contiguous``, ``to``, ``float``,
# dropout in eval mode) are told apart by the flow pass, which asks the call.
VIEW_METHODS = frozenset(
    "view reshape narrow select transpose permute flatten unflatten squeeze unsqueeze expand "
    "chunk split unbind t view_as as_strided diagonal movedim swapaxes unfold swapdims "
    "moveaxis reshape_as ravel expand_as broadcast_to tensor_split hsplit vsplit dsplit "
    "split_with_sizes adjoint real imag mT mH".split()
)
# Attributes read as views (``x.T``, ``x.mT``, ``x.real``): fx records ``getattr(x, name)``.
_VIEW_ATTRIBUTES = frozenset("T mT H mH real imag".split())


def _mutated(node: fx.Node, submodule: Callable[[str], Any] | None) -> fx.Node | None:
    """The traced value an in-place call overwrites (``x.add_(y)``, ``F.relu(x, inplace=True)``,
    an ATen operation whose schema writes its first argument, ``aten.copy_``, or its
    ``out``, ``aten.add.out``);
    ``submodule`` gives the module a ``call_module`` node calls (None: no module calls)."""
    if isinstance(node.target, torch._ops.OpOverload):  # the argument its schema writes
        return _written_argument(node, node.target._schema.arguments)
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_"):
        return first
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.kwargs.get("inplace") or (name.endswith("_") and not name.startswith("_")):
            return first
    if (
        node.op == "call_module"
        and submodule is not None
        and getattr(submodule(node.target), "inplace", False)
    ):
        return first
    return None


def _written_argument(node: fx.Node, arguments: Sequence[Any]) -> fx.Node | None:
    """The node an ATen operation writes into, by its schema ``arguments``: its first
    argument (``aten.add_``, ``aten.copy_``) or its keyword-only ``out`` (``aten.add.out``,
    which export records for ``torch.add(y, 1, out=y)`` under ``no_grad``). Statistics a
    norm updates in place (``running_mean``) are not what its result is written into."""
    first = arguments[0] if arguments else None
    if first is not None and first.alias_info is not None and first.alias_info.is_write:
        given = node.args[0] if node.args else node.kwargs.get(first.name)
        return given if isinstance(given, fx.Node) else None
    for argument in arguments:
        if argument.kwarg_only and argument.alias_info is not None and argument.alias_info.is_write:
            given = node.kwargs.get(argument.name)
            return given if isinstance(given, fx.Node) else None
    return None


def _is_view(node: fx.Node) -> bool:
    if isinstance(node.target, torch._ops.OpOverload):  # ATen: its result aliases its input
        returns = node.target._schema.returns
        alias = returns[0].alias_info if returns else None
        return alias is not None and not alias.is_write
    if node.op == "call_method":
        return node.target in VIEW_METHODS
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1:
        return node.args[1] in _VIEW_ATTRIBUTES
    return node.op == "call_function" and (
        node.target is operator.getitem or getattr(node.target, "__name__", "") in VIEW_METHODS
    )


# Operations whose result is new memory: the function's own tensor, written as it likes.
_MADE = frozenset(
    "zeros ones empty full zeros_like ones_like empty_like full_like arange eye tensor "
    "new_zeros new_ones new_empty new_full new_tensor clone".split()
)
# Operations reading a tensor into new memory, never returning it or a view of it.
_READ_INTO_NEW = _MADE | frozenset(
    "add sub mul truediv div matmul neg sum mean eq ne lt le gt ge masked_fill".split()
)


def _name_of(node: fx.Node) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", "")


def written_into(node: fx.Node, submodule: Callable[[str], Any] | None = None) -> fx.Node | None:
    """The node whose tensor ``node`` writes into in place: an in-place call (``x.add_(y)``,
    ``F.relu(x, inplace=True)``, ``setitem_``, an ATen operation writing its first
    argument; a module with ``inplace`` set, given ``submodule``, which gives the module a
    ``call_module`` node calls) or an augmented assignment (``b += y``, which may be a
    number's rebinding: counted as a write). None for any other node.

    Example:
        >>> g = fx.Graph()
        >>> x = g.placeholder("x")
        >>> written_into(g.call_method("relu_", (x,))), written_into(g.call_method("relu", (x,)))
        (x, None)
    """
    target = _mutated(node, submodule)
    if target is None and node.target in AUGMENTED and isinstance(node.args[0], fx.Node):
        target = node.args[0]
    return target


def writes_followed(graph: fx.Graph) -> bool:
    """Whether every in-place write of ``graph`` is one its data flow shows whole: a write
    into a tensor the graph made (``new_zeros``, ``clone``…), directly or through views fx
    knows (``view``, indexing…), whose memory nothing read before the write but such views,
    other writes and operations copying it into new memory (``clone``, arithmetic). A
    write into a placeholder (its caller's tensor), or through another alias (``x.T``,
    ``x.contiguous()``: a view or the tensor itself, depending on the tensor), is not.

    Example:
        >>> def graph(into_input):
        ...     g = fx.Graph()
        ...     x = g.placeholder("x")
        ...     target = g.call_method("view", (x, -1)) if into_input else g.call_method(
        ...         "new_zeros", (x, 3))
        ...     _ = g.output(g.call_method("fill_", (target, 1.0)))
        ...     return g
        >>> writes_followed(graph(into_input=False)), writes_followed(graph(into_input=True))
        (True, False)
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        base = written_into(node)
        if base is None:
            continue
        while True:  # back to the memory's maker, through views and earlier writes
            if _is_view(base) and base.args and isinstance(base.args[0], fx.Node):
                base = base.args[0]
            elif written_into(base) is not None:
                base = written_into(base)
            else:
                break
        if base.op not in ("call_function", "call_method") or _name_of(base) not in _MADE:
            return False
        aliases, seen = [base], set()
        while aliases:  # what read the memory before this write: views, writes, copies
            alias = aliases.pop()
            seen.add(alias)
            for user in alias.users:
                if order[user] >= order[node] or user in seen:
                    continue
                if _is_view(user) or written_into(user) is alias:
                    aliases.append(user)
                elif user.op not in ("call_function", "call_method") or (
                    _name_of(user) not in _READ_INTO_NEW
                ):
                    return False  # it may have returned the memory itself (x.contiguous())
    return True


def follow_mutations(graph: fx.Graph, root: nn.Module) -> None:
    """Make later readers of a tensor that an in-place call overwrote read the call's result.

    In-place calls return the tensor they modify, so rewiring the later uses
    turns the mutation into ordinary data flow. A write into a *view* whose base
    is read afterwards cannot be followed this way and is refused.
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    submodule = submodule_lookup(root)
    modes = grad_modes(graph)
    for node in list(graph.nodes):
        target = _mutated(node, submodule)
        if target is not None:
            follow_write(node, target, order, modes[node])


def follow_write(
    node: fx.Node, target: fx.Node, order: Mapping[fx.Node, int], enabled: bool = True
) -> None:
    """Make the readers of ``target`` after ``node`` (``order``: each node's position)
    read ``node``, which wrote into ``target`` in place and returns it (in grad mode
    ``enabled``: a write under ``no_grad`` changes no history, so another name of the
    memory read afterwards reads what gradient reaches as it is).

    Raises:
        TraceError: ``target`` is a view of a tensor read again after the write.
    """
    for user in list(target.users):
        if order[user] > order[node]:
            user.replace_input_with(target, node)
    stale = _read_after_write(node, target, order) if enabled else None
    if stale is not None and not made_of_constants(node.graph)[node]:
        alias, reader = stale
        ancestors = []
        while _is_view(target) and target.args and isinstance(target.args[0], fx.Node):
            target = target.args[0]
            ancestors.append(target)
        where = (
            f"a view of '{alias.name}', which is"
            if alias in ancestors
            else f"'{node.args[0].name}', and '{alias.name}' (a view of the same tensor) is"
        )
        raise TraceError(
            f"'{node.name}' writes in place into {where} read again afterwards by "
            f"'{reader.name}'; gpa cannot follow writes through views. Write the update "
            "functionally (e.g. with torch.cat) or declare the module doing it a leaf."
        )


def _read_after_write(
    node: fx.Node, target: fx.Node, order: Mapping[fx.Node, int]
) -> tuple[fx.Node, fx.Node] | None:
    """(other name, later reader) when ``node`` writes into ``target`` and another name of
    the same memory is read after the write: a tensor ``target`` is a view of, or — for a
    write into a whole tensor — a view of it taken before the write (``v = m[:, :2];
    m.copy_(y); f(v)``). Later readers of ``target`` itself are not counted:
    :func:`follow_write` rewires them."""
    if _is_view(target):
        base = target
        while _is_view(base) and base.args and isinstance(base.args[0], fx.Node):
            base = base.args[0]
            later = [
                u for u in base.users if order[u] > order[node] and not _reads_metadata(u, base)
            ]  # ``h.shape`` after the write reads no value
            if later:
                return base, min(later, key=order.__getitem__)
        return None
    views = [target]
    for name in views:  # grows: every view of every view, transitively
        views += [u for u in name.users if _is_view(u) and u.args and u.args[0] is name]
    for name in views[1:]:
        later = [u for u in name.users if order[u] > order[node] and not _reads_metadata(u, name)]
        if later:
            return name, min(later, key=order.__getitem__)
    return None


#: Tensor methods and attributes that read a tensor's metadata, not its values.
METADATA_QUERIES = frozenset({"size", "dim", "numel", "shape", "dtype", "device", "ndim"})


def later_reader(node: fx.Node, target: fx.Node, order: Mapping[fx.Node, int]) -> fx.Node | None:
    """The first node after ``node`` (``order``: each node's position) that reads the values
    of ``target`` or of another name of its memory — a tensor it is a view of, a view of
    either, another read of the same attribute (fx reads a buffer anew at each use) —, or
    None. Reading metadata alone (:data:`METADATA_QUERIES`, ``torch.zeros_like(x)``,
    ``x.new_zeros(n)``) does not count.

    Example:
        >>> g = fx.Graph()
        >>> x = g.placeholder("x")
        >>> half = g.call_function(operator.getitem, (x, slice(0, 2)))
        >>> write = g.call_method("add_", (half, 1))
        >>> size = g.call_method("size", (x,))
        >>> later = g.call_method("relu", (x,))
        >>> order = {n: i for i, n in enumerate(g.nodes)}
        >>> later_reader(write, half, order).name
        'relu'
    """
    root = target
    while _is_view(root) and root.args and isinstance(root.args[0], fx.Node):
        root = root.args[0]
    names = [root]
    if root.op == "get_attr":  # each use of an attribute is a node of its own
        reads = root.graph.find_nodes(op="get_attr")
        names += [n for n in reads if n.target == root.target and n is not root]
    for name in names:  # grows: every view of every view, transitively
        names += [u for u in name.users if _is_view(u) and u.args and u.args[0] is name]
    readers = (
        u
        for name in names
        for u in name.users
        if order[u] > order[node] and not _is_view(u) and not _reads_metadata(u, name)
    )
    return min(readers, key=order.__getitem__, default=None)


def _reads_metadata(node: fx.Node, tensor: fx.Node) -> bool:
    """Whether ``node`` reads only ``tensor``'s metadata (shape, dtype, device), not its
    values: ``x.size()``, ``x.shape``, or a tensor made like it (``torch.zeros_like(x)``,
    ``x.new_zeros(n)``) where ``x`` is the first argument and nowhere else."""
    if node.op == "call_method" and node.target in METADATA_QUERIES:
        return True
    if node.target is getattr and len(node.args) > 1 and node.args[1] in METADATA_QUERIES:
        return True
    if _op_name(node.target) not in _MADE_LIKE or not node.args or node.args[0] is not tensor:
        return False
    return tensor not in _nodes_in((node.args[1:], node.kwargs))


# Operations making a tensor from another's metadata alone (that tensor given first).
_MADE_LIKE = frozenset(
    "new_zeros new_ones new_empty new_full zeros_like ones_like empty_like full_like "
    "rand_like randn_like randint_like".split()
)


def _nodes_in(arguments: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(arguments, found.append)
    return found


def later_read_of_attribute(
    node: fx.Node, order: Mapping[fx.Node, int], held: Callable[[str], Any]
) -> fx.Node | None:
    """When ``node`` writes in place into a tensor fx holds as an attribute — a tensor made
    while tracing (``buf = torch.zeros(2, 4); buf[:, :2] = y``: fx stores ``buf`` as a
    constant) or a buffer —: the first node reading it after the write (``order``: each
    node's position), which fx does without the write (each use of an attribute reads it
    anew; ``__setitem__`` returns nothing to read instead); for a view made while tracing
    and not read again by name (``held`` gives an attribute's value), the attribute's own
    node (it is a view of memory read under other names: ``self.buf[:, :2].copy_(y)``).
    A tensor made while tracing is read, too, by any constant fx first holds after the
    write (a view of it, or a value computed from it while tracing: ``b(c + 1)``). Else
    None."""
    target = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    setitem = node.op == "call_method" and node.target == "__setitem__"
    if target is None or not (setitem or node.target in AUGMENTED or _mutated(node, None)):
        return None
    root = view_base(target)  # ``self.buf[:, :2].copy_(y)`` writes into ``buf`` too
    if root.op != "get_attr":
        return None
    readers = [u for u in target.users if u is not node] if setitem else []
    written = held(root.target)
    readers += [  # by its name, or by another one for its memory (a view taken while tracing)
        m
        for m in node.graph.nodes
        if m.op == "get_attr" and (m.target == root.target or _same_memory(held(m.target), written))
    ]
    if _made_while_tracing(root.target):
        readers += _constants_made_after(node, order)
    later = min((m for m in readers if order[m] > order[node]), key=order.__getitem__, default=None)
    if later is None and getattr(held(root.target), "_base", None) is not None:
        # a view made while tracing (``self.buf[:, :2]``: fx holds a constant): the other
        # names of its memory are out of fx's sight
        return root
    return later


def _made_while_tracing(target: str) -> bool:
    """Whether a ``get_attr`` target is a tensor fx stored as a constant of its own (made
    while tracing: fx's ``_tensor_constant`` names), not one of the model's."""
    return target.rpartition(".")[2].startswith("_tensor_constant")


def _constants_made_after(node: fx.Node, order: Mapping[fx.Node, int]) -> list[fx.Node]:
    """The reads of constants fx first holds after ``node``: values the model's code
    computed while tracing, perhaps from what ``node`` wrote into (``c[:, :] = y; b(c +
    1)``: ``c + 1`` ran on ``c`` without the write, a constant of its own)."""
    first: dict[str, fx.Node] = {}
    for m in node.graph.nodes:
        if m.op == "get_attr" and _made_while_tracing(m.target):
            first.setdefault(m.target, m)
    return [m for m in first.values() if order[m] > order[node]]


def _same_memory(a: Any, b: Any) -> bool:
    """Whether tensors ``a`` and ``b`` hold the same memory: one storage (``c`` and ``v =
    c[:, :2]``, made while tracing: fx holds them as two constants), or, on the meta
    device (no storage to compare), one is a view of the other or both of one tensor."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if a.device.type != "meta" and b.device.type != "meta":
        pointer = a.untyped_storage().data_ptr()
        return pointer != 0 and pointer == b.untyped_storage().data_ptr()
    return (a._base if a._base is not None else a) is (b._base if b._base is not None else b)


def write_into_view(graph: fx.Graph) -> fx.Node | None:
    """The first in-place write into a view of a tensor read again after it (``out[:, :2] =
    y`` in an exported graph: ``copy_`` into a ``slice`` of ``out``), or None. Writes made
    of constants alone (:func:`made_of_constants`) do not count: no gradient goes through
    them, whatever they write."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    constant: dict[fx.Node, bool] | None = None
    for node in graph.nodes:
        target = _mutated(node, None)
        if target is not None and _read_after_write(node, target, order) is not None:
            constant = constant or made_of_constants(graph)
            if not constant[node]:
                return node
    return None


def detached_write_targets(graph: fx.Graph) -> list[fx.Node]:
    """The ``detach`` nodes of an ATen graph whose memory an in-place write changes
    afterwards — written into directly or through views of them (``v = h.detach(); v +=
    y``), or through the tensor they detach or a view of it (``v = h.detach(); h += y;
    c(v)``) —, in graph order.

    Such a write changes values on both sides but no history across: autograd does not
    follow a write through a detached alias back to ``h`` (its later readers get gradient
    into what made ``h``, none into ``y``), nor give ``v`` any from a write into ``h``,
    while a functional form of the graph links them (``docs/semantics.md`` §1.3).

    Example:
        >>> import torch
        >>> g = torch.fx.Graph()
        >>> h, y = g.placeholder("h"), g.placeholder("y")
        >>> d = g.call_function(torch.ops.aten.detach.default, (h,))
        >>> _ = g.call_function(torch.ops.aten.add_.Tensor, (d, y))
        >>> [n.name for n in detached_write_targets(g)]
        ['detach_default']
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    written = [
        (order[node], view_base(target))
        for node in graph.nodes
        if (target := _mutated(node, None)) is not None
    ]
    return [
        node
        for node in graph.nodes
        if node.target is torch.ops.aten.detach.default
        and any(at > order[node] and root is view_base(node) for at, root in written)
    ]


# Operations whose result reads only the sizes, dtype or device of their tensor arguments,
# or copies a constant that export lifted out of the code (a number written into a mask)
_FACTORIES = frozenset(
    "new_zeros new_ones new_empty new_full zeros_like ones_like empty_like full_like "
    "lift_fresh_copy".split()
)


def made_of_constants(graph: fx.Graph) -> dict[fx.Node, bool]:
    """For each node: whether its value is made by torch from constants alone, reading no
    placeholder's or attribute's values (``m = x.new_zeros(4, 4); m[:2] = 1``: only ``x``'s
    sizes are read). No gradient can reach or leave such a value, so a write into a view
    of it changes no gradient path. User functions never count (they may read parameters).

    Example:
        >>> import torch
        >>> def f(x):
        ...     m = x.new_zeros(2, 2)
        ...     return x + m.fill_(1), x.relu()
        >>> found = made_of_constants(torch.fx.symbolic_trace(f).graph)
        >>> {n.name: c for n, c in found.items() if n.op != "output"}
        {'x': False, 'new_zeros': True, 'fill_': True, 'add': False, 'relu': False}
    """
    tainted: set[fx.Node] = set()  # tensors something not constant is written into
    while True:
        found: dict[fx.Node, bool] = {}
        for node in graph.nodes:  # in topological order: every input is decided first
            found[node] = (
                node not in tainted
                and _of_torch_op(node)
                and (
                    _op_name(node.target) in _FACTORIES
                    or all(found[m] for m in node.all_input_nodes)
                )
            )
        # a write of anything else into a tensor (or a view of it) makes it, and every
        # view of it taken before or after, no constant: decide again until nothing changes
        written = {
            view_base(target)
            for node in graph.nodes
            if (target := _mutated(node, None)) is not None and not found[node]
        }
        if written <= tainted:
            return found
        tainted |= written


def view_base(node: fx.Node) -> fx.Node:
    """The tensor ``node`` is a view of (through any chain of views), or ``node`` itself."""
    while _is_view(node) and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _op_name(target: Any) -> str:
    """``new_zeros`` for ``torch.ops.aten.new_zeros.default``, the method name ``"new_zeros"``
    or the function ``torch.zeros_like``."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.rpartition("::")[2]
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _of_torch_op(node: fx.Node) -> bool:
    """A tensor method, an ATen operation or a function of torch's namespace."""
    if node.op == "call_method":
        return True
    if node.op != "call_function":
        return False
    if isinstance(node.target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return True
    return (getattr(node.target, "__module__", None) or "").split(".")[0] == "torch"


def detaches(n: fx.Node) -> bool:
    """Whether ``n`` detaches a tensor in place (``x.detach_()``): no write, whatever the
    grad mode — the tensor loses its history (autograd's, on the outputs of a re-entrant
    checkpoint given nothing that requires gradient)."""
    if n.op == "call_method":
        return n.target == "detach_"
    return n.op == "call_function" and n.target in (torch.detach_, torch.ops.aten.detach_.default)
