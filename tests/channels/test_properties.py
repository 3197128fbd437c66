"""Property tests of channel segments against a per-channel brute force.

Random small models are built from 1x1 ``Conv1d`` layers (some grouped), channel slices
``x[:, a:b]``, ``chunk``, concatenations and partial adds
``torch.cat([f[:, :k] + y[:, :k], f[:, k:]], 1)``. The reference never looks at gpa's
graph: it runs the same steps with every layer output replaced by a free autograd leaf
and asks real autograd which layer-output channels each layer *input* channel and each
returned channel depends on. With a layer mixing its input channels within its groups,
that gives a graph over (layer, channel) nodes; a depth-first search over it gives, per
channel, the set of path lengths (timestamps) and the set of senders. gpa's segments
must partition the channels into runs of channels with identical brute-force records
and report exactly those records.

The number of paths under gpa's (layer, segment) path identity is checked by a second
search over (layer, segment) nodes built from the brute-force channel edges and gpa's
segment boundaries: a consistency check, not an independent one.
"""

from __future__ import annotations

import os
from functools import cache
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gpa
from gpa.channels import segments, values

LENGTH = 2
# More examples for a longer hunt: GPA_CHANNEL_EXAMPLES=500 pytest tests/channels/test_properties.py
EXAMPLES = int(os.environ.get("GPA_CHANNEL_EXAMPLES", "50"))
IN_WIDTH = 4
LOSS = "<loss>"
# Each size-dependent choice of representation, at its default and at 0, so that these
# small models take the way large ones do too: a collapse keeps one term per distinct row
# up to values._FEW_ROWS rows, else one per distinct channel set; arrivals are marked in a
# table up to segments._DENSE_CELLS cells, else as sorted pairs.
LIMITS = st.tuples(
    st.sampled_from([values._FEW_ROWS, 0]), st.sampled_from([segments._DENSE_CELLS, 0])
)


def analyze(net, limits):
    few_rows, dense_cells = limits
    with (
        mock.patch.object(values, "_FEW_ROWS", few_rows),
        mock.patch.object(segments, "_DENSE_CELLS", dense_cells),
    ):
        return gpa.analyze(net, input_shape=(1, IN_WIDTH, LENGTH), channels=True)


def run_steps(steps, layers, x, cut=None):
    """Execute ``steps``; with ``cut`` (layer -> tensor), layer outputs are replaced by it.

    Returns (values, layer inputs by layer name).
    """
    values, inputs = [x], {}
    for i, step in enumerate(steps):
        kind, args = step[0], step[1:]
        if kind == "layer":
            name = f"L{i}"
            inputs[f"layers.{name}"] = values[args[0]]
            out = layers[name](values[args[0]]) if cut is None else cut[f"layers.{name}"]
        elif kind == "slice":
            j, a, b = args
            out = values[j][:, a:b]
        elif kind == "chunk":
            j, idx = args
            out = values[j].chunk(2, 1)[idx]
        elif kind == "cat":
            out = torch.cat([values[j] for j in args], 1)
        elif kind == "scale":  # times its mean over the channels: every channel everywhere
            v = values[args[0]]
            out = v * v.mean(1, keepdim=True)
        elif kind == "head":  # the first position, repeated: what sat elsewhere is gone
            out = values[args[0]][:, :, :1].expand(-1, -1, LENGTH)
        elif kind == "splice":  # position 0 from one tensor, the rest from another
            j, k, m = args
            out = torch.cat([values[j][:, :m, :1], values[k][:, :m, 1:]], 2)
        else:  # partial add; ``whole``: n is all of f's channels
            j, k, n, whole = args
            f, y = values[j], values[k]
            added = f[:, :n] + y[:, :n]
            out = added if whole else torch.cat([added, f[:, n:]], 1)
        values.append(out)
    return values, inputs


class StepNet(nn.Module):
    def __init__(self, steps, outputs) -> None:
        super().__init__()
        self.steps, self.outputs = steps, outputs
        self.layers = nn.ModuleDict()
        widths = [IN_WIDTH]
        for i, step in enumerate(steps):
            if step[0] == "layer":
                _, j, c_out, groups = step
                self.layers[f"L{i}"] = nn.Conv1d(widths[j], c_out, 1, groups=groups)
            widths.append(width_after(step, widths))

    def forward(self, x):
        values, _ = run_steps(self.steps, self.layers, x)
        # summed over positions: a returned tensor's channels stay on axis 1 even where
        # positions hold different layers' channels (gpa would read its last axis, §8)
        return tuple(values[o].sum(2, keepdim=True) for o in self.outputs)


