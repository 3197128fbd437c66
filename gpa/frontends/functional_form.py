"""Export's graph in functional form, with what the form would lose (``docs/semantics.md``
§1.3, §1.9).

A model writing into a view of a tensor read afterwards (``out[:, :k] = y``) makes the
export frontend rewrite its graph in functional form (``run_decompositions``): the write
becomes data flow (``slice_scatter``), which the later readers read. The rewrite also
inlines export's grad-mode regions without a trace of them and drops what nothing reads;
:func:`functional_form` marks the operations that came out of a ``no_grad`` region, and
:func:`discarded_kept` puts the dropped ones back (a layer called for a discarded result
is called all the same), both from torch's record of which node each was made of
(``node.meta["from_node"]``); :func:`regenerated_views_placed` gives the views the rewrite
makes anew the module calls they were made in.

Example:
    >>> import torch, torch.nn as nn
    >>> class Masked(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a = nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         h = self.a(x).clone()
    ...         h[:, :1] = 0
    ...         return h
    >>> program = torch.export.export(Masked(), (torch.zeros(1, 2),), strict=False)
    >>> [n.target.__name__ for n in functional_form(program).graph.nodes
    ...  if n.op == "call_function"][-1]
    'slice_scatter.default'
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.fx as fx

from gpa.frontends.fx.writes import view_base, written_into
from gpa.frontends.grad_regions import NO_GRAD_REGION, is_grad_mode_region

__all__ = ["FUNCTIONAL_OF", "discarded_kept", "functional_form", "regenerated_views_placed"]

#: ``GraphModule.meta`` key of a program in functional form: the graph it was made of, its
#: lifted inputs' attributes and the names of its lifted constants (see
#: :func:`discarded_kept`).
FUNCTIONAL_OF = "gpa_functional_of"


def functional_form(program: Any) -> Any:
    """``program`` in functional form (``run_decompositions``), each operation that ran
    under ``no_grad`` or ``inference_mode`` marked so (:data:`NO_GRAD_REGION`). The decomposition inlines
    export's grad-mode regions (``wrap_with_set_grad_enabled``) and keeps no trace of them:
    a layer called under ``no_grad`` whose result is then written into
    (``t = teacher(x)`` under ``no_grad``, ``t[:, :4] = 0``) would seem to carry gradient.
    Which region an operation came from is read from torch's record of where each node
    came from (``node.meta["from_node"]``); an operation without one is taken to run with
    gradient. A region writing in place into a tensor computed outside it is not marked:
    that tensor keeps its history through the write (§1.3), which the functional form, a
    new tensor made in the region, no longer shows.
    The graph it was made of is kept (``meta[FUNCTIONAL_OF]``) for
    :func:`discarded_kept`."""
    regions = {
        n.name
        for n in program.graph.nodes
        if is_grad_mode_region(n) and not n.args[0] and not _writes_outside(program, n)
    }
    before = program.graph
    signature = program.graph_signature
    lifted = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
    # (what ran under inference_mode: export marks its results, not the decomposition's)
    regions |= {n.name for n in before.nodes if _inference(n.meta.get("val"))}
    program = program.run_decompositions({})
    for node in program.graph.nodes if regions else ():
        names = _came_from(node, id(before))
        if node.op == "call_function" and names and names <= regions:
            node.meta[NO_GRAD_REGION] = True
    # (the unlifted module drops what nothing reads again: put back there, see _remodule)
    constants = frozenset(signature.inputs_to_lifted_tensor_constants)
    program.graph_module.meta[FUNCTIONAL_OF] = (before, lifted, constants)
    return program


def _writes_outside(program: Any, region: fx.Node) -> bool:
    """Whether the grad-mode ``region`` of ``program``'s graph writes in place into (a view
    of) a tensor computed outside it — one with a history of its own. A write into the
    model's parameters, buffers, constants or inputs (a momentum update of a teacher's
    weights, MoCo's) keeps no history but theirs: they are where gradient stops."""
    sub = program.graph_module.get_submodule(region.args[1].target)
    given = dict(zip(sub.graph.find_nodes(op="placeholder"), region.args[2:], strict=False))
    for node in sub.graph.nodes:
        target = written_into(node)
        if target is None:
            continue
        outside = given.get(view_base(target))
        if isinstance(outside, fx.Node) and outside.op != "placeholder":
            return True
    return False


