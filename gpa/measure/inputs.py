"""Synthetic training batches for :func:`gpa.measure`, drawn from the example inputs.

Each batch holds one tensor per example input, of the example's shape with the batch
dimension (dim 0) replaced by ``batch_size`` and the example's dtype:

* floating inputs: standard normal;
* integer inputs: uniform in ``[0, n)`` with ``n`` the smallest ``num_embeddings`` of the
  model's embeddings (``nn.Embedding``, ``nn.EmbeddingBag``); in a model without one,
  uniform in ``[min, max]`` of the example's values;
* boolean inputs and non-tensors: the example itself (repeated along dim 0 when its batch
  size is 1).

Everything is drawn from one ``torch.Generator`` seeded with ``seed`` on the CPU, then
moved to ``device``: the same seed gives the same batches on every device.

Example:
    >>> import torch
    >>> (x,), = synthetic_batches((torch.zeros(1, 3),), nn.Linear(3, 2), steps=1, batch_size=4)
    >>> tuple(x.shape), x.dtype
    ((4, 3), torch.float32)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from gpa.errors import GpaError

__all__ = ["embedding_range", "synthetic_batches"]


def embedding_range(model: nn.Module) -> int | None:
    """The smallest ``num_embeddings`` of ``model``'s embeddings (None without one).

    Example:
        >>> embedding_range(nn.Sequential(nn.Embedding(10, 4), nn.Embedding(7, 4)))
        7
    """
    sizes = [
        m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    ]
    return min(sizes) if sizes else None


def _draw(example: Any, batch_size: int, high: int | None, gen: torch.Generator) -> Any:
    if not isinstance(example, torch.Tensor) or example.dim() == 0:
        return example
    shape = (batch_size, *example.shape[1:])
    if example.is_floating_point():
        return torch.randn(shape, generator=gen).to(example.dtype)
    if example.dtype == torch.bool:
        return example.expand(shape).clone() if example.shape[0] == 1 else example.clone()
    if example.is_complex():
        return torch.randn(shape, generator=gen, dtype=example.dtype)
    if high is not None:
        low, top = 0, high
    else:
        values = example.detach().cpu()
        low, top = int(values.min()), int(values.max()) + 1
    return torch.randint(low, max(top, low + 1), shape, generator=gen).to(example.dtype)


def synthetic_batches(
    example_inputs: Sequence[Any],
    model: nn.Module,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[Any, ...]]:
    """``steps`` batches shaped like ``example_inputs`` (see the module docstring).

    Args:
        example_inputs: forward's positional arguments (tensors of shape ``(B, ...)``).
        model: the model (its embeddings bound integer inputs).
        steps: number of batches (>= 1).
        batch_size: items per batch, the new size of every tensor's dim 0 (>= 1).
        seed: seed of the generator.
        device: where the tensors are placed.

    Returns:
        An iterator over ``steps`` tuples, one tensor (or the example's non-tensor) per
        input; each batch is drawn when it is asked for (one batch in memory at a time).

    Raises:
        GpaError: ``steps`` or ``batch_size`` below 1, or an example input on the meta
            device with integer values (its range is unknown).
    """
    if steps < 1 or batch_size < 1:
        raise GpaError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
    high = embedding_range(model)
    for x in example_inputs:
        if isinstance(x, torch.Tensor) and x.is_meta and not x.is_floating_point() and high is None:
            raise GpaError("integer example inputs on the meta device have no value range")
    return _batches(tuple(example_inputs), steps, batch_size, high, seed, device)


def _batches(
    examples: tuple[Any, ...],
    steps: int,
    batch_size: int,
    high: int | None,
    seed: int,
    device: torch.device | str,
) -> Iterator[tuple[Any, ...]]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = tuple(_draw(x, batch_size, high, gen) for x in examples)
        yield tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in batch)
