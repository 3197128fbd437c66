"""Runs of segments (a layer feeding a depthwise convolution: one segment per channel, held
as one :class:`~gpa.core.segments.SegmentRun`) against the per-channel brute force of
``test_properties`` (real autograd), and gradient-combination counts against the set of
combinations read from every segment."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gpa
from gpa.core.report import LOSS, Segment, Source
from gpa.core.segments import SegmentList, SegmentRun, combination
from tests.channels.test_properties import (
    IN_WIDTH,
    LENGTH,
    StepNet,
    check_against_brute_force,
    check_path_counts,
    width_after,
)


def combinations_by_hand(layers):
    """The distinct combinations of the reached segments, read from every segment."""
    return len({combination(s) for segments in layers for s in segments if s.paths is not None})


def runs_of(report):
    return [
        i for r in report.layers.values() for i in r.segments.items if isinstance(i, SegmentRun)
    ]


# ------------------------------------------------------------------ hand-derived


class Separable(nn.Module):
    """pw -> depthwise -> pw2, with pw's output also added to pw2's (a residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.pw(x)
        return self.pw2(self.dw(y)) + y


def test_a_layer_feeding_a_depthwise_convolution_is_one_run():
    report = gpa.analyze(Separable(), input_shape=(1, 3, 6, 6), channels=True)
    segments = report.layers["pw"].segments
    assert isinstance(segments, SegmentList)
    assert [type(i).__name__ for i in segments.items] == ["SegmentRun"]
    # by hand: channel c reaches dw's group c (input channel c) and the loss at channel c
    # (the residual); pw2 reaches the loss. Paths: pw -> loss (1), pw -> dw -> pw2 -> loss (3)
    assert len(segments) == 4
    for c, s in enumerate(segments):
        assert (s.start, s.stop, s.paths.timestamps, s.paths.num_paths) == (c, c + 1, (1, 3), 2)
        assert s.sources == (
            Source(LOSS, (c, c + 1), 0b10),  # round 1 from the loss
            Source("dw", (c, c + 1), 0b1000, group=(c,)),  # dw's timestamp 2, round 3
        )
    assert segments[-1] == segments[3] == tuple(segments)[3]
    assert segments[1:3] == tuple(segments)[1:3]
    with pytest.raises(IndexError):
        segments[4]
    with pytest.raises(TypeError):  # as a tuple: no float index
        segments[1.0]
    # each channel its own sources: four combinations; dw and pw2 one each
    assert report.layers["pw"].gradient_combinations == 4
    assert report.network.gradient_combinations == combinations_by_hand(
        r.segments for r in report.layers.values()
    )
    assert report.network.gradient_combinations == 6


class DepthwiseStack(nn.Module):
    """pw, then two depthwise convolutions, each with an identity around it (MobileOne's
    and RepVGG's blocks, unfused): channel c of pw reaches group c of dw1, which is one
    segment per channel itself (it feeds dw2): segment c reaches segment c of dw1."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw1 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dw2 = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        y = self.pw(x)
        z = self.dw1(y) + y
        return self.dw2(z) + z


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_segments_reaching_a_run_moved_along_with_them_are_one_run(tracer):
    """Found on timm's MobileOne (27,000 segments, none in a run: 37 s for a channel
    analysis taking 1.2 s at layer level): a run may reach a sender's segments moved by
    one step per segment, within one run of the sender's."""
    report = gpa.analyze(DepthwiseStack(), input_shape=(1, 3, 5, 5), channels=True, tracer=tracer)
    pw, dw1, dw2 = (report.layers[n].segments for n in ("pw", "dw1", "dw2"))
    assert [type(i).__name__ for i in pw.items] == ["SegmentRun"]
    assert [type(i).__name__ for i in dw1.items] == ["SegmentRun"]
    assert [(s.start, s.stop) for s in dw2] == [(0, 4)]  # it feeds the loss alone
    # by hand: pw -> loss (1), pw -> dw1 -> loss and pw -> dw2 -> loss (2),
    # pw -> dw1 -> dw2 -> loss (3); dw1 -> loss (1), dw1 -> dw2 -> loss (2)
    for c, (s, t) in enumerate(zip(pw, dw1, strict=True)):
        assert (s.start, s.stop, s.paths.timestamps, s.paths.num_paths) == (c, c + 1, (1, 2, 3), 4)
        assert s.paths.histogram == {1: 1, 2: 2, 3: 1}
        assert s.sources == (
            Source(LOSS, (c, c + 1), 0b10),  # the loss holds gradient at round 1
            Source("dw1", (c, c + 1), 0b1100, group=(c,)),  # dw1's timestamps 1 and 2
            Source("dw2", (c, c + 1), 0b100, group=(c,)),  # dw2's timestamp 1
        )
        assert (t.start, t.stop, t.paths.timestamps, t.paths.num_paths) == (c, c + 1, (1, 2), 2)
        assert t.sources == (
            Source(LOSS, (c, c + 1), 0b10),
            Source("dw2", (c, c + 1), 0b100, group=(c,)),
        )
    # each channel of pw and of dw1 its own sources: four combinations each; dw2 one
    assert [report.layers[n].gradient_combinations for n in ("pw", "dw1", "dw2")] == [4, 4, 1]
    layers = [r.segments for r in report.layers.values()]
    assert report.network.gradient_combinations == combinations_by_hand(layers) == 9


