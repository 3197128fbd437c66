"""Gradient paths of every node of a layer DAG: lengths, timestamps, counts.

A gradient path of a layer ``n`` is a path ``n -> … -> <loss>`` along
gradient-carrying edges; its length is the number of layer nodes on it (``n``
included, the loss excluded), and two routes that cross the same layers are
one path. One pass in reverse topological order computes, per node, the set
of path lengths as a bitset (bit ``t`` set: gradient arrives at round ``t``),
the exact number of paths and the number of paths of each length. Paths are
never enumerated: the cost is linear in the graph size times its depth.

Example:
    >>> import networkx as nx
    >>> g = nx.DiGraph([("a", "add"), ("b", "add"), ("a", "b"), ("add", "<loss>")])
    >>> p = gradient_paths(g, layers={"a", "b"})["a"].paths
    >>> p.shortest, p.longest, p.timestamps, p.num_paths, p.histogram
    (1, 2, (1, 2), 2, {1: 1, 2: 1})
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass

import networkx as nx

__all__ = ["GradientPaths", "LayerPaths", "gradient_paths", "bits"]


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
            start, stop = p.offset - low, p.offset - low + len(p.counts)
            counts[start:stop] = map(operator.add, counts[start:stop], p.counts)
        return GradientPaths(stamps, sum(p.num_paths for p in parts), low, tuple(counts))


_LOSS_PATHS = GradientPaths(stamps=1, num_paths=1, offset=0, counts=(1,))


@dataclass(frozen=True)
class LayerPaths:
    """A layer node's gradient paths and the layers (or loss) it receives gradient from."""

    paths: GradientPaths | None
    sources: frozenset[Hashable]


def gradient_paths(
    g: nx.DiGraph,
    layers: Collection[Hashable] | None = None,
    loss: Hashable = "<loss>",
    edge: str = "grad",
) -> dict[Hashable, LayerPaths]:
    """Gradient paths of every layer node of ``g``.

    Args:
        g: a DAG whose edges point forward (towards ``loss``). An edge whose
            ``edge`` attribute is false carries no gradient and is ignored.
        layers: the nodes that count as one layer on a path; the others are
            crossed without a hop. Default: every node but ``loss``.
        loss: the sink.
        edge: the name of the edge attribute telling whether gradient flows.

    Returns:
        layer -> :class:`LayerPaths`. Its ``sources`` are the layers (or
        ``loss``) first met downstream along gradient-carrying edges; a path is
        the sequence of layers it crosses, so several routes between two
        layers that cross no other layer count once.
    """
    layer_set = set(g) - {loss} if layers is None else set(layers)
    # For every node: the layers first met downstream (its frontier), and the
    # paths of all of them together.
    frontier: dict[Hashable, frozenset] = {loss: frozenset({loss})}
    ahead: dict[Hashable, GradientPaths | None] = {loss: None}
    own: dict[Hashable, GradientPaths] = {loss: _LOSS_PATHS}
    result: dict[Hashable, LayerPaths] = {}
    for node in reversed(list(nx.topological_sort(g))):
        if node == loss:
            continue
        sets, parts = [], []
        for succ, attrs in g.succ[node].items():
            if not attrs.get(edge, True):
                continue
            if succ in own:  # a layer or the loss: reached directly
                sets.append(frozenset({succ}))
                parts.append(own[succ])
            elif frontier.get(succ):
                sets.append(frontier[succ])
                parts.append(ahead[succ])
        reached = frozenset().union(*sets)
        if sum(map(len, sets)) != len(reached):  # overlapping routes: count each layer once
            parts = [own[f] for f in reached]
        total = GradientPaths.union(parts) if parts else None
        if node in layer_set:
            mine = total.shifted() if total else None
            result[node] = LayerPaths(mine, reached)
            if mine is not None:
                own[node] = mine
        else:
            frontier[node], ahead[node] = reached, total
    return result
