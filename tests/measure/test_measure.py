"""gpa.measure on hand-built models: each expected value derived by hand or from a plain
backward pass run here without gpa."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpa
from gpa.errors import GpaError
from gpa.measure import measure, virtual_loss
from gpa.measure.cka import linear_cka, spearman


class DetachedConsumer(nn.Module):
    """``b`` reads ``a``'s output only after .detach(): no gradient reaches ``a``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).detach() + x)


class SummedPair(nn.Module):
    """``a`` and ``b`` are consumed only through their sum: both receive ∂L/∂(a+b)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.a(x) + self.b(x)))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.proj = nn.Linear(8, 11)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.emb(ids))


#: The JSON keys of a measured layer record, as issue 16 names them (public API).
LAYER_KEYS = (
    "shortest",
    "longest",
    "timestamps",
    "sources",
    "weight_grad_norm",
    "weight_grad_norm_std",
    "output_grad_norm",
    "relative_norm",
    "frozen",
    "most_similar",
)


def test_detached_consumer_has_zero_weight_gradient_and_is_unreachable() -> None:
    torch.manual_seed(0)
    m = measure(DetachedConsumer(), torch.zeros(1, 4), steps=2, batch_size=5)
    assert not m.report.layers["a"].reachable
    assert m.layers["a"].weight_grad_norm == 0.0
    assert m.layers["a"].output_grad_norm == 0.0
    assert m.layers["a"].most_similar is None  # CKA of a zero gradient is undefined
    assert m.cka("a", "b") is None
    assert m.layers["b"].weight_grad_norm > 0
    assert m.to_dict()["layers"][0]["shortest"] is None


def test_layers_consumed_only_through_a_sum_have_cka_one() -> None:
    torch.manual_seed(0)
    m = measure(SummedPair(), torch.zeros(1, 4), steps=3, batch_size=16)
    assert m.cka("a", "b") == pytest.approx(1.0, abs=1e-6)
    assert m.layers["a"].most_similar[0] == "b"
    assert m.layers["a"].most_similar[1] == pytest.approx(1.0, abs=1e-6)
    # identical received gradients: identical norms
    assert m.layers["a"].output_grad_norm == pytest.approx(m.layers["b"].output_grad_norm)
    # structurally they share their gradient combination, head does not
    d = {r["name"]: r for r in m.to_dict()["layers"]}
    assert d["a"]["combination"] == d["b"]["combination"] != d["head"]["combination"]


def test_doubling_the_loss_doubles_every_norm() -> None:
    def run(scale: float) -> gpa.Measurement:
        torch.manual_seed(0)
        net = SummedPair()
        return measure(
            net,
            torch.zeros(1, 4),
            steps=2,
            batch_size=8,
            loss=lambda out, batch: scale * (out**2).sum(),
        )

    one, two = run(1.0), run(2.0)
    for name in one.layers:
        a, b = one.layers[name], two.layers[name]
        assert b.weight_grad_norm == pytest.approx(2 * a.weight_grad_norm, rel=1e-6)
        assert b.weight_grad_norm_std == pytest.approx(
            2 * a.weight_grad_norm_std, rel=1e-5, abs=1e-9
        )
        assert b.output_grad_norm == pytest.approx(2 * a.output_grad_norm, rel=1e-6)
        assert b.relative_norm == pytest.approx(a.relative_norm, rel=1e-6)  # a ratio
    np.testing.assert_allclose(two.similarity, one.similarity, atol=1e-9)


def test_norms_match_a_plain_backward_pass() -> None:
    """One step with the user's batch: the same numbers as a hand-written backward."""
    torch.manual_seed(0)
    net = SummedPair()
    x = torch.randn(8, 4)
    m = measure(net, batches=[x], steps=1, loss=lambda out, batch: out.pow(2).sum())
    net.zero_grad()
    a_out = {}

    def keep(module: nn.Module, args: object, out: torch.Tensor) -> None:
        out.retain_grad()
        a_out["y"] = out

    net.a.register_forward_hook(keep)
    net(x).pow(2).sum().backward()
    expected_w = math.sqrt(net.a.weight.grad.pow(2).sum() + net.a.bias.grad.pow(2).sum())
    assert m.layers["a"].weight_grad_norm == pytest.approx(expected_w, rel=1e-6)
    assert m.layers["a"].output_grad_norm == pytest.approx(float(a_out["y"].grad.norm()), rel=1e-6)
    assert m.layers["a"].weight_grad_norm_std == 0.0  # one step


def test_a_torchscript_layer_is_noted_and_the_others_measured() -> None:
    """A TorchScript submodule refuses Python hooks: measuring crashed ("internal error"),
    where every other command analyses the model (found by a new user). The layer after it
    is measured as a plain backward gives it."""

    class Scripted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.jit.script(nn.Linear(4, 4))
            self.c = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.a(x))

    torch.manual_seed(0)
    net, x = Scripted(), torch.randn(8, 4)
    m = measure(net, batches=[x], steps=1, loss=lambda out, batch: out.pow(2).sum())
    assert list(m.layers) == ["c"]
    assert "layer 'a' is a TorchScript module, which takes no hooks: not measured" in m.notes
    net.zero_grad()
    net(x).pow(2).sum().backward()
    expected = math.sqrt(net.c.weight.grad.pow(2).sum() + net.c.bias.grad.pow(2).sum())
    assert m.layers["c"].weight_grad_norm == pytest.approx(expected, rel=1e-6)


def test_virtual_loss_sends_a_fixed_random_direction() -> None:
    """∂L/∂y = R / numel(y) with R standard normal from the seed."""
    net = nn.Linear(3, 2)
    m = measure(net, torch.zeros(1, 3), steps=2, batch_size=4, seed=7)
    r = torch.randn(4, 2, generator=torch.Generator().manual_seed(7))
    assert m.layers["Linear"].output_grad_norm == pytest.approx(float(r.norm() / 8), rel=1e-6)
    y = torch.zeros(4, 2, requires_grad=True)
    virtual_loss(y, seed=7)(y).backward()
    torch.testing.assert_close(y.grad, r / 8)


def test_frozen_layer_is_reported() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    net[2].requires_grad_(False)
    m = measure(net, torch.zeros(1, 4), steps=2, batch_size=4)
    assert [n for n, x in m.layers.items() if x.frozen] == ["2"]
    assert m.layers["2"].weight_grad_norm is None and m.layers["2"].relative_norm is None
    assert m.layers["2"].weight_grad_norm_std is None
    assert m.layers["2"].output_grad_norm > 0  # it still receives gradient, and hands it on
    assert m.layers["0"].weight_grad_norm > 0
    median = float(np.median([m.layers["0"].weight_grad_norm, m.layers["4"].weight_grad_norm]))
    assert m.layers["4"].relative_norm == pytest.approx(m.layers["4"].weight_grad_norm / median)
    assert m.to_dict()["network"]["frozen"] == ["2"]
    assert net[2].weight.grad is None and not net[2].weight.requires_grad


