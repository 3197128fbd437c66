"""Branches a model's forward takes on random numbers: a frontend's run is then one random
architecture of the model, not its gradient paths.

LayerDrop skips a layer at random in training (``if self.training and torch.rand([]) <
p: continue``). fx runs such Python on concrete values while it traces, and the autograd
tracer on real ones: each run records the layers that happened to run, and a report built
from it calls the others unreachable — a different answer at each call. :class:`RandomBranches`
watches a frontend's run of ``forward`` (a torch function mode): the tensors a sampling
function draws and what is computed from them are marked, and turning one into a Python
value (``bool``, ``float``, ``item``), which a branch then reads, is noted with the model's
source line, and the frontend refuses the run (:func:`random_branch_message`). Python's
and numpy's draws show no torch function: a run that changed their states gets a note
(:data:`PYTHON_DRAWS_NOTE`), for they may as well mask data (SpecAugment) as drop layers. Noise joined to the data (dropout of
activations, a drop-path mask, added noise) is data, not marked: a check on it is a branch
on the data.

Example:
    >>> import torch
    >>> with RandomBranches() as watch:
    ...     skip = bool(torch.rand([]) < 0.5)
    >>> watch.where is not None
    True
"""

from __future__ import annotations

import contextlib
import random
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from gpa.frontends.frames import caller_site

__all__ = [
    "TO_PYTHON",
    "Marks",
    "data_branch_note",
    "PYTHON_DRAWS_NOTE",
    "RandomBranches",
    "drawing_from",
    "python_random_states",
    "random_branch_message",
    "random_states",
    "set_random_states",
]

# Functions drawing random numbers (dropout too, when given a constant: ``F.dropout(
# torch.ones(()), p) > 0`` is a coin), and those turning a tensor into a Python value.
_SAMPLING = frozenset(
    "rand rand_like randn randn_like randint randint_like randperm bernoulli bernoulli_ "
    "multinomial normal normal_ uniform_ exponential_ geometric_ log_normal_ cauchy_ "
    "random_ poisson dropout alpha_dropout feature_alpha_dropout dropout1d dropout2d "
    "dropout3d".split()
)
#: Tensor methods that turn a value into a Python one, which forward can branch on.
TO_PYTHON = frozenset("__bool__ __float__ __int__ __index__ item tolist".split())
# Draws from [0, 1) — kept so by picking elements or changing the dtype — and comparisons
# of one with a number: certain outside (0, 1) (``torch.rand([]) < 0.0`` with the layer
# drop off, as Hugging Face's BART and Whisper draw in training whatever their drop
# probability; fairseq's ``probs[i] > 0.0``).
_UNIFORM = frozenset({"rand", "rand_like", "uniform_"})
_KEEPS_VALUES = frozenset(
    "__getitem__ to float double half bfloat16 type type_as clone detach contiguous view "
    "reshape squeeze unsqueeze flatten".split()
)
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
    """Notes where ``forward`` first turns a value computed from random numbers alone into
    a Python value (``where``: ``"file, line N"``; None if it never does).

    A value computed from random numbers *and data* (``h + noise``, a VAE's sample, an
    activation times a drop-path mask) is data: a check on it (``isfinite(h).all()``) is
    a branch on the data, which the frontends judge as any. ``is_data`` tells data:
    a frontend's proxies (fx) by default; the autograd tracer passes what it marks.
    """

    def __init__(self, is_data: Callable[[Any], bool] | None = None) -> None:
        super().__init__()
        self._random = Marks()
        self._uniform = Marks()  # draws from [0, 1), as drawn
        self._is_data = is_data or (lambda t: isinstance(t, fx.Proxy))
        self.where: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name not in _SAMPLING and not self._random:
            return result  # the common case: nothing drawn yet
        operands = tree_flatten((args, kwargs))[0]
        if any(self._is_data(t) for t in operands):
            return result
        tensors = [t for t in operands if isinstance(t, torch.Tensor)]
        if name in _SAMPLING:
            drawn = tree_flatten(result)[0]
            self._random.add(drawn)
            if name in _UNIFORM and self._unit_bounds(name, args, kwargs):
                self._uniform.add(drawn)
        elif not any(t in self._random for t in tensors):
            pass
        elif name in _COMPARISONS and self._certain(args):
            pass  # one outcome: no random branch
        elif name in TO_PYTHON:
            site = caller_site()
            self.where = self.where or (f"{site[0]}, line {site[1]}" if site else "in forward")
        else:
            self._random.add(tree_flatten(result)[0])
            if name in _KEEPS_VALUES and tensors[0] in self._uniform:
                self._uniform.add(tree_flatten(result)[0])
        return result

    @staticmethod
    def _unit_bounds(name: str, args: tuple, kwargs: dict | None) -> bool:
        """Whether a draw is from [0, 1): ``rand``, or ``uniform_`` with its default bounds."""
        if name != "uniform_":
            return True
        bounds = [*args[1:3], *(kwargs or {}).values()]
        return bounds in ([], [0, 1], [0.0, 1.0])

    def _certain(self, args: tuple) -> bool:
        """Whether comparing a draw from [0, 1) with a number has one outcome."""
        if len(args) != 2 or args[0] not in self._uniform:
            return False
        bound = args[1]
        return isinstance(bound, (int, float)) and not 0 < bound < 1


