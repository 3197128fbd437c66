"""Gradient paths of every node of a layer DAG: lengths, timestamps, counts.

A gradient path of a layer ``n`` is a path ``n -> … -> <loss>`` along gradient-carrying
edges; its length is the number of layer nodes on it (``n`` included, the loss excluded),
and two routes that cross the same layers are one path (``docs/semantics.md`` §4).

One pass in reverse topological order computes, per layer, the set of its path lengths as
a bitset (bit ``t`` set: gradient arrives at round ``t``), the exact number of paths and
its sources (the layers first met downstream) as a bitset over the layers. Paths are never
enumerated, and nothing per node is larger than those integers: an operation node's
working values are dropped as soon as every node before it has read them, so a residual
stream of N layers needs O(N²) bits, not O(N²) Python objects. The number of paths of each
length (:attr:`GradientPaths.histogram`) — which is as large as the output, quadratic on a
residual stream — is computed only when first asked for, for every layer at once.

Example:
    >>> import networkx as nx
    >>> g = nx.DiGraph([("a", "add"), ("b", "add"), ("a", "b"), ("add", "<loss>")])
    >>> found = gradient_paths(g, layers={"a", "b"})
    >>> p = found["a"].paths
    >>> p.shortest, p.longest, p.timestamps, p.num_paths, p.histogram
    (1, 2, (1, 2), 2, {1: 1, 2: 1})
    >>> found["a"].sources
    ('b', '<loss>')
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from gpa.core.frozen import frozen_instance

__all__ = [
    "GradientPaths",
    "LayerPaths",
    "PathIndex",
    "bits",
    "gradient_paths",
    "layer_graph_index",
    "layer_graph_paths",
]


# Peeling bits off one at a time costs the int's length per bit: from this many set bits on
# (a segment reaching every segment of a 728-channel layer), numpy reads them all at once.
_MANY_BITS = 40


def bits(stamps: int) -> tuple[int, ...]:
    """The positions of the set bits of ``stamps``, ascending.

    Example:
        >>> bits(0b10110)
        (1, 2, 4)
    """
    if stamps.bit_count() > _MANY_BITS:
        import numpy as np  # only here: the CLI's start-up imports this module

        raw = np.frombuffer(stamps.to_bytes((stamps.bit_length() + 7) // 8, "little"), np.uint8)
        return tuple(np.flatnonzero(np.unpackbits(raw, bitorder="little")).tolist())
    out = []
    while stamps:
        low = stamps & -stamps
        out.append(low.bit_length() - 1)
        stamps ^= low
    return tuple(out)


def _add(histograms: Sequence[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for h in histograms:
        for length, count in h.items():
            total[length] = total.get(length, 0) + count
    return dict(sorted(total.items()))


@dataclass(frozen=True)
class GradientPaths:
    """The gradient paths from one node (or several, together) to the loss, summarised.

    ``stamps`` has bit ``t`` set when a path of length ``t`` exists; ``num_paths`` counts
    them exactly. The histogram (paths per length) is computed on first access.

    Example:
        >>> p = GradientPaths(stamps=0b1100, num_paths=3, counts=lambda: {2: 1, 3: 2})
        >>> p.shortest, p.longest, p.timestamps, p.histogram
        (2, 3, (2, 3), {2: 1, 3: 2})
    """

    stamps: int
    num_paths: int
    counts: Callable[[], dict[int, int]] = field(compare=False, repr=False, default=dict)

    @property
    def shortest(self) -> int:
        return (self.stamps & -self.stamps).bit_length() - 1

    @property
    def longest(self) -> int:
        return self.stamps.bit_length() - 1

    @property
    def timestamps(self) -> tuple[int, ...]:
        return bits(self.stamps)

    @property
    def histogram(self) -> dict[int, int]:
        """``{length: number of paths of that length}``, lengths ascending."""
        return self.counts()

    def __reduce__(self) -> tuple[Any, ...]:
        # the histogram is worked out lazily by a closure over the whole path index: a
        # pickle holds the numbers (a report sent to another process, or cached)
        return GradientPaths, (self.stamps, self.num_paths, functools.partial(dict, self.histogram))

    def __copy__(self) -> GradientPaths:
        return self  # immutable: copies need not work the histogram out (see __reduce__)

    def __deepcopy__(self, memo: dict) -> GradientPaths:
        return self

    @staticmethod
    def union(parts: Sequence[GradientPaths]) -> GradientPaths:
        """Paths of several disjoint sets together."""
        if len(parts) == 1:
            return parts[0]
        stamps = 0
        for p in parts:
            stamps |= p.stamps
        return GradientPaths(
            stamps,
            sum(p.num_paths for p in parts),
            lambda: _add([p.histogram for p in parts]),
        )


@dataclass(frozen=True)
class LayerPaths:
    """A layer node's gradient paths and the layers (or the loss) it receives gradient from."""

    paths: GradientPaths | None
    successors: int = field(default=0, repr=False)  # bitset over PathIndex positions
    index: PathIndex | None = field(default=None, compare=False, repr=False)

    @property
    def sources(self) -> tuple[Hashable, ...]:
        """The layers (or loss) first met downstream along gradient-carrying edges, in
        topological order (the loss last)."""
        if self.index is None:
            return ()
        return tuple(self.index.nodes[i] for i in bits(self.successors))