def test_frozen_first_layer_receives_no_gradient() -> None:
    """Nothing before it needs gradient, so autograd computes none at its output: 0."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    m = measure(net, torch.zeros(1, 4), steps=1, batch_size=4)
    assert m.layers["0"].frozen and m.layers["0"].output_grad_norm == 0.0
    assert m.layers["2"].relative_norm == 1.0


class FrozenStemCheckpoint(nn.Module):
    """A frozen stem, then a block behind a re-entrant checkpoint: the checkpoint, given
    nothing that requires gradient, runs the block under no_grad and never again."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4).requires_grad_(False)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return self.head(checkpoint(self.block, self.stem(x), use_reentrant=True))


@pytest.mark.parametrize("model", [FrozenStemCheckpoint, "no_grad"])
def test_a_layer_called_with_grad_mode_off_receives_nothing(model) -> None:
    """Found by a new user: a layer called only with grad mode off (behind a re-entrant
    checkpoint given a frozen stem's output; or in a ``no_grad`` block) was left out and
    said "not called in the measured steps" — it was called, and receives nothing. A
    plain backward here agrees: block.0's weight gets no gradient; head's does."""
    if model == "no_grad":

        class NoGrad(FrozenStemCheckpoint):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    h = self.block(self.stem(x))
                return self.head(h)

        model = NoGrad
    net = model()
    net(torch.randn(4, 4)).sum().backward()
    assert net.block[0].weight.grad is None and net.head.weight.grad is not None
    m = measure(model(), torch.zeros(1, 4), steps=2, batch_size=4)
    assert list(m.layers) == ["stem", "block.0", "head"]
    assert m.layers["block.0"].output_grad_norm == 0.0
    assert m.layers["block.0"].weight_grad_norm == 0.0
    assert m.layers["head"].weight_grad_norm > 0
    assert not any("not called" in note for note in m.notes)


def test_embedding_model_with_integer_inputs() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    m = measure(model, torch.zeros(1, 5, dtype=torch.long), steps=2, batch_size=4)
    assert set(m.layers) == {"emb", "proj"}
    assert m.layers["emb"].weight_grad_norm > 0 and m.layers["proj"].weight_grad_norm > 0
    assert 0.0 <= m.cka("emb", "proj") <= 1.0


def test_model_state_is_restored() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.random.get_rng_state()
    measure(net, torch.zeros(1, 3, 6, 6), steps=2, batch_size=4)
    assert not net.training and not net[1].training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)


def test_measurement_is_deterministic_and_json_has_the_keys() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    a = measure(net, torch.zeros(1, 3, 6, 6), steps=2, batch_size=4).to_json()
    b = measure(net, torch.zeros(1, 3, 6, 6), steps=2, batch_size=4).to_json()
    assert a == b
    layer = gpa.measure(net, torch.zeros(1, 3, 6, 6), steps=1, batch_size=4).to_dict()["layers"][0]
    assert set(LAYER_KEYS) <= set(layer)
    assert set(layer["most_similar"]) == {"layer", "cka"}


def test_channels_measure_each_segment() -> None:
    """A split layer: the segments' squared norms add up to the layer's."""

    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return torch.cat([y[:, :4], self.b(y[:, 4:])], 1)

    m = measure(Split(), torch.zeros(1, 3, 4, 4), steps=1, batch_size=4, channels=True)
    segs = m.layers["a"].segments
    assert [(s.start, s.stop) for s in segs] == [(0, 4), (4, 8)]
    total = math.sqrt(sum(s.output_grad_norm**2 for s in segs))
    assert total == pytest.approx(m.layers["a"].output_grad_norm, rel=1e-6)
    wtotal = math.sqrt(sum(s.weight_grad_norm**2 for s in segs))
    assert wtotal == pytest.approx(m.layers["a"].weight_grad_norm, rel=1e-6)


class PatchEmbed(nn.Module):
    """A leaf returning tokens (B, N, C) after its convolution: its channels on the last axis."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 6, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def test_channels_of_a_leaf_returning_tokens_are_measured_on_its_last_axis() -> None:
    """16 tokens of 6 channels; channels 0-2 feed ``a``, 3-5 feed ``b``: two segments along
    the last axis (the channel analysis' rule, §8), whose squared norms add up to the
    layer's (narrowed along the tokens, they covered 6 of 16 tokens)."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = PatchEmbed()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.embed(x)
            return self.a(y[..., :3]) + self.b(y[..., 3:])

    m = measure(
        Tokens(), torch.zeros(1, 3, 8, 8), steps=1, batch_size=4, channels=True,
        leaf_modules=[PatchEmbed],
    )  # fmt: skip
    segs = m.layers["embed"].segments
    assert [(s.start, s.stop) for s in segs] == [(0, 3), (3, 6)]
    total = math.sqrt(sum(s.output_grad_norm**2 for s in segs))
    assert total == pytest.approx(m.layers["embed"].output_grad_norm, rel=1e-6)


def test_errors() -> None:
    with pytest.raises(GpaError, match="steps"):
        measure(nn.Linear(2, 2), torch.zeros(1, 2), steps=0)
    with pytest.raises(GpaError, match=r"a tensor of shape \(32, 2\): reduce it"):
        measure(nn.Linear(2, 2), torch.zeros(1, 2), steps=1, loss=lambda o, b: o)
    with pytest.raises(GpaError, match="no measured layer"):
        measure(nn.Linear(2, 2), torch.zeros(1, 2), steps=1, batch_size=2).cka("", "x")


class MostlyTokens(nn.Module):
    """Every layer but the head on the tokens flattened into rows: the head alone has the
    batch's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        rows = x.reshape(-1, 4)
        h = (self.a(rows) + self.b(rows)).reshape(x.shape)
        return self.head(h.mean(1))


def test_the_batch_items_are_the_samples_even_where_most_layers_have_token_rows() -> None:
    """Found by a review: the row count most layers have was taken for the samples, so the
    head — the one layer with the batch's rows — was left out, told its rows were tokens.
    By hand, 2 steps of batch 3 with 5 tokens: the batch items are 6, a and b have 30."""
    m = measure(MostlyTokens(), torch.zeros(1, 5, 4), steps=2, batch_size=3)
    assert not any(n.startswith("layer 'head'") for n in m.notes)
    for name in ("a", "b"):
        assert (
            f"layer {name!r}: its received gradient has 30 rows over the steps, where the batch "
            "items are 6: rows that are not batch items (tokens flattened into rows, one row "
            "for the whole batch, a share of the tokens) do not line up: left out of CKA"
        ) in m.notes
    assert m.cka("head", "head") == pytest.approx(1.0)


class Routed(nn.Module):
    """A branch taken only when the batch's first value is positive (an expert that only
    some steps' tokens are routed to)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.late, self.head = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1)

    def forward(self, x):
        h = self.a(x)
        if float(x[0, 0]) > 0:
            h = h + self.late(h)
        return self.head(h)


def test_a_layer_some_steps_do_not_call_is_measured_in_the_others() -> None:
    """Found by a review: a layer not called in the first step (an expert no token was
    routed to) was dropped and listed as "not called in the measured steps", though later
    steps called it. By hand, with a plain backward per step: its received-gradient norm is
    the mean over the steps, 0 where it was not called; its weight's too."""
    batches = [torch.tensor([[-1.0, 2.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0]])]
    torch.manual_seed(0)
    net = Routed()
    loss = lambda out, batch: out.sum()  # noqa: E731
    m = measure(net, batches[0], batches=batches, loss=loss, steps=3, batch_size=1)
    assert "late" in m.layers
    assert (
        "layer 'late': not called in step 1 of 3 (no gradient there: 0 in its norms, no "
        "samples for CKA): left out of CKA" in m.notes
    )
    received, weight = [], []
    for x in batches:
        net.zero_grad()
        h = net.a(x)
        y = None
        if float(x[0, 0]) > 0:
            y = net.late(h)
            y.retain_grad()
            h = h + y
        net.head(h).sum().backward()
        received.append(0.0 if y is None else float(y.grad.norm()))
        grads = [p.grad for p in net.late.parameters() if p.grad is not None]
        weight.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)))
    assert m.layers["late"].output_grad_norm == pytest.approx(np.mean(received), rel=1e-5)
    assert m.layers["late"].weight_grad_norm == pytest.approx(np.mean(weight), rel=1e-5)
    assert m.batch_size == 1 and m.layers["late"].most_similar is None


