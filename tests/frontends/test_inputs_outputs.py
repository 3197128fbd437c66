"""Inputs and outputs: several outputs and outputs= selection, train vs eval, several inputs.

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md); none was copied from gpa's output. The conventions and the
helpers (``expect``, ``expect_network``, ``at`` ...) are in tests/semantics.py.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from gpa.errors import ShapeError, TraceError
from tests.frontends.every_tracer import EVERY_TRACER
from tests.semantics import LOSS, at, expect, expect_network, expect_unreachable

# ======================================================================================
# Several outputs and outputs= selection; non-tensor outputs


class Heads(nn.Module):
    """trunk -> h1 (out 0); trunk -> h2 -> h3 (out 1); trunk -> h4 (nested out)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 4)
        self.h1 = nn.Linear(4, 2)
        self.h2 = nn.Linear(4, 4)
        self.h3 = nn.Linear(4, 2)
        self.h4 = nn.Linear(4, 2)
        self.kind = kind

    def forward(self, x):
        a = F.relu(self.trunk(x))
        o1, o2 = self.h1(a), self.h3(self.h2(a))
        if self.kind == "tuple":
            return o1, o2
        if self.kind == "dict":
            return {"main": o1, "aux": o2}
        if self.kind == "twice":
            return o1, o1
        o3 = self.h4(a)
        return (o1, [o2, {"deep": o3}])  # nested


def test_two_outputs_all():
    report = gpa.analyze(Heads("tuple"), torch.randn(2, 4))
    # h1 and h3 feed the loss: 1; h2 -> h3: 2; trunk -> h1 (2) and trunk -> h2 -> h3 (3);
    # h4 is never called.
    expect(report, "h1", {1: 1}, (LOSS,))
    expect(report, "h3", {1: 1}, (LOSS,))
    expect(report, "h2", {2: 1}, ("h3",))
    expect(report, "trunk", {2: 1, 3: 1}, ("h1", "h2"))
    expect_unreachable(report, "h4", calls=0)
    expect_network(
        report,
        layers=5,
        max_shortest=2,
        min_shortest=1,
        mean_shortest=6 / 4,
        longest=3,
        unreachable=("h4",),
    )


@pytest.mark.parametrize(("kind", "sel"), [("tuple", 0), ("dict", "main")])
def test_select_first_output(kind, sel):
    report = gpa.analyze(Heads(kind), torch.randn(2, 4), outputs=[sel])
    # only o1 = h1(trunk) feeds the loss: trunk 2 (one path), h1 1; h2, h3 get nothing
    expect(report, "h1", {1: 1}, (LOSS,))
    expect(report, "trunk", {2: 1}, ("h1",))
    expect_unreachable(report, "h2")
    expect_unreachable(report, "h3")
    assert report.network.max_shortest == 2
    assert report.network.longest == 2


@pytest.mark.parametrize(("kind", "sel"), [("tuple", 1), ("dict", "aux"), ("nested", "1.0")])
def test_select_second_output(kind, sel):
    report = gpa.analyze(Heads(kind), torch.randn(2, 4), outputs=[sel])
    # only o2 = h3(h2(trunk)): h3 1, h2 2, trunk 3; h1 (and h4) get nothing
    expect(report, "h3", {1: 1}, (LOSS,))
    expect(report, "h2", {2: 1}, ("h3",))
    expect(report, "trunk", {3: 1}, ("h2",))
    expect_unreachable(report, "h1")
    assert report.network.max_shortest == 3
    assert report.network.min_shortest == 1


def test_dict_outputs_all():
    # both dict values feed the loss: same as the tuple case
    report = gpa.analyze(Heads("dict"), torch.randn(2, 4))
    expect(report, "trunk", {2: 1, 3: 1}, ("h1", "h2"))
    expect(report, "h1", {1: 1}, (LOSS,))


def test_nested_outputs_flattened():
    report = gpa.analyze(Heads("nested"), torch.randn(2, 4))
    # o1, o2 and o3 (inside a list inside a tuple, and a dict inside that) all feed the loss:
    # trunk -> h1 (2), trunk -> h2 -> h3 (3), trunk -> h4 (2): {2: 2, 3: 1}
    expect(report, "trunk", {2: 2, 3: 1}, ("h1", "h2", "h4"))
    for head in ("h1", "h3", "h4"):
        expect(report, head, {1: 1}, (LOSS,))
    # the dotted path selects the innermost value only: trunk -> h4 -> loss
    only_deep = gpa.analyze(Heads("nested"), torch.randn(2, 4), outputs=["1.1.deep"])
    expect(only_deep, "trunk", {2: 1}, ("h4",))
    expect(only_deep, "h4", {1: 1}, (LOSS,))
    for other in ("h1", "h2", "h3"):
        expect_unreachable(only_deep, other)
    # "1" keeps everything below it: o2 and o3. trunk -> h2 -> h3 (3), trunk -> h4 (2)
    subtree = gpa.analyze(Heads("nested"), torch.randn(2, 4), outputs=[1])
    expect(subtree, "trunk", {2: 1, 3: 1}, ("h2", "h4"))
    expect_unreachable(subtree, "h1")


