"""The third-party architectures of the zoo tier: torchvision and timm, by family.

Each entry names a constructor (``torchvision:NAME`` or ``timm:NAME``), its family
and the input shape it is analysed with. Models are built on the meta device when
their constructor allows it (no weights are allocated), else on the CPU.
Shared by ``tests/zoo`` and ``scripts/gen_coverage.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Entry:
    spec: str  # "torchvision:resnet50" or "timm:cspdarknet53"
    family: str
    input_shape: tuple[int, ...] = (2, 3, 224, 224)

    @property
    def source(self) -> str:
        return self.spec.partition(":")[0]

    @property
    def name(self) -> str:
        return self.spec.partition(":")[2]


# Two samples: train-mode batch norm refuses one value per channel (squeeze-excite
# and attention branches pool to 1x1).
BATCH = 2


def _tv(name: str, family: str, size: int = 224) -> Entry:
    return Entry(f"torchvision:{name}", family, (BATCH, 3, size, size))


def _timm(name: str, family: str, size: int = 224) -> Entry:
    return Entry(f"timm:{name}", family, (BATCH, 3, size, size))


ENTRIES: tuple[Entry, ...] = (
    _tv("alexnet", "AlexNet"),
    _tv("vgg11", "VGG"),
    _tv("vgg16_bn", "VGG"),
    _tv("resnet18", "ResNet"),
    _tv("resnet50", "ResNet"),
    _tv("resnet152", "ResNet"),
    _tv("resnext50_32x4d", "ResNeXt"),
    _tv("wide_resnet50_2", "Wide ResNet"),
    _tv("densenet121", "DenseNet"),
    _tv("densenet161", "DenseNet"),
    _tv("mobilenet_v2", "MobileNet v2"),
    _tv("mobilenet_v3_small", "MobileNet v3"),
    _tv("mobilenet_v3_large", "MobileNet v3"),
    _tv("mnasnet1_0", "MNASNet"),
    _tv("efficientnet_b0", "EfficientNet"),
    _tv("efficientnet_v2_s", "EfficientNet"),
    _tv("regnet_x_400mf", "RegNet"),
    _tv("regnet_y_800mf", "RegNet"),
    _tv("shufflenet_v2_x1_0", "ShuffleNet"),
    _tv("squeezenet1_0", "SqueezeNet"),
    _tv("squeezenet1_1", "SqueezeNet"),
    _tv("googlenet", "GoogLeNet"),
    _tv("inception_v3", "Inception", 299),
    _tv("convnext_tiny", "ConvNeXt"),
    _tv("vit_b_16", "ViT"),
    _tv("swin_t", "Swin"),
    _tv("swin_v2_t", "Swin"),
    _tv("maxvit_t", "MaxViT"),
    _timm("deit_tiny_patch16_224", "DeiT"),
    _timm("vit_tiny_patch16_224", "ViT"),
    _timm("cait_xxs24_224", "CaiT"),
    _timm("swin_tiny_patch4_window7_224", "Swin"),
    _timm("mixer_b16_224", "MLP-Mixer"),
    _timm("resmlp_12_224", "ResMLP"),
    _timm("gmlp_ti16_224", "gMLP"),
    _timm("cspdarknet53", "CSPDarknet"),
    _timm("cspresnet50", "CSPResNet"),
    _timm("cspresnext50", "CSPResNeXt"),
    _timm("darknet53", "DarkNet"),
    _timm("vovnet39a", "VoVNet"),
    _timm("ese_vovnet19b_dw", "VoVNet"),
    _timm("hrnet_w18_small", "HRNet"),
    _timm("dla34", "DLA"),
    _timm("res2net50_26w_4s", "Res2Net"),
    _timm("res2next50", "Res2Net"),
    _timm("seresnet50", "SENet"),
    _timm("skresnet18", "SKNet"),
    _timm("resnest14d", "ResNeSt"),
    _timm("ecaresnet26t", "ECA-ResNet"),
    _timm("dpn68", "DPN"),
    _timm("xception41", "Xception"),
    _timm("inception_v4", "Inception", 299),
    _timm("efficientnet_b0", "EfficientNet"),
    _timm("mobilenetv3_large_100", "MobileNet v3"),
    _timm("ghostnet_100", "GhostNet"),
    _timm("rexnet_100", "ReXNet"),
    _timm("regnety_002", "RegNet"),
    _timm("repvgg_a2", "RepVGG"),
    _timm("selecsls42b", "SelecSLS"),
    _timm("dm_nfnet_f0", "NFNet"),
    _timm("convnext_atto", "ConvNeXt"),
    _timm("poolformer_s12", "PoolFormer"),
    _timm("pit_ti_224", "PiT"),
    _timm("levit_128s", "LeViT"),
    _timm("mobilevit_xxs", "MobileViT", 256),
    _timm("edgenext_xx_small", "EdgeNeXt", 256),
    _timm("coat_lite_tiny", "CoaT"),
    _timm("tnt_s_patch16_224", "TNT"),
    _timm("visformer_tiny", "Visformer"),
    _timm("beit_base_patch16_224", "BEiT"),
)


def _construct(entry: Entry) -> nn.Module:
    if entry.source == "torchvision":
        import torchvision

        return torchvision.models.get_model(entry.name, weights=None)
    import timm

    return timm.create_model(entry.name, pretrained=False)


def build(entry: Entry) -> tuple[nn.Module, str]:
    """The model of ``entry`` and where it was built: ``"meta"``, else ``"cpu"``."""
    try:
        with torch.device("meta"):
            return _construct(entry), "meta"
    except Exception:  # some constructors compute on tensors (.tolist(), .item())
        return _construct(entry), "cpu"


# Models on which the tracers are known to differ, and why (the fx side is wrong).
KNOWN_DIFFERENCES: dict[str, str] = {
    "torchvision:swin_t": (
        "fx misses the attention layers: torchvision wraps shifted_window_attention with "
        "torch.fx.wrap, so fx records one opaque call and never sees its F.linear calls on "
        "attn.qkv.weight / attn.proj.weight; autograd finds them (2 layers per block)"
    ),
    "torchvision:swin_v2_t": (
        "as swin_t: fx misses attn.qkv and attn.proj inside the fx-wrapped "
        "shifted_window_attention_v2"
    ),
}


@dataclass
class Outcome:
    """Both tracers on one entry: what each found and whether they agree."""

    entry: Entry
    built_on: str = ""
    fx: Any = None  # gpa.Report or None
    autograd: Any = None
    fx_error: str = ""
    autograd_error: str = ""
    fx_seconds: float = 0.0
    autograd_seconds: float = 0.0

    @property
    def agree(self) -> bool | None:
        """Identical per-layer shortest, longest, timestamps and num_paths (None: not both ran)."""
        if self.fx is None or self.autograd is None:
            return None
        return per_layer(self.fx) == per_layer(self.autograd)

    @property
    def auto(self) -> Any:
        """What ``tracer="auto"`` reports: fx's analysis, else autograd's (when fx fails,
        or cannot look into a function that reads parameters, which its notes report)."""
        opaque = self.fx is not None and any("torch.fx.wrap" in n for n in self.fx.notes)
        return self.fx if self.fx is not None and not opaque else self.autograd


def per_layer(report: Any) -> list[tuple]:
    return [
        (name, r.shortest, r.longest, r.timestamps, r.num_paths)
        for name, r in report.layers.items()
    ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def run(entry: Entry) -> Outcome:
    """Build ``entry`` and analyse it with each tracer, timing both."""
    import time

    import gpa
    from gpa.errors import GpaError

    model, where = build(entry)
    outcome = Outcome(entry, where)
    for tracer in ("fx", "autograd"):
        start = time.perf_counter()
        try:
            report = gpa.analyze(model, input_shape=entry.input_shape, tracer=tracer)
        except GpaError as exc:
            report = None
            setattr(outcome, f"{tracer}_error", _first_line(exc))
        setattr(outcome, tracer, report)
        setattr(outcome, f"{tracer}_seconds", time.perf_counter() - start)
    return outcome
