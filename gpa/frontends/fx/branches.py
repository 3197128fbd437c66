"""Whether fx's trace took the branches ``forward`` takes when it runs.

Symbolic tracing hands ``forward`` proxies, and some tests on a proxy answer differently
from the same test on the tensor it stands for: ``isinstance(h, torch.Tensor)`` is False,
``hasattr(out, "pooler_output")`` is True, a leaf module's output is never ``None``. No
error is raised; the trace simply records another branch, and layer modules the model
calls are left uncalled, or called fewer or more times (``docs/semantics.md`` §1.1).
Where fx's trace leaves layer modules uncalled, or the model's code tested a proxy so
(see :class:`~gpa.frontends.fx.tracer.GpaProxy`), one run of ``forward`` on the meta
device (nothing computed), drawing the random numbers the trace drew
(:func:`random_states`), tells how many times the model calls them.

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

import contextlib
import itertools
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode, _get_current_function_mode
from torch.utils._pytree import tree_map

from gpa.frontends.fx.shape_rules import FUNCTION_RULES
from gpa.frontends.modules import preserved_state

__all__ = ["calls_when_run", "other_branch_message", "random_states"]


def random_states() -> tuple[Any, Any, torch.Tensor]:
    """Python's, numpy's and torch's (CPU) global random states, to draw again what a run
    drew (a layer drop decided by ``random.random()``)."""
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def calls_when_run(
    model: nn.Module, inputs: tuple, names: Iterable[str], states: tuple | None = None
) -> dict[str, int] | None:
    """How many times ``forward`` calls each module of ``names`` (qualified names; a module
    held under two names counts under both) when it runs on meta copies of ``inputs`` and
    of the model's weights, drawing from the random ``states`` (:func:`random_states`) if
    given; None when it cannot run there (its branches need values). The model and the
    random states are left as they were."""
    modules = dict(model.named_modules(remove_duplicate=False))
    names = [n for n in names if n in modules]
    checked = {  # (TorchScript modules take no hooks: not checked)
        id(modules[n]): modules[n]
        for n in names
        if not isinstance(modules[n], torch.jit.ScriptModule)
    }
    counts = dict.fromkeys(checked, 0)

    def count(m: nn.Module, args: tuple) -> None:
        counts[id(m)] += 1

    handles = [m.register_forward_pre_hook(count) for m in checked.values()]
    held = itertools.chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    copies: dict[int, torch.Tensor] = {}  # (tied weights stay one tensor)
    state = {name: copies.setdefault(id(t), t.detach().to("meta")) for name, t in held}
    args = tree_map(lambda x: x.detach().to("meta") if isinstance(x, torch.Tensor) else x, inputs)
    try:
        with preserved_state(model), _drawing_from(states), _norms_by_shape():
            functional_call(model, state, args, strict=False)
    except Exception:  # the model's branches need values: the trace cannot be checked
        return None
    finally:
        for h in handles:
            h.remove()
    return {n: counts[id(modules[n])] for n in names if id(modules[n]) in counts}


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

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
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


@contextlib.contextmanager
def _drawing_from(states: tuple | None) -> Iterator[None]:
    now = random_states()
    if states is not None:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    try:
        yield
    finally:
        random.setstate(now[0])
        np.random.set_state(now[1])
        torch.set_rng_state(now[2])


def other_branch_message(model: nn.Module, differ: Mapping[str, tuple[int, int]]) -> str:
    """The refusal for a trace that calls layer modules otherwise than the run: ``differ``
    maps their names to (calls in the trace, calls when run)."""
    skipped = [n for n, (traced, _) in differ.items() if not traced]
    said = []
    if skipped:
        are = "is" if len(skipped) == 1 else "are"
        said.append(
            f"{', '.join(repr(n) for n in skipped)} {are} called when it runs, not in the trace"
        )
    said += [
        f"{n!r} is called {run} time{'s' * (run != 1)} when it runs, {traced} in the trace"
        for n, (traced, run) in differ.items()
        if traced
    ]
    return (
        f"torch.fx's trace of {type(model).__name__} took another branch than its forward "
        f"takes: {'; '.join(said)} (forward tests a value "
        "fx holds as a proxy — isinstance(h, torch.Tensor), hasattr, a leaf's output "
        "being None — which answers otherwise)"
    )
