"""Channel analysis by default (``tracer="auto"``, issue 12) on Ultralytics YOLOv8n's C2f
blocks (read by fx since it counts the chunks C2f iterates; by export before) and on a
Hugging Face BERT (export), and fx against export on the zoo models both read.

The C2f segments are derived by hand from ultralytics' source
(``ultralytics/nn/modules/block.py``)::

    class C2f(nn.Module):                 # model.2 of yolov8n: C2f(32, 32, n=1, shortcut=True)
        def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
            self.c = int(c2 * e)                                   # 16
            self.cv1 = Conv(c1, 2 * self.c, 1, 1)                  # Conv(32, 32)
            self.cv2 = Conv((2 + n) * self.c, c2, 1)               # Conv(48, 32)
            self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) ...)
        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))                      # [0,16), [16,32)
            y.extend(m(y[-1]) for m in self.m)                     # m.0 reads [16,32)
            return self.cv2(torch.cat(y, 1))                       # cat: [0,16) [16,32) [32,48)

    class Bottleneck(nn.Module):          # m.0: x + cv2(cv1(x)) (add: shortcut and c1 == c2)

(``Conv`` is conv → batch norm → SiLU, which keep channel positions.) So, with ``yolov8n.yaml``
(width 0.25, depth 0.33: model.2 is C2f(32, 32) with one bottleneck):

- model.2.cv1.conv's channels [0, 16) (the first chunk) reach only the concatenation at
  [0, 16): one sender, model.2.cv2.conv, at its input channels [0, 16);
- its channels [16, 32) (the second chunk) reach the concatenation at [16, 32), the
  bottleneck's first convolution m.0.cv1.conv at its input channels [0, 16), and — through
  the bottleneck's residual add — the concatenation at [32, 48): senders model.2.cv2.conv
  at [16, 32) and [32, 48), and model.2.m.0.cv1.conv at [0, 16);
- m.0.cv1.conv sends to m.0.cv2.conv ([0, 16)); m.0.cv2.conv's output goes through the add
  to the concatenation at [32, 48); model.2.cv2.conv's 32 channels all go to model.3.conv.

Each source delivers one round after the sender's own timestamps, which an independent
analysis (the autograd frontend, at layer level) gives; a segment's channel-level paths are
those of the sender segments it reaches (two routes into the same sender segment are one
path).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from catalog import ENTRIES, KNOWN_DIFFERENCES, Entry, build, records

import gpa

pytestmark = pytest.mark.zoo

ultralytics = pytest.importorskip("ultralytics", reason="the zoo tier installs ultralytics")


def _stamps(rounds: int) -> set[int]:
    return {t for t in range(rounds.bit_length()) if rounds >> t & 1}


def _shift(timestamps) -> set[int]:
    return {t + 1 for t in timestamps}


@pytest.fixture(scope="module")
def yolov8n():
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", verbose=False)
    channels = gpa.analyze(model, input_shape=(1, 3, 64, 64), channels=True)
    layers = gpa.analyze(model, input_shape=(1, 3, 64, 64), tracer="autograd")
    return channels, layers, model


def _parts(record) -> list[tuple[tuple[int, int], set[tuple[str, tuple[int, int]]]]]:
    return [
        ((s.start, s.stop), {(src.sender, src.channels) for src in s.sources})
        for s in record.segments
    ]


def test_c2f_segments_of_yolov8n(yolov8n) -> None:
    report, _, model = yolov8n
    assert report.tracer == "fx"  # (C2f iterates its chunks: export until fx counted them)
    layers = report.layers
    assert _parts(layers["model.2.cv1.conv"]) == [
        ((0, 16), {("model.2.cv2.conv", (0, 16))}),
        (
            (16, 32),
            {
                ("model.2.cv2.conv", (16, 32)),
                ("model.2.cv2.conv", (32, 48)),
                ("model.2.m.0.cv1.conv", (0, 16)),
            },
        ),
    ]
    assert _parts(layers["model.2.m.0.cv1.conv"]) == [
        ((0, 16), {("model.2.m.0.cv2.conv", (0, 16))})
    ]
    assert _parts(layers["model.2.m.0.cv2.conv"]) == [((0, 16), {("model.2.cv2.conv", (32, 48))})]
    assert _parts(layers["model.2.cv2.conv"]) == [((0, 32), {("model.3.conv", (0, 32))})]
    # every C2f block's first convolution: its two chunks, whatever the block's size
    from ultralytics.nn.modules.block import C2f

    blocks = {n: m.c for n, m in model.named_modules() if type(m) is C2f}
    assert len(blocks) == 8  # model.2, 4, 6, 8 (backbone), 12, 15, 18, 21 (neck)
    for block, c in blocks.items():
        cuts = [(s.start, s.stop) for s in layers[f"{block}.cv1.conv"].segments]
        assert cuts == [(0, c), (c, 2 * c)], block
    for name in ("model.2.cv1.conv", "model.2.m.0.cv1.conv", "model.2.m.0.cv2.conv"):
        for segment in layers[name].segments:
            assert segment.fallback == ()
            for source in segment.sources:
                assert (source.group, source.output, source.argument, source.mixed) == (
                    None,
                    None,
                    None,
                    False,
                )


def test_c2f_rounds_and_paths_of_yolov8n(yolov8n) -> None:
    report, independent, _ = yolov8n
    layers, ref = report.layers, independent.layers
    assert records(layers) == records(ref)  # the layer level is unchanged by channels
    first, second = layers["model.2.cv1.conv"].segments
    for name in ("model.2.cv1.conv", "model.2.m.0.cv1.conv", "model.2.m.0.cv2.conv"):
        for segment in layers[name].segments:
            for source in segment.sources:
                assert _stamps(source.rounds) == _shift(ref[source.sender].timestamps)
            delivered = set().union(*(_stamps(s.rounds) for s in segment.sources))
            assert set(segment.paths.timestamps) == delivered
    # the first chunk's paths are model.2.cv2.conv's, one step longer; the second chunk
    # adds those through the bottleneck, which are longer
    cv2, m0 = ref["model.2.cv2.conv"], ref["model.2.m.0.cv1.conv"]
    assert (first.paths.shortest, first.paths.longest) == (cv2.shortest + 1, cv2.longest + 1)
    assert (second.paths.shortest, second.paths.longest) == (cv2.shortest + 1, m0.longest + 1)
    assert second.paths.longest > first.paths.longest
    assert set(ref["model.2.cv1.conv"].timestamps) == set(first.paths.timestamps) | set(
        second.paths.timestamps
    )
    (after,) = layers["model.2.cv2.conv"].segments
    (m0_first,) = layers["model.2.m.0.cv1.conv"].segments
    (m0_second,) = layers["model.2.m.0.cv2.conv"].segments
    assert first.paths.num_paths == after.paths.num_paths
    assert m0_first.paths.num_paths == m0_second.paths.num_paths == after.paths.num_paths
    assert second.paths.num_paths == after.paths.num_paths + m0_first.paths.num_paths
    assert report.network.gradient_combinations is not None
    assert report.network.gradient_combinations >= 1


def _out_channels(module: torch.nn.Module) -> int:
    for attr in ("out_features", "out_channels", "embedding_dim", "nf"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise AssertionError(f"no output width known for {type(module).__name__}")


def test_channels_on_bert() -> None:
    pytest.importorskip("transformers", reason="the zoo tier installs transformers")
    (entry,) = [e for e in ENTRIES if e.target == "transformers:bert"]
    loaded, _ = build(entry)
    report = gpa.analyze(loaded.model, loaded.example_inputs, channels=True)
    assert report.tracer == "export"
    plain = gpa.analyze(loaded.model, loaded.example_inputs, tracer="autograd")
    assert records(report.layers) == records(plain.layers)
    modules = dict(loaded.model.named_modules())
    for name, record in report.layers.items():
        assert record.segments, name
        cuts = [(s.start, s.stop) for s in record.segments]
        width = _out_channels(modules[name])
        assert cuts[0][0] == 0 and cuts[-1][1] == width, (name, cuts)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts)), (name, cuts)
        assert all(s.paths is not None for s in record.segments), name
        assert record.gradient_combinations >= 1
    assert report.network.gradient_combinations >= 1


# fx and export give identical channel-level records wherever both read a model: the
# families whose channel operations differ most (residual, dense concatenation, CSP
# split, grouped/depthwise, channel shuffle, inception branches; attention: the BERT test
# above). torchvision's vit_b_16 is left out: its channel analysis still takes minutes
# (a layer norm over channels yields one routing term per channel; issue 14).
CHANNEL_ENTRIES = (
    "ultralytics:yolov8n.yaml",
    "ultralytics:yolo11n.yaml",
    "torchvision:resnet18",
    "torchvision:densenet121",
    "torchvision:shufflenet_v2_x1_0",
    "torchvision:mobilenet_v3_small",
    "torchvision:googlenet",
    "timm:cspdarknet53",
    "timm:res2net50_26w_4s",
    "timm:ese_vovnet19b_dw",
    "timm:ghostnet_100",
    "timm:mobileone_s0",  # runs of segments reaching runs moved along with them
    "timm:repvit_m0_9",
)


def _channel_records(report) -> list[tuple]:
    return [
        (name, r.gradient_combinations, r.channel_fallbacks, r.segments)
        for name, r in report.layers.items()
    ]


@pytest.mark.parametrize("target", CHANNEL_ENTRIES)
def test_channels_fx_and_export_agree(target: str) -> None:
    assert target not in KNOWN_DIFFERENCES
    (entry,) = [e for e in ENTRIES if e.target == target]
    loaded, _ = build(entry)
    fx = gpa.analyze(loaded.model, input_shape=loaded.input_shape, channels=True, tracer="fx")
    export = gpa.analyze(
        loaded.model, input_shape=loaded.input_shape, channels=True, tracer="export"
    )
    assert records(fx.layers) == records(export.layers)
    # GoogLeNet returns a namedtuple in train mode (logits, aux_logits2, aux_logits1): both
    # frontends follow each field to its own output
    assert _channel_records(fx) == _channel_records(export)
    assert fx.network == export.network


def _one_name(report) -> list[tuple]:
    """_channel_records with a fallback's operation by one name (fx records indexing as
    ``getitem``, export as ATen's ``index``), segments by their channels, paths and
    sources in order."""
    return [
        (
            name,
            combos,
            tuple(f.replace("getitem", "index") for f in fallbacks),
            [(g.start, g.stop, g.paths, g.sources) for g in segments],
        )
        for name, combos, fallbacks, segments in _channel_records(report)
    ]


@pytest.mark.parametrize("target", ["torchvision:swin_t", "torchvision:swin_v2_t"])
def test_channels_fx_and_export_agree_on_swin(target: str) -> None:
    # fx reads Swin's attention by tracing torchvision's wrapped shifted_window_attention
    # by value (semantics §1.1); export reads it from torch.export's graph. Both list a
    # segment's senders in forward order (they listed a few in another order: by the
    # name each frontend gave a call, found by a review)
    (entry,) = [e for e in ENTRIES if e.target == target]
    loaded, _ = build(entry)
    options = dict(input_shape=loaded.input_shape, channels=True)
    fx = gpa.analyze(loaded.model, tracer="fx", **options)
    export = gpa.analyze(loaded.model, tracer="export", **options)
    # nothing kept whole (a channel fallback, Swin V2's computed index, is noted)
    assert [n for n in fx.notes if not n.startswith("channel routing fell back")] == []
    assert records(fx.layers) == records(export.layers)
    assert _one_name(fx) == _one_name(export)
    assert fx.network == export.network


@pytest.mark.parametrize(
    "entry",
    [
        Entry("timm:dm_nfnet_f0", "NFNet"),
        Entry("timm:tf_mixnet_s", "MixNet"),
        Entry("timm:efficientnet_cc_b0_4e", "EfficientNet-CondConv"),
    ],
)
def test_channels_fx_and_export_agree_on_convolutions_from_outside_torch(entry: Entry) -> None:
    # timm's Conv2dSame (tf_* models) and NFNet's weight-standardised convolutions are
    # fused calls under export: their channels sit on axis 1 and their groups are the
    # module's, as under fx (export read the last axis: a 16-channel stem got 0..32).
    # NFNet lists a segment's senders in another order (§8 leaves it open). CondConv's
    # layer is a functional convolution whose groups are computed in forward (× batch); it
    # folds the batch into its channels, so one sample (semantics §8)
    loaded, _ = build(entry)
    shape = (1, *loaded.input_shape[0][1:]) if "cc_" in entry.target else loaded.input_shape
    options = dict(input_shape=shape, channels=True)
    fx = gpa.analyze(loaded.model, tracer="fx", **options)
    export = gpa.analyze(loaded.model, tracer="export", **options)
    assert records(fx.layers) == records(export.layers)
    assert _one_name(fx) == _one_name(export)
    for name, record in export.layers.items():  # segments end at the layer's width
        assert record.segments[-1].stop == _out_channels(loaded.model.get_submodule(name))


@pytest.mark.parametrize(
    "model_class, config",
    [
        ("DetectionModel", "yolov8n.yaml"),
        ("SegmentationModel", "yolov8n-seg.yaml"),
        ("OBBModel", "yolo11n-obb.yaml"),
        ("DetectionModel", "yolov10n.yaml"),
    ],
)
def test_export_reads_yolo_heads_in_eval_mode(model_class: str, config: str) -> None:
    """In eval mode the heads make their anchors with ``stride.item()``, a buffer's value,
    which the meta device has not: export (and so ``--eval --channels``) failed on every
    detect, segment and OBB head (found by a new-user review). The records are the
    autograd frontend's (an independent reading), with channels too."""
    from ultralytics.nn import tasks

    model = getattr(tasks, model_class)(config, verbose=False)
    options = dict(input_shape=(1, 3, 64, 64), train=False)
    independent = records(gpa.analyze(model, tracer="autograd", **options).layers)
    exported = gpa.analyze(model, tracer="export", **options)
    assert records(exported.layers) == independent
    with_channels = gpa.analyze(model, channels=True, **options)
    assert with_channels.tracer == "export"
    assert records(with_channels.layers) == independent
