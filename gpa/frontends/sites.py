"""The source line a layer call is placed at, past the modules that only wrap it.

Every frontend places a layer call at the line of the model's code that called the layer
(:func:`~gpa.frontends.frames.caller_site`). Where that line is in the ``forward`` of a
module holding no other layer — a convolution–norm–activation wrapper such as
Ultralytics' ``Conv`` (``return self.act(self.bn(self.conv(x)))``), timm's
``ConvNormAct``, a weight-standardised convolution calling ``F.conv2d`` in its own
``forward`` — every layer of that kind would sit at the same line; :func:`past_wrappers`
places the call at the line that called the wrapper instead (``docs/semantics.md`` §4,
path witnesses), as often as wrappers nest.

Example:
    >>> import torch.nn as nn
    >>> class Wrapper(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(1, 1, 1)
    ...     def forward(self, x):
    ...         return self.conv(x)
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.block = Wrapper()
    ...     def forward(self, x):
    ...         return self.block(x)
    >>> def line(cls):  # (file, line) of ``cls.forward``'s return
    ...     code = cls.forward.__code__
    ...     return code.co_filename, code.co_firstlineno + 1
    >>> calls = {"n": LayerCall("block.conv", "Conv2d", line(Wrapper))}
    >>> sites = {"block": [line(Net)], "block.conv": [line(Wrapper)]}
    >>> past_wrappers(calls, [], sites, Net())["n"].site == line(Net)
    True
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import CodeType

from torch import nn

from gpa.core.graph import LayerCall
from gpa.frontends.frames import Site
from gpa.frontends.modules import submodule_lookup

__all__ = ["past_wrappers"]


def past_wrappers(
    calls: Mapping[Hashable, LayerCall],
    uncalled: Iterable[tuple[str, str]],
    module_sites: Mapping[str, Sequence[Site | None]],
    model: nn.Module,
) -> dict[Hashable, LayerCall]:
    """``calls`` with each site moved out of the ``forward`` of a module holding no layer
    but the call's own record, to the line that called that module.

    Args:
        calls: layer calls (node -> :class:`LayerCall`), in forward order.
        uncalled: layer modules forward never calls, as (name, type): a module holding
            one of them holds another layer.
        module_sites: qualified module name -> where each of its calls was made, in
            forward order, as the frontend saw them (a module missing: its calls unseen).
        model: the analysed model (``forward``'s code tells which lines are a module's).

    A site moves out of a module only where the module was called as often as the layer
    (its k-th call holds the layer's k-th), only to a line of a method of the classes of
    the modules holding it (torch's ``Sequential`` calling it leaves none), and never out
    of ``model`` itself. Sites the frontend did not know (None) stay None.
    """
    records = [c.record for c in calls.values()] + [name for name, _ in uncalled]
    holds = collections.Counter(prefix for r in dict.fromkeys(records) for prefix in _chain(r))
    modules = submodule_lookup(model)
    times = collections.Counter(c.record for c in calls.values())
    seen: collections.Counter[str] = collections.Counter()
    placed: dict[Hashable, LayerCall] = {}
    for key, call in calls.items():
        k = seen[call.record]
        seen[call.record] += 1
        site = call.site
        for name in _chain(call.record):
            module = modules(name)
            if site is None or holds[name] != 1 or module is None:
                break
            if not _inside(site, module):
                if name == call.record:  # the layer's own forward is torch's: called here
                    continue
                break
            made = module_sites.get(name, ())
            # the line calling the module must be the model's own: one of torch's
            # containers calling it (a Sequential model) leaves no line of the model
            if len(made) != times[call.record] or not _in_holders_code(made[k], name, modules):
                break
            site = made[k]
        placed[key] = call if site == call.site else dataclasses.replace(call, site=site)
    return placed


def _chain(name: str) -> list[str]:
    """``name`` and the qualified names of the modules holding it, innermost first (the
    root, named ``""``, left out)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _in_holders_code(
    site: Site | None, name: str, modules: Callable[[str], nn.Module | None]
) -> bool:
    """Whether ``site`` is a line of a method of one of the classes of the modules holding
    module ``name`` (the model itself too): where the model's code calls it."""
    if site is None:
        return False
    holders = [modules(n) for n in _chain(name)[1:]] + [modules("")]
    return any(
        site[0] == file and first <= site[1] <= last
        for holder in holders
        if holder is not None
        for file, first, last in _methods(type(holder))
    )


@functools.cache
def _methods(cls: type) -> tuple[tuple[str, int, int], ...]:
    """The file and line span of every function defined on ``cls`` and its bases but
    torch's (``forward``, and the helpers it calls: Ultralytics' ``_predict_once``)."""
    spans = []
    for base in cls.__mro__:
        if base.__module__.partition(".")[0] in ("torch", "builtins"):
            continue
        for value in vars(base).values():
            try:
                function = inspect.unwrap(getattr(value, "__func__", value))
            except Exception:  # a class attribute unwrapping refuses
                continue
            code = getattr(function, "__code__", None)
            if isinstance(code, CodeType):
                spans.append(_lines(code))
    return tuple(spans)


def _inside(site: Site, module: nn.Module) -> bool:
    """Whether ``site`` is a line of ``module``'s own ``forward``."""
    forward = getattr(module, "forward", None)
    code = getattr(inspect.unwrap(getattr(forward, "__func__", forward)), "__code__", None)
    if code is None:
        return False
    file, first, last = _lines(code)
    return site[0] == file and first <= site[1] <= last


@functools.cache
def _lines(code: CodeType) -> tuple[str, int, int]:
    """The file and the first and last line of ``code``."""
    numbers = [line for *_, line in code.co_lines() if line is not None]
    return code.co_filename, code.co_firstlineno, max(numbers, default=code.co_firstlineno)