def discarded_kept(gm: fx.GraphModule) -> None:
    """Put back into ``gm`` (the unlifted module of a program in functional form, see
    :func:`functional_form`) the operations of the graph it was made of whose results nothing
    reads, which the decomposition and the unlifting drop as dead code: a layer called for
    a result the model discards (``_ = self.probe(x)``) is called all the same — one call
    more, its FLOPs — and reached by no gradient (§1.9). Each goes where it stood among the
    others, on what its arguments became: the operations made of them (torch's provenance
    records), the last of the argument's shape — a write's own result is no later version
    of what it wrote into, which a discarded result cannot tell apart; what the writes
    into it before the reader made are —, one result of an operation made of it with
    several (a batch norm in training), a weight's attribute, an input of the same name;
    a tensor dropped with its writes that no gradient goes through (an integer index table,
    a mask made of numbers alone) is one of its shape and dtype, made of nothing. One
    whose arguments cannot be found is left out."""
    kept = gm.meta.get(FUNCTIONAL_OF)
    if kept is None:
        return
    before, lifted, constants = kept
    graph = gm.graph
    discarded: set[fx.Node] = set()
    for node in reversed(before.nodes):
        if (
            node.op == "call_function"
            and (
                is_grad_mode_region(node)  # (export keeps what its region computes)
                or (
                    not isinstance(node.target, torch._ops.HigherOrderOperator)
                    and _tensors(node.meta.get("val"))
                )
            )
            and written_into(node) is None  # (a write into what nothing reads)
            and all(user in discarded for user in node.users)
        ):
            discarded.add(node)
    made: dict[str, list[fx.Node]] = {}  # an operation before -> those made of it, in order
    for node in graph.nodes:
        for name in _came_from(node, id(before)) if node.op == "call_function" else ():
            made.setdefault(name, []).append(node)
    discarded = {n for n in discarded if n.name not in made}
    if not discarded:
        return
    given = {n.name: n for n in graph.find_nodes(op="placeholder")}
    given |= {n.target: n for n in graph.find_nodes(op="get_attr")}
    order = {n: i for i, n in enumerate(graph.nodes)}
    copies: dict[fx.Node, fx.Node] = {}
    anchor, at = next(reversed(graph.find_nodes(op="placeholder")), None), -1
    start = anchor  # (what stands in for a dropped constant goes first)
    # each tensor written in place (into it or a view of it) -> the writes, in order: what
    # a later reader reads is what the last of them made (a table filled after it was
    # made, BEiT's relative position index)
    writes: dict[fx.Node, list[fx.Node]] = {}
    for node in before.nodes:
        if (target := written_into(node)) is not None:
            writes.setdefault(view_base(target), []).append(node)
    reader: fx.Node | None = None  # the operation put back whose arguments are found

    def argument(m: fx.Node) -> fx.Node:
        if m in copies:
            return copies[m]
        if m.op == "placeholder":
            return given[lifted.get(m.name, m.name)]
        shape = getattr(m.meta.get("val"), "shape", None)
        versions = [m, *(w for w in writes.get(m, ()) if reader is None or w < reader)]
        found = [
            n
            for version in versions
            for n in made.get(version.name, ())
            if getattr(n.meta.get("val"), "shape", None) == shape
        ]
        if found:
            return found[-1]
        return _result_of_several(m, [n for v in versions for n in made.get(v.name, ())])

    def _result_of_several(m: fx.Node, candidates: list[fx.Node]) -> fx.Node:
        """``m``'s value as one result of an operation made of it with several (a
        decomposed batch norm in training, whose output nothing else read: dropped, where
        its running statistics' were kept), or :func:`_stand_in`'s."""
        nonlocal anchor
        shape = getattr(m.meta.get("val"), "shape", None)
        for node in reversed(candidates):
            value = node.meta.get("val")
            if not isinstance(value, (tuple, list)):
                continue
            for i, part in enumerate(value):
                if getattr(part, "shape", None) == shape:
                    with graph.inserting_after(node):
                        copies[m] = graph.call_function(operator.getitem, (node, i))
                    copies[m].meta = {**node.meta, "val": part}
                    anchor = copies[m] if anchor is node else anchor  # (before its reader)
                    return copies[m]
        return _stand_in(m)

    def _stand_in(m: fx.Node) -> fx.Node:
        """A tensor of ``m``'s shape and dtype, for one dropped with its writes that no
        gradient goes through: integers or booleans (an index table filled in place), or
        a tensor made of numbers alone (a mask filled in place); only its shape matters.
        Any other raises KeyError."""
        nonlocal anchor
        value = m.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise KeyError(m.name)
        floating = value.is_floating_point() or value.is_complex()
        if floating and not _of_numbers(m, writes, constants):
            raise KeyError(m.name)
        with graph.inserting_after(start):
            made = graph.call_function(
                torch.ops.aten.zeros.default,
                (list(value.shape),),
                {"dtype": value.dtype, "device": value.device},
            )
        made.meta = {"val": value}
        copies[m] = made
        anchor = made if anchor is start else anchor  # (before its reader)
        return made

    def copied(node: fx.Node, arguments: Callable[[fx.Node], Any]) -> Any:
        nonlocal anchor
        if node.target is operator.getitem and isinstance(copies.get(node.args[0]), tuple):
            return copies[node.args[0]][node.args[1]]  # a result of a region put back
        if not is_grad_mode_region(node):
            with graph.inserting_after(anchor):
                anchor = graph.node_copy(node, arguments)
            return anchor
        # a region whose results nothing reads: its operations (no gradient reaches them)
        sub = before.owning_module.get_submodule(node.args[1].target)
        inner = dict(zip(sub.graph.find_nodes(op="placeholder"), node.args[2:], strict=True))
        env = {m: arguments(a) for m, a in inner.items()}
        for m in sub.graph.nodes:
            if m.op == "output":
                return tuple(env[r] for r in m.args[0])
            if m.op == "call_function" and written_into(m) is None:
                env[m] = copied(m, env.__getitem__)
            elif m.op != "placeholder":  # (a write, a constant of its own: left out)
                raise KeyError(m.name)
        raise KeyError(node.name)

    for node in before.nodes:
        if node not in discarded:
            for n in made.get(node.name, ()):
                if order[n] > at:
                    anchor, at = n, order[n]
            continue
        reader = node
        try:
            copies[node] = copied(node, argument)
        except (KeyError, IndexError):  # an argument made of nothing here
            continue