def random_states() -> tuple[Any, Any, torch.Tensor]:
    """Python's, numpy's and torch's (CPU) global random states, to draw again what a run
    drew (a layer drop decided by ``random.random()``): see :func:`drawing_from`."""
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def set_random_states(states: tuple) -> None:
    """Draw from the random ``states`` (:func:`random_states`) from now on."""
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@contextlib.contextmanager
def drawing_from(states: tuple | None) -> Iterator[None]:
    """The block draws from the random ``states`` (:func:`random_states`; None: from the
    states as they are); the states are put back as they were afterwards.

    Example:
        >>> states = random_states()
        >>> with drawing_from(states):
        ...     first = random.random()
        >>> with drawing_from(states):
        ...     first == random.random()
        True
    """
    now = random_states()
    if states is not None:
        set_random_states(states)
    try:
        yield
    finally:
        set_random_states(now)


def python_random_states() -> tuple:
    """Python's and numpy's global random states, comparable: a run that changed them
    drew from them — where no torch function shows what the draws decide (a SpecAugment
    mask, or a layer drop: :data:`PYTHON_DRAWS_NOTE`)."""
    _, keys, position, *_ = np.random.get_state()
    return random.getstate(), keys.tobytes(), position


#: The report note of a run that drew from Python's or numpy's random numbers.
PYTHON_DRAWS_NOTE = (
    "forward drew from Python's random or numpy.random while it ran (a SpecAugment mask, "
    "a layer drop as Wav2Vec2's adapter's): where it branches on those draws, the layers "
    "skipped this time are reported unreachable; in eval mode (--eval) such models draw "
    "nothing and run every layer"
)


def random_branch_message(model: torch.nn.Module, where: str, train: bool) -> str:
    """Why a frontend refuses a run that branched on random numbers, and what to do."""
    fixed = (
        "the draw's outcome fixed: a drop probability of 0, or, for a choice drawn among one "
        "value (torchvision's detection models with one min_size draw anyway), the function "
        "drawing it replaced by one that does not (model.transform.torch_choice = lambda "
        "sizes: sizes[0])"
    )
    hint = (
        f"analyse it in eval mode (--eval / train=False), where such draws are off, or with {fixed}"
        if train
        else f"analyse it with {fixed}"
    )
    drops = _layer_drops(model)
    if drops:
        keys = " ".join(f"-k {k}=0" for k in drops)
        settings = ", ".join(f"{k}={v}" for k, v in drops.items())
        hint += f" (its configuration's {settings}: {keys} for a transformers: target)"
    return (
        f"{type(model).__name__}'s forward branches on random numbers ({where}: a random "
        "draw turned into a Python value, as a layer drop skipping layers at random does, "
        "or a random choice such as an input size for multi-scale training), so one run "
        f"may show one random architecture of it, not its gradient paths: {hint}"
    )


def _layer_drops(model: torch.nn.Module) -> dict[str, float]:
    """The layer-drop probabilities above 0 in ``model.config`` (a Hugging Face model's:
    ``layerdrop``, ``encoder_layerdrop``, ``decoder_layerdrop``), by name."""
    config = getattr(model, "config", None)
    found = getattr(config, "__dict__", {}) if config is not None else {}
    return {
        k: v
        for k, v in found.items()
        if k.endswith("layerdrop") and isinstance(v, (int, float)) and v > 0
    }


def data_branch_note(where: str) -> str:
    """The report note of a run that turned values computed from its inputs into Python
    values (``where``: ``"file, line N"``), as a mixture of experts' routing does."""
    return (
        f"forward turned values computed from its inputs into Python values ({where}): "
        "where it branches, loops or indexes on them (a mixture of experts' routing), the "
        "layers' calls and paths are this run's, on these inputs, and layers it skipped "
        "are reported unreachable for these inputs only"
    )