def test_the_batch_size_of_given_batches_is_theirs() -> None:
    """Found by a review: given batches showed "batch -1" (text, HTML, JSON). It is their
    items per step, None (the text says so) when they differ."""
    net = nn.Linear(2, 1)
    same = measure(net, batches=[torch.zeros(5, 2)] * 2, steps=2)
    assert same.batch_size == 5 and "2 steps, batch 5," in str(same)
    mixed = measure(net, batches=[torch.zeros(5, 2), torch.zeros(3, 2)], steps=2)
    assert mixed.batch_size is None and mixed.to_dict()["measurement"]["batch_size"] is None
    assert "batches of varying size" in str(mixed)
    assert "1 step, batch 5," in str(measure(net, batches=[torch.zeros(5, 2)], steps=1))


def _labelled_batches(kind: str) -> list:
    """Three (inputs, targets) batches of 6 items: 4 features, 3 classes."""
    g = torch.Generator().manual_seed(5)
    pairs = [(torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g))]
    pairs += [(torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g))] * 2
    return [{"image": x, "label": y} if kind != "tuple" else (x, y) for x, y in pairs]


_FORWARD_INPUTS = {  # batch kind -> (what forward takes of a batch, its targets)
    "tuple": (lambda b: b[0], lambda b: b[1]),
    "dict": (lambda b: b["image"], lambda b: b["label"]),
    "named": (lambda b: {"input": b["image"]}, lambda b: b["label"]),  # Sequential's name
}