def _of_numbers(
    node: fx.Node, writes: dict[fx.Node, list[fx.Node]], constants: Collection[str]
) -> bool:
    """Whether ``node``'s value, and what was written into it, is made of numbers alone:
    no input, parameter or buffer (a placeholder of the exported graph but the lifted
    ``constants``) among the nodes it and its writes read."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder" and n.name not in constants:
            return False
        stack.extend(n.all_input_nodes)
        stack.extend(writes.get(n, ()))
    return True


def _inference(value: Any) -> bool:
    """Whether ``value`` (a node's ``meta["val"]``) is an inference tensor."""
    return isinstance(value, torch.Tensor) and value.is_inference()


def _tensors(value: Any) -> bool:
    """Whether ``value`` (a node's ``meta["val"]``) is a tensor or a tuple of them."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor)


def _came_from(node: fx.Node, graph: int) -> set[str]:
    """The names of the nodes of the graph whose ``id`` is ``graph`` that ``node`` was made
    from, following torch's provenance records (``from_node``) through the passes between;
    empty where torch recorded none."""
    names: set[str] = set()
    stack = list(node.meta.get("from_node") or ())
    while stack:
        source = stack.pop()
        if getattr(source, "graph_id", None) == graph:
            names.add(source.name)
        else:
            stack.extend(getattr(source, "from_node", None) or ())
    return names


def regenerated_views_placed(graph: fx.Graph) -> None:
    """Put each view that ``run_decompositions`` made again where it is first read back
    in the module calls its input was made in. A view of a tensor written in place (or a
    ``detach`` of it) is made anew before its first reader (torch marks it
    ``is_functional_regenerated``), and torch records it in that reader's module call
    (``nn_module_stack``): the grouping by module would fold it into that call, so another
    reader of the view would read it through the call (a layer more on its paths), and a
    ``detach`` there would be lost. Its calls become those both it and its inputs were made
    in (the common start of their stacks): where the view was made, as far as the graph
    tells (``docs/semantics.md`` §1.3).

    Example:
        >>> from torch import nn
        >>> g = fx.Graph()
        >>> x = g.placeholder("x")
        >>> view = g.call_function(torch.ops.aten.t.default, (x,))
        >>> view.meta = {"nn_module_stack": {"root": ("", nn.Module), "b": ("b", nn.Linear)},
        ...              "is_functional_regenerated": True}
        >>> regenerated_views_placed(g)
        >>> list(view.meta["nn_module_stack"])
        []
    """
    for node in graph.nodes:
        if not node.meta.get("is_functional_regenerated"):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        keys = list(stack)
        for source in node.all_input_nodes:
            theirs = list(source.meta.get("nn_module_stack") or {})
            shared = 0
            while shared < min(len(keys), len(theirs)) and keys[shared] == theirs[shared]:
                shared += 1
            keys = keys[:shared]
        node.meta["nn_module_stack"] = {k: stack[k] for k in keys}
