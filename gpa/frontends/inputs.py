"""Example inputs made from input shapes, the one place every frontend gets them from.

Inputs given by shape are zeros: float32, or int64 for the inputs read as indices (by an
embedding, ``docs/semantics.md`` §1.4).

Example:
    >>> [(tuple(x.shape), x.dtype) for x in zeros((2, 4), (2, 3), integer={1}, device="cpu")]
    [((2, 4), torch.float32), ((2, 3), torch.int64)]
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import torch

__all__ = ["describe_inputs", "integer_variants", "zeros"]


def zeros(
    *shapes: Sequence[int], integer: Collection[int] = (), device: str = "meta"
) -> tuple[torch.Tensor, ...]:
    """Zeros of each shape on ``device``: int64 at the positions in ``integer``, else float32."""
    return tuple(
        torch.zeros(tuple(s), dtype=torch.int64 if i in integer else torch.float32, device=device)
        for i, s in enumerate(shapes)
    )


def integer_variants(
    shapes: Sequence[Sequence[int]], device: str = "meta"
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Inputs to try when it is unknown which are indices: all float32, then each in turn int64."""
    yield zeros(*shapes, device=device)
    for i in range(len(shapes)):
        yield zeros(*shapes, integer={i}, device=device)


def describe_inputs(inputs: Sequence[object] | None) -> list[dict[str, object]] | None:
    """Shape and dtype of each input tensor (``repr`` of anything else), for the report.

    Example:
        >>> describe_inputs(zeros((1, 3)))
        [{'shape': [1, 3], 'dtype': 'float32'}]
    """
    if inputs is None:
        return None
    return [
        {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
        if isinstance(x, torch.Tensor)
        else {"value": repr(x)}
        for x in inputs
    ]
