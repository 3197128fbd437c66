"""What a model returns: every value in the returned structure, with its path.

The loss is fed by every tensor the model returns (``docs/semantics.md`` §1.5). Models
return more than tuples and dicts: namedtuples, dataclasses, Hugging Face
``ModelOutput`` objects holding a cache object, policy networks a
``torch.distributions`` object. :func:`returned_values` walks any of them, the same way
for every frontend — the fx frontend's output node, ``torch.export``'s returned
structure, the autograd frontend's real outputs —, and names each value it reaches by
its dotted path:

* tuples and lists by index; a namedtuple's fields by name, or by index;
* dicts (``ModelOutput`` included) by key (a key holding a dot, ``[a.b]`` or ``a.b``);
* types registered with ``torch.utils._pytree`` by their key paths (attribute names,
  keys, indices);
* dataclasses by field name, or by index;
* distributions by their parameters present on the object (the keys of their
  ``arg_constraints``: ``logits`` or ``probs``, ``loc`` and ``scale`` …);
* any other object by its attributes (a Hugging Face ``DynamicCache``:
  ``cache.layers.0.keys`` …).

Values that cannot carry gradient (None, numbers, strings, dtypes …) are skipped;
modules are not looked into (their parameters are not outputs), nor an object again
inside itself. An object gpa cannot look into (no attributes, nested too deep) is
reported in a note naming its path and type: tensors inside it do not feed the loss.

Example:
    >>> import collections, torch
    >>> from torch.distributions import Categorical
    >>> Step = collections.namedtuple("Step", "policy value")
    >>> out = Step(Categorical(logits=torch.zeros(2, 3)), torch.zeros(2, 1))
    >>> found = returned_values(out)
    >>> [str(p) for p, _ in found.values]
    ['policy.logits', 'value']
    >>> [p for p, _ in found.select([0])]  # a namedtuple's field by index
    ['policy.logits']
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from gpa.core.graph import OutputKey, OutputPath, select_paths
from gpa.errors import GpaError
from gpa.frontends.modules import shallow_copy

__all__ = ["Returned", "exportable", "fields_tuple", "returned_values"]

# Values that carry no gradient and hold nothing that could: skipped without a note.
_NOTHING_INSIDE = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    enum.Enum,
    type,
    range,
    slice,
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
    torch.SymInt,
    torch.SymFloat,
    torch.SymBool,
    np.ndarray,
    np.generic,
    nn.Module,
)

#: How deep gpa looks into nested objects before it gives up (with a note).
MAX_DEPTH = 16

# In ``Returned.plain``, an object gpa cannot look into is a dict of one key: this prefix
# and its type's name (export carries it through, and the walk of its graph's outputs
# says the same note).
_OPAQUE = "<gpa cannot look into> "


@dataclass
class Returned:
    """The values a model returned, with their paths, and what gpa could not look into.

    Attributes:
        values: (path, value) for each value reached, in the returned structure's order.
        opaque: (path, type name) of each object gpa could not look into.
        empty: (path, description) of each value holding nothing that could carry
            gradient (None, a number, a string, an empty container …), for error messages.
        returned: a short description of the returned object (for error messages).
        plain: the returned structure with the same values under the same paths, in
            tuples, lists, dicts and namedtuples only: None in place of what holds no
            value, a one-key dict naming the type of an object gpa cannot look into.
    """

    values: list[tuple[OutputPath, Any]] = field(default_factory=list)
    opaque: list[tuple[OutputPath, str]] = field(default_factory=list)
    empty: list[tuple[OutputPath, str]] = field(default_factory=list)
    returned: str = ""
    plain: Any = None

    def select(self, outputs: Iterable[OutputKey] | None) -> list[tuple[str, Any]]:
        """The (canonical path, value) pairs that feed the loss: all, or those under the
        selected outputs.

        Raises:
            GpaError: the model returns no value at all, or a selected output is not
                among its values (the message says when it is an object gpa cannot
                look into).
        """
        if not self.values:
            raise GpaError(
                "the model returns no tensor, so no gradient flows back into it: nothing "
                f"to analyse (it returned {self.returned}{self._hidden()})"
            )
        for key in outputs or ():
            if not any(p.under(key) for p, _ in self.values):
                hidden = [(p, t) for p, t in self.opaque if p.under(key) or _inside(key, p)]
                if hidden:
                    path, kind = hidden[0]
                    raise GpaError(
                        f"output {key!r} is a {kind} (at '{path}'), which gpa cannot look "
                        "into: no tensor of it can feed the loss"
                    )
                held = [kind for p, kind in self.empty if p.under(key)]
                if held:
                    # (export's returned structure holds None for every such value)
                    what = "" if held[0] == "None" else f" (it is {held[0]})"
                    raise GpaError(
                        f"output {key!r} holds no tensor{what}: nothing of it can feed the loss"
                    )
        return select_paths(self.values, outputs)

    def _hidden(self) -> str:
        """What of the returned structure gpa could not look into, for an error message."""
        if any(not path.steps for path, _ in self.opaque):  # the returned object itself
            return ", which gpa cannot look into"
        hidden = ", ".join(f"output '{path}', a {kind}" for path, kind in self.opaque)
        return f"; gpa cannot look into {hidden}" if hidden else ""

    def notes(self, outputs: Iterable[OutputKey] | None = None) -> list[str]:
        """One note per selected object gpa could not look into."""
        keys = list(outputs) if outputs is not None else None
        return [
            f"output '{path}' is a {kind}, which gpa cannot look into: tensors inside it "
            "(if any) do not feed the loss"
            for path, kind in self.opaque
            if keys is None or any(path.under(k) for k in keys)
        ]


def _inside(key: OutputKey, path: OutputPath) -> bool:
    """Whether ``key`` names something inside the object at ``path``."""
    return not path.steps or any(
        str(key).startswith(spelling + ".") for spelling in map(".".join, product(*path.steps))
    )


def returned_values(
    structure: Any, is_value: Callable[[Any], bool] = lambda x: isinstance(x, torch.Tensor)
) -> Returned:
    """Every value ``is_value`` accepts in a returned structure, with its path.

    Args:
        structure: what the model returned (or the fx nodes standing for it).
        is_value: what counts as a returned value: tensors (default), or fx nodes.

    Example:
        >>> import dataclasses, torch
        >>> @dataclasses.dataclass
        ... class Out:
        ...     logits: torch.Tensor
        ...     extra: dict
        >>> found = returned_values(Out(torch.zeros(1), {"aux": [torch.zeros(1)], "n": 3}))
        >>> [str(p) for p, _ in found.values]
        ['logits', 'extra.aux.0']
    """
    found = Returned(returned=_describe(structure))
    found.plain = _walk(structure, OutputPath(), found, is_value, ())
    return found


def exportable(model: nn.Module) -> nn.Module:
    """``model`` returning its values in containers ``torch.export`` can flatten.

    Export refuses outputs of types not registered with ``torch.utils._pytree`` (a
    dataclass, a Hugging Face ``DynamicCache``, a distribution). The module returned —
    a shallow copy of ``model`` whose class derives from the model's, so that every
    module keeps its qualified name — returns :attr:`Returned.plain` instead: the same
    values under the same paths, in tuples, lists, dicts and namedtuples only (a
    dataclass as a namedtuple of its fields). ``model``
    itself is not changed.

    Example:
        >>> import dataclasses, torch
        >>> @dataclasses.dataclass
        ... class Out:
        ...     logits: torch.Tensor
        >>> class Net(torch.nn.Module):
        ...     def forward(self, x):
        ...         return Out(x * 2)
        >>> exportable(Net())(torch.ones(1))  # a namedtuple: by field name or index
        Out(logits=tensor([2.]))
    """
    if isinstance(model, fx.GraphModule):  # gpa's own wrapper: returns one tensor
        return model
    kind = type(model)

    @functools.wraps(kind.forward)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return returned_values(kind.forward(self, *args, **kwargs)).plain

    namespace = {
        "forward": forward,
        "__module__": kind.__module__,
        "__qualname__": kind.__qualname__,
    }
    try:
        returning_plain = type(kind.__name__, (kind,), namespace)
    except Exception:  # a class that refuses subclasses: export reads it as it is
        return model
    plain = shallow_copy(model)
    plain.__class__ = returning_plain
    return plain


def _walk(
    x: Any,
    path: OutputPath,
    found: Returned,
    is_value: Callable[[Any], bool],
    open_ids: tuple[int, ...],
) -> Any:
    """Record the values and opaque objects below ``x``; return ``x`` as plain containers."""
    if is_value(x):
        found.values.append((path, x))
        return x
    if id(x) in open_ids:  # a cycle: walked above
        return None
    if isinstance(x, _NOTHING_INSIDE):
        found.empty.append((path, _describe(x)))
        return None
    kind = _opaque_type(x)
    children = None
    if kind is None and len(open_ids) < MAX_DEPTH:
        children = _children(x)
    if children is None:
        kind = kind or _type_name(x)
        found.opaque.append((path, kind))
        return {_OPAQUE + kind: None}
    if not children:
        found.empty.append((path, _describe(x)))
    plain = [
        (spellings, _walk(child, path.child(*spellings), found, is_value, (*open_ids, id(x))))
        for spellings, child in children
    ]
    return _rebuilt(x, plain)


def _rebuilt(x: Any, plain: list[tuple[tuple[str, ...], Any]]) -> Any:
    """``x`` rebuilt around its plain children: a namedtuple, tuple or list as such, any
    other container or object as a dict of its children by name."""
    values = [v for _, v in plain]
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        try:
            return type(x)(*values)
        except Exception:  # a namedtuple with its own constructor: a dict of its fields
            pass
    elif isinstance(x, tuple):
        return tuple(values)
    elif isinstance(x, list):
        return values
    elif dataclasses.is_dataclass(x) and not isinstance(x, dict):  # by name or index
        return fields_tuple(type(x).__name__, tuple(s[0] for s, _ in plain))(*values)
    elif _indexed_mapping(x):  # (a ModelOutput: by name or index, as a namedtuple)
        with contextlib.suppress(ValueError):  # (a key no field can be named: a dict)
            return fields_tuple(type(x).__name__, tuple(s[0] for s, _ in plain))(*values)
    elif type(x) is dict:  # its own keys (a key with a dot in it is spelt [a.b] first)
        return dict(zip(x, values, strict=True))
    return {spellings[0]: v for spellings, v in plain}


@functools.cache
def fields_tuple(name: str, fields: tuple[str, ...]) -> type:
    """A namedtuple type standing in for a dataclass of these fields, read by field name
    or index as the dataclass is (``docs/semantics.md`` §1.5)."""
    return collections.namedtuple(name, fields)


def _children(x: Any) -> list[tuple[tuple[str, ...], Any]] | None:
    """The named children of a container or object, or None when gpa cannot look inside."""
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple: by name or index
        return [((name, str(i)), v) for i, (name, v) in enumerate(zip(x._fields, x, strict=True))]
    if isinstance(x, (tuple, list)):
        return [((str(i),), v) for i, v in enumerate(x)]
    if _indexed_mapping(x):  # by key, or by index as outputs[0] is (the fields set, in order)
        return [((str(k), str(i)), v) for i, (k, v) in enumerate(x.items())]
    if isinstance(x, dict):  # a key with a dot in it is spelt [a.b] first: its own path
        return [((f"[{k}]", str(k)) if "." in str(k) else (str(k),), v) for k, v in x.items()]
    node = pytree.SUPPORTED_NODES.get(type(x))
    if node is not None:
        if node.flatten_with_keys_fn is not None:
            keyed, _ = node.flatten_with_keys_fn(x)
            return [((_key_text(k),), v) for k, v in keyed]
        flat, _ = node.flatten_fn(x)
        return [((str(i),), v) for i, v in enumerate(flat)]
    if dataclasses.is_dataclass(x):  # by name or index, as a namedtuple
        fields = dataclasses.fields(x)
        return [((f.name, str(i)), getattr(x, f.name)) for i, f in enumerate(fields)]
    attributes = getattr(x, "__dict__", None)
    if not isinstance(attributes, dict):
        return None
    if isinstance(x, torch.distributions.Distribution):
        parameters = [((n,), attributes[n]) for n in _parameter_names(x) if n in attributes]
        if parameters:
            return parameters
    return [((n,), v) for n, v in attributes.items() if not n.startswith("__")]


def _indexed_mapping(x: Any) -> bool:
    """Whether ``x`` is a dict also read by index: Hugging Face's ``ModelOutput``
    (``outputs[0]`` is its first field that is set; ``to_tuple()`` gives them in order)."""
    return isinstance(x, dict) and callable(getattr(type(x), "to_tuple", None))


def _parameter_names(distribution: torch.distributions.Distribution) -> Iterator[str]:
    try:
        yield from distribution.arg_constraints
    except NotImplementedError:  # a distribution that does not declare its parameters
        return


def _key_text(entry: Any) -> str:
    """The name of one ``torch.utils._pytree`` key-path entry (a key, index or attribute).

    Example:
        >>> from torch.utils._pytree import GetAttrKey, MappingKey, SequenceKey
        >>> [_key_text(k) for k in (MappingKey("logits"), SequenceKey(0), GetAttrKey("h"))]
        ['logits', '0', 'h']
    """
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _opaque_type(x: Any) -> str | None:
    """The type name an opaque object's stand-in in ``Returned.plain`` names, else None."""
    if isinstance(x, dict) and len(x) == 1:
        key = next(iter(x))
        if isinstance(key, str) and key.startswith(_OPAQUE):
            return key.removeprefix(_OPAQUE)
    return None


def _type_name(x: Any) -> str:
    kind = type(x)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _describe(x: Any) -> str:
    """``x`` in a few words for a message: ``None``, ``an empty list``, ``an int`` …"""
    if x is None:
        return "None"
    for container in (tuple, list, dict):  # (fx's immutable ones among them)
        if isinstance(x, container) and not x:
            return f"an empty {container.__name__}"
    name = _opaque_type(x) or _type_name(x)
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