def test_same_output_returned_twice_is_one_path():
    report = gpa.analyze(Heads("twice"), torch.randn(2, 4))
    # (o1, o1): two routes from h1 to the loss crossing no other layer: one path
    expect(report, "h1", {1: 1}, (LOSS,))
    expect(report, "trunk", {2: 1}, ("h1",))
    # h2 -> h3 computed, result unused
    expect_unreachable(report, "h2")
    expect_unreachable(report, "h3")


class NonTensorOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 2)

    def forward(self, x):
        return {"logits": self.l2(self.l1(x)), "extra": None, "n": x.shape[0]}


def test_non_tensor_outputs_are_ignored():
    report = gpa.analyze(NonTensorOutputs(), torch.randn(2, 4))
    # only the logits tensor feeds the loss: l1 2, l2 1
    expect(report, "l1", {2: 1}, ("l2",))
    expect(report, "l2", {1: 1}, (LOSS,))


# ======================================================================================
# Train vs eval: an auxiliary head returned only in training


class AuxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 2)
        self.aux = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        a = F.relu(self.l1(x))
        main = self.l3(self.drop(self.l2(a)))
        if self.training:
            return main, self.aux(a)
        return main


def test_train_mode_has_aux_head():
    model = AuxNet().eval()
    report = gpa.analyze(model, torch.randn(2, 4))  # train=True by default
    assert model.training is False  # the model's own mode is restored
    assert list(report.layers) == ["l1", "l2", "l3", "aux"]
    # l3 1, aux 1, l2 -> l3: 2, l1: via l2 (l1-l2-l3, 3) and via aux (l1-aux, 2)
    expect(report, "l3", {1: 1}, (LOSS,))
    expect(report, "aux", {1: 1}, (LOSS,))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l1", {2: 1, 3: 1}, ("aux", "l2"))
    assert at(report.layers["l1"].sources_at(2)) == ("aux",)
    assert at(report.layers["l1"].sources_at(3)) == ("l2",)
    # shortest: 2, 2, 1, 1 -> mean 1.5
    expect_network(report, layers=4, max_shortest=2, min_shortest=1, mean_shortest=1.5, longest=3)


def test_eval_mode_drops_aux_head():
    model = AuxNet().train()
    report = gpa.analyze(model, torch.randn(2, 4), train=False)
    assert model.training is True
    # eval: main only: l1-l2-l3 chain 3, 2, 1; aux is never called -> calls 0, unreachable,
    # listed after the called layers
    assert list(report.layers) == ["l1", "l2", "l3", "aux"]
    expect(report, "l1", {3: 1}, ("l2",))
    expect(report, "l2", {2: 1}, ("l3",))
    expect(report, "l3", {1: 1}, (LOSS,))
    expect_unreachable(report, "aux", calls=0)
    expect_network(
        report,
        layers=4,
        max_shortest=3,
        min_shortest=1,
        mean_shortest=2.0,
        longest=3,
        unreachable=("aux",),
    )


# ======================================================================================
# Several inputs


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(6, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x, y):
        return self.c(self.a(x) + self.b(y))


@pytest.mark.parametrize("by_shape", [True, False])
def test_two_inputs(by_shape):
    if by_shape:
        report = gpa.analyze(TwoInputs(), input_shape=[(2, 4), (2, 6)])
    else:
        report = gpa.analyze(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 6)))
    # a -> c and b -> c: 2 each; c 1
    expect(report, "a", {2: 1}, ("c",))
    expect(report, "b", {2: 1}, ("c",))
    expect(report, "c", {1: 1}, (LOSS,))
    assert report.inputs == [
        {"shape": [2, 4], "dtype": "float32"},
        {"shape": [2, 6], "dtype": "float32"},
    ]


# ======================================================================================
# Example inputs that are Python values: None for an optional input, flags, numbers