@pytest.mark.parametrize("kind", sorted(_FORWARD_INPUTS))
def test_inputs_and_targets_batches_take_forward_inputs(kind: str) -> None:
    """A classifier trained on (inputs, targets) batches: forward gets what
    ``forward_inputs`` makes of a batch, the loss the whole batch. The norms are those of
    a plain cross-entropy backward per step, written here without gpa (a user's batches
    could not be measured with their targets before)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    inputs, targets = _FORWARD_INPUTS[kind]
    batches = _labelled_batches(kind)
    m = measure(
        net,
        batches=batches,
        steps=3,
        forward_inputs=inputs,
        loss=lambda out, batch: F.cross_entropy(out, targets(batch)),
    )
    assert m.steps == 3 and m.batch_size == 6 and m.loss == "user"
    for name in ("0", "2"):
        layer, norms = net.get_submodule(name), []
        for batch in batches:
            net.zero_grad()
            x = batch[0] if kind == "tuple" else batch["image"]
            F.cross_entropy(net(x), targets(batch)).backward()
            norms.append(float(torch.cat([layer.weight.grad.flatten(), layer.bias.grad]).norm()))
        assert m.layers[name].weight_grad_norm == pytest.approx(np.mean(norms), rel=1e-6)
        assert m.layers[name].weight_grad_norm_std == pytest.approx(np.std(norms), rel=1e-5)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x, mask):
        return self.a(x) * mask


_WRONG_BATCHES = {  # what goes wrong -> (batches, forward_inputs, loss, the message's start)
    "too many items": (
        _labelled_batches("tuple"),
        None,
        r"^a batch does not fit Linear\.forward: the model's forward takes 1 input\(s\) "
        r"\('input'\) but 2 were given; say which of a batch forward takes with forward_inputs=",
    ),
    "a name forward does not take": (
        _labelled_batches("dict"),
        None,
        r"^a batch does not fit Linear\.forward: it names 'image', .*; say which of a batch",
    ),
    "forward_inputs gives every item": (
        _labelled_batches("tuple"),
        lambda b: b,
        r"^forward_inputs\(batch\) does not fit Linear\.forward: the model's forward takes "
        r"1 input\(s\) \('input'\) but 2 were given$",
    ),
    "forward_inputs gives None": (
        _labelled_batches("tuple"),
        lambda b: None,
        r"^forward_inputs\(batch\) holds no tensor \(None\)",
    ),
    "forward_inputs gives numbers": (
        _labelled_batches("tuple"),
        lambda b: [1, 2],
        r"^forward_inputs\(batch\) holds no tensor \(a list of 2 item\(s\), none a tensor\)",
    ),
    "forward_inputs is no function": (
        _labelled_batches("tuple"),
        0,
        r"^forward_inputs must be a function batch -> forward's inputs, not int 0$",
    ),
}


@pytest.mark.parametrize("wrong", sorted(_WRONG_BATCHES))
def test_a_batch_forward_cannot_take_says_what_gave_it(wrong: str) -> None:
    """Without forward_inputs, an (inputs, targets) batch went whole into forward (Python
    refused two arguments, deep in a step), and a new user's mistakes with forward_inputs
    read as mistakes in example_inputs: each is refused before any step, saying whether a
    batch or forward_inputs(batch) gave what forward cannot take."""
    batches, forward_inputs, said = _WRONG_BATCHES[wrong]
    loss = lambda out, batch: out.sum()  # noqa: E731
    with pytest.raises(GpaError, match=said):
        measure(nn.Linear(4, 3), batches=batches, forward_inputs=forward_inputs, loss=loss)


def test_the_users_code_raising_in_a_step_says_where() -> None:
    """forward_inputs and the loss raising on the user's batches are the user's code's,
    without advice about synthetic batches (a new user: "--batch-size" was suggested for
    a label out of range)."""
    from gpa.errors import ModelError

    net, batches = nn.Linear(4, 3), _labelled_batches("tuple")
    with pytest.raises(ModelError, match="^the forward_inputs function raised TypeError") as e:
        measure(net, batches=batches, forward_inputs=lambda b: b["x"])
    assert str(e.value).endswith(
        "taking forward's inputs from a batch of batches= (example_batches)"
    )
    with pytest.raises(ModelError, match="^the loss function raised IndexError") as e:
        measure(
            net, batches=batches, forward_inputs=lambda b: b[0], loss=lambda o, b: o[:, 7].sum()
        )
    assert str(e.value).endswith(
        "in the loss of a measured training step on a batch of batches= (example_batches)"
    )
    assert "--batch-size" not in str(e.value)


def test_a_batch_size_given_beside_batches_is_noted() -> None:
    """A new user's --batch-size 64 beside the file's batches was ignored without a word:
    the batches keep their size (5), and a note says so; none without batch_size."""
    net, batches = nn.Linear(2, 1), [torch.zeros(5, 2)] * 2
    noted = measure(net, batches=batches, steps=2, batch_size=64)
    assert noted.batch_size == 5
    assert "batch_size 64 (--batch-size) sizes synthetic batches: the given batches keep" in (
        " ".join(noted.notes)
    )
    assert not any("sizes synthetic" in n for n in measure(net, batches=batches).notes)
    assert measure(net, torch.zeros(1, 2), steps=1).batch_size == 32  # synthetic: 32


def test_tuple_batches_bound_by_position_are_noted() -> None:
    """Each item of a tuple batch is forward's argument by position, which a new user did
    not expect of a (ids, mask, labels) batch for BERT: a note says the binding; none when
    forward_inputs says what forward takes, or for a batch of one tensor. Synthetic
    batches are forward's own: forward_inputs does not apply to them."""
    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(4, 4, generator=g), torch.ones(4, 3))] * 2
    m = measure(_TwoInputs(), batches=pairs, steps=2)
    assert (
        "each batch's items are forward's arguments by position (1 -> x, 2 -> mask)" in m.notes[-1]
    )
    chosen = measure(_TwoInputs(), batches=pairs, steps=2, forward_inputs=lambda b: b)
    assert not any("by position" in n for n in chosen.notes)
    assert not any(
        "by position" in n for n in measure(nn.Linear(4, 3), batches=[pairs[0][0]]).notes
    )
    pair = nn.Bilinear(4, 2, 3)
    synthetic = measure(pair, (torch.zeros(1, 4), torch.zeros(1, 2)), steps=1, batch_size=4)
    assert (
        measure(
            pair, (torch.zeros(1, 4), torch.zeros(1, 2)), steps=1, batch_size=4, forward_inputs=len
        ).to_dict()
        == synthetic.to_dict()
    )


def test_a_nan_loss_or_an_error_drawing_a_batch_is_one_message() -> None:
    """Found by a review: a NaN loss gave every norm None without a word, and an exception
    raised by the user's batches was "internal error … a bug in gpa" (exit 1)."""
    from gpa.errors import ModelError

    net = nn.Linear(2, 1)
    nan = lambda out, batch: out.sum() * float("nan")  # noqa: E731
    with pytest.raises(GpaError, match=r"^the loss is nan in step 1 \(the loss function gave"):
        measure(net, torch.zeros(1, 2), steps=1, batch_size=2, loss=nan)

    def broken():
        yield torch.zeros(2, 2)
        raise OSError("shard 2 missing")

    with pytest.raises(ModelError, match="^the batches raised OSError: shard 2 missing"):
        measure(net, batches=broken(), steps=2)


@pytest.mark.parametrize(
    ("loss", "said"),
    [
        (lambda o, b: o, "a tensor of shape (2, 2): reduce it to one value"),
        (lambda o, b: o.sum().detach(), "a scalar tensor that does not require gradient"),
        (lambda o, b: float(o.detach().sum()), "a Python float (1.0), which carries no"),
        (lambda o, b: o.sum().item() > 0, "a Python bool (True), which carries no"),
        (lambda o, b: {"loss": o.sum(), "logs": 1}, "a dict with keys 'loss', 'logs': return"),
        (lambda o, b: (o.sum(), o.detach()), "a tuple of 2 items: return the loss tensor"),
        (lambda o, b: [o.sum()], "a list of 1 item: return the loss tensor"),
        (lambda o, b: None, "returned None: it must return a scalar tensor"),
        (lambda o, b: o.sum(1), "a tensor of shape (2,): reduce it"),
        (lambda o, b: (o > 0).sum(), "a tensor of dtype torch.int64 (a count or a comparison)"),
        (lambda o, b: o.sum() * 1j, "a complex tensor: the loss must be a real number"),
        (lambda o, b: torch.tensor(1.0, requires_grad=True), "a tensor made to require gradient"),
        (lambda o, b: np.float64(1.0), "a NumPy float64 (np.float64(1.0)), which carries no"),
        (lambda o, b: o.detach().numpy(), "a NumPy array of shape (2, 2), which carries no"),
        (lambda o, b: {"logits": o}, "keys 'logits': return the loss tensor itself (none is"),
        (lambda o, b: dict.fromkeys("abcde", o), "keys 'a', 'b', 'c', 'd', …: return"),
    ],
    ids=[
        *("matrix", "detached", "float", "bool", "dict", "tuple", "list", "none", "vector"),
        *("count", "complex", "leaf", "numpy-float", "numpy-array", "no-loss-key", "many-keys"),
    ],
)
def test_a_loss_that_is_no_scalar_says_what_it_returned(loss, said: str) -> None:
    """Found by a new user: every wrong return of a loss function (Ultralytics' loss gives a
    tuple, Hugging Face's a dict or ModelOutput) was "the loss must return a scalar tensor
    that requires gradient", naming neither what came back nor how to get the loss."""
    net = nn.Linear(2, 2)
    with torch.no_grad():  # 2 items × 2 outputs of 0.25: the outputs sum to 1.0
        net.weight.zero_()
        net.bias.fill_(0.25)
    with pytest.raises(GpaError) as error:
        measure(net, torch.zeros(1, 2), steps=1, batch_size=2, loss=loss)
    assert str(error.value).startswith("the loss function returned ")
    assert said in str(error.value)


