"""Gradient paths of every node of a layer DAG: lengths, timestamps, counts.

A gradient path of node ``n`` is a path ``n -> … -> <loss>`` in the layer
graph; its length is the number of layer nodes on it (``n`` included, the loss
excluded). One pass in reverse topological order computes, per node, the set
of path lengths as a bitset (bit ``t`` set: gradient arrives at round ``t``),
the exact number of paths and the number of paths of each length. Paths are
never enumerated: the cost is linear in the graph size times its depth.

Example:
    >>> import networkx as nx
    >>> g = nx.DiGraph([("a", "b"), ("b", "<loss>"), ("a", "<loss>")])
    >>> p = gradient_paths(g)["a"]
    >>> p.shortest, p.longest, p.timestamps, p.num_paths, p.histogram
    (1, 2, (1, 2), 2, {1: 1, 2: 1})
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import networkx as nx

__all__ = ["GradientPaths", "gradient_paths", "bits"]


def bits(stamps: int) -> tuple[int, ...]:
    """The positions of the set bits of ``stamps``, ascending."""
    out = []
    while stamps:
        low = stamps & -stamps
        out.append(low.bit_length() - 1)
        stamps ^= low
    return tuple(out)


@dataclass(frozen=True)
class GradientPaths:
    """The gradient paths from one node to the loss, summarised.

    ``counts[i]`` is the number of paths of length ``offset + i``; the first
    and last entries are non-zero. ``counts`` may be shared between records
    (it is never mutated).
    """

    stamps: int
    num_paths: int
    offset: int
    counts: Sequence[int]

    @property
    def shortest(self) -> int:
        return self.offset

    @property
    def longest(self) -> int:
        return self.offset + len(self.counts) - 1

    @property
    def timestamps(self) -> tuple[int, ...]:
        return bits(self.stamps)

    @property
    def histogram(self) -> dict[int, int]:
        return {self.offset + i: c for i, c in enumerate(self.counts) if c}

    def shifted(self) -> GradientPaths:
        """The same paths seen one layer further from the loss."""
        return GradientPaths(self.stamps << 1, self.num_paths, self.offset + 1, self.counts)

    @staticmethod
    def union(parts: Sequence[GradientPaths]) -> GradientPaths:
        """Paths of several disjoint sets together."""
        if len(parts) == 1:
            return parts[0]
        low = min(p.offset for p in parts)
        high = max(p.longest for p in parts)
        counts = [0] * (high - low + 1)
        stamps = 0
        for p in parts:
            stamps |= p.stamps
            start = p.offset - low
            for i, c in enumerate(p.counts, start):
                counts[i] += c
        return GradientPaths(stamps, sum(p.num_paths for p in parts), low, tuple(counts))


_LOSS_PATHS = GradientPaths(stamps=1, num_paths=1, offset=0, counts=(1,))


def gradient_paths(g: nx.DiGraph, loss: Hashable = "<loss>") -> dict[Hashable, GradientPaths]:
    """Summaries of the gradient paths of every node of ``g`` that reaches ``loss``.

    Args:
        g: a DAG whose edges point forward (towards ``loss``); every node but
            ``loss`` counts as one layer on a path.
        loss: the sink. It is not included in the result.

    Returns:
        node -> :class:`GradientPaths`, for the nodes with at least one path.
    """
    found: dict[Hashable, GradientPaths] = {loss: _LOSS_PATHS}
    for node in reversed(list(nx.topological_sort(g))):
        if node == loss:
            continue
        parts = [found[s].shifted() for s in g.successors(node) if s in found]
        if parts:
            found[node] = GradientPaths.union(parts)
    del found[loss]
    return found