class Shuffled(nn.Module):
    """A depthwise convolution reading its input in the order ``perm``: where the step
    from one channel to the next changes, a run ends."""

    def __init__(self, perm: list[int]) -> None:
        super().__init__()
        self.pw = nn.Conv1d(2, len(perm), 1)
        self.dw = nn.Conv1d(len(perm), len(perm), 1, groups=len(perm))
        self.register_buffer("perm", torch.tensor(perm))

    def forward(self, x):
        return self.dw(self.pw(x)[:, self.perm])


@pytest.mark.parametrize(
    ("perm", "runs"),
    [
        ([0, 1, 2, 3, 4, 5], [6]),
        ([5, 4, 3, 2, 1, 0], [6]),  # a step of -1 throughout
        # channel 3 sits at 4, 4 at 3: steps 1, 1, 2, -1, 2. A run moves by one step: a
        # step unlike the one before starts a new run, unless that one started a run
        ([0, 1, 2, 4, 3, 5], [3, 2, 1]),
        ([0, 2, 4, 1, 3, 5], [2, 2, 2]),  # channels at 0, 3, 1, 4, 2, 5: steps 3, -2, 3 …
    ],
)
def test_a_run_ends_where_the_step_changes(perm, runs):
    report = gpa.analyze(Shuffled(perm), input_shape=(1, 2, 3), channels=True)
    segments = report.layers["pw"].segments
    # by hand: channel c reaches dw's input channel and group perm.index(c)
    for c, s in enumerate(segments):
        where = perm.index(c)
        assert (s.start, s.stop) == (c, c + 1)
        # dw -> loss: dw holds gradient at round 1 and hands it on at round 2
        assert s.sources == (Source("dw", (where, where + 1), 0b100, group=(where,)),)
    assert [i.count if isinstance(i, SegmentRun) else 1 for i in segments.items] == runs
    assert report.layers["pw"].gradient_combinations == 6