def test_cka_and_spearman_against_definitions() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 5))
    n = 10
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    expected = (k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum())
    assert linear_cka(x, y) == pytest.approx(expected)
    q = rng.normal(size=(3, 3))
    assert linear_cka(x, x @ np.linalg.qr(q)[0] * 3) == pytest.approx(1.0)
    assert spearman([0, 0, 1, 1], [0.1, 0.2, 0.9, 0.8]) == pytest.approx(math.sqrt(0.8))
    assert spearman([1, 1, 1], [1, 2, 3]) is None


class _ModeSeen(nn.Module):
    """Records the mode of each call (a batch norm's or a dropout's choice)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


@pytest.mark.parametrize("train", [True, False])
def test_the_steps_run_in_the_mode_asked(train: bool) -> None:
    """``train=False`` / ``--eval`` was refused ("train mode; train=False is not supported")
    although every analysing command takes it (found by a surface review): the steps run
    in eval mode, and the model's own mode is restored afterwards."""
    seen = _ModeSeen()
    net = nn.Sequential(nn.Linear(4, 4), seen, nn.Linear(4, 2))
    m = measure(net, torch.zeros(1, 4), steps=3, batch_size=4, train=train)
    assert set(m.layers) == {"0", "2"}
    assert seen.seen[-3:] == [train] * 3
    assert net.training and seen.training  # as it was built: train mode