class PathIndex:
    """The layer-level DAG a :func:`gradient_paths` pass found, compactly: per layer (by
    topological position) its path-length bitset, path count and successor bitset.

    It computes every layer's path-length histogram in one more pass, on first demand.
    """

    def __init__(self, nodes: list[Hashable]) -> None:
        self.nodes = nodes  # by position; the loss is last
        self.position = {n: i for i, n in enumerate(nodes)}
        self.stamps: list[int] = [0] * len(nodes)
        self.num_paths: list[int] = [0] * len(nodes)
        self.successors: list[int] = [0] * len(nodes)
        self._histograms: list[tuple[int, tuple[int, ...]]] | None = None

    def histogram(self, position: int) -> dict[int, int]:
        """``{length: number of paths}`` of the layer at ``position``."""
        if self._histograms is None:
            self._histograms = self._all_histograms()
        offset, counts = self._histograms[position]
        return {offset + i: c for i, c in enumerate(counts) if c}

    def _all_histograms(self) -> list[tuple[int, tuple[int, ...]]]:
        """(shortest length, counts per length from it) of every position, loss first."""
        found: list[tuple[int, tuple[int, ...]]] = [(0, ())] * len(self.nodes)
        found[-1] = (0, (1,))
        # nodes with the same successors have the same histogram (every channel of a layer
        # feeding a depthwise convolution reaches all the segments of the layer after it)
        alike: dict[int, tuple[int, tuple[int, ...]]] = {}
        for i in range(len(self.nodes) - 2, -1, -1):
            if not self.stamps[i]:
                continue
            if self.successors[i] in alike:
                found[i] = alike[self.successors[i]]
                continue
            low, high = self.stamps[i] & -self.stamps[i], self.stamps[i].bit_length() - 1
            low = low.bit_length() - 1
            counts = [0] * (high - low + 1)
            for j in bits(self.successors[i]):
                offset, part = found[j]
                start = offset + 1 - low
                for k, c in enumerate(part):
                    counts[start + k] += c
            found[i] = alike[self.successors[i]] = (low, tuple(counts))
        return found

    def path_of_length(self, position: int, length: int) -> list[int]:
        """The positions of one gradient path of ``length`` layers from the layer at
        ``position`` (the loss last); at each step the first next layer, by position, that
        continues a path of the remaining length.

        Raises:
            ValueError: the layer has no path of that length.
        """
        if not self.stamps[position] >> length & 1:
            raise ValueError(f"no gradient path of length {length} from {self.nodes[position]!r}")
        path, i = [position], position
        while length:
            length -= 1
            i = next(j for j in bits(self.successors[i]) if self.stamps[j] >> length & 1)
            path.append(i)
        return path

    def paths(self, position: int) -> GradientPaths | None:
        if not self.stamps[position]:
            return None
        # one per segment of a channel analysis: tens of thousands
        return frozen_instance(
            GradientPaths,
            {
                "stamps": self.stamps[position],
                "num_paths": self.num_paths[position],
                # a function (copied as itself), not a partial: asdict of a segment would
                # copy the whole index with a partial's bound method (a pickle takes the
                # numbers: GradientPaths.__reduce__)
                "counts": lambda: self.histogram(position),
            },
        )


def gradient_paths(
    g: nx.DiGraph,
    layers: Collection[Hashable] | None = None,
    loss: Hashable = "<loss>",
    edge: str = "grad",
) -> dict[Hashable, LayerPaths]:
    """Gradient paths of every layer node of ``g``.

    Args:
        g: a DAG whose edges point forward (towards ``loss``). An edge whose ``edge``
            attribute is false carries no gradient and is ignored.
        layers: the nodes that count as one layer on a path; the others are crossed
            without a hop. Default: every node but ``loss``.
        loss: the sink.
        edge: the name of the edge attribute telling whether gradient flows.

    Returns:
        layer -> :class:`LayerPaths`. Its ``sources`` are the layers (or ``loss``) first
        met downstream along gradient-carrying edges; a path is the sequence of layers it
        crosses, so several routes between two layers that cross no other layer count once.
    """
    layer_set = set(g) - {loss} if layers is None else set(layers)
    order = list(nx.topological_sort(g))
    index = PathIndex([n for n in order if n in layer_set] + [loss])
    position = index.position
    last = len(index.nodes) - 1
    index.stamps[last], index.num_paths[last] = 1, 1
    # Operation nodes: the layers first met downstream (a bitset) and their paths
    # together, kept until every node reading them has done so.
    frontier: dict[Hashable, tuple[int, int, int]] = {}
    readers = {
        n: sum(1 for _, _, grad in g.in_edges(n, data=edge, default=True) if grad)
        for n in order
        if n not in position
    }
    for node in reversed(order):
        if node == loss:
            continue
        reached, stamps, count, overlap = 0, 0, 0, False
        for succ, attrs in g.succ[node].items():
            if not attrs.get(edge, True):
                continue
            if succ in position:  # a layer or the loss: reached directly
                i = position[succ]
                if not index.stamps[i]:
                    continue
                found = (1 << i, index.stamps[i], index.num_paths[i])
            else:
                found = frontier.get(succ)
                readers[succ] -= 1
                if not readers[succ]:
                    frontier.pop(succ, None)
                if found is None:
                    continue
            overlap = overlap or bool(reached & found[0])
            reached |= found[0]
            stamps |= found[1]
            count += found[2]
        if overlap:  # routes meet again: count each layer once
            stamps, count = 0, 0
            for i in bits(reached):
                stamps |= index.stamps[i]
                count += index.num_paths[i]
        if node in position:
            i = position[node]
            index.successors[i] = reached
            if reached:
                index.stamps[i], index.num_paths[i] = stamps << 1, count
        elif reached and readers[node]:
            frontier[node] = (reached, stamps, count)
    return {
        n: LayerPaths(index.paths(i), index.successors[i], index)
        for n, i in position.items()
        if n != loss
    }


