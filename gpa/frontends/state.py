"""The model's state around a frontend's run (``docs/semantics.md`` §1.8).

A frontend runs the user's model — traced, on meta tensors, or on real ones — and must
leave it as it found it: its modules' train/eval flags (:func:`modes_switched`), every
attribute, parameter, buffer and container entry ``forward`` may assign or fill
(:class:`StateSnapshot`, :func:`preserved_state`), the buffers a trace writes into
(:func:`buffers_copied`), which parameters require gradient
(:func:`parameters_requiring_grad`); compiled modules run eagerly meanwhile
(:func:`eager_compiled_modules`). Frontends take turns (:data:`TRACING`).

Example:
    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).eval()
    >>> with training_mode(m, True):
    ...     m[1].training
    True
    >>> m[1].training
    False
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import operator
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "TRACING",
    "StateSnapshot",
    "buffers_copied",
    "eager_compiled_modules",
    "modes_switched",
    "parameters_requiring_grad",
    "parameters_kept",
    "preserved_state",
    "same_entries",
    "training_mode",
]


#: Held while a frontend reads a model. fx's symbolic tracing patches torch.nn.Module's
#: ``__call__`` and ``__getattr__`` for the whole process while it runs, and frontends
#: switch train/eval flags and put hooks on modules: so frontends take turns, whichever
#: models they read (the analyses after them run in parallel).
TRACING = threading.RLock()


@contextlib.contextmanager
def modes_switched(
    model: nn.Module, train: bool, modules: Sequence[nn.Module] | None = None
) -> Iterator[list[nn.Module]]:
    """``model.train(train)`` for the block — the model's own ``train``, which may keep a
    part in eval mode (mmdetection's ``norm_eval``) —, read by this thread alone (under
    :data:`TRACING`); yields the modules whose mode it switched. Every module's own mode is
    restored afterwards, so a mixed train/eval state survives. ``modules``: ``model``'s
    (``model.modules()``), when the caller walked them already.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).eval()
        >>> with modes_switched(m, True) as switched:
        ...     len(switched), m[1].training
        (3, True)
        >>> m[1].training
        False
    """
    with TRACING:
        modes = [(m, m.training) for m in (model.modules() if modules is None else modules)]
        if not _trains_as_torch(m for m, _ in modes):
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


def _trains_as_torch(modules: Iterable[nn.Module]) -> bool:
    """Whether no module among ``modules`` has a ``train`` of its own (its class's or its
    object's): ``model.train`` then sets each module's flag and nothing else."""
    return not any(type(m).train is not nn.Module.train or "train" in vars(m) for m in modules)


@contextlib.contextmanager
def training_mode(
    model: nn.Module, train: bool, modules: Iterable[nn.Module] | None = None
) -> Iterator[StateSnapshot]:
    """``model`` in train (or eval) mode for the block (:func:`modes_switched`), and its
    state as :func:`preserved_state` keeps it (the snapshot is given, to restore within the
    block). Compiled modules run eagerly meanwhile. ``modules``: ``model.modules()``, when
    the caller walked them already."""
    modules = list(model.modules() if modules is None else modules)
    # one walk for the switch and the snapshot, where switching sets flags and nothing
    # else; a ``train`` of the model's own may change more (the snapshot walks anew)
    walked = modules if _trains_as_torch(modules) else None
    with (
        modes_switched(model, train, modules),
        preserved_state(model, StateSnapshot(model, walked)) as snapshot,
        eager_compiled_modules(),
    ):
        yield snapshot


@contextlib.contextmanager
def eager_compiled_modules() -> Iterator[None]:
    """Modules compiled with ``torch.compile`` run as the eager modules they wrap, for the
    block: what the model computes, without compiling it (seconds per model) to read it."""
    if "torch._dynamo.eval_frame" not in sys.modules:  # nothing was compiled
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


@contextlib.contextmanager
def buffers_copied(model: nn.Module, snapshot: StateSnapshot | None = None) -> Iterator[None]:
    """Every module's buffers replaced by copies for the block, then put back
    (``docs/semantics.md`` §1.8): symbolic tracing runs ``forward``'s operations on buffers
    that are no proxies for real, so a step counter (``self.step.add_(1)``) or a queue
    (``self.queue[:n] = keys``) would otherwise keep what the trace wrote. A buffer
    registered under several names stays one tensor. ``snapshot``: one of ``model`` as it
    is now, whose walk of the modules is taken instead of another.

    Example:
        >>> m = nn.BatchNorm1d(2)
        >>> with buffers_copied(m):
        ...     _ = m.num_batches_tracked.add_(1)
        >>> int(m.num_batches_tracked)
        0
    """
    saved = [
        (m._buffers, dict(m._buffers))
        for m in (_scripted_out(model.modules()) if snapshot is None else snapshot.modules)
    ]
    copies: dict[int, torch.Tensor] = {}
    try:
        for held, before in saved:
            for name, b in before.items():
                if b is not None and not isinstance(b, nn.parameter.UninitializedTensorMixin):
                    if id(b) not in copies:
                        copies[id(b)] = b.detach().clone()
                    held[name] = copies[id(b)]
        yield
    finally:
        for held, before in saved:
            held.clear()
            held.update(before)


@contextlib.contextmanager
def parameters_kept(model: nn.Module, snapshot: StateSnapshot | None = None) -> Iterator[None]:
    """Every parameter of ``model`` as it was before the block, values and all
    (``docs/semantics.md`` §1.8): symbolic tracing runs ``forward``'s Python on the
    parameters it meets as no proxies (``for p in self.parameters()``), so a momentum
    update (``pt.mul_(m).add_(ps, alpha=1 - m)``, ``pt.data.mul_(m)``, ``pt.data = …``,
    ``lerp_``, ``load_state_dict``: MoCo, BYOL, DINO, a mean teacher) would otherwise change
    the model's weights. The parameters themselves are used as they are — where they
    live, their class, their attributes, their values —; each one an operation writes
    into in place is copied first, and put back after, as is a parameter given new
    ``.data``. ``snapshot`` as for :func:`buffers_copied`.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> before = [p.detach().clone() for p in m.parameters()]
        >>> with parameters_kept(m), torch.no_grad():
        ...     _ = next(m.parameters()).mul_(0).add_(1)
        ...     m.bias.data = m.bias.data + 1
        >>> [torch.equal(p, b) for p, b in zip(m.parameters(), before)]
        [True, True]
    """
    modules = _scripted_out(model.modules()) if snapshot is None else snapshot.modules
    held = {
        id(t): t
        for m in modules
        for t in m._parameters.values()
        if t is not None
        and not t.is_meta
        and not isinstance(t, nn.parameter.UninitializedTensorMixin)
    }
    data = {key: t.data for key, t in held.items()}  # (aliases of their memory, no copies)
    watch = _Writes({_memory(d): d for d in data.values()})
    try:
        with watch:
            yield
    finally:
        with torch.no_grad():
            for key, t in held.items():
                if _memory(t) != _memory(data[key]):  # given new .data
                    t.data = data[key]
            for memory, kept in watch.copies.items():
                watch.memories[memory].copy_(kept)


def _memory(t: torch.Tensor) -> int:
    """Where ``t``'s storage lives (0 for a tensor without one: meta, fake)."""
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # (a tensor subclass without storage)
        return 0


class _Writes(TorchDispatchMode):
    """Copies the values of each watched memory (``memories``: a tensor over each,
    by :func:`_memory`) before an operation first writes into it in place."""

    def __init__(self, memories: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.memories = memories
        self.copies: dict[int, torch.Tensor] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.is_mutable:
            for position, argument in enumerate(func._schema.arguments):
                if argument.alias_info is None or not argument.alias_info.is_write:
                    continue
                given = args[position] if position < len(args) else kwargs.get(argument.name)
                for t in given if isinstance(given, (list, tuple)) else (given,):
                    memory = _memory(t) if isinstance(t, torch.Tensor) else 0
                    if memory in self.memories and memory not in self.copies:
                        self.copies[memory] = self.memories[memory].clone()
        return func(*args, **kwargs)


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

    def __init__(self, model: nn.Module, modules: Iterable[nn.Module] | None = None) -> None:
        """``modules``: ``model.modules()``, when the caller walked them already."""
        #: the modules whose state is kept, in ``model.modules()`` order
        self.modules = _scripted_out(model.modules() if modules is None else modules)
        self._saved = [(m.__dict__, m.__dict__.copy(), *_containers(m)) for m in self.modules]
        # The same, flat, for :meth:`_unchanged`: the mappings (every module's attributes,
        # the dicts it holds) and the other containers, each with its length and its
        # entries as the snapshot took them, in one list per kind
        mappings, mapped, others, held = [], [], [], []
        for attributes, before, filled, _ in self._saved:
            mappings.append(attributes)
            mapped.append(before)
            for now, entries in filled:
                if isinstance(now, dict):  # (as _restore tells them)
                    mappings.append(now)
                    mapped.append(entries)
                else:
                    others.append(now)
                    held.append(entries)
        self._mappings, self._others = mappings, others
        self._lengths = (list(map(len, mapped)), list(map(len, held)))
        self._keys = list(itertools.chain.from_iterable(mapped))
        self._values = list(itertools.chain.from_iterable(map(_VALUES, mapped)))
        self._entries = list(itertools.chain.from_iterable(held))
        self._empty = [now for *_, empty in self._saved for now in empty]
        self._hidden = _hidden_tensors(self.modules, itertools.chain(self._values, self._entries))

    def _unchanged(self) -> bool:
        """Whether every attribute and container entry is the snapshot's, by identity, and
        every empty container empty still: the usual case, told by a few passes over the
        flat lists at C speed (a restore comparing container by container took about a
        thirtieth of an analysis, twice). False where a key is equal but another object
        (a name made anew): :meth:`restore` then compares as it does."""
        chained = itertools.chain.from_iterable
        return (
            (list(map(len, self._mappings)), list(map(len, self._others))) == self._lengths
            and all(map(operator.is_, chained(self._mappings), self._keys))
            and all(map(operator.is_, chained(map(_VALUES, self._mappings)), self._values))
            and all(map(operator.is_, chained(self._others), self._entries))
            and not any(self._empty)
        )

    def restore(self) -> None:
        """Put back every attribute and container entry that differs from the snapshot,
        and the values of the tensors of modules held out of torch's sight."""
        if self._hidden:
            _put_back(self._hidden)
        if self._unchanged():
            return
        for attributes, before, filled, empty in self._saved:
            if not same_entries(attributes, before):
                attributes.clear()
                attributes.update(before)
            for now, held in filled:
                _restore(now, held)
            if any(empty):  # most containers a module holds are empty: hooks
                for now in empty:
                    now.clear()


def _hidden_tensors(modules: list[nn.Module], values: Iterable[Any]) -> list[tuple[Any, Any, Any]]:
    """The parameters and buffers of the modules among ``values`` (what the ``modules``
    hold as attributes and in containers) that are none of ``modules``: a teacher kept in
    a plain list (``self._ema = [teacher]``) that forward updates in place — each as
    (tensor, its data, a copy); none in most models."""
    registered = {id(m) for m in modules}
    hidden: dict[int, nn.Module] = {}
    seen: set[int] = set()
    level, depth, budget = list(values), 0, _SEARCHED_AT_MOST
    # through tuples (which the containers' walk looks into without keeping) and the
    # attributes of plain objects (a helper holding the teacher), a few levels down and
    # so many values deep (not a dataset's million samples held by the model)
    while level and depth < _DEPTH and budget > 0:
        inside: list[Any] = []
        for v in level:
            if id(v) in seen or isinstance(v, (torch.Tensor, str, int, float, type)):
                continue
            seen.add(id(v))
            if isinstance(v, nn.Module):
                if id(v) not in registered:
                    hidden[id(v)] = v
            elif isinstance(v, (tuple, list, set, frozenset)):
                inside.extend(itertools.islice(v, budget))
            elif isinstance(v, dict):
                inside.extend(itertools.islice(v.values(), budget))
            elif type(v).__module__ != "builtins" and isinstance(_attributes(v), dict):
                inside.extend(itertools.islice(_attributes(v).values(), budget))
        level, depth, budget = inside, depth + 1, budget - len(inside)
    tensors = {
        id(t): t
        for module in hidden.values()
        for m in _scripted_out(module.modules())
        for t in itertools.chain(m._parameters.values(), m._buffers.values())
        if t is not None and not t.is_meta
    }
    return [(t, t.data, t.detach().clone()) for t in tensors.values()]


#: Values looked into past the modules' own attributes and containers, at most.
_SEARCHED_AT_MOST = 10_000


def _attributes(value: Any) -> Any:
    """``value.__dict__``, or None where asking raises (a proxy outside its context)."""
    try:
        return value.__dict__
    except Exception:
        return None


def _put_back(kept: list[tuple[Any, Any, Any]]) -> None:
    """The values (and ``.data``) of each tensor of :func:`_hidden_tensors` as kept,
    compared by value: a norm's kernel updates its statistics without telling their
    version counter."""
    with torch.no_grad():
        for t, data, values in kept:
            if _memory(t) != _memory(data):  # given new .data
                t.data = data
            if not torch.equal(t, values):
                t.copy_(values)


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


def _scripted_out(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """``modules`` but TorchScript ones, whose state lives in C++."""
    return [m for m in modules if not isinstance(m, torch.jit.ScriptModule)]


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
_VALUES = operator.methodcaller("values")
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