class Positioned(nn.Module):
    """A language model's position embedding: read once for the whole batch
    (``arange(T)[None]``), as GPT-2's ``wpe`` is."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(10, 4), nn.Embedding(8, 4)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1])[None])
        return self.a(x) + self.b(x)


def test_a_layer_read_once_for_the_batch_has_no_cka_and_the_rest_do() -> None:
    """Found by a review: gpa.measure crashed on every Hugging Face model (a numpy
    ValueError: CKA stacked layers of different sample counts). By hand: a and b receive
    the same gradient (the loss reads their sum): CKA 1; pos holds one sample per step."""
    torch.manual_seed(0)
    m = measure(Positioned(), {"ids": torch.randint(0, 10, (1, 5))}, steps=2, batch_size=3)
    # 2 steps: pos 1 row each, the rest 3 (the batch)
    assert (
        "layer 'pos': its received gradient has 2 rows over the steps, where the batch items "
        "are 6: rows that are not batch items (tokens flattened into rows, one row for the "
        "whole batch, a share of the tokens) do not line up: left out of CKA"
    ) in m.notes
    assert m.layers["pos"].most_similar is None
    assert m.cka("a", "b") == pytest.approx(1.0, abs=1e-6)
    assert m.layers["pos"].output_grad_norm > 0


class TokenRows(nn.Module):
    """Layers on (batch, tokens, channels), one on the tokens flattened into rows (a mixture
    of experts' ``hidden.view(-1, C)``), one called on the whole batch and on its first item."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.rows, self.twice = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x) + self.b(x)
        flat = self.rows(h.reshape(-1, 4)).reshape(h.shape)
        return flat + self.twice(h) + self.twice(h[:1])


def test_a_layer_whose_rows_are_not_the_batchs_says_why_it_has_no_cka() -> None:
    """Found by a new user (Mixtral's experts): "its calls' samples do not line up" did not
    say why. By hand, 2 steps of batch 3 with 5 tokens: ``rows`` has 3·5 rows a step, 30 in
    all, where a and b have 6; ``twice``'s calls have 3 and 1 rows a step."""
    m = measure(TokenRows(), torch.zeros(1, 5, 4), steps=2, batch_size=3)
    assert (
        "layer 'rows': its received gradient has 30 rows over the steps, where the batch items "
        "are 6: rows that are not batch items (tokens flattened into rows, one row for the "
        "whole batch, a share of the tokens) do not line up: left out of CKA"
    ) in m.notes
    assert (
        "layer 'twice': its calls or outputs receive gradients with differing numbers of rows "
        "(samples) or channels, which do not line up: left out of CKA"
    ) in m.notes
    assert m.layers["rows"].most_similar is None and m.layers["twice"].most_similar is None
    assert m.cka("a", "b") == pytest.approx(1.0, abs=1e-6)  # both receive ∂L/∂h


class _GradOn(nn.Linear):
    """Switches grad mode on in its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return super().forward(x)


class GradOnInsideNoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.inner, self.head = nn.Linear(4, 8), _GradOn(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        with torch.no_grad():
            h = self.inner(h)
        return self.head(h)


def test_a_layer_switching_grad_mode_on_is_measured_by_its_output() -> None:
    """Found by a review: a layer whose forward switches grad mode on inside a no_grad
    block was taken for one called with grad mode off (its hook runs with it off), and
    given 0 received gradient beside a weight gradient. A plain backward here: its output
    requires grad and receives some, and so does the stem (grad mode is on where the
    inner layer reads it)."""
    net = GradOnInsideNoGrad()
    kept = []
    hook = net.inner.register_forward_hook(lambda m, i, o: kept.append(o))
    y = net(torch.randn(4, 4))
    hook.remove()
    kept[0].retain_grad()
    y.sum().backward()
    assert kept[0].grad.abs().sum() > 0 and net.stem.weight.grad.abs().sum() > 0
    m = measure(GradOnInsideNoGrad(), torch.zeros(1, 4), steps=2, batch_size=4)
    assert m.layers["inner"].output_grad_norm > 0 and m.layers["inner"].weight_grad_norm > 0
    assert m.layers["stem"].output_grad_norm > 0


def test_too_few_samples_for_cka_are_said() -> None:
    """Found by a new user: with 2 samples every duplication was exactly 1. By hand: two
    samples centred are x and -x, so every layer's Gram matrix is a multiple of
    [[1, -1], [-1, 1]] and linear CKA between any two layers is 1. A note says so."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    few = measure(net, torch.zeros(1, 4), steps=1, batch_size=2)
    assert np.allclose(few.similarity, 1.0)
    (note,) = [n for n in few.notes if "too few" in n]
    assert note.startswith("CKA compares layers over 2 sample(s)")
    enough = measure(net, torch.zeros(1, 4), steps=2, batch_size=4)
    assert not any("too few" in n for n in enough.notes)


class EvalOnlyHead(nn.Module):
    """``extra`` (frozen) runs in eval mode only, as YOLO's DFL convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.extra = nn.Linear(4, 4), nn.Linear(4, 4).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return y if self.training else self.extra(y)


def test_a_layer_no_step_calls_is_named_apart_from_the_counts() -> None:
    """Found by a new user on YOLOv8n: the DFL convolution (frozen, called in eval mode
    only) was named frozen in a note while the summary said "frozen: 0". A train-mode
    measurement calls ``a`` alone: one layer measured, none frozen among them, and the
    note says the uncalled one is left out of those counts."""
    m = measure(EvalOnlyHead(), torch.zeros(1, 4), steps=1, batch_size=4)
    assert list(m.layers) == ["a"] and m.network_dict()["frozen"] == []
    assert "left out of the table and its counts (layers, frozen): extra" in " ".join(m.notes)
    assert "layers: 1, frozen: 0" in str(m)


def test_chance_cka_of_two_samples_is_one() -> None:
    """By hand: two centred samples are x and -x, so a Gram matrix is c·[[1, -1], [-1, 1]]
    and swapping the samples leaves it as it is: shuffled or not, CKA is 1."""
    from gpa.measure.cka import chance_cka

    rng = np.random.default_rng(1)
    assert chance_cka([rng.normal(size=(2, 5)) for _ in range(3)]) == pytest.approx(1.0)
    assert chance_cka([rng.normal(size=(2, 5))]) is None  # (no pair)


@pytest.mark.parametrize(("samples", "channels"), [(6, 64), (12, 16), (64, 256), (200, 8)])
def test_chance_cka_is_what_unrelated_features_reach(samples: int, channels: int) -> None:
    """The shuffled-samples baseline against an independent computation: the mean linear
    CKA of pairs of features drawn independently (unrelated by construction), which leans
    toward 1 when channels outnumber samples (0.9 at 6 × 64) and not otherwise (~0.04 at
    200 × 8). Related features (one a rotation of the other: CKA 1) keep the same chance."""
    from gpa.measure.cka import chance_cka

    rng = np.random.default_rng(0)
    drawn = [linear_cka(*rng.normal(size=(2, samples, channels))) for _ in range(200)]
    layers = [rng.normal(size=(samples, channels)) for _ in range(12)]
    assert chance_cka(layers) == pytest.approx(float(np.mean(drawn)), abs=0.05)
    x = layers[0]
    turned = x @ np.linalg.qr(rng.normal(size=(channels, channels)))[0]
    assert linear_cka(x, turned) == pytest.approx(1.0)
    alone = chance_cka([x, turned], seed=3, rounds=64)
    assert alone == pytest.approx(float(np.mean(drawn)), abs=0.1)


def test_cka_near_its_chance_level_is_said() -> None:
    """Found by a new user: over 3 to 6 samples every pair's CKA was near 1 on a YOLO model
    and nothing said why. 64 channels over 4 samples: unrelated isotropic features already
    reach about 0.95 (the independent draws above); these gradients span fewer directions,
    yet shuffled they still reach over half the median CKA, so a note says the figures sit
    near chance. Over 8 × 32 samples for at most 8 channels unrelated ones reach little
    (under 0.2, as the draws at 200 × 8) and no note comes. Every summary line fits 80
    columns."""
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 2))
    few = measure(wide, torch.zeros(1, 4), steps=1, batch_size=4)
    chance = few.duplication["chance"]
    assert 0.5 < chance < 1 and chance >= few.duplication["median"] / 2
    (note,) = [n for n in few.notes if "shuffled" in n]
    assert note.startswith("CKA of two layers with one side's samples shuffled (unrelated")
    assert "4 samples are few for up to 64 channels" in note
    assert few.to_dict()["network"]["duplication"]["chance"] == chance
    summary = str(few).splitlines()[:6]
    assert any(f"CKA by chance (samples shuffled): {chance:.3g}" in line for line in summary)
    assert all(len(line) <= 80 for line in summary)
    narrow = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    many = measure(narrow, torch.zeros(1, 4), steps=8, batch_size=32)
    assert many.duplication["chance"] < 0.2
    assert not any("shuffled" in n for n in many.notes)


def test_a_step_the_model_cannot_take_is_the_models_error() -> None:
    """Found by a new user: the structural analysis (meta device: dtypes unchecked) passes
    a half-precision layer float32 inputs, and the real step raised inside gpa ("internal
    error", exit 1). It is the model's error, naming its line, in every part of the step."""
    from gpa.errors import ModelError

    net = nn.Sequential(nn.Linear(4, 4).to(torch.bfloat16))
    with pytest.raises(ModelError) as error:
        measure(net, torch.zeros(1, 4), steps=1, batch_size=2)  # (float32 inputs)
    assert str(error.value).startswith("Sequential raised RuntimeError")
    assert "forward of a measured training step" in str(error.value)

    def bad_loss(outputs, batch):
        raise ValueError("no labels")

    with pytest.raises(ModelError, match="^the loss function raised ValueError: no labels"):
        measure(nn.Linear(4, 2), torch.zeros(1, 4), steps=1, batch_size=2, loss=bad_loss)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_this_machine_lacks_is_one_message(device: str) -> None:
    """Found by a new user: ``gpa measure --device cuda`` without a GPU was "internal error
    … a bug in gpa" with a traceback (exit 1). The device is tried first: a GpaError
    (exit 2) naming it, from the API and the command alike. Where the device exists the
    measurement runs (skipped on this check only when it does)."""
    from click.testing import CliRunner

    from gpa.cli import main

    try:
        torch.empty(0, device=device)
    except Exception:
        pass
    else:
        pytest.skip(f"this machine has {device}")
    with pytest.raises(GpaError, match=f"^device '{device}' cannot be used here: "):
        measure(nn.Linear(4, 2), torch.zeros(1, 4), steps=1, device=device)
    result = CliRunner().invoke(
        main, ["measure", "examples/tiny_resnet.py", "--device", device, "--steps", "1"]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: device '{device}' cannot be used here: ")
    assert "Traceback" not in result.output


def test_a_model_on_the_meta_device_is_refused_before_any_step() -> None:
    """A model built on the meta device (as gpa builds transformers models to analyse
    them) has no values to train: one message, not torch's error from inside a step."""
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(GpaError, match="parameters are on the meta device"):
        measure(net, torch.zeros(1, 4), steps=1)


class FunctionalLayers(nn.Module):
    """Layers the model's code writes with its weights itself (``docs/semantics.md`` §2):
    LoRA's ``A`` and ``B`` through ``F.linear``, a projection ``P`` read transposed by
    ``@``, and an expert bank ``E`` whose expert is picked by an integer index (a
    batched matmul), called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(6, 5)
        self.base.weight.requires_grad_(False)  # LoRA's frozen base
        self.A = nn.Parameter(torch.randn(2, 6))
        self.B = nn.Parameter(torch.randn(5, 2))
        self.P = nn.Parameter(torch.randn(4, 5))
        self.E = nn.Parameter(torch.randn(3, 4, 4))
        self.head = nn.Linear(4, 3)

    def parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each functional layer's output, by its weight's name (the second call of E
        under ``E2``)."""
        out = {"A": F.linear(x, self.A)}
        out["B"] = F.linear(out["A"], self.B)
        out["P"] = torch.tanh(self.base(x) + out["B"]) @ self.P.T
        pick = torch.tensor([1])
        out["E"] = torch.bmm(out["P"].unsqueeze(1), self.E[pick].expand(len(x), 4, 4))
        out["E2"] = torch.bmm(torch.relu(out["E"]), self.E[pick + 1].expand(len(x), 4, 4))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.parts(x)["E2"].squeeze(1))


def test_functional_layers_are_measured_as_a_plain_backward_gives_them() -> None:
    """A layer the model's code computes with its weight itself — LoRA's A and B, a
    projection read transposed, an expert picked from a bank by index and called twice —
    is measured as a module layer is (it was named in a note, not measured): its weight's
    gradient norm, and the norm of the gradient its output receives (the bank's two calls
    together: their squares add up), each as a hand-written backward gives them."""
    torch.manual_seed(0)
    net, x = FunctionalLayers(), torch.randn(8, 6)
    m = measure(net, batches=[x], steps=1, loss=lambda out, batch: out.pow(2).sum())
    assert list(m.layers) == ["A", "B", "base", "P", "E", "head"]  # (the order of the calls)
    assert not [n for n in m.notes if "not measured" in n]
    net.zero_grad()
    parts = net.parts(x)
    for y in parts.values():
        y.retain_grad()
    net.head(parts["E2"].squeeze(1)).pow(2).sum().backward()
    received = {n: float(y.grad.pow(2).sum()) for n, y in parts.items()}
    received["E"] += received.pop("E2")
    for name in ("A", "B", "P", "E"):
        layer = m.layers[name]
        weight = getattr(net, name)
        assert layer.weight_grad_norm == pytest.approx(float(weight.grad.norm()), rel=1e-6)
        assert layer.output_grad_norm == pytest.approx(math.sqrt(received[name]), rel=1e-6)
        assert not layer.frozen
    # the first call's gradient is the second call's input's, through relu: E sees both
    assert received["E"] > float(parts["E2"].grad.pow(2).sum())


class _Calls(nn.Module):
    """A model whose ``calls(x)`` returns its output and, per layer record, the results
    of that layer's calls (to retain their gradients in a hand-written backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.calls(x)[0]


class Gram(_Calls):
    """``x @ (W Wᵀ)``: the product of weights alone is a weight, its call the one given x."""

    def __init__(self) -> None:
        super().__init__()
        self.W, self.head = nn.Parameter(torch.randn(6, 3)), nn.Linear(6, 2)

    def calls(self, x: torch.Tensor) -> tuple:
        y = x @ (self.W @ self.W.T)
        return self.head(y), {"W": [y]}


class MergedLoRA(_Calls):
    """``F.linear(h, W + B @ A)``: LoRA merged into its base weight, the call of ``W``."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(5, 6))
        self.A, self.B = nn.Parameter(torch.randn(2, 6)), nn.Parameter(torch.randn(5, 2))
        self.head = nn.Linear(5, 2)

    def calls(self, x: torch.Tensor) -> tuple:
        y = F.linear(x, self.W + self.B @ self.A)
        return self.head(torch.tanh(y)), {"W": [y]}


class CastLike(_Calls):
    """``F.linear(x, W.type_as(x))``: x gives the cast its dtype only (§2)."""

    def __init__(self) -> None:
        super().__init__()
        self.W, self.head = nn.Parameter(torch.randn(5, 6)), nn.Linear(5, 2)

    def calls(self, x: torch.Tensor) -> tuple:
        y = F.linear(x, self.W.type_as(x))
        return self.head(torch.tanh(y)), {"W": [y]}


class PickedRows(_Calls):
    """``table[ids] @ W``: rows picked by data are data beside the weight ``W``; the tied
    read-out ``h @ tableᵀ`` is the table's call."""

    def __init__(self) -> None:
        super().__init__()
        self.table, self.W = nn.Parameter(torch.randn(7, 4)), nn.Parameter(torch.randn(4, 4))

    def calls(self, x: torch.Tensor) -> tuple:
        ids = (x.abs() * 10).long().remainder(7)[:, 0]
        y = self.table[ids] @ self.W
        out = torch.tanh(y) @ self.table.T
        return out, {"W": [y], "table": [out]}


class TiedProjection(_Calls):
    """An embedding module whose weight also reads the model out, functionally: both are
    calls of ``emb`` (§2: a layer module's weight is its record's)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mix = nn.Embedding(7, 4), nn.Linear(4, 4)

    def calls(self, x: torch.Tensor) -> tuple:
        ids = (x.abs() * 10).long().remainder(7)[:, 0]
        e = self.emb(ids)
        out = F.linear(torch.tanh(self.mix(e)), self.emb.weight)
        return out, {"emb": [e, out]}


class CheckpointedKernel(_Calls):
    """A functional convolution kernel inside a re-entrant checkpoint: its first run has
    gradient off, the backward runs it again (where no TorchFunctionMode is on)."""

    def __init__(self) -> None:
        super().__init__()
        self.K, self.head = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3), nn.Linear(4, 2)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.K, padding=1)

    def calls(self, x: torch.Tensor, checkpointed: bool = True) -> tuple:
        if checkpointed:
            y = torch.utils.checkpoint.checkpoint(
                self.block, x.requires_grad_(), use_reentrant=True
            )
        else:
            y = self.block(x)
        return self.head(y.mean((2, 3))), {"K": [y]}


class TiedBiasFree(_Calls):
    """A bias-free layer tied to an earlier layer's weight: each module has its record,
    and a module's own call is its own, whoever else holds the weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight

    def calls(self, x: torch.Tensor) -> tuple:
        ya = self.a(x)
        yb = self.b(torch.tanh(ya))
        return yb, {"a": [ya], "b": [yb]}


class ScatteredInto(_Calls):
    """Data added into a buffer of zeros made in forward (a graph network's aggregation):
    the buffer is data after the write, its product with ``W`` a call of ``W``."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.W = nn.Linear(6, 4), nn.Parameter(torch.randn(4, 3))

    def calls(self, x: torch.Tensor) -> tuple:
        into = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])
        pooled = torch.zeros(4, 4).index_add_(0, into, self.enc(x))
        y = pooled @ self.W
        return y, {"W": [y]}


class WeightThroughCheckpoint(_Calls):
    """A weight handed to a re-entrant checkpoint's function as an argument: the backward
    re-runs the function on a detached copy of it, still the weight."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.W = nn.Linear(6, 5), nn.Parameter(torch.randn(4, 5))

    def calls(self, x: torch.Tensor, checkpointed: bool = True) -> tuple:
        h = self.pre(x)
        if checkpointed:
            y = torch.utils.checkpoint.checkpoint(F.linear, h, self.W, use_reentrant=True)
        else:
            y = F.linear(h, self.W)
        return torch.tanh(y), {"W": [y]}


class MaskedWeight(_Calls):
    """A weight masked at positions data gives (``torch.where``, ``masked_fill``, times a
    boolean mask): still the weight, its product with x a call of it."""

    def __init__(self) -> None:
        super().__init__()
        self.W, self.V, self.U = (nn.Parameter(torch.randn(6, 6)) for _ in range(3))

    def calls(self, x: torch.Tensor) -> tuple:
        mask = x[:1].T > 0  # (6, 1), from the data
        a = x @ torch.where(mask, self.W, 0.0)
        b = torch.tanh(a) @ self.V.masked_fill(mask, 0.0)
        c = torch.tanh(b) @ (self.U * mask)
        return c, {"W": [a], "V": [b], "U": [c]}


class UpdatedInPlace(_Calls):
    """A running statistic written in place from the data, and a weight scaled in place
    on the first step (a data-dependent initialisation): both stay the model's own."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(6, 4))
        self.register_buffer("scale", torch.ones(4))

    def calls(self, x: torch.Tensor) -> tuple:
        with torch.no_grad():
            self.scale.mul_(0.9).add_(0.1 * x.abs().mean())
            self.W.div_(self.W.norm())
        y = x @ (self.W * self.scale)
        return y, {"W": [y]}


class HookedLayer(_Calls):
    """A functional weight read by a forward hook of a layer module: the hook runs after
    the module's call (§1.1), so the read is a call of the weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.W = nn.Linear(6, 6), nn.Parameter(torch.randn(6, 6))
        self.side: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            self.side.append(args[0] @ self.W)
            return out + self.side[-1]

        self.a.register_forward_hook(hook)

    def calls(self, x: torch.Tensor) -> tuple:
        self.side.clear()
        y = self.a(x)
        return torch.tanh(y), {"W": [self.side[0]]}


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (MaskedWeight, (8, 6)),
        (UpdatedInPlace, (8, 6)),
        (HookedLayer, (8, 6)),
        (TiedBiasFree, (8, 6)),
        (ScatteredInto, (8, 6)),
        (WeightThroughCheckpoint, (8, 6)),
        (Gram, (8, 6)),
        (MergedLoRA, (8, 6)),
        (CastLike, (8, 6)),
        (PickedRows, (8, 1)),
        (TiedProjection, (8, 1)),
        (CheckpointedKernel, (8, 3, 5, 5)),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_each_kind_of_functional_call_is_measured_where_autograd_says(model, shape) -> None:
    """Each kind of weight use §2 names — a product of weights, a merged LoRA, a cast
    taking another tensor's dtype, rows picked by data beside a weight, a module's weight
    read out functionally too, a kernel in a re-entrant checkpoint — is measured at the
    calls a hand-written backward gives (the review broke each: measured at the weight
    product, or not at all, or zero)."""
    torch.manual_seed(0)
    net, x = model(), torch.randn(*shape)
    m = measure(net, batches=[x.clone()], steps=1, loss=lambda out, batch: out.pow(2).sum())
    net.zero_grad()
    checkpointed = (CheckpointedKernel, WeightThroughCheckpoint)
    kwargs = {"checkpointed": False} if model in checkpointed else {}
    out, calls = net.calls(x.clone(), **kwargs)
    for ys in calls.values():
        for y in ys:
            y.retain_grad()
    out.pow(2).sum().backward()
    for name, ys in calls.items():
        expected = math.sqrt(sum(float(y.grad.pow(2).sum()) for y in ys))
        assert m.layers[name].output_grad_norm == pytest.approx(expected, rel=1e-5), name
    assert not [n for n in m.notes if "not called" in n or "not measured" in n]


def test_functional_layers_are_measured_on_synthetic_batches() -> None:
    """The synthetic batches are drawn while the capture is on, without operands: they are
    data, not constants of the model (a review: LoRA's A and B went unmeasured without
    batches=). Measured on the batch the same seed draws, as a hand-written backward."""
    from gpa.measure import INPUT_SEED_OFFSET
    from gpa.measure.inputs import synthetic_batches

    torch.manual_seed(0)
    net, example = FunctionalLayers(), torch.zeros(1, 6)
    m = measure(net, example, steps=1, batch_size=4, loss=lambda out, batch: out.pow(2).sum())
    [batch] = synthetic_batches(
        (example,), net, steps=1, batch_size=4, seed=INPUT_SEED_OFFSET, device="cpu"
    )
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    net.zero_grad()
    parts = net.parts(x)
    for y in parts.values():
        y.retain_grad()
    net.head(parts["E2"].squeeze(1)).pow(2).sum().backward()
    expected = math.sqrt(float(parts["A"].grad.pow(2).sum()))
    assert m.layers["A"].output_grad_norm == pytest.approx(expected, rel=1e-5)
    assert m.layers["B"].weight_grad_norm == pytest.approx(float(net.B.grad.norm()), rel=1e-5)


def test_layers_of_a_fused_weight_are_said_to_be_unmeasured() -> None:
    """Found by a review: for q, k, v fused into one call (§2: a call of each), the note
    said them "not called", which the analysis contradicts; it says why now (the
    measurement sees calls of a module or of its own weight only)."""
    from tests.frontends.test_shared_weights import QKV

    m = gpa.measure(QKV(fused=True), input_shape=(2, 4), steps=1, batch_size=2)
    note = next(n for n in m.notes if n.startswith("layers not called"))
    assert "several modules'" in note and note.endswith("q, k, v")
    assert {"stem", "out"} <= set(m.layers)
