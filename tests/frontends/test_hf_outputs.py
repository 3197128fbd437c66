"""A Hugging Face causal LM returns its key/value cache (issue 13, kind 3).

``LlamaForCausalLM`` returns a ``ModelOutput`` whose cache (``DynamicCache``: layers of
keys and values) is an object, not a tensor. gpa follows it: the key and value
projections feed the loss directly through it, unless the logits alone are selected
(``outputs="logits"``) or the model is built with ``use_cache=False``.

Also: a Hugging Face model that hooks itself on its first call (SegFormer) runs as before
after an analysis; BART built on the CPU is read by export (its attention's layout on the
CPU is not the meta device's).

Needs ``transformers`` (the zoo environment); skipped elsewhere. Built from a config, no
download.

Hand derivation (2 decoder layers; a layer's attention projections q, k, v feed o; o
feeds the MLP's gate and up, which feed down; the residual stream carries o's and down's
outputs to the next layer's q, k, v, gate, up and, after the last layer, to lm_head):

* layer 1's k_proj: through the cache 1; k -> o -> lm_head 3; k -> o -> gate|up -> down
  -> lm_head 5. Without the cache: 3 and 5.
* layer 0's k_proj: through its cache 1; at most k -> o -> gate -> down -> (layer 1) v ->
  o -> gate -> down -> lm_head: 9; without the cache its shortest is k -> o -> lm_head, 3.
"""

from __future__ import annotations

import pytest
import torch

import gpa
from tests.frontends.every_tracer import layer_records
from tests.semantics import LOSS, check_reachability_with_autograd

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

TOKENS = torch.zeros(1, 5, dtype=torch.long)


def llama(use_cache: bool = True):
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_cache=use_cache,
    )
    return transformers.LlamaForCausalLM(config)


def bert(layers: int = 2, width: int = 64):
    """A small BERT (``width`` hidden units, two heads) on a vocabulary of 100."""
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
    )
    return transformers.BertModel(config)


def attention(report, layer: int, name: str):
    return report.layers[f"model.layers.{layer}.self_attn.{name}"]


@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_the_cache_feeds_the_loss(tracer: str) -> None:
    report = gpa.analyze(llama(), TOKENS, tracer=tracer)
    for layer, longest in ((0, 9), (1, 5)):
        for name in ("k_proj", "v_proj"):
            record = attention(report, layer, name)
            assert (record.shortest, record.longest) == (1, longest)
            assert LOSS in record.sources
        assert attention(report, layer, "q_proj").shortest == 3  # no cache of queries


@pytest.mark.parametrize("tracer", ["export", "autograd"])
@pytest.mark.parametrize(
    ("build", "options"),
    [(llama, {"outputs": "logits"}), (lambda: llama(use_cache=False), {})],
    ids=["outputs=logits", "use_cache=False"],
)
def test_the_logits_alone(tracer: str, build, options: dict) -> None:
    report = gpa.analyze(build(), TOKENS, tracer=tracer, **options)
    for layer, longest in ((0, 9), (1, 5)):
        for name in ("k_proj", "v_proj"):
            record = attention(report, layer, name)
            assert (record.shortest, record.longest) == (3, longest)
            assert LOSS not in record.sources


def test_cache_paths_are_listed() -> None:
    # "cache.layers.0.keys" in recent transformers, "past_key_values…" before
    with pytest.raises(gpa.GpaError, match=r"available: 'logits', '(cache|past_key_values)\."):
        gpa.analyze(llama(), TOKENS, tracer="autograd", outputs="past")


@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_a_model_hooking_itself_on_its_first_call_runs_as_before_after_an_analysis(
    tracer: str,
) -> None:
    """SegFormer installs output-capturing hooks on its first call (and sets a flag): after
    an analysis its next call hooked twice and failed ("mat1 and mat2 shapes cannot be
    multiplied"). Its output after an analysis is the output it gave before."""
    config = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
        num_labels=3,
    )
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    image = torch.randn(2, 3, 32, 32)
    gpa.analyze(model, (image,), tracer=tracer)
    after = model(image).logits
    fresh = transformers.SegformerForSemanticSegmentation(config).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(after, fresh(image).logits)


