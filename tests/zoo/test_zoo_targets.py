"""Library targets for real (the zoo tier has the libraries): what a user types after
``gpa analyze`` for torchvision, timm, Ultralytics and Hugging Face models.

Expected layer counts are counted from the libraries' source: BERT-base (the defaults of
``BertConfig``: 12 layers) has 3 embeddings, 6 linear layers per encoder layer (query,
key, value, attention output, intermediate, output) and the pooler: 3 + 12 * 6 + 1 = 76;
YOLOv8n's YAML builds 64 convolutions with weights (model.22.dfl.conv, fixed and never
called in train mode, is unreachable).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpa
from gpa.errors import TargetError
from gpa.target import load_target

pytestmark = pytest.mark.zoo


def _error(spec: str, kwargs: dict | None = None) -> str:
    with pytest.raises(TargetError) as info:
        load_target(spec, kwargs)
    return str(info.value)


def test_torchvision_and_timm_names() -> None:
    for spec, kind, shape in [
        ("torchvision:resnet50", "ResNet", (2, 3, 224, 224)),
        ("torchvision:inception_v3", "Inception3", (2, 3, 299, 299)),
        ("torchvision:r3d_18", "VideoResNet", (2, 3, 16, 112, 112)),
        ("timm:resnet50", "ResNet", (2, 3, 224, 224)),
        ("timm:mobilevit_xxs", "ByobNet", (2, 3, 256, 256)),
    ]:
        loaded = load_target(spec, device="meta")
        assert (type(loaded.model).__name__, loaded.input_shape, loaded.name) == (
            kind,
            [shape],
            spec,
        )
        assert next(loaded.model.parameters()).is_meta
    # detection models take lists of images: no default inputs, and no backbone weights
    loaded = load_target("torchvision:fasterrcnn_mobilenet_v3_large_fpn")
    assert loaded.input_shape is None
    assert "did you mean 'timm:resnet50'" in _error("timm:resnet5O")
    assert "drop -k pretrained" in _error("timm:resnet50", {"pretrained": True})
    # the library's module attributes are import specs, as before
    assert type(load_target("timm:create_model", {"model_name": "resnet18"}).model).__name__ == (
        "ResNet"
    )


def test_ultralytics_yaml_names_and_paths(tmp_path: Path, monkeypatch) -> None:
    from ultralytics.nn import tasks

    for spec, kind, size in [
        ("yolov8n.yaml", tasks.DetectionModel, 640),
        ("ultralytics:yolo11n", tasks.DetectionModel, 640),
        ("ultralytics:yolov8n-seg.yaml", tasks.SegmentationModel, 640),
        ("yolov8n-cls.yaml", tasks.ClassificationModel, 224),
        ("yolov8n-pose.yaml", tasks.PoseModel, 640),
        ("rtdetr-l.yaml", tasks.RTDETRDetectionModel, 640),
    ]:
        loaded = load_target(spec)
        assert type(loaded.model) is kind, spec
        assert loaded.input_shape == [(1, 3, size, size)]
    shipped = Path(tasks.__file__).parent.parent / "cfg" / "models" / "v8" / "yolov8.yaml"
    custom = tmp_path / "nets" / "mine.yaml"
    custom.parent.mkdir()
    shutil.copy(shipped, custom)
    monkeypatch.chdir(tmp_path)
    for spec in ("nets/mine.yaml", str(custom), "ultralytics:nets/mine.yaml"):
        model = load_target(spec, {"nc": 3}).model
        assert model.model[-1].nc == 3  # -k goes to the model class
    assert "file not found: nets/other.yaml" in _error("nets/other.yaml")
    message = _error("yolov8q.yaml")
    assert "ships none of that name" in message and "yolov8.yaml" in message
    assert "does not accept 'depth'" in _error("yolov8n.yaml", {"depth": 3})
    # the YAML is the model's cfg: -k cfg=… raised a bare TypeError (a new-user review)
    assert "takes 'cfg' from the YAML: it cannot be given with -k (it accepts: ch, nc" in _error(
        "yolov8n.yaml", {"cfg": 1}
    )


@pytest.mark.parametrize("tracer", ["auto", "fx", "export", "autograd"])
def test_an_ultralytics_engine_object_is_read_as_the_network_it_holds(
    tracer: str, monkeypatch
) -> None:
    """``YOLO("yolov8n.yaml")`` — the object Ultralytics' users hold — is an nn.Module
    whose ``train`` runs a training loop and whose call predicts on images: every frontend
    crashed (a TypeError inside Ultralytics' trainer). Its network is its ``.model``."""
    from ultralytics import YOLO

    engine = YOLO("yolov8n.yaml")
    monkeypatch.setattr(engine, "train", _never_called)
    monkeypatch.setattr(engine, "predict", _never_called)
    # (its call predicts: a hook registered on it never runs, so none is carried)
    engine.register_forward_hook(_detached)
    x = torch.randn(1, 3, 64, 64)
    report = gpa.analyze(engine, (x,), tracer=tracer)
    # a real backward of the network in train mode: the convolutions its weights reach
    network = engine.model.train()
    sum(t.sum() for t in _tensors(network(x))).backward()
    reached = {
        name
        for name, m in network.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.weight.grad is not None
    }
    network.zero_grad(set_to_none=True)
    assert len(reached) == 64 - 1  # (the hand count above, model.22.dfl.conv unreached)
    assert report.network.layers == 64
    assert {n for n, r in report.layers.items() if r.reachable} == reached
    assert report.network.unreachable == ("model.22.dfl.conv",)
    assert any("the module YOLO wraps (its .model)" in note for note in report.notes)


def _detached(module, args, output):
    return [t.detach() for t in output] if isinstance(output, (list, tuple)) else output.detach()


def _never_called(*args, **kwargs):
    raise AssertionError("gpa called the engine's train or predict")


def _tensors(value) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def test_a_transformers_target_says_it_is_built_without_its_cache() -> None:
    """Found by a new user: ``transformers:LlamaForCausalLM`` gave k_proj a shortest path
    of 3 where ``gpa.analyze`` on the same configuration gave 1 (its cache is an output,
    §1.5): the target builds it with ``use_cache=False`` and said nothing. By hand (one
    decoder layer): without the cache, k_proj -> attention -> o_proj -> the residual
    stream past the MLP -> lm_head -> loss (3); with it, k_proj -> cache -> loss (1)."""
    small = {
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 50,
    }
    target = "transformers:LlamaForCausalLM"
    report = gpa.analyze_target(target, small)
    assert any("use_cache=False" in note for note in report.notes)
    assert report.layers["model.layers.0.self_attn.k_proj"].shortest == 3
    cached = gpa.analyze_target(target, {**small, "use_cache": True})
    assert not any("use_cache=False" in note for note in cached.notes)
    assert cached.layers["model.layers.0.self_attn.k_proj"].shortest == 1


def test_transformers_types_and_classes() -> None:
    bert = load_target("transformers:bert")
    assert type(bert.model).__name__ == "BertModel"
    assert next(bert.model.parameters()).is_meta  # the default configuration: bert-base
    (ids,) = bert.example_inputs
    assert (tuple(ids.shape), ids.dtype) == ((1, 16), torch.int64)
    assert gpa.analyze(bert.model, bert.example_inputs).network.layers == 3 + 12 * 6 + 1
    small = {"n_layer": 2, "n_embd": 64, "n_head": 2}
    gpt2 = load_target("transformers:GPT2LMHeadModel", small, device="cpu")
    assert type(gpt2.model).__name__ == "GPT2LMHeadModel"
    assert len(gpt2.model.transformer.h) == 2 and gpt2.model.config.use_cache is False
    t5 = load_target("transformers:t5")  # encoder-decoder: decoder token ids third
    ids, mask, decoder_ids = t5.example_inputs
    assert mask is None and decoder_ids.dtype == torch.int64
    whisper = load_target("transformers:whisper")
    features = whisper.example_inputs[0]
    config = whisper.model.config
    assert tuple(features.shape) == (1, config.num_mel_bins, 2 * config.max_source_positions)
    vit = load_target("transformers:vit")
    assert tuple(vit.example_inputs[0].shape) == (1, 3, 224, 224)
    assert "did you mean 'num_hidden_layers'" in _error(
        "transformers:bert", {"num_hidden_layer": 2}
    )
    assert "did you mean 'transformers:bert'" in _error("transformers:Bert")


def test_cli_analyses_library_targets(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpa",
            "analyze",
            "yolov8n.yaml",
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["tracer"] == "fx"
    assert report["model"] == "yolov8n.yaml"
    assert report["network"]["unreachable"] == ["model.22.dfl.conv"]
    assert report["network"]["layers"] == 64
    result = subprocess.run(
        [sys.executable, "-m", "gpa", "analyze", "timm:resnet5O", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 2
    assert "did you mean 'timm:resnet50'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_transformers_setting_the_base_configuration_keeps_private_is_taken() -> None:
    """``-k experts_implementation=eager`` (kept as ``config._experts_implementation``) was
    refused as no setting of MixtralConfig; a misspelt one still is."""
    loaded = load_target("transformers:MixtralForCausalLM", {"experts_implementation": "eager"})
    assert loaded.model.config._experts_implementation == "eager"
    assert "has no setting 'experts_implementatio'" in _error(
        "transformers:MixtralForCausalLM", {"experts_implementatio": "eager"}
    )


def test_a_transformers_setting_behind_a_property_is_taken() -> None:
    """Found by a new user: ``-k num_labels=3`` was refused ("BertConfig has no setting
    'num_labels'"), though ``BertConfig(num_labels=3)`` takes it (a property setting
    ``id2label``). By hand: a classifier of 3 labels on 32 features has 32 · 3 + 3 = 99
    parameters; a misspelt property is refused still."""
    small = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2}
    loaded = load_target("transformers:BertForSequenceClassification", {**small, "num_labels": 3})
    assert sum(p.numel() for p in loaded.model.classifier.parameters()) == 99
    assert "has no setting 'num_label' (did you mean 'num_labels'?)" in _error(
        "transformers:BertForSequenceClassification", {**small, "num_label": 3}
    )


def test_transformers_image_inputs_of_two_towers_and_sizeless_configurations() -> None:
    """CLIP takes token ids and an image (its vision tower's size); a ResNet's
    configuration gives no image size: 224 × 224 (before, no inputs, or ids alone)."""
    clip = load_target("transformers:clip", device="meta")
    vision = clip.model.config.vision_config
    assert [tuple(t.shape) for t in clip.example_inputs] == [
        (1, 16),
        (1, 3, vision.image_size, vision.image_size),
    ]
    resnet = load_target("transformers:resnet", device="meta")  # (two: see below)
    assert [tuple(t.shape) for t in resnet.example_inputs] == [(2, 3, 224, 224)]


def test_a_transformers_image_model_whose_batch_norm_trains_gets_two_images() -> None:
    """Found by the review of a change: gpa gave LeViT (Hugging Face's) one image, and its
    head's batch norm after pooling cannot train on one value per channel: gpa refused the
    inputs it chose itself. As timm's and torchvision's, a transformers model with a batch
    norm gets two images in train mode, one in eval mode."""
    loaded = load_target("transformers:LevitForImageClassification")
    assert [tuple(t.shape) for t in loaded.example_inputs] == [(2, 3, 224, 224)]
    assert loaded.inputs_from == "2 images of the configuration's image_size"
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        loaded.model.train()(torch.zeros(1, 3, 224, 224, device="meta"))  # torch refuses one
    report = gpa.analyze(loaded.model, loaded.example_inputs, tracer="autograd")
    assert report.layers["classifier.linear"].shortest == 1
    evaluated = load_target("transformers:LevitForImageClassification", train=False)
    assert [tuple(t.shape) for t in evaluated.example_inputs] == [(1, 3, 224, 224)]


def test_two_towers_whose_batch_norms_train_get_two_of_each_input() -> None:
    """Found by a review of the change above: GroupViT reads token ids first and an image
    beside them, and both its projection heads normalise by a batch norm after pooling:
    with one of each, the analysis refused the inputs gpa chose. Two of each now, said so;
    CLIP (no batch norm) keeps one of each, and a DETR's words no longer name decoder
    token ids its forward does not take."""
    groupvit = load_target("transformers:groupvit")
    shapes = [tuple(t.shape) for t in groupvit.example_inputs if t is not None]
    assert shapes == [(2, 16), (2, 3, 224, 224)]
    assert groupvit.inputs_from == (
        "2 × 16 token ids (all 0), and 2 images of the configuration's image_size"
    )
    report = gpa.analyze(groupvit.model, groupvit.example_inputs, tracer="autograd")
    assert report.layers["text_projection.3"].shortest == 1  # (the heads feed the loss)
    clip = load_target("transformers:clip")
    assert clip.inputs_from == "16 token ids (all 0), and 1 image of the configuration's image_size"
    assert (
        load_target("transformers:detr").inputs_from == "1 image of the configuration's image_size"
    )


def test_a_torchvision_detector_in_eval_mode_is_read() -> None:
    """Its meta run cached meta anchors before failing, and the run on real inputs read
    them: no frontend read any torchvision R-CNN, RetinaNet or FCOS in eval mode (found by
    a new-user review). Independently: every weight-layer module a real forward calls (by
    forward hooks) is a layer of the report, with as many calls."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    calls: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda m, a, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    report = gpa.analyze(model, (images,), train=False)
    assert report.tracer == "autograd"
    assert {n: r.calls for n, r in report.layers.items()} == calls


@pytest.mark.parametrize("tracer", ["auto", "fx", "export", "autograd"])
def test_a_timm_model_given_another_input_size_says_what_it_checks(tracer: str) -> None:
    """timm's patch embeddings check the input size with ``torch._assert``: CoaT built for
    224² and given 64² said, under fx (so auto), "it received inputs of shapes False" and
    "Input height (Proxy(getitem_3))"; export called it a limit of export's. Each says the
    model's own check failed, with the size it was given (timm's message)."""
    import timm

    with pytest.raises(gpa.GpaError) as info:
        gpa.analyze(timm.create_model("coat_lite_tiny"), input_shape=(1, 3, 64, 64), tracer=tracer)
    first = str(info.value).splitlines()[0]
    assert first.startswith("CoaT raised AssertionError")
    assert first.endswith(": Input height (64) doesn't match model (224).")
    assert "timm/layers/patch_embed.py" in str(info.value)


@pytest.mark.parametrize(
    ("target", "kwargs", "said", "batch", "train"),
    [
        ("timm:resnet10t", {}, "2 images of its timm input_size (two: batch norm", 2, True),
        # (found by a new user: in eval mode batch norm takes one image, and FLOPs were
        # those of two)
        ("timm:resnet10t", {}, "1 image of its timm input_size;", 1, False),
        # (found by a review: the configuration keeps the pretrained 224, and the model
        # built for 32 refused it; a ViT has no batch norm: one image)
        (
            "timm:vit_tiny_patch16_224",
            {"img_size": 32, "depth": 1},
            "1 image of the img_size given;",
            1,
            True,
        ),
        ("torchvision:resnet18", {}, "2 images of its torchvision weights' crop size", 2, True),
        # (SqueezeNet has no batch norm)
        ("torchvision:squeezenet1_0", {}, "1 image of its torchvision weights' crop size", 1, True),
        (
            "yolov8n-cls.yaml",
            {},
            "1 image of Ultralytics' default size for the task, 224x224",
            1,
            True,
        ),
        ("transformers:bert", {"num_hidden_layers": 1}, "16 token ids (all 0)", 1, True),
    ],
)
def test_the_inputs_gpa_chose_for_a_library_model_are_said(
    target: str, kwargs: dict, said: str, batch: int, train: bool
) -> None:
    """A library model analysed without inputs gets the library's size (and two images
    where batch norm runs in train mode and needs them); the header showed the shape and
    nothing said where it came from. A note says so, first; given inputs get none."""
    report = gpa.analyze_target(target, dict(kwargs), gpa.AnalysisOptions(train=train))
    assert report.notes[0].startswith(f"inputs chosen by gpa: {said}")
    assert report.notes[0].endswith("; --input-shape gives others")
    assert report.inputs[0]["shape"][0] == batch
    if "img_size" in kwargs:
        assert report.inputs[0]["shape"][-2:] == [kwargs["img_size"]] * 2
    if not target.startswith("transformers"):  # (token ids: an integer tensor)
        shape = tuple(report.inputs[0]["shape"])
        options = gpa.AnalysisOptions(input_shape=[shape])
        given = gpa.analyze_target(target, dict(kwargs), options)
        assert not any(note.startswith("inputs chosen") for note in given.notes)


@pytest.mark.parametrize("train", [True, False])
def test_yolo_layers_are_placed_at_the_lines_calling_their_conv_wrappers(train: bool) -> None:
    """Found by the YOLO survey: every YOLO layer sat at the one line of Ultralytics'
    ``Conv.forward`` (``self.act(self.bn(self.conv(x)))``), in ``gpa explain`` and in
    ``gpa check``'s annotations. ``Conv`` holds one layer, so its convolution is placed
    where ``Conv`` is called: a Bottleneck's convolutions in ``Bottleneck.forward``, C2f's
    own in ``C2f.forward``, a stride-2 ``Conv`` of the backbone in the model's loop
    (``BaseModel._predict_once``). Expected lines are read from Ultralytics' source (fx in
    train mode, export in eval mode, as ``auto`` reads them)."""
    import inspect

    from ultralytics.nn.modules.block import Bottleneck, C2f
    from ultralytics.nn.tasks import BaseModel, DetectionModel

    def lines(function) -> tuple[str, range]:
        source, first = inspect.getsourcelines(function)
        return inspect.getsourcefile(function), range(first, first + len(source))

    model = DetectionModel("yolov8n.yaml", verbose=False)
    report = gpa.analyze(model, input_shape=(1, 3, 64, 64), train=train)
    assert report.tracer == ("fx" if train else "export")
    for layer, function in [
        ("model.2.m.0.cv1.conv", Bottleneck.forward),
        ("model.2.m.0.cv2.conv", Bottleneck.forward),
        ("model.2.cv1.conv", C2f.forward),
        ("model.2.cv2.conv", C2f.forward),
        ("model.3.conv", BaseModel._predict_once),
    ]:
        file, span = lines(function)
        site = report.layers[layer].site
        assert site is not None and site[0] == file and site[1] in span, (layer, site)
    # every layer's line as the autograd frontend finds it from the run's frames (export
    # placed the head's last convolutions, called from Detect.forward_head, at forward's
    # line calling the helper: found by a review)
    ran = gpa.analyze(model, input_shape=(1, 3, 64, 64), train=train, tracer="autograd")
    assert {n: r.site for n, r in report.layers.items()} == {
        n: r.site for n, r in ran.layers.items()
    }


def test_a_measure_of_given_inputs_says_no_inputs_were_chosen() -> None:
    """Found by a new user: ``gpa measure yolov8n.yaml --input-shape 1,3,64,64`` ran at
    64 × 64 and noted "inputs chosen by gpa: 1 image of … 640x640" all the same. The note
    is said where gpa chose (as ``gpa analyze`` says it), and only there."""
    from gpa.measure import measure_target

    given = measure_target("yolov8n.yaml", {}, steps=1, batch_size=1, input_shape=[(1, 3, 64, 64)])
    assert not any("inputs chosen by gpa" in n for n in given.notes)
    chosen = measure_target("yolov8n-cls.yaml", {}, steps=1, batch_size=1)
    assert any(n.startswith("inputs chosen by gpa: 1 image") for n in chosen.notes)


def test_a_transformers_target_is_measured_with_real_weights() -> None:
    """Found by a new user: ``gpa measure transformers:bert …`` (and ``gpa plot --kind
    gradnorm``) failed on every transformers target, which gpa builds on the meta device
    to analyse; measuring builds it on the CPU. A real step reaches the query projection
    of the first layer (nonzero gradient norm)."""
    from gpa.measure import measure_target

    small = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 2,
        "intermediate_size": 128,
    }
    m = measure_target("transformers:bert", small, steps=1, batch_size=2)
    assert m.layers["encoder.layer.0.attention.self.query"].output_grad_norm > 0


def test_the_yolo_example_is_measured_with_ultralytics_own_loss() -> None:
    """``gpa measure examples/yolo_loss.py``: YOLOv8n on labelled batches (dicts, as
    Ultralytics' data loader gives them) with its own training loss, which a new user had
    to find out alone. Independent check: the same steps run here without gpa — forward on
    ``batch["img"]``, ``model.loss(batch, preds)[0].sum()``, backward — give every layer's
    weight-gradient norm, mean over the steps."""
    from gpa.measure import measure_target

    example = str(Path(__file__).resolve().parents[2] / "examples" / "yolo_loss.py")
    measured = measure_target(example, {})
    loaded = load_target(example)
    model = loaded.model.train()
    norms: dict[str, list[float]] = {}
    for batch in loaded.example_batches:
        model.zero_grad()
        model.loss(batch, model(batch["img"]))[0].sum().backward()
        for name, module in model.named_modules():
            grads = [
                p.grad.flatten() for p in module.parameters(recurse=False) if p.grad is not None
            ]
            if grads and isinstance(module, torch.nn.Conv2d):
                norms.setdefault(name, []).append(float(torch.cat(grads).norm()))
    assert measured.loss == "user" and measured.steps == 3 and measured.batch_size == 4
    assert len(norms) == 63  # every weight layer but model.22.dfl.conv (fixed)
    for name, per_step in norms.items():
        got = measured.layers[name].weight_grad_norm
        assert got == pytest.approx(sum(per_step) / len(per_step), rel=1e-4), name