def width_after(step, widths):
    kind, args = step[0], step[1:]
    if kind == "layer":
        return args[1]
    if kind == "slice":
        return args[2] - args[1]
    if kind == "chunk":
        return widths[args[0]] // 2
    if kind == "cat":
        return sum(widths[j] for j in args)
    if kind == "splice":
        return args[2]
    return widths[args[0]]


@st.composite
def step_nets(draw):
    widths, steps, is_layer = [IN_WIDTH], [], [False]
    for i in range(draw(st.integers(3, 9))):
        j = draw(st.integers(0, len(widths) - 1))
        w = widths[j]
        kinds = ["layer", "slice", "cat", "padd", "scale", "head", "splice"]
        kinds += ["chunk"] if w % 2 == 0 else []
        kind = "layer" if i == 0 else draw(st.sampled_from(kinds))
        if kind == "layer":
            c_out = draw(st.integers(1, 6))
            # w: depthwise (a channel per group: one segment per channel, held as runs)
            common = [g for g in (1, 2, 3, w) if w % g == 0 and c_out % g == 0]
            step = ("layer", j, c_out, draw(st.sampled_from(common)))
        elif kind == "slice":
            a = draw(st.integers(0, w - 1))
            step = ("slice", j, a, draw(st.integers(a + 1, w)))
        elif kind == "chunk":
            step = ("chunk", j, draw(st.integers(0, 1)))
        elif kind == "cat":
            k = draw(st.integers(0, len(widths) - 1))
            step = ("cat", j, k) if widths[j] + widths[k] <= 10 else ("slice", j, 0, w)
        elif kind in ("scale", "head"):
            step = (kind, j)
        elif kind == "splice":
            k = draw(st.integers(0, len(widths) - 1))
            step = ("splice", j, k, min(w, widths[k]))
        else:
            k = draw(st.integers(0, len(widths) - 1))
            n = draw(st.integers(1, min(w, widths[k])))
            step = ("padd", j, k, n, n == w)
        steps.append(step)
        widths.append(width_after(step, widths))
        is_layer.append(kind == "layer")
    last = len(steps)
    others = [v for v in range(1, last) if not is_layer[v]]
    extra = draw(st.lists(st.sampled_from(others), max_size=1, unique=True)) if others else []
    return StepNet(steps, (last, *extra))


# -------------------------------------------------------------- brute force


def channel_graph(net: StepNet):
    """(layer, channel) -> set of (consumer layer or LOSS, consumer output channel or 0),
    and (layer, channel) -> {sender: set of the sender's input channels it reaches}."""
    x = torch.rand(1, IN_WIDTH, LENGTH) + 0.5
    real, _ = run_steps(net.steps, net.layers, x)
    leaves = {
        f"layers.L{i}": (torch.rand_like(real[i + 1]) + 0.5).requires_grad_()
        for i, s in enumerate(net.steps)
        if s[0] == "layer"
    }
    values, inputs = run_steps(net.steps, net.layers, x, cut=leaves)
    names = list(leaves)
    reaches = {(n, c): {} for n in names for c in range(leaves[n].shape[1])}

    def depend(tensor, label):
        for i in range(tensor.shape[1]):
            if not tensor.requires_grad:
                return
            grads = torch.autograd.grad(
                tensor[:, i].sum(), [leaves[n] for n in names], retain_graph=True, allow_unused=True
            )
            for n, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                for c in torch.nonzero(g.abs().sum(dim=(0, 2))).flatten().tolist():
                    reaches[(n, c)].setdefault(label, set()).add(i)

    for consumer, tensor in inputs.items():
        depend(tensor, consumer)
    for k, o in enumerate(net.outputs):
        depend(values[o], (LOSS, k))
    edges = {}
    for node, found in reaches.items():
        out = set()
        for label, positions in found.items():
            if isinstance(label, tuple):
                out.add((LOSS, 0))
                continue
            layer = net.get_submodule(label)
            width, groups = layer.in_channels, layer.groups
            per_in, per_out = width // groups, layer.out_channels // groups
            for p in positions:
                g = p // per_in
                out.update((label, o) for o in range(g * per_out, (g + 1) * per_out))
        edges[node] = out
    return edges, reaches


def lengths(edges):
    @cache
    def of(node):
        if node[0] == LOSS:
            return frozenset({0})
        return frozenset(n + 1 for succ in edges[node] for n in of(succ))

    return of


# -------------------------------------------------------------------- tests


