"""Branches a model's forward takes on random numbers: a frontend's run is then one random
architecture of the model, not its gradient paths.

LayerDrop skips a layer at random in training (``if self.training and torch.rand([]) <
p: continue``). fx runs such Python on concrete values while it traces, and the autograd
tracer on real ones: each run records the layers that happened to run, and a report built
from it calls the others unreachable — a different answer at each call. :class:`RandomBranches`
watches a frontend's run of ``forward`` (a torch function mode): the tensors a sampling
function draws and what is computed from them are marked, and turning one into a Python
value (``bool``, ``float``, ``item``), which a branch then reads, is noted with the model's
source line. The frontend refuses the run (:func:`random_branch_message`). Dropout and
torchvision's stochastic depth draw their noise inside torch and branch on nothing: they are
not marked.

Example:
    >>> import torch
    >>> with RandomBranches() as watch:
    ...     skip = bool(torch.rand([]) < 0.5)
    >>> watch.where is not None
    True
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from gpa.frontends.frames import caller_site

__all__ = ["Marks", "RandomBranches", "random_branch_message"]

# Functions drawing random numbers, and those turning a tensor into a Python value.
_SAMPLING = frozenset(
    "rand rand_like randn randn_like randint randint_like randperm bernoulli bernoulli_ "
    "multinomial normal normal_ uniform_ exponential_ geometric_ log_normal_ cauchy_ "
    "random_".split()
)
_TO_PYTHON = frozenset("__bool__ __float__ __int__ __index__ item tolist".split())
# Draws from [0, 1), and comparisons of one with a number: certain outside (0, 1)
# (``torch.rand([]) < 0.0`` with the layer drop off, as Hugging Face's BART and Whisper
# draw in training whatever their drop probability).
_UNIFORM = frozenset({"rand", "rand_like"})
_COMPARISONS = frozenset("lt le gt ge __lt__ __le__ __gt__ __ge__".split())


class Marks:
    """Tensors marked by identity, not kept alive (the reference tells a reused id).

    Example:
        >>> x = torch.zeros(1)
        >>> marks = Marks([x])
        >>> x in marks, torch.zeros(1) in marks
        (True, False)
    """

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._refs: dict[int, weakref.ref] = {}
        self.add(values)

    def __contains__(self, t: object) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t

    def __bool__(self) -> bool:
        return bool(self._refs)

    def add(self, values: Iterable[Any]) -> None:
        """Mark the tensors among ``values``."""
        for t in values:
            if isinstance(t, torch.Tensor):
                self._refs[id(t)] = weakref.ref(t)


class RandomBranches(TorchFunctionMode):
    """Notes where ``forward`` first turns a value computed from random numbers into a
    Python value (``where``: ``"file, line N"``; None if it never does)."""

    def __init__(self) -> None:
        super().__init__()
        self._random = Marks()
        self._uniform = Marks()  # drawn by _UNIFORM, as drawn
        self.where: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in _SAMPLING:
            self._random.add(tree_flatten(result)[0])
            if name in _UNIFORM:
                self._uniform.add(tree_flatten(result)[0])
        elif name in _COMPARISONS and self._certain(args):
            pass  # a constant outcome: no random branch
        elif self._random and any(t in self._random for t in tree_flatten((args, kwargs))[0]):
            if name in _TO_PYTHON:
                site = caller_site()
                self.where = self.where or (f"{site[0]}, line {site[1]}" if site else "in forward")
            else:
                self._random.add(tree_flatten(result)[0])
        return result

    def _certain(self, args: tuple) -> bool:
        """Whether comparing a draw from [0, 1) with a number has one outcome."""
        if len(args) != 2 or args[0] not in self._uniform:
            return False
        bound = args[1]
        return isinstance(bound, (int, float)) and not 0 < bound < 1


def random_branch_message(model: torch.nn.Module, where: str, train: bool) -> str:
    """Why a frontend refuses a run that branched on random numbers, and what to do."""
    hint = (
        "analyse it in eval mode (--eval / train=False), where every layer runs, or with "
        "the drop probability set to 0"
        if train
        else "set the drop probability to 0"
    )
    return (
        f"{type(model).__name__}'s forward branches on random numbers ({where}; a layer "
        "drop skips layers at random), so one run shows one random architecture of it, "
        f"not its gradient paths: {hint}"
    )