def test_bart_built_on_the_cpu_is_read_by_export_as_by_autograd() -> None:
    """Export stopped with "input shapes do not fit operation 'view_4'" (and auto with
    it): the CPU's attention kernel lays its result out heads-inner, export dropped the
    ``contiguous()`` after it, and the view that followed does not fit the meta layout.
    Export's records are autograd's (§1.6), and auto reads it with export."""
    config = transformers.BartConfig(
        vocab_size=100,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        use_cache=False,
    )
    model = transformers.BartModel(config)
    ids = torch.randint(1, 100, (1, 16))
    exported = gpa.analyze(model, (ids,), tracer="export")
    read = gpa.analyze(model, (ids,), tracer="autograd")
    assert layer_records(exported) == layer_records(read)
    # token and position embeddings of each side (4), encoder layers 2 × (q, k, v, out, fc1,
    # fc2), decoder layers 2 × (self and cross attention 8, fc1, fc2): 4 + 12 + 20
    assert len(exported.layers) == 36
    assert gpa.analyze(model, (ids,)).tracer == "export"


def test_wav2vec2_marking_its_features_as_needing_gradient_is_read_in_training() -> None:
    """Wav2Vec2's feature encoder sets ``requires_grad`` on a value made from its input in
    training; the autograd frontend, whose inputs carried gradient, made that value a
    non-leaf and the model raised ("you can only change requires_grad flags of leaf
    variables"), so auto failed in train mode wherever export could not read the model
    (its layer drop). Its training-mode records are export's
    eval-mode ones (layer drop off: dropout changes no path), and a real backward
    reaches every layer it reports reachable."""
    config = transformers.Wav2Vec2Config(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=2,
        intermediate_size=128,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        layerdrop=0.0,
    )
    model = transformers.Wav2Vec2Model(config)
    audio = torch.randn(1, 400)
    trained = gpa.analyze(model, (audio,), tracer="autograd", train=True)
    evaluated = gpa.analyze(model, (audio,), tracer="export", train=False)
    assert layer_records(trained) == layer_records(evaluated)
    check_reachability_with_autograd(trained, model.train(), audio)


def mixtral(experts: str):
    config = transformers.MixtralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        use_cache=False,
    )
    config._experts_implementation = experts
    return transformers.MixtralForCausalLM(config)


@pytest.mark.parametrize("experts", ["grouped_mm", "batched_mm", "eager"])
def test_mixtral_experts_are_a_layer_whichever_way_they_run(experts: str) -> None:
    """The expert bank (``mlp.experts``: ``gate_up_proj``, ``down_proj``) holds most of a
    mixture of experts' weights. Under export, Hugging Face's default (``grouped_mm``)
    calls its own operator ``transformers::grouped_mm_fallback`` in place of torch's
    ``_grouped_mm`` on float32 weights (read as torch's: before, export listed 12 of 16
    layers here and auto moved on to autograd), ``batched_mm`` indexes the bank with the
    router's choices. Its two weights are two layers (§2). By hand: down_proj feeds
    lm_head through the residual stream (2); gate_up_proj feeds down_proj (3). A real
    backward gives the bank gradient; export reads what autograd reads."""
    torch.manual_seed(0)
    model, ids = mixtral(experts), torch.randint(0, 32, (1, 6))
    report = gpa.analyze(model, ids, outputs=["logits"])
    bank = "model.layers.0.mlp.experts"
    down, gate_up = report.layers[f"{bank}.down_proj"], report.layers[f"{bank}.gate_up_proj"]
    assert (down.shortest, down.longest, gate_up.shortest, gate_up.longest) == (2, 2, 3, 3)
    assert gate_up.sources == (f"{bank}.down_proj",)
    model.zero_grad()
    model(ids).logits.sum().backward()
    assert model.model.layers[0].mlp.experts.gate_up_proj.grad.abs().sum() > 0
    if experts != "eager":  # (eager's loop over experts hit is data-dependent under export)
        exported = gpa.analyze(model, ids, outputs=["logits"], tracer="export")
        assert not any("custom operator" in n for n in exported.notes)
        assert layer_records(exported) == layer_records(
            gpa.analyze(model, ids, outputs=["logits"], tracer="autograd")
        )