@pytest.mark.slow  # hypothesis
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 50,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(step_nets(), LIMITS)
def test_segments_match_per_channel_brute_force(net, limits):
    check_against_brute_force(net, analyze(net, limits))


def check_against_brute_force(net, report):
    """Every layer's segments partition its channels into maximal runs of channels with
    the brute-force records (timestamps, senders, input channels reached)."""
    edges, reaches = channel_graph(net)
    stamps = lengths(edges)
    for name, record in report.layers.items():
        segs = record.segments
        width = net.get_submodule(name).out_channels
        # a partition of the channels, in order
        assert [s.start for s in segs] == [0, *(s.stop for s in segs[:-1])]
        assert segs[-1].stop == width
        for s in segs:
            for c in range(s.start, s.stop):
                expected = stamps((name, c))
                # senders: the loss, and layers whose reached channels receive gradient
                senders = {n for n, o in edges[(name, c)] if n == LOSS or stamps((n, o))}
                if not expected:
                    assert s.paths is None, (name, c)
                    continue
                assert s.paths is not None, (name, c)
                assert set(s.paths.timestamps) == expected, (name, c, net.steps)
                assert (s.paths.shortest, s.paths.longest) == (min(expected), max(expected))
                assert {x.sender for x in s.sources} == senders, (name, c, net.steps)
            if s.paths is None:
                continue
            # the parts delivered by a sender (several ranges when the segment reaches it
            # twice, e.g. concatenated with itself) cover exactly the input channels
            # carrying the segment whose group's output channels receive gradient (a part
            # of a sender that receives none delivers none)
            for sender in {x.sender for x in s.sources} - {LOSS}:
                covered = set()
                for x in s.sources:
                    if x.sender == sender:
                        covered |= set(range(*x.channels))
                layer = net.get_submodule(sender)
                per_in = layer.in_channels // layer.groups
                per_out = layer.out_channels // layer.groups
                positions = set()
                for c in range(s.start, s.stop):
                    positions |= {
                        p
                        for p in reaches[(name, c)].get(sender, set())
                        if any(
                            stamps((sender, o))
                            for o in range(p // per_in * per_out, (p // per_in + 1) * per_out)
                        )
                    }
                assert covered == positions, (name, sender, s.sources, net.steps)
        # maximality: two neighbouring segments are not one run of channels that reach the
        # same senders' groups at input positions shifted along with the channel
        for left, right in zip(segs, segs[1:], strict=False):
            assert not _one_run(net, reaches, name, left.start, right.stop), (
                name,
                left.stop,
                net.steps,
            )


def _one_run(net, reaches, name, lo, hi):
    first = reaches[(name, lo)]
    for c in range(lo, hi):
        found = reaches[(name, c)]
        if {lab: {p + c - lo for p in pos} for lab, pos in first.items()} != found:
            return False
        for lab, pos in found.items():
            if isinstance(lab, tuple):
                continue
            layer = net.get_submodule(lab)
            per_in = layer.in_channels // layer.groups
            if {p // per_in for p in pos} != {p // per_in for p in first[lab]}:
                return False
    return True


@pytest.mark.slow  # hypothesis
@settings(max_examples=max(EXAMPLES // 2, 1), deadline=None, derandomize=EXAMPLES <= 50)
@given(step_nets(), LIMITS)
def test_segment_path_counts_consistent(net, limits):
    """num_paths and histograms of (layer, segment) paths, from the brute-force channel
    edges grouped by gpa's segments."""
    check_path_counts(net, analyze(net, limits))


def check_path_counts(net, report):
    """num_paths and histograms of every segment, from the brute-force channel edges."""
    edges, _ = channel_graph(net)
    seg_of = {}
    for name, record in report.layers.items():
        for k, s in enumerate(record.segments):
            for c in range(s.start, s.stop):
                seg_of[(name, c)] = (name, k)
    seg_edges = {}
    for node, succs in edges.items():
        seg_edges.setdefault(seg_of[node], set()).update(
            (LOSS, 0) if n[0] == LOSS else seg_of[n] for n in succs
        )

    @cache
    def histogram(node):
        if node[0] == LOSS:
            return ((0, 1),)
        found = {}
        for succ in seg_edges.get(node, ()):
            for length, count in histogram(succ):
                found[length + 1] = found.get(length + 1, 0) + count
        return tuple(sorted(found.items()))

    for name, record in report.layers.items():
        for k, s in enumerate(record.segments):
            expected = dict(histogram((name, k)))
            got = s.paths.histogram if s.paths else {}
            assert got == expected, (name, k, net.steps)
            assert (s.paths.num_paths if s.paths else 0) == sum(expected.values())
