"""Property tests: gpa against brute-force path enumeration on random DAG-shaped models.

Every model is built from a random :class:`bruteforce.Spec`; the expectations come
from :func:`bruteforce.brute_force`, which enumerates routes in the spec's own graph
(it never looks at gpa's graph). See tests/bruteforce.py for the spec language.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpa
from tests.bruteforce import (
    DETACH_VARIANTS,
    INPUT_SHAPE,
    LAYER_VARIANTS,
    LOSS,
    NOGRAD_VARIANTS,
    REUSABLE_KINDS,
    SHAPE_VARIANTS,
    Spec,
    SpecNet,
    Step,
    autograd_reachable,
    brute_force,
    layer_name,
)

MAX_STEPS = 12
# kinds with repeats: drawing uniformly from this tuple favours layers and adds, so that
# paths get long and numerous
KINDS = (
    *("layer",) * 5,
    *("cat",) * 2,
    *("add",) * 3,
    "mul",
    "norm",
    "detach",
    "nograd",
    *("shape",) * 2,
    "unused",
    *("reuse",) * 2,
    "ghost",
)
VARIANTS = {
    "layer": LAYER_VARIANTS,
    "detach": DETACH_VARIANTS,
    "nograd": NOGRAD_VARIANTS,
    "shape": SHAPE_VARIANTS,
}


@st.composite
def specs(draw, max_steps: int = MAX_STEPS) -> Spec:
    """A random spec of at most ``max_steps`` steps whose last step is a layer.

    Besides single steps, two motifs are drawn as a whole so that paths get long and
    numerous: a residual block (a layer on v, then v + its output) and a dense read
    (a concatenation of the last few values, then the width-restoring layer).
    """
    n_target = draw(st.integers(1, max_steps))
    steps: list[Step] = []
    readable = [0]  # values later steps may read; "unused" results never join

    def add(step: Step) -> None:
        steps.append(step)
        if step.kind != "unused":
            readable.append(len(steps))

    def pick():  # favour recent values, so that chains get deep, but allow any earlier one
        return draw(
            st.one_of(
                st.just(readable[-1]), st.sampled_from(readable[-3:]), st.sampled_from(readable)
            )
        )

    while len(steps) < n_target - 1:
        motif = draw(st.sampled_from(("step", "step", "step", "residual", "dense")))
        if motif == "residual" and len(steps) + 2 <= n_target - 1:
            v = pick()
            add(Step("layer", (v,), draw(st.sampled_from(LAYER_VARIANTS))))
            add(Step("add", (v, len(steps))))
            continue
        if motif == "dense":
            add(Step("cat", tuple(readable[-draw(st.integers(2, 4)) :])))
            continue
        kind = draw(st.sampled_from(KINDS))
        if kind == "reuse":
            reusable = [i for i, s in enumerate(steps) if s.kind in REUSABLE_KINDS]
            if not reusable:
                continue
            ref = draw(st.sampled_from(reusable))
            add(Step("reuse", (pick(),), draw(st.sampled_from(("grad", "grad", "nograd"))), ref))
            continue
        if kind == "cat":
            args = tuple(pick() for _ in range(draw(st.integers(1, 4))))
        elif kind in ("add", "mul", "shape"):
            args = (pick(), pick())
        else:
            args = (pick(),)
        variant = draw(st.sampled_from(VARIANTS[kind])) if kind in VARIANTS else ""
        add(Step(kind, args, variant))
    # the last step is a layer feeding the loss, so at least one layer is reachable
    if draw(st.booleans()):
        add(Step("layer", (readable[-1],), draw(st.sampled_from(LAYER_VARIANTS))))
    else:
        add(Step("cat", tuple(pick() for _ in range(draw(st.integers(1, 4))))))
    n = len(steps)
    extra = draw(st.lists(st.sampled_from(readable), max_size=3))
    outputs = (n, *extra) if draw(st.booleans()) else (*extra, n)
    return Spec(tuple(steps), tuple(outputs))


@st.composite
def specs_and_selection(draw):
    spec = draw(specs())
    selected = None
    if draw(st.booleans()):
        # select a non-empty subset of the returned positions; keep the final layer in it
        last_pos = spec.outputs.index(len(spec.steps))
        others = [p for p in range(len(spec.outputs)) if p != last_pos]
        chosen = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
        selected = sorted({last_pos, *chosen})
    return spec, selected


def _check(spec: Spec, selected: list[int] | None, with_inputs: bool = True) -> None:
    expected, net = brute_force(spec, selected)
    model = SpecNet(spec)
    example = torch.zeros(INPUT_SHAPE) if with_inputs else None
    report = gpa.analyze(model, example, outputs=selected)

    position = {name: i for i, name in enumerate(expected)}
    position[LOSS] = len(position)

    def in_forward_order(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(names, key=position.__getitem__))

    # one record per layer, called ones in order of first call, then never-called ones
    assert list(report.layers) == list(expected)
    for name, exp in expected.items():
        rec = report.layers[name]
        ctx = f"layer {name} of {spec}"
        assert rec.name == name, ctx
        assert rec.calls == exp.calls, ctx
        assert rec.reachable == exp.reachable, ctx
        assert rec.shortest == exp.shortest, ctx
        assert rec.longest == exp.longest, ctx
        assert tuple(rec.timestamps) == exp.timestamps, ctx
        assert rec.num_paths == exp.num_paths, ctx
        assert dict(rec.path_histogram) == exp.path_histogram, ctx
        # sources in forward order (the senders' order of first call), <loss> last
        # (docs/semantics.md §4)
        assert tuple(rec.sources) == in_forward_order(exp.sources), ctx
        for t in range(0, (exp.longest or 0) + 2):
            assert tuple(rec.sources_at(t)) == in_forward_order(exp.sources_at(t)), f"{ctx}, t={t}"
        # path witnesses (semantics §4.1): a real path of the enumerated ones, of the length
        shortest, longest = rec.shortest_path(), rec.longest_path()
        for witness, length in ((shortest, exp.shortest), (longest, exp.longest)):
            names = tuple(step.layer for step in witness)
            assert names in exp.paths if exp.reachable else names == (), ctx
            assert len(names) == (length or 0), ctx

    n = report.network
    assert n.layers == net.layers
    assert n.max_shortest == net.max_shortest
    assert n.min_shortest == net.min_shortest
    assert n.mean_shortest == pytest.approx(net.mean_shortest)
    assert n.longest == net.longest
    assert sorted(n.unreachable) == sorted(net.unreachable)
    assert len(n.unreachable) == len(net.unreachable)

    # the layer graph: every layer and <loss>; an edge from each layer to each source
    assert set(report.graph.nodes) == {*expected, LOSS}
    assert set(report.graph.edges) == {(a, s) for a, e in expected.items() for s in e.sources}


@pytest.mark.slow  # hypothesis
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(specs_and_selection(), st.booleans())
def test_random_dag_matches_brute_force(case, with_inputs):
    """with_inputs=False: gradient flow decided from op names instead of meta values."""
    spec, selected = case
    _check(spec, selected, with_inputs)


@pytest.mark.slow  # hypothesis
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs_and_selection())
def test_brute_force_reachability_matches_real_autograd(case):
    """Sanity check of the reference itself: its reachable layers are exactly those
    whose weights receive a gradient when the model really runs backward."""
    spec, selected = case
    expected, _ = brute_force(spec, selected)
    assert autograd_reachable(spec, selected) == {n for n, e in expected.items() if e.reachable}


# A few fixed specs that exercise the path-identity rule and every kind of step,
# so that a failure here is easy to read even without hypothesis' shrinking.
FIXED = [
    # a + a then a layer: two routes, one path
    Spec((Step("layer", (0,), "conv1"), Step("add", (1, 1)), Step("layer", (2,), "linear")), (3,)),
    # cat(a, a, b) -> layer
    Spec(
        (
            Step("layer", (0,), "conv3"),
            Step("layer", (1,), "matmul"),
            Step("cat", (1, 1, 2)),
        ),
        (3,),
    ),
    # x / x.norm(), returned twice
    Spec((Step("layer", (0,), "flinear"), Step("norm", (1,))), (2, 2)),
    # residual pair, a detached skip, a no-grad layer, an unused layer
    Spec(
        (
            Step("layer", (0,), "conv1"),
            Step("layer", (1,), "conv3"),
            Step("add", (1, 2)),
            Step("detach", (3,), "data"),
            Step("nograd", (1,), "inference_mode"),
            Step("unused", (3,)),
            Step("shape", (3, 5), "argmax"),
            Step("cat", (7, 4, 3)),
        ),
        (8,),
    ),
    # weight sharing: m0 called on x and again on m0's output, then a ghost module
    Spec(
        (
            Step("layer", (0,), "conv3"),
            Step("reuse", (1,), "grad", ref=0),
            Step("ghost", (2,)),
            Step("layer", (3,), "einsum"),
        ),
        (4,),
    ),
    # two parallel calls of m0 whose paths have the same layer names: two paths
    Spec(
        (
            Step("layer", (0,), "conv1"),
            Step("reuse", (0,), "grad", ref=0),
            Step("add", (1, 2)),
            Step("layer", (3,), "conv1"),
        ),
        (4,),
    ),
    # a no-grad call of a shared function layer and a normal one of an "unused" module
    Spec(
        (
            Step("layer", (0,), "wstd"),
            Step("unused", (1,)),
            Step("reuse", (1,), "nograd", ref=0),
            Step("reuse", (3,), "grad", ref=1),
            Step("cat", (1, 4)),
        ),
        (5,),
    ),
]


@pytest.mark.parametrize("spec", FIXED, ids=lambda s: "-".join(st.kind for st in s.steps))
def test_fixed_specs(spec):
    _check(spec, None)


def test_bruteforce_on_a_hand_example():
    """The reference reproduces a hand derivation: a = m0(x), y = a + m1(a), m3(y).

    m3: 1 path (length 1). m1: m1-m3, 1 path of length 2. m0: m0-m1-m3 (3) and
    m0-m3 (2): 2 paths, timestamps (2, 3), sources (m1, m3).
    """
    spec = Spec(
        (Step("layer", (0,), "conv1"), Step("layer", (1,), "conv1"), Step("add", (1, 2))),
        (3,),
    )
    spec = Spec((*spec.steps, Step("layer", (3,), "conv1")), (4,))
    exp, net = brute_force(spec)
    assert [layer_name(i, s) for i, s in enumerate(spec.steps)] == ["m0", "m1", None, "m3"]
    assert exp["m3"].paths == [("m3",)]
    assert exp["m1"].paths == [("m1", "m3")]
    assert exp["m0"].paths == [("m0", "m1", "m3"), ("m0", "m3")]
    assert exp["m0"].timestamps == (2, 3)
    assert exp["m0"].sources == ("m1", "m3")
    assert exp["m0"].sources_at(3) == ("m1",)
    assert (net.max_shortest, net.min_shortest, net.longest) == (2, 1, 3)


def test_bruteforce_on_shared_layers():
    """Hand derivation for the sharing specs above.

    Spec 5: a = m0(x); b = m0(a); m3 = einsum with p3 on b. Call 2 of m0: (m0, p3), 2.
    Call 1: (m0, m0, p3), 3. Merged m0: {2: 1, 3: 1}, sources (m0, p3). The ghost m2
    is never called: last, calls 0, unreachable.
    Spec 6: a = m0(x); b = m0(x) (second call); m3(a + b): each call has the path
    (m0, m3): two paths of length 2.
    Spec 7: p0 (wstd) on x; m1 unused on p0's output; p0 again under no_grad; m1 again on
    that; m4 = cat(p0 out, m1 out). p0: call 1 -> m4 (2) and -> m1 (call 1: unused, no
    path); call 2 under no_grad: nothing. So p0 {2: 1}. m1: call 1 unused, call 2 ->
    m4: {2: 1}, calls 2.
    """
    exp, net = brute_force(FIXED[4])
    assert list(exp) == ["m0", "p3", "m2"]
    assert exp["m0"].calls == 2
    assert exp["m0"].path_histogram == {2: 1, 3: 1}
    assert exp["m0"].sources == ("m0", "p3")
    assert (exp["m2"].calls, exp["m2"].reachable) == (0, False)
    assert net.unreachable == ("m2",)

    exp, _ = brute_force(FIXED[5])
    assert exp["m0"].paths == [("m0", "m3"), ("m0", "m3")]
    assert exp["m0"].num_paths == 2

    exp, net = brute_force(FIXED[6])
    assert list(exp) == ["p0", "m1", "m4"]
    assert (exp["p0"].calls, exp["p0"].path_histogram) == (2, {2: 1})
    assert (exp["m1"].calls, exp["m1"].path_histogram) == (2, {2: 1})
    assert net.unreachable == ()