@pytest.mark.parametrize("experts", ["grouped_mm", "batched_mm"])
def test_mixtral_experts_have_channel_segments(experts: str) -> None:
    """``channels=True`` needs fx or export; on Hugging Face's default expert bank export
    meets ``transformers::grouped_mm_fallback``, before a custom operator that left both
    bank weights out of the channel analysis; ``batched_mm``'s ``bmm(W[experts], x)``
    gave each bank weight one channel (the result's last axis, of size 1). By hand
    (intermediate size 16): gate_up_proj's 32 output channels are the gate and up halves,
    both reaching the loss only through down_proj (3 hops); down_proj's 16 reach lm_head
    (2)."""
    torch.manual_seed(0)
    model, ids = mixtral(experts), torch.randint(0, 32, (1, 6))
    report = gpa.analyze(model, ids, outputs=["logits"], channels=True)
    assert report.tracer == "export"
    bank = "model.layers.0.mlp.experts"
    gate_up = report.layers[f"{bank}.gate_up_proj"]
    assert [(s.start, s.stop) for s in gate_up.segments] == [(0, 16), (16, 32)]
    assert {s.paths.shortest for s in gate_up.segments} == {3}
    assert {x.sender for s in gate_up.segments for x in s.sources} == {f"{bank}.down_proj"}
    assert [s.paths.shortest for s in report.layers[f"{bank}.down_proj"].segments] == [2]