class CalledTwice(nn.Module):
    """A depthwise convolution called twice, its calls reaching the loss at different rounds:
    each channel of ``a`` has two sources alike but for their rounds, which its combination
    merges; channel 8 is added onto channel 0, so those two have one combination."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 9, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.a(x)
        z = torch.cat([y[:, :1] + y[:, 8:9], y[:, 1:8]], 1)
        return self.pw(self.dw(z)) + self.dw(z)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_sources_alike_but_for_their_rounds_are_one_part_of_a_combination(tracer):
    """Found by a review: such a run was counted as if its sources never merged."""
    report = gpa.analyze(CalledTwice(), input_shape=(1, 3, 6, 6), channels=True, tracer=tracer)
    a = report.layers["a"]
    # by hand: channels 0-7 each reach dw's group c (channel 8 reaches group 0 too), from
    # dw's call into pw (round 3) and its call to the loss (round 2): eight combinations
    assert len(a.segments) == 9
    assert a.gradient_combinations == 8 == combinations_by_hand([a.segments])
    layers = [r.segments for r in report.layers.values()]
    assert report.network.gradient_combinations == combinations_by_hand(layers)


# --------------------------------------------------------------- combinations


def _source(sender, lo, rounds=0b10, group=None, width=1, mixed=False):
    return Source(sender, (lo, lo + width), rounds, group=group, mixed=mixed)


PATHS = gpa.core.paths.GradientPaths(stamps=0b10, num_paths=1)


@st.composite
def segment_lists(draw):
    """Layers of runs and single segments drawn from few senders, channels and rounds, so
    that combinations often coincide: within a run, between runs, with single segments."""
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        items, start = [], 0
        for _ in range(draw(st.integers(1, 4))):
            sources, steps = [], []
            for _ in range(draw(st.integers(0, 3))):
                grouped = draw(st.booleans())
                lo = draw(st.integers(0, 3))
                x = _source(
                    draw(st.sampled_from(["a", "b"])),
                    lo,
                    rounds=draw(st.sampled_from([0b10, 0b110])),
                    group=(lo // 2,) if grouped else draw(st.sampled_from([None, ()])),
                    mixed=draw(st.booleans()),
                )
                step = (draw(st.integers(-1, 2)), draw(st.integers(0, 1)))
                sources.append(x)
                steps.append(step)
                if draw(st.booleans()):  # the same part again at other rounds (merged)
                    sources.append(dataclasses.replace(x, rounds=0b1000))
                    steps.append(step if draw(st.booleans()) else (step[0] + 1, step[1]))
            paths = draw(st.sampled_from([PATHS, PATHS, None]))
            first = Segment(start, start + 1, paths, tuple(sources))
            count = draw(st.integers(1, 4))
            if count > 1 and all(
                x.channels[0] + (count - 1) * s >= 0
                for x, (s, _) in zip(sources, steps, strict=True)
            ):
                items.append(SegmentRun(first, count, tuple(steps)))
                start += count
            else:
                items.append(first)
                start += 1
        layers.append(SegmentList(items))
    return layers


@settings(max_examples=400, deadline=None, derandomize=True)
@given(segment_lists())
def test_combinations_counted_as_read_from_every_segment(layers):
    assert gpa.core.segments.count_combinations(layers) == combinations_by_hand(layers)
    for layer in layers:  # one layer alone, and as the tuple of its segments
        assert layer.gradient_combinations() == combinations_by_hand([layer])
        assert gpa.core.segments.count_combinations([tuple(layer)]) == combinations_by_hand([layer])


@pytest.mark.parametrize("group", [None, ()])
def test_a_run_whose_parts_stay_is_one_combination(group):
    """Segments alike in every source (no channel step; a group step but no group to move)
    have one combination; with a channel step, one each."""
    sources = (_source("a", 0, group=group, width=4),)
    still = SegmentRun(Segment(0, 1, PATHS, sources), 3, ((0, 1),))
    assert len({combination(s) for s in SegmentList([still])}) == 1
    assert gpa.core.segments.count_combinations([SegmentList([still])]) == 1
    moving = SegmentRun(Segment(0, 1, PATHS, sources), 3, ((1, 1),))
    assert gpa.core.segments.count_combinations([SegmentList([moving])]) == 3


def test_a_run_made_segment_by_segment():
    first = Segment(2, 4, PATHS, (_source("a", 0, group=(0, 1), width=2), _source("b", 5)), ("op",))
    run = SegmentRun(first, 3, ((2, 2), (0, 0)))
    made = list(SegmentList([run]))
    assert [(s.start, s.stop) for s in made] == [(2, 4), (4, 6), (6, 8)]
    assert [s.sources[0].channels for s in made] == [(0, 2), (2, 4), (4, 6)]
    assert [s.sources[0].group for s in made] == [(0, 1), (2, 3), (4, 5)]
    assert {s.sources[1] for s in made} == {first.sources[1]}
    assert {(s.paths, s.fallback) for s in made} == {(PATHS, ("op",))}
    assert SegmentList([run]).fallbacks() == ("op",)


# ------------------------------------------------------------------ property


@st.composite
def separable_nets(draw):
    """Pointwise and depthwise 1-D convolutions, residual adds of parts, slices, concats:
    the layers feeding depthwise convolutions are cut into one segment per channel."""
    widths = [IN_WIDTH, draw(st.integers(2, 5))]
    steps = [("layer", 0, widths[1], 1)]
    for _ in range(draw(st.integers(2, 7))):
        j = draw(st.integers(1, len(widths) - 1))
        w = widths[j]
        kind = draw(
            st.sampled_from(["depthwise", "depthwise", "pointwise", "padd", "slice", "cat"])
        )
        if kind == "depthwise":
            step = ("layer", j, w, w)
        elif kind == "pointwise":
            step = ("layer", j, draw(st.integers(2, 5)), 1)
        elif kind == "padd":
            k = draw(st.integers(1, len(widths) - 1))
            n = draw(st.integers(1, min(w, widths[k])))
            step = ("padd", j, k, n, n == w)
        elif kind == "slice" and w > 1:
            a = draw(st.integers(0, w - 2))
            step = ("slice", j, a, draw(st.integers(a + 1, w)))
        else:
            k = draw(st.integers(1, len(widths) - 1))
            step = ("cat", j, k) if w + widths[k] <= 10 else ("layer", j, w, w)
        steps.append(step)
        widths.append(width_after(step, widths))
    return StepNet(steps, (len(steps),))


@pytest.mark.slow  # hypothesis
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(separable_nets())
def test_runs_match_per_channel_brute_force(net):
    check_segments_by_brute_force(net)


def check_segments_by_brute_force(net):
    """``net``'s channel analysis against the per-channel brute force, path counts, and
    combinations read from every segment; the report."""
    report = gpa.analyze(net, input_shape=(1, IN_WIDTH, LENGTH), channels=True)
    check_against_brute_force(net, report)
    check_path_counts(net, report)
    layers = [r.segments for r in report.layers.values()]
    assert report.network.gradient_combinations == combinations_by_hand(layers)
    for r in report.layers.values():
        assert r.gradient_combinations == combinations_by_hand([r.segments])
    return report


@st.composite
def depthwise_stacks(draw):
    """MobileOne-like stages: pointwise convolutions, each followed by blocks of one to
    three depthwise branches summed, with or without an identity around them: every
    layer feeding a depthwise convolution is one segment per channel, each reaching a
    segment of a layer that is one segment per channel too."""
    width = draw(st.integers(2, 5))
    steps = [("layer", 0, width, 1)]
    stream = 1  # the index of the value the next block reads
    for _ in range(draw(st.integers(2, 4))):
        if draw(st.booleans()):
            steps.append(("layer", stream, draw(st.integers(2, 5)), 1))
            stream = len(steps)
            width = steps[-1][2]
        branches = []
        for _ in range(draw(st.integers(1, 3))):
            steps.append(("layer", stream, width, width))
            branches.append(len(steps))
        total = branches[0]
        for branch in [*branches[1:], *([stream] if draw(st.booleans()) else [])]:
            steps.append(("padd", total, branch, width, True))
            total = len(steps)
        stream = total
    return StepNet(steps, (stream,))


@pytest.mark.slow  # hypothesis
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(depthwise_stacks())
def test_depthwise_stacks_are_runs_matching_per_channel_brute_force(net):
    report = check_segments_by_brute_force(net)
    for r in report.layers.values():
        # channels moving alike throughout: one segment per channel is held as one run
        if len(r.segments) > 1 and all(s.stop - s.start == 1 for s in r.segments):
            assert len(r.segments.items) == 1, (r.name, net.steps)