class Optional(nn.Module):
    """Hugging Face's optional inputs: the embedding runs unless ``inputs_embeds`` is
    given; ``use_k`` and ``mode`` choose the head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.l, self.k = nn.Embedding(10, 4), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, ids, inputs_embeds=None, use_k=False, scale=1.0, mode="a"):
        if inputs_embeds is None:
            inputs_embeds = self.emb(ids)
        if use_k and mode == "b":
            return self.k(inputs_embeds * scale)
        return self.l(inputs_embeds * scale)


class PassesOn(nn.Module):
    """Ultralytics' root: ``forward(x, *args, **kwargs)`` hands everything on to a method
    whose flags choose the head (``augment``)."""

    def __init__(self) -> None:
        super().__init__()
        self.l, self.k = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x, *args, **kwargs):
        return self.predict(x, *args, **kwargs)

    def predict(self, x, profile=False, augment=False):
        return self.k(x) if augment else self.l(x)


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_star_arguments_no_input_reaches_are_empty(tracer) -> None:
    """fx traced ``*args`` as a proxy, which cannot be unpacked: it failed on every
    Ultralytics model whatever its leaves (found by a new-user review). By hand: l feeds
    the loss (1); k is never called."""
    report = gpa.analyze(PassesOn(), input_shape=(2, 4), tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    expect(report, "l", {1: 1}, (LOSS,))
    expect_unreachable(report, "k", calls=0)


class HandsOn(nn.Module):
    """A wrapper taking anything (peft's ``PeftModel.forward(*args, **kwargs)``) around
    ``inner``: ``c(a(x) + b(a(y)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TwoInputs()

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


class Rest(nn.Module):
    """``d`` on the first input, the rest handed on by ``*rest``, then a keyword-only
    ``scale`` (its placeholder comes before ``*rest``'s in fx's order of parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.d = nn.Linear(4, 4)
        self.inner = TwoInputs()

    def forward(self, x, *rest, scale=1.0):
        return self.inner(self.d(x), *rest) * scale


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
@pytest.mark.parametrize("model", [HandsOn, Rest])
def test_star_arguments_inputs_reach_are_unpacked(tracer, model) -> None:
    """fx traced ``*args`` as one proxy even where inputs reach it: "Proxy object cannot
    be iterated" on every peft model, said to depend on tensor values. By hand: inner.c
    feeds the loss (1), inner.a and inner.b it (2), d inner.a (3)."""
    report = gpa.analyze(model(), input_shape=[(2, 4), (2, 6)], tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    expect(report, "inner.a", {2: 1}, ("inner.c",))
    expect(report, "inner.b", {2: 1}, ("inner.c",))
    if model is Rest:
        expect(report, "d", {3: 1}, ("inner.a",))


class FlagThenRest(nn.Module):
    """A defaulted flag before ``*rest``, a keyword-only ``scale`` after: given a value,
    the flag's placeholder must lose its default (a placeholder without one follows)."""

    def __init__(self) -> None:
        super().__init__()
        self.d, self.k = nn.Linear(4, 4), nn.Linear(4, 2)
        self.inner = TwoInputs()

    def forward(self, x, flag=False, *rest, scale=1.0):
        h = self.d(x)
        return (self.inner(h, *rest) if flag else self.k(h)) * scale


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_defaulted_argument_before_star_arguments_given_a_value(tracer) -> None:
    """By hand: inner.c feeds the loss (1), inner.a and inner.b it (2), d inner.a (3); k is
    never called. fx's graph is one Python can write (before: a placeholder without a
    default after one with: SyntaxError as soon as the code was written)."""
    model, inputs = FlagThenRest(), (torch.randn(2, 4), True, torch.randn(2, 6))
    report = gpa.analyze(model, inputs, tracer=tracer)
    expect(report, "d", {3: 1}, ("inner.a",))
    expect(report, "inner.b", {2: 1}, ("inner.c",))
    expect_unreachable(report, "k", calls=0)
    if tracer == "fx":
        from gpa.frontends.fx import _forward_arguments
        from gpa.frontends.fx.tracer import trace

        constants, _ = _forward_arguments(model, gpa.AnalysisOptions(example_inputs=inputs))
        code = trace(model, constants=constants).code
        assert "def forward(self, x, flag_1, rest_0, scale_1 = 1.0)" in code


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
@pytest.mark.parametrize(("flags", "head"), [((False, True), "k"), ((True,), "l")])
def test_python_values_reaching_star_arguments_take_their_branch(tracer, flags, head) -> None:
    """A flag handed on by ``*args`` is traced as given (Ultralytics' ``forward(x, *args,
    **kwargs)`` given ``augment``). By hand: the head chosen feeds the loss (1); the other
    is never called."""
    report = gpa.analyze(PassesOn(), (torch.randn(2, 4), *flags), tracer=tracer)
    assert report.tracer == ("fx" if tracer == "auto" else tracer)
    expect(report, head, {1: 1}, (LOSS,))
    expect_unreachable(report, "l" if head == "k" else "k", calls=0)


def _own_forward(model: TwoInputs) -> TwoInputs:
    """``model`` with a forward of its own that leaves ``b`` out."""
    model.forward = lambda x, y: model.c(model.a(x))
    return model


def _wrapped_forward(model: TwoInputs) -> TwoInputs:
    """``model`` with its own forward wrapping the class's and detaching its result, as a
    hook may (``__wrapped__`` names the class's forward all the same)."""
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        return inner(*args, **kwargs).detach() + model.c(args[0][:, :4])

    model.forward = forward
    return model


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd", "auto"])
def test_a_forward_of_the_models_own_is_the_one_read(tracer) -> None:
    """fx traces the class's forward: a forward set on the model was ignored, and fx
    reported b (shortest 2) where the model never calls it. By hand: c feeds the loss (1),
    a it (2); b is never called. fx refuses now, and auto moves on."""
    inputs = [(2, 4), (2, 6)]
    if tracer == "fx":
        with pytest.raises(gpa.GpaError, match="has a forward of its own"):
            gpa.analyze(_own_forward(TwoInputs()), input_shape=inputs, tracer="fx")
        return
    report = gpa.analyze(_own_forward(TwoInputs()), input_shape=inputs, tracer=tracer)
    assert report.tracer == ("export" if tracer == "auto" else tracer)
    expect(report, "a", {2: 1}, ("c",))
    expect_unreachable(report, "b", calls=0)


def test_a_forward_wrapping_the_classs_is_the_one_read() -> None:
    """A wrapper of the class's forward may compute something else: fx reported a and b
    with paths where the wrapper detaches them (a review). By hand: only c (through the
    wrapper's own call; it is called twice) feeds the loss (1); a and b get no gradient."""
    with pytest.raises(gpa.GpaError, match="has a forward of its own"):
        gpa.analyze(_wrapped_forward(TwoInputs()), input_shape=[(2, 4), (2, 6)], tracer="fx")
    report = gpa.analyze(_wrapped_forward(TwoInputs()), input_shape=[(2, 4), (2, 6)])
    assert report.tracer == "export"
    expect(report, "c", {1: 1}, (LOSS,), calls=2)
    expect_unreachable(report, "a")
    expect_unreachable(report, "b")


def test_the_classs_forward_bound_again_is_read_by_fx() -> None:
    """``types.MethodType(cls.forward, model)`` is the class's forward: fx reads it. By
    hand: a and b feed c (2)."""
    model = TwoInputs()
    model.forward = types.MethodType(TwoInputs.forward, model)
    report = gpa.analyze(model, input_shape=[(2, 4), (2, 6)])
    assert report.tracer == "fx"
    expect(report, "b", {2: 1}, ("c",))


IDS = torch.randint(0, 10, (1, 5))


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
@pytest.mark.parametrize(
    ("args", "head", "embedded"),
    [
        ((IDS, None), "l", True),
        ((IDS, None, True, 2.0, "b"), "k", True),
        ((IDS, None, True, 2.0, "a"), "l", True),
        ((None, torch.randn(1, 5, 4), False), "l", False),
    ],
)
def test_python_values_among_the_inputs_take_their_branch(tracer, args, head, embedded) -> None:
    """fx traced a None or a flag as a proxy: ``inputs_embeds is None`` was false (fx
    then failed on the wrong branch, and auto stopped there), a flag refused. Now each is
    traced as given. By hand: the head chosen feeds the loss (1), the embedding it (2);
    the other head is never called, and so is the embedding when the embeddings are
    given."""
    report = gpa.analyze(Optional(), args, tracer=tracer)
    if tracer == "auto":
        assert report.tracer == "fx"
    expect(report, head, {1: 1}, (LOSS,))
    expect_unreachable(report, "k" if head == "l" else "l", calls=0)
    if embedded:
        expect(report, "emb", {2: 1}, (head,))
    else:
        expect_unreachable(report, "emb", calls=0)


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class DataclassOut(nn.Module):
    """a -> b -> logits; a's output is also returned as ``hidden``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> Out:
        h = self.a(x)
        return Out(self.b(h), h)


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
@pytest.mark.parametrize(("key", "field"), [(0, "logits"), (1, "hidden")])
def test_a_dataclass_field_is_selected_by_name_or_index(tracer, key, field) -> None:
    """Semantics §1.5: dataclasses by field name or index (the index was refused). By
    hand: the logits alone give a 2 and b 1; the hidden state alone a 1, b unreachable."""
    model, x = DataclassOut(), torch.randn(1, 4)
    by_index = gpa.analyze(model, (x,), tracer=tracer, outputs=[key])
    by_name = gpa.analyze(model, (x,), tracer=tracer, outputs=[field])
    for report in (by_index, by_name):
        if field == "logits":
            expect(report, "a", {2: 1}, ("b",))
            expect(report, "b", {1: 1}, (LOSS,))
        else:
            expect(report, "a", {1: 1}, (LOSS,))
            expect_unreachable(report, "b")


def test_an_empty_selection_of_outputs_is_refused() -> None:
    with pytest.raises(gpa.errors.GpaError, match="outputs selects no output"):
        gpa.analyze(DataclassOut(), (torch.randn(1, 4),), outputs=[])


class DottedKeys(nn.Module):
    """a -> c and a -> d, returned under a key holding a dot and a nested key of the same
    dotted spelling: ``{"a": {"b": d}, "a.b": c}``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict:
        h = self.a(x)
        return {"a": {"b": self.d(h)}, "a.b": self.c(h)}


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
@pytest.mark.parametrize(
    ("outputs", "reached"),
    [(None, {"c", "d"}), (["a"], {"d"}), (["[a.b]"], {"c"}), (["a.b"], {"c", "d"})],
)
def test_a_key_holding_a_dot_is_an_output_of_its_own(tracer, outputs, reached) -> None:
    """Both values feed the loss (fx and export kept one of the two paths spelt "a.b",
    and d was unreachable); "a" is the nested dict alone, "[a.b]" the dotted key alone,
    "a.b" spells both. By hand: each head reached is 1, a is 2."""
    report = gpa.analyze(DottedKeys(), (torch.randn(1, 4),), tracer=tracer, outputs=outputs)
    for head in ("c", "d"):
        if head in reached:
            expect(report, head, {1: 1}, (LOSS,))
        else:
            expect_unreachable(report, head)
    expect(report, "a", {2: len(reached)}, tuple(sorted(reached)))


class NanDefault(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
        return self.l(torch.nan_to_num(x, nan=fill))


@pytest.mark.parametrize("args", [(torch.randn(1, 4),), (torch.randn(1, 4), float("nan"))])
def test_a_nan_among_the_constants_is_traced_as_a_proxy(args) -> None:
    """fx asserts a constant argument at each call, and NaN equals nothing: a NaN default
    or input stays a proxy, and fx reads the model (it failed with a ShapeError)."""
    report = gpa.analyze(NanDefault(), args, tracer="fx")
    expect(report, "l", {1: 1}, (LOSS,))


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@EVERY_TRACER
def test_a_model_on_the_meta_device_takes_example_inputs_on_the_cpu(tracer: str) -> None:
    """Only the inputs' shapes and dtypes count (§1.4): export failed on a model built on
    the meta device given a CPU tensor (found by a new-user review). By hand: b 1, a 2."""
    with torch.device("meta"):
        model = _Chain()
    report = gpa.analyze(model, (torch.randn(2, 4),), tracer=tracer)
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("b",))


class Masked(nn.Module):
    """forward(x, mask=None, scale=1.0, *, flag=False, **kwargs): a mask given by name
    multiplies a's output; ``flag`` is keyword-only."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x, mask=None, scale=1.0, *, flag=False, **kwargs):
        y = self.a(x) * scale
        return self.b(y if mask is None else y * mask)


X = torch.randn(1, 4)


@EVERY_TRACER
@pytest.mark.parametrize("by_name", [{"x": X, "scale": 2.0}, {"scale": 2.0, "x": X}])
def test_inputs_by_name_are_bound_to_forward_positions(tracer, by_name) -> None:
    """Found by a review: a Hugging Face user has a dict (a ``BatchEncoding``), which was
    refused. Bound by name, the arguments between take their defaults (mask None). By hand:
    b feeds the loss (1), a b (2)."""
    report = gpa.analyze(Masked(), by_name, tracer=tracer)
    assert report.inputs == [
        {"shape": [1, 4], "dtype": "float32"},
        {"value": "None"},
        {"value": "2.0"},
    ]
    expect(report, "b", {1: 1}, (LOSS,))
    expect(report, "a", {2: 1}, ("b",))
    positional = gpa.analyze(Masked(), (X, None, 2.0), tracer=tracer)
    assert report.to_json() == positional.to_json()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"x": X, "flag": True}, "'flag', which Masked.forward takes only by keyword"),
        ({"x": X, "other": 1}, "'other', which Masked.forward takes only through \\*\\*kwargs"),
        ({"mask": X}, "leaves out 'x', which Masked.forward needs"),
    ],
)
def test_inputs_by_name_forward_cannot_take_by_position_are_refused(given, message) -> None:
    with pytest.raises(gpa.errors.GpaError, match=message):
        gpa.analyze(Masked(), given)


def _passing_on(forward):
    def call(*args, **kwargs):  # no functools.wraps: the signature is lost
        return forward(*args, **kwargs)

    return call


class Starred(nn.Linear):
    def forward(self, x, *rest):
        return super().forward(x)


class Undecorated(nn.Linear):
    @_passing_on
    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize(
    ("model", "given", "message"),
    [
        (
            Starred(4, 2),
            {"x": X, "rest": 1},
            r"collects its further positional arguments in \(\*rest\)",
        ),
        (Undecorated(4, 2), {"x": X}, r"names no argument gpa can place 'x' at .*by position"),
    ],
)
def test_names_forward_has_no_place_for_say_why(model, given, message) -> None:
    """Found by a review: both were said to be taken "only by keyword"."""
    with pytest.raises(gpa.errors.GpaError, match=message):
        gpa.analyze(model, given)


def test_an_argument_of_forward_given_as_an_option_says_where_it_goes() -> None:
    """Found by a review: ``gpa.analyze(model, input_ids=ids)`` answered "did you mean
    'input_shape'?"."""
    with pytest.raises(gpa.errors.GpaError, match="'mask' is an argument of Masked.forward"):
        gpa.analyze(Masked(), (X,), mask=X)
    with pytest.raises(gpa.errors.GpaError, match="did you mean 'tracer'"):
        gpa.analyze(Masked(), (X,), tracr="fx")


def test_count_and_measure_take_inputs_by_name() -> None:
    """Every entry point binds them alike. By hand: a is 4 x 4 (2 * 16 FLOPs a sample),
    b 4 x 2 (2 * 8)."""
    counts = gpa.count(Masked(), {"x": X, "scale": 2.0})
    assert counts.flops == {"a": 32, "b": 16}
    batches = [{"x": torch.randn(4, 4), "mask": torch.ones(4, 4)} for _ in range(2)]
    measured = gpa.measure(Masked(), batches=batches, steps=2)
    assert measured.steps == 2
    assert measured.layers["a"].output_grad_norm > 0


class ReturnsItsFeatures(nn.Module):
    """Returns its feature map beside the prediction made from it (an Ultralytics head's
    ``feats`` in train mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        features = self.b(self.a(x))
        return {"pred": self.head(features), "feats": [features]}


@EVERY_TRACER
def test_returned_tensors_read_inside_the_model_are_named_in_a_note(tracer) -> None:
    """Found by a review of the YOLO line: the default numbers of every detection model
    count the paths through ``feats`` (yolov8n: max_shortest 9 instead of 12), and nothing
    in the report said so. By hand: through feats, a -> b -> loss (2); through the
    prediction alone, a -> b -> head -> loss (3)."""
    report = gpa.analyze(ReturnsItsFeatures(), input_shape=(1, 4), tracer=tracer)
    (note,) = [n for n in report.notes if "also read inside the model" in n]
    assert note.startswith(
        "1 returned tensor(s) feeding the loss are also read inside the model (output feats.0)"
    )
    expect(report, "a", {2: 1, 3: 1}, ("b",))
    predictions = gpa.analyze(
        ReturnsItsFeatures(), input_shape=(1, 4), tracer=tracer, outputs="pred"
    )
    assert not any("also read inside" in n for n in predictions.notes)
    expect(predictions, "a", {3: 1}, ("b",))


class ReadsOneOfSeveral(nn.Module):
    """Returns one tensor of an operation making several — an LSTM's sequence ``out``, the
    first of two chunks — beside a prediction made from another of them (the last hidden
    state ``h``, the second chunk): the tensor returned is read nowhere inside. With
    ``reads_returned``, the prediction is made from the returned tensor itself."""

    def __init__(self, kind: str, reads_returned: bool) -> None:
        super().__init__()
        self.kind, self.reads_returned = kind, reads_returned
        self.rnn, self.a = nn.LSTM(4, 4, batch_first=True), nn.Linear(4, 4)
        self.fc = nn.Linear(4 if kind == "lstm" else 2, 2)

    def forward(self, x):
        if self.kind == "lstm":
            out, (h, _) = self.rnn(x)
            return out, self.fc(out[:, -1] if self.reads_returned else h[-1])
        p, q = self.a(x).chunk(2, -1)
        return p, self.fc(p if self.reads_returned else q)


@EVERY_TRACER
@pytest.mark.parametrize("reads_returned", [False, True], ids=["other", "returned"])
@pytest.mark.parametrize("kind", ["lstm", "chunk"])
def test_a_returned_tensor_is_read_inside_only_where_that_tensor_is(
    kind: str, reads_returned: bool, tracer: str
) -> None:
    """Found by a survey: the autograd frontend's node for a call (or a split) holds every
    tensor it makes, so the note said the returned ``out`` was read inside where the model
    reads ``h`` (fx and export, whose graphs hold one node per tensor, said nothing). The
    note now names the returned tensors the model itself reads, by every frontend. By
    hand: rnn (a) reaches the loss at 1 (the returned tensor) and at 2 (through fc)."""
    report = gpa.analyze(
        ReadsOneOfSeveral(kind, reads_returned), (torch.randn(2, 3, 4),), tracer=tracer
    )
    noted = [n for n in report.notes if "also read inside the model" in n]
    if reads_returned:
        (note,) = noted
        assert note.startswith(
            "1 returned tensor(s) feeding the loss are also read inside the model (output 0)"
        )
    else:
        assert noted == []
    expect(report, "rnn" if kind == "lstm" else "a", {1: 1, 2: 1}, (LOSS, "fc"))


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x, *, scale=1.0):
        return self.a(x) * scale


class Defaulted(KeywordOnly):
    def forward(self, x, y=None):  # type: ignore[override]
        return self.a(x if y is None else x + y)


@EVERY_TRACER
@pytest.mark.parametrize(
    ("model", "given", "takes"),
    [
        (lambda: nn.Sequential(nn.Linear(4, 2)), 2, "1 input(s) ('input')"),
        (KeywordOnly, 2, "1 input(s) ('x')"),  # not into the keyword-only scale
        (Defaulted, 3, "2 input(s) ('x', 'y')"),
        (lambda: nn.Linear(4, 2), 2, "1 input(s) ('input')"),  # a layer as the model
    ],
    ids=["sequential", "keyword_only", "defaulted", "layer"],
)
def test_more_inputs_than_forward_takes_are_refused(model, given, takes, tracer) -> None:
    """Python refuses the call, and so does every frontend, with one message (fx read the
    model without the extra inputs, and auto reported its numbers; so did export where
    the model is one layer)."""
    inputs = tuple(torch.randn(2, 4) for _ in range(given))
    with pytest.raises(ShapeError) as error:
        gpa.analyze(model(), inputs, tracer=tracer)
    assert f"forward takes {takes} but {given} example inputs were given" in str(error.value)


def test_more_inputs_than_a_model_declared_a_leaf_takes_are_refused() -> None:
    """A model read as one call (declared a leaf itself) is refused as Python refuses it."""
    with pytest.raises(ShapeError, match="takes 1 input"):
        gpa.analyze(KeywordOnly(), (torch.randn(2, 4),) * 2, leaf_modules=[KeywordOnly])


def _takes_a_scale(forward):
    """A decorator whose wrapper takes more than the forward it wraps."""

    @functools.wraps(forward)
    def wrapper(self, x, scale=1.0):
        return forward(self, x) * scale

    return wrapper


class Scaled(KeywordOnly):
    @_takes_a_scale
    def forward(self, x):  # type: ignore[override]
        return self.a(x)


def test_inputs_python_takes_are_not_refused() -> None:
    """A pre-hook taking an input forward does not, or a decorator's wrapper taking more
    than forward: Python accepts the call (each gives the layer's (2, 2) output), and so
    does the count (it raised before a frontend ran)."""
    from gpa.frontends.inputs import check_input_count

    hooked = KeywordOnly()
    hooked.register_forward_pre_hook(lambda module, args: (args[0] * args[1],))
    x = torch.randn(2, 4)
    for model, inputs in ((hooked, (x, x)), (Scaled(), (x, 2.0))):
        assert model(*inputs).shape == (2, 2)
        check_input_count(model, len(inputs))  # (raises ShapeError where Python refuses)
    with pytest.raises(ShapeError):
        check_input_count(KeywordOnly(), 2)


class _Sided(nn.Module):
    """``b(a(x))``, and a decorator's wrapper adding ``side(y)`` where a second input is
    given: Python calls the wrapper, fx and export bind the inputs to ``forward(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.side = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    @staticmethod
    def _with_side(forward):
        @functools.wraps(forward)
        def wrapper(self, x, y=None):
            out = forward(self, x)
            return out if y is None else out + self.side(y)

        return wrapper

    @_with_side
    def forward(self, x):
        return self.b(self.a(x))


def test_inputs_only_a_pre_hook_or_a_wrapper_takes_are_read_by_autograd() -> None:
    """fx and export bind the example inputs to ``forward``'s own signature, so the
    inputs a root pre-hook or a decorator's wrapper takes beyond it were never passed:
    export blamed the model ("KeywordOnly raised TypeError: too many positional
    arguments", a ModelError), fx traced the wrapper's other branch (and blamed a test on
    a proxy). Both refuse them now; auto reads them with autograd. By hand: the one layer
    ``a``, 1; ``_Sided``: ``b`` and ``side`` 1 (into the sum), ``a`` 2."""
    hooked = KeywordOnly()
    hooked.register_forward_pre_hook(lambda module, args: (args[0] * args[1],))
    x = torch.randn(2, 4)
    cases = [
        (hooked, (x, x), {"a": ({1: 1}, (LOSS,))}),
        (Scaled(), (x, 2.0), {"a": ({1: 1}, (LOSS,))}),
        (
            _Sided(),
            (x, x),
            {"a": ({2: 1}, ("b",)), "b": ({1: 1}, (LOSS,)), "side": ({1: 1}, (LOSS,))},
        ),
    ]
    for model, inputs, expected in cases:
        for tracer in ("fx", "export"):
            with pytest.raises(TraceError, match="binds the example inputs|hooks itself"):
                gpa.analyze(model, inputs, tracer=tracer)
        exported = r"torch.export binds the example inputs to \w+\.forward\(x\b"
        with pytest.raises(TraceError, match=exported):
            gpa.analyze(model, inputs, tracer="export")
        report = gpa.analyze(model, inputs)
        assert report.tracer == "autograd"
        assert list(report.layers) == list(expected)
        for name, (histogram, sources) in expected.items():
            expect(report, name, histogram, sources)


class ReturnsItsLoss(nn.Module):
    """Returns its own loss beside the logits it computed it from (a task head given labels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        logits = self.b(self.a(x))
        return logits.pow(2).mean(), logits


@EVERY_TRACER
def test_a_reader_of_an_unselected_output_makes_no_note(tracer) -> None:
    """Found by a new user on BERT with labels: selecting the logits alone, the note still
    said they are read inside the model and advised selecting what the loss reads — done
    already; only the unselected loss reads them. By hand: a -> b -> loss, 2 and 1, both
    ways; the note only where both outputs feed the loss."""
    both = gpa.analyze(ReturnsItsLoss(), input_shape=(2, 4), tracer=tracer)
    assert any("also read inside the model (output 1)" in n for n in both.notes)
    logits = gpa.analyze(ReturnsItsLoss(), input_shape=(2, 4), tracer=tracer, outputs="1")
    assert not any("also read inside" in n for n in logits.notes)
    assert {n: r.timestamps for n, r in logits.layers.items()} == {"a": (2,), "b": (1,)}


class TwoIndexInputs(nn.Module):
    """A transformer's three inputs: token ids and token types, each read by an embedding,
    and a mask between them: ``tok, typ -> out``."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.typ = nn.Embedding(10, 4), nn.Embedding(2, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, ids, mask, types):
        return self.out((self.tok(ids) + self.typ(types)) * mask[..., None])


class FloatMaskBetween(TwoIndexInputs):
    """As :class:`TwoIndexInputs`, the mask read as a float (a Hugging Face attention
    mask's additive form needs its dtype's ``finfo``): all int64 fails too."""

    def forward(self, ids, mask, types):
        scale = 1.0 + torch.finfo(mask.dtype).eps
        return self.out((self.tok(ids) + self.typ(types)) * (mask[..., None] * scale))


class PickedRows(nn.Module):
    """Two inputs picking rows of tables by indexing (``table[ids]``): tok, typ -> out."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.typ = nn.Parameter(torch.randn(10, 4)), nn.Parameter(torch.randn(2, 4))
        self.out = nn.Linear(4, 2)

    def forward(self, ids, mask, types):
        return self.out((self.tok[ids] @ torch.eye(4) + self.typ[types]) * mask[..., None])


@pytest.mark.parametrize(
    ("model", "tracer"),
    [
        *((TwoIndexInputs, t) for t in ("fx", "autograd", "auto")),
        pytest.param(TwoIndexInputs, "export", marks=pytest.mark.slow),
        # (fx cannot ask a proxy's dtype for its finfo: auto moves on)
        *((FloatMaskBetween, t) for t in ("autograd", "auto")),
        pytest.param(FloatMaskBetween, "export", marks=pytest.mark.slow),
    ],
)
def test_two_inputs_given_by_shape_read_by_embeddings_are_indices(model, tracer):
    """Found by a new user (BERT given three shapes: ids, mask, token types): inputs given
    by shape are made int64 where an embedding reads them (§1.4), but export and autograd
    tried one at a time, never two, and failed; a review: with the mask a float, or
    tables indexed instead of embeddings. By hand: tok, typ -> out -> loss (2), out ->
    loss (1)."""
    report = gpa.analyze(model(), input_shape=[(1, 8)] * 3, tracer=tracer)
    assert [i["dtype"] for i in report.to_dict()["inputs"]][::2] == ["int64", "int64"]
    expect(report, "tok", {2: 1}, ("out",))
    expect(report, "typ", {2: 1}, ("out",))
    expect(report, "out", {1: 1}, (LOSS,))


@pytest.mark.parametrize("tracer", [pytest.param("export", marks=pytest.mark.slow), "autograd"])
def test_two_inputs_given_by_shape_indexing_tables_are_indices(tracer):
    """The sibling with tables indexed by the inputs (a review): export and autograd,
    which try inputs as indices, read it (fx makes int64 only the inputs embeddings read,
    §1.4). By hand: out -> loss (1); the tables picked from by data are no layers (§2)."""
    report = gpa.analyze(PickedRows(), input_shape=[(1, 8)] * 3, tracer=tracer)
    assert [i["dtype"] for i in report.to_dict()["inputs"]][::2] == ["int64", "int64"]
    assert list(report.layers) == ["out"]
    expect(report, "out", {1: 1}, (LOSS,))


class BrokenFourInputs(nn.Module):
    """Four inputs and a shape bug: it fails whatever the inputs' dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, w, x, y, z):
        _RUNS.append(1)  # (outside the model: its own state is put back after each run)
        return self.a(w) @ torch.ones(3, 3)


_RUNS: list[int] = []


def test_a_model_failing_for_another_reason_is_not_tried_on_every_set_of_indices():
    """Found by a review: with every set of inputs tried as indices, a model with a real bug
    ran 32 times under the autograd frontend before its error was reported. Past one
    input at a time, sets are tried only while the model refuses floats as indices: all
    floating and each input alone, on meta and for real, is 5 x 2 = 10 runs."""
    _RUNS.clear()
    with pytest.raises(gpa.GpaError, match="shapes cannot be multiplied|must have same"):
        gpa.analyze(BrokenFourInputs(), input_shape=[(2, 8)] * 4, tracer="autograd")
    assert 5 <= len(_RUNS) <= 10