def layer_graph_paths(
    successors: Mapping[Hashable, Iterable[Sequence[Hashable]]], loss: Hashable = "<loss>"
) -> dict[Hashable, LayerPaths]:
    """:func:`gradient_paths` of a graph whose every node but ``loss`` is a layer: see
    :func:`layer_graph_index`, which it reads per node.

    Raises:
        ValueError: an edge points back to an earlier node (not a topological order).

    Example:
        >>> found = layer_graph_paths({"a": [("b", "<loss>")], "b": [("<loss>",)]})
        >>> found["a"].paths.timestamps, found["a"].sources
        ((1, 2), ('b', '<loss>'))
    """
    index = layer_graph_index(successors, loss)
    return {
        n: LayerPaths(index.paths(i), index.successors[i], index)
        for n, i in index.position.items()
        if n != loss
    }


_NOTHING = object()


def layer_graph_index(
    successors: Mapping[Hashable, Iterable[Sequence[Hashable]]], loss: Hashable = "<loss>"
) -> PathIndex:
    """:func:`gradient_paths` of a graph whose every node but ``loss`` is a layer, given as
    each node's successors in groups (sequences of nodes; together the node's successors,
    overlapping or not), with the nodes in topological order — no graph object to build.

    A group shared by several nodes (the same object) is summed up once: in the channel-level
    segment graph, hundreds of segments reach every segment of the next layer, millions of
    edges written as one group each. Neighbouring nodes given the same list of groups (the
    same object: the segments of a run) are worked out once.

    Returns:
        The :class:`PathIndex` of the nodes (the loss last), read by position: a graph of
        tens of thousands of segments needs no object per node.

    Raises:
        ValueError: an edge points back to an earlier node (not a topological order).

    Example:
        >>> index = layer_graph_index({"a": [("b", "<loss>")], "b": [("<loss>",)]})
        >>> index.paths(index.position["a"]).timestamps
        (1, 2)
    """
    index = PathIndex([*successors, loss])
    last = len(index.nodes) - 1
    index.stamps[last], index.num_paths[last] = 1, 1
    # id(group) -> (reached bitset, stamps, paths): groups stay alive in ``successors``
    summed: dict[int, tuple[int, int, int]] = {}
    before: object = _NOTHING  # the groups of the node after this one
    for i in range(last - 1, -1, -1):
        groups = successors[index.nodes[i]]
        if groups is before:  # the same list as the next node's: the same values
            index.successors[i] = index.successors[i + 1]
            index.stamps[i], index.num_paths[i] = index.stamps[i + 1], index.num_paths[i + 1]
            continue
        before = groups
        reached, stamps, count, overlap = 0, 0, 0, False
        for group in groups:
            found = summed.get(id(group))
            if found is None:  # first met from its latest reader: every member is done
                found = summed[id(group)] = _group_sum(index, group, i)
            overlap = overlap or bool(reached & found[0])
            reached |= found[0]
            stamps |= found[1]
            count += found[2]
        if overlap:  # a layer in two groups is one successor
            count = sum(index.num_paths[j] for j in bits(reached))
        index.successors[i] = reached
        if reached:
            index.stamps[i], index.num_paths[i] = stamps << 1, count
    return index


def _group_sum(index: PathIndex, group: Sequence[Hashable], reader: int) -> tuple[int, int, int]:
    """The reachable layers of ``group`` (a bitset), their stamps together and their paths."""
    reached, stamps, count = 0, 0, 0
    for node in group:
        j = index.position[node]
        if j <= reader:
            raise ValueError(f"{index.nodes[reader]!r} -> {node!r}: not in topological order")
        if index.stamps[j] and not reached >> j & 1:
            reached |= 1 << j
            stamps |= index.stamps[j]
            count += index.num_paths[j]
    return reached, stamps, count
