"""Outputs gpa looks into (issue 13, kind 3, ``docs/semantics.md`` §1.5).

Models return more than tuples and dicts: a policy network a namedtuple holding a
``torch.distributions`` object, a Hugging Face model a ``ModelOutput`` holding a cache
object, others dataclasses or types registered with ``torch.utils._pytree``. The tensors
inside all of them feed the loss, under every frontend that can read the model, and
``outputs=`` selects them by field name and dotted path (a namedtuple's fields also by
index). What gpa cannot look into is said in a note, or in the error when it is selected.

Every expected value is derived by hand in the comment next to it, and checked against a
real backward pass: the layers whose parameters receive a non-zero gradient when the
selected tensors are summed are exactly the reachable ones.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn
from torch.distributions import Categorical, Normal

import gpa
from gpa.errors import GpaError, TraceError
from gpa.frontends.outputs import MAX_DEPTH, returned_values
from tests.semantics import LOSS, expect, expect_network, expect_unreachable

ALL = ("fx", "export", "autograd", "auto")
NOT_FX = ("export", "autograd", "auto")  # fx cannot return objects it does not know


def analyze(model: nn.Module, x: torch.Tensor, tracer: str, **options):
    return gpa.analyze(model, x, tracer=tracer, **options)


def backward_reachable(
    model: nn.Module, x: torch.Tensor, pick: Callable[[object], Iterable[torch.Tensor]]
) -> set[str]:
    """The layers (direct children) whose parameters get a non-zero gradient when the
    tensors ``pick`` chooses from the real output are summed and backpropagated."""
    model.zero_grad(set_to_none=True)
    sum(t.sum() for t in pick(model(x))).backward()
    return {
        name
        for name, child in model.named_children()
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in child.parameters())
    }


def reachable(report) -> set[str]:
    return {name for name, record in report.layers.items() if record.reachable}


# ======================================================================================
# A policy network: a namedtuple holding a distribution


Step = collections.namedtuple("Step", "policy value")


class CategoricalPolicy(nn.Module):
    """body -> relu -> pi -> Categorical(logits) (field policy); body -> relu -> v (value)."""

    def __init__(self, validate_args: bool | None = None) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.pi = nn.Linear(8, 3)
        self.v = nn.Linear(8, 1)
        self.validate_args = validate_args

    def forward(self, x):
        h = F.relu(self.body(x))
        return Step(Categorical(logits=self.pi(h), validate_args=self.validate_args), self.v(h))


X = torch.randn(5, 4)

# Categorical validates its logits (a data-dependent check export refuses) unless told not
# to; the autograd frontend runs it either way, auto falls back to it.
POLICIES = [
    pytest.param(CategoricalPolicy, ("autograd", "auto"), id="validated"),
    pytest.param(lambda: CategoricalPolicy(False), NOT_FX, id="unvalidated"),
]


@pytest.mark.parametrize(("build", "tracers"), POLICIES)
def test_distribution_in_a_namedtuple_feeds_the_loss(build, tracers) -> None:
    for tracer in tracers:
        model = build()
        report = analyze(model, X, tracer)
        # the Categorical's logits are pi's output (normalised: no layer): pi 1; v 1;
        # body -> pi and body -> v: two paths of length 2
        expect(report, "pi", {1: 1}, (LOSS,))
        expect(report, "v", {1: 1}, (LOSS,))
        expect(report, "body", {2: 2}, ("pi", "v"))
        expect_network(
            report, layers=3, max_shortest=2, min_shortest=1, mean_shortest=4 / 3, longest=2
        )
        assert not any("cannot look into" in n for n in report.notes)
        real = backward_reachable(model, X, lambda out: (out.policy.logits, out.value))
        assert real == reachable(report) == {"body", "pi", "v"}


@pytest.mark.parametrize("key", ["policy", 0, "0", "policy.logits", "0.logits"])
def test_select_the_policy_by_field_name_or_index(key) -> None:
    model = CategoricalPolicy()
    report = analyze(model, X, "auto", outputs=key)
    # only the logits: pi 1, body -> pi 2; v computed, its result not selected
    expect(report, "pi", {1: 1}, (LOSS,))
    expect(report, "body", {2: 1}, ("pi",))
    expect_unreachable(report, "v")
    assert backward_reachable(model, X, lambda out: (out.policy.logits,)) == reachable(report)


@pytest.mark.parametrize("key", ["value", 1])
def test_select_the_value_by_field_name_or_index(key) -> None:
    model = CategoricalPolicy()
    report = analyze(model, X, "autograd", outputs=[key])
    # only the value: v 1, body -> v 2; pi unreachable
    expect(report, "v", {1: 1}, (LOSS,))
    expect(report, "body", {2: 1}, ("v",))
    expect_unreachable(report, "pi")
    assert backward_reachable(model, X, lambda out: (out.value,)) == reachable(report)


def test_an_unknown_field_lists_the_paths() -> None:
    with pytest.raises(GpaError, match="'logits' is not among .* 'policy.logits', 'value'"):
        analyze(CategoricalPolicy(), X, "autograd", outputs="logits")


class GaussianPolicy(nn.Module):
    """Normal(mu(h), softplus(sigma(h))) and a value head, h = relu(body(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.mu = nn.Linear(8, 2)
        self.sigma = nn.Linear(8, 2)
        self.v = nn.Linear(8, 1)

    def forward(self, x):
        h = F.relu(self.body(x))
        return Step(Normal(self.mu(h), F.softplus(self.sigma(h)), validate_args=False), self.v(h))


@pytest.mark.parametrize("tracer", NOT_FX)
def test_normal_distribution_loc_and_scale(tracer) -> None:
    model = GaussianPolicy()
    report = analyze(model, X, tracer)
    # loc = mu(h), scale = softplus(sigma(h)): mu, sigma, v feed the loss directly (1);
    # body reaches it through each of them: three paths of length 2
    for head in ("mu", "sigma", "v"):
        expect(report, head, {1: 1}, (LOSS,))
    expect(report, "body", {2: 3}, ("mu", "sigma", "v"))
    real = backward_reachable(model, X, lambda out: (out.policy.loc, out.policy.scale, out.value))
    assert real == reachable(report) == {"body", "mu", "sigma", "v"}


# Normal broadcasts loc and scale together (torch.broadcast_tensors): in the graphs of fx and
# export that is one operation with two results; each result depends on its own input only
# (the flow pass follows each result apart), so mu does not reach the loss through the scale.
@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_normal_distribution_scale_alone(tracer) -> None:
    model = GaussianPolicy()
    # the scale alone: sigma 1, body 2; mu and v unreachable
    scale = analyze(model, X, tracer, outputs="policy.scale")
    expect(scale, "sigma", {1: 1}, (LOSS,))
    expect(scale, "body", {2: 1}, ("sigma",))
    expect_unreachable(scale, "mu")
    expect_unreachable(scale, "v")
    assert backward_reachable(model, X, lambda out: (out.policy.scale,)) == reachable(scale)


def test_fx_refuses_a_distribution_rather_than_dropping_it() -> None:
    # symbolic tracing cannot build a distribution (validation, or a returned object it does
    # not know): an error, never a report that leaves the policy head out
    for model in (CategoricalPolicy(), CategoricalPolicy(False), GaussianPolicy()):
        with pytest.raises(TraceError):
            analyze(model, X, "fx")


class PlainStep(nn.Module):
    """A namedtuple of tensors, which fx records too."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.pi = nn.Linear(8, 3)
        self.v = nn.Linear(8, 1)

    def forward(self, x):
        h = F.relu(self.body(x))
        return Step(self.pi(h), self.v(h))


@pytest.mark.parametrize("tracer", ALL)
def test_namedtuple_of_tensors_under_every_frontend(tracer) -> None:
    model = PlainStep()
    report = analyze(model, X, tracer)
    # pi 1, v 1, body -> pi / v: {2: 2}
    expect(report, "pi", {1: 1}, (LOSS,))
    expect(report, "v", {1: 1}, (LOSS,))
    expect(report, "body", {2: 2}, ("pi", "v"))
    # field 1 by name and by index: v 1, body 2, pi unreachable
    for key in ("value", 1):
        value = analyze(model, X, tracer, outputs=key)
        expect(value, "v", {1: 1}, (LOSS,))
        expect(value, "body", {2: 1}, ("v",))
        expect_unreachable(value, "pi")
        assert backward_reachable(model, X, lambda out: (out.value,)) == reachable(value)


# ======================================================================================
# Dataclasses, nested


@dataclasses.dataclass
class Aux:
    feats: torch.Tensor
    count: int


@dataclasses.dataclass
class Heads:
    logits: torch.Tensor
    aux: Aux


class DataclassNet(nn.Module):
    """trunk -> relu -> head (logits); trunk -> relu -> side (aux.feats); aux.count an int."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.side = nn.Linear(4, 3)

    def forward(self, x):
        a = F.relu(self.trunk(x))
        return Heads(self.head(a), Aux(self.side(a), count=3))


@pytest.mark.parametrize("tracer", ALL)
def test_nested_dataclass_under_every_frontend(tracer) -> None:
    model = DataclassNet()
    report = analyze(model, X, tracer)
    # head 1, side 1 (inside the inner dataclass), trunk -> head / side: {2: 2}
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "side", {1: 1}, (LOSS,))
    expect(report, "trunk", {2: 2}, ("head", "side"))
    real = backward_reachable(model, X, lambda out: (out.logits, out.aux.feats))
    assert real == reachable(report) == {"trunk", "head", "side"}
    # a dotted field path, and the field holding the inner dataclass: side only
    for key in ("aux.feats", "aux"):
        aux = analyze(model, X, tracer, outputs=key)
        expect(aux, "side", {1: 1}, (LOSS,))
        expect(aux, "trunk", {2: 1}, ("side",))
        expect_unreachable(aux, "head")
        assert backward_reachable(model, X, lambda out: (out.aux.feats,)) == reachable(aux)


# ======================================================================================
# Cache objects (a Hugging Face DynamicCache is one: layers of keys and values)


class CacheLayer:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


class Cache:
    def __init__(self) -> None:
        self.layers: list[CacheLayer] = []
        self.seen_tokens = 0


class Attention(nn.Module):
    """logits = o(softmax(q k^T) v); the keys and values are also returned in a cache;
    with ``cross``, a second cache holds ck(x), cv(x), which nothing else reads."""

    def __init__(self, cross: bool = False) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))
        self.ck, self.cv = nn.Linear(4, 4), nn.Linear(4, 4)
        self.cross = cross

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = self.o(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
        cache = Cache()
        cache.layers.append(CacheLayer(k, v))
        if not self.cross:
            return {"logits": logits, "cache": cache}
        memory = Cache()
        memory.layers.append(CacheLayer(self.ck(x), self.cv(x)))
        return {"logits": logits, "caches": {"self": cache, "cross": memory}}


SEQ = torch.randn(1, 3, 4)


def _cached(out) -> list[torch.Tensor]:
    caches = [out["cache"]] if "cache" in out else list(out["caches"].values())
    return [t for c in caches for layer in c.layers for t in (layer.keys, layer.values)]


@pytest.mark.parametrize("tracer", NOT_FX)
def test_cache_object_gives_keys_and_values_their_direct_path(tracer) -> None:
    model = Attention()
    report = analyze(model, SEQ, tracer)
    # o 1; k and v: through o (k -> o -> loss, 2) and returned in the cache (1); q: 2
    expect(report, "o", {1: 1}, (LOSS,))
    expect(report, "k", {1: 1, 2: 1}, ("o", LOSS))
    expect(report, "v", {1: 1, 2: 1}, ("o", LOSS))
    expect(report, "q", {2: 1}, ("o",))
    expect_unreachable(report, "ck", calls=0)  # not called without cross
    expect_unreachable(report, "cv", calls=0)
    assert backward_reachable(model, SEQ, lambda out: [out["logits"], *_cached(out)]) == (
        reachable(report)
    )
    # the logits alone (a causal LM with use_cache=False): k and v lose the direct path
    logits = analyze(model, SEQ, tracer, outputs="logits")
    for name in ("q", "k", "v"):
        expect(logits, name, {2: 1}, ("o",))
    # one tensor of the cache by its dotted path: k alone
    keys = analyze(model, SEQ, tracer, outputs="cache.layers.0.keys")
    expect(keys, "k", {1: 1}, (LOSS,))
    for name in ("q", "v", "o"):
        expect_unreachable(keys, name)


@pytest.mark.parametrize("tracer", NOT_FX)
def test_dict_of_caches(tracer) -> None:
    model = Attention(cross=True)
    report = analyze(model, SEQ, tracer)
    # as above, and ck, cv only in the cross cache: 1 each
    expect(report, "k", {1: 1, 2: 1}, ("o", LOSS))
    expect(report, "ck", {1: 1}, (LOSS,))
    expect(report, "cv", {1: 1}, (LOSS,))
    assert backward_reachable(model, SEQ, lambda out: [out["logits"], *_cached(out)]) == (
        reachable(report)
    )
    cross = analyze(model, SEQ, tracer, outputs="caches.cross")
    expect(cross, "ck", {1: 1}, (LOSS,))
    expect(cross, "cv", {1: 1}, (LOSS,))
    for name in ("q", "k", "v", "o"):
        expect_unreachable(cross, name)


# ======================================================================================
# Types registered with torch.utils._pytree: named by their key paths


class Pyramid:
    def __init__(self, low: torch.Tensor, high: torch.Tensor) -> None:
        self.low, self.high = low, high


@pytest.fixture
def registered_pyramid():
    pytree.register_pytree_node(
        Pyramid,
        lambda p: ([p.low, p.high], None),
        lambda values, _: Pyramid(*values),
        flatten_with_keys_fn=lambda p: (
            [(pytree.GetAttrKey("low"), p.low), (pytree.GetAttrKey("high"), p.high)],
            None,
        ),
    )
    yield
    pytree._deregister_pytree_node(Pyramid)


class PyramidNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        low = self.a(x)
        return Pyramid(low, self.b(low))


@pytest.mark.parametrize("tracer", NOT_FX)
def test_registered_pytree_node(registered_pyramid, tracer) -> None:
    model = PyramidNet()
    report = analyze(model, X, tracer)
    # low = a(x): a 1; high = b(a(x)): b 1, a 2
    expect(report, "a", {1: 1, 2: 1}, ("b", LOSS))
    expect(report, "b", {1: 1}, (LOSS,))
    high = analyze(model, X, tracer, outputs="high")
    expect(high, "a", {2: 1}, ("b",))
    assert backward_reachable(model, X, lambda out: (out.high,)) == reachable(high)


# ======================================================================================
# What gpa cannot look into


class Slotted:
    """No instance dict: gpa cannot see the tensor it holds."""

    __slots__ = ("hidden",)

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


class Hides(nn.Module):
    def __init__(self, only: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.only = only

    def forward(self, x):
        if self.only:
            return Slotted(self.b(x))
        return self.a(x), Slotted(self.b(x))


@pytest.mark.parametrize("tracer", NOT_FX)
def test_an_object_gpa_cannot_look_into_is_named_in_a_note(tracer) -> None:
    report = analyze(Hides(), X, tracer)
    # a feeds the loss; b's result is inside the object: unreachable, and a note says why
    expect(report, "a", {1: 1}, (LOSS,))
    expect_unreachable(report, "b")
    name = f"{__name__}.Slotted"
    assert f"output '1' is a {name}, which gpa cannot look into" in "\n".join(report.notes)
    # selecting it is an error naming the object, not an all-unreachable report
    with pytest.raises(GpaError, match=f"output 1 is a {name} .* which gpa cannot look into"):
        analyze(Hides(), X, tracer, outputs=1)
    # the other output selected: no note about the object
    assert not any("cannot look into" in n for n in analyze(Hides(), X, tracer, outputs=0).notes)
    with pytest.raises(GpaError, match=f"returns no tensor.*it returned a {name}, which gpa"):
        analyze(Hides(only=True), X, tracer)


def test_cycles_are_walked_once_and_depth_is_bounded() -> None:
    class Node:
        pass

    root = Node()
    root.t = torch.zeros(1)
    root.me = root  # a cycle: nothing new below it, no note
    root.deep = nested = []
    for _ in range(20):  # a tensor 21 lists down: deeper than gpa looks
        nested.append([])
        nested = nested[0]
    nested.append(torch.zeros(1))
    found = returned_values(root)
    assert [str(path) for path, _ in found.values] == ["t"]
    deep = "deep" + ".0" * (MAX_DEPTH - 1)
    assert found.notes() == [
        f"output '{deep}' is a list, which gpa cannot look into: tensors inside it (if any) "
        "do not feed the loss"
    ]