class FallbackBank(torch.nn.Module):
    """a -> transformers::grouped_mm_fallback(·, w, offs) -> head, the operator called
    as Hugging Face calls it (the packet) or by its overload."""

    def __init__(self, overload: bool) -> None:
        super().__init__()
        self.overload = overload
        self.a, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(3, 2)
        self.w = torch.nn.Parameter(torch.randn(2, 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fallback = torch.ops.transformers.grouped_mm_fallback
        op = fallback.default if self.overload else fallback
        offs = torch.tensor([3, 6], dtype=torch.int32)
        return self.head(op(self.a(x), self.w, offs=offs))


@pytest.mark.parametrize("overload", [False, True], ids=["packet", "overload"])
@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_the_grouped_mm_fallback_is_read_as_torchs_grouped_mm(tracer: str, overload: bool) -> None:
    """``transformers::grouped_mm_fallback`` stands for ``torch._grouped_mm`` (same
    arguments, same result): every frontend reads it as that, a functional layer of its
    weight (before: a custom operator, no layer, with a note). By
    hand: a -> w -> head, so a 3, w 2, head 1; a real backward reaches all three."""
    from transformers.integrations import moe  # noqa: F401  (registers the operator)

    torch.manual_seed(0)
    model, x = FallbackBank(overload), torch.randn(6, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    assert {n: (r.shortest, r.longest) for n, r in report.layers.items()} == {
        "a": (3, 3),
        "w": (2, 2),
        "head": (1, 1),
    }
    assert not any("custom operator" in n for n in report.notes)
    check_reachability_with_autograd(report, model, x)
    if tracer != "autograd":  # the channel analysis reads it too
        channels = gpa.analyze(model, (x,), tracer=tracer, channels=True)
        assert [(s.start, s.stop) for s in channels.layers["w"].segments] == [(0, 3)]


@pytest.mark.parametrize("experts", ["eager", "grouped_mm"])
def test_a_bank_looped_over_the_experts_hit_gets_the_routing_note(experts: str) -> None:
    """With ``experts_implementation="eager"`` the bank is called once per expert the
    router hit (``gate_up_proj[expert]``): its calls change with the inputs, yet no
    module was skipped, and the routing note (§1, autograd) was missing. The calls are a
    real run's: a hook counting the experts hit. ``grouped_mm`` calls the bank once
    whatever the routing: no note."""
    torch.manual_seed(0)
    model, ids = mixtral(experts), torch.randint(0, 32, (1, 6))
    report = gpa.analyze(model, ids, outputs=["logits"], tracer="autograd")
    routed = [n for n in report.notes if "into Python values" in n]
    bank = model.model.layers[0].mlp.experts
    if experts == "grouped_mm":
        assert not routed and report.layers["model.layers.0.mlp.experts.gate_up_proj"].calls == 1
        return
    assert len(routed) == 1 and "modeling_mixtral.py" in routed[0]
    hit: list[int] = []
    handle = bank.register_forward_hook(
        lambda module, args, out: hit.append(int(torch.unique(args[1]).numel()))
    )
    try:
        model(ids)
    finally:
        handle.remove()
    calls = report.layers["model.layers.0.mlp.experts.gate_up_proj"].calls
    assert calls == hit[0] and 1 <= calls <= 4


@pytest.mark.parametrize("model", ["bert", "llama", "batched_mm", "grouped_mm"])
def test_a_mask_check_on_the_data_gets_no_routing_note(model: str) -> None:
    """Hugging Face checks the attention mask's values in Python (its masking utilities):
    a branch on data that skips no layer and changes no call, so no note that layers
    were skipped — also where the model slices activations (Llama's ``rotate_half``) or
    gathers its expert bank's rows by the router's choices once (``batched_mm``), which
    the first version of the looped-bank note took for a loop (a review)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 32, (1, 6))
    built = {
        "bert": lambda: bert(layers=1, width=16),
        "llama": lambda: llama(use_cache=False),
        "batched_mm": lambda: mixtral("batched_mm"),
        "grouped_mm": lambda: mixtral("grouped_mm"),
    }[model]()
    report = gpa.analyze(built, (ids, torch.ones_like(ids)), tracer="autograd")
    assert not any("into Python values" in n for n in report.notes)
    assert report.network.unreachable == ()
    assert all(r.calls == 1 for r in report.layers.values())


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_gradient_checkpointing_changes_no_record_nor_frontend(reentrant: bool) -> None:
    """``gradient_checkpointing_enable()`` puts a hook marking the input embeddings' output
    as requiring gradient; fx and export refused the model for it, so auto fell back to
    autograd and ``channels=True`` had no frontend (found by a new-user review). The
    records are those of the model without checkpointing, read by the same frontend."""
    plain, checkpointed = bert(), bert()
    checkpointed.gradient_checkpointing_enable({"use_reentrant": reentrant})
    ids = torch.randint(1, 100, (1, 8))
    expected = gpa.analyze(plain, (ids,))
    report = gpa.analyze(checkpointed, (ids,))
    assert report.tracer == expected.tracer
    assert layer_records(report) == layer_records(expected)
    channels = gpa.analyze(checkpointed, (ids,), channels=True)
    assert channels.tracer in ("fx", "export")


class ByKeyword(torch.nn.Module):
    """Calls the model with its arguments by keyword, as a training loop does."""

    def __init__(self, model) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask, labels):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_a_batch_encoding_is_bound_to_forward_positions(tracer: str) -> None:
    """Found by a review: a tokenizer's output (a ``BatchEncoding``, a dict) was refused, and
    ``labels`` sits eighth among Llama's positional arguments. Bound by name, the records
    are those of the model called by keyword (its loss from the labels)."""
    model = llama(use_cache=False)
    batch = transformers.BatchEncoding(
        {"input_ids": TOKENS, "attention_mask": torch.ones_like(TOKENS), "labels": TOKENS}
    )
    report = gpa.analyze(model, batch, tracer=tracer, outputs="loss")
    called = gpa.analyze(ByKeyword(model), tuple(batch.values()), tracer=tracer, outputs="loss")
    unwrapped = {  # the wrapper's names without its prefix
        name.removeprefix("m."): (
            *record[:-1],
            tuple(sender.removeprefix("m.") for sender in record[-1]),
        )
        for name, record in layer_records(called).items()
    }
    assert layer_records(report) == unwrapped
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()  # a real backward of the loss, the arguments by keyword
    got = {n for n in report.layers if model.get_submodule(n).weight.grad is not None}
    assert got == {n for n, r in report.layers.items() if r.reachable}


@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_a_model_output_is_selected_by_index_as_by_name(tracer: str) -> None:
    """Found by a new user: Hugging Face users write ``outputs[0]``, and ``--outputs 0``
    was refused ("not among the model's outputs"); a ModelOutput is read by index as by
    name (its fields that are set, in order), a third index is none. By hand, BERT's
    pooler (a Linear on the first token) is reached through ``pooler_output`` alone: at
    1 selecting 1, never selecting 0."""
    model = bert(layers=1, width=32)
    by_index = gpa.analyze(model, TOKENS, tracer=tracer, outputs="0")
    by_name = gpa.analyze(model, TOKENS, tracer=tracer, outputs="last_hidden_state")
    assert by_index.to_dict()["layers"] == by_name.to_dict()["layers"]
    assert not by_index.layers["pooler.dense"].reachable
    pooled = gpa.analyze(model, TOKENS, tracer=tracer, outputs="1")
    assert (
        pooled.to_dict()["layers"]
        == (gpa.analyze(model, TOKENS, tracer=tracer, outputs="pooler_output").to_dict()["layers"])
    )
    assert pooled.layers["pooler.dense"].timestamps == (1,)
    with pytest.raises(gpa.GpaError, match="'2' is not among the model's outputs"):
        gpa.analyze(model, TOKENS, tracer=tracer, outputs="2")
