"""The paper's detectors (Tables 3-8): YOLO-v3, YOLO-PRN, YOLO-CSP and its Fig. 5 fusion
variants, YOLO-ELAN and YOLO-ELAN-AF, with a segmentation or a detection head
(reference §3).

Every detector is ``backbone`` → ``neck`` → ``head`` at 640x640, built from the zoo's
shared parts: darknet residual blocks and Darknet-53 / CSPDarknet stages
(:mod:`gpa.models.darknet`), cross stage partial stages (:func:`gpa.models.csp.csp_stage`,
also for YOLOR's ``SPPCSPC`` and ``BottleneckCSPB``), ELAN blocks and the "MP"
downsampling (:mod:`gpa.models.elan`). Convs are ``Conv2d(bias=False)`` → BN → SiLU; the
head's output convs have biases. The forward returns a flat tuple of tensors (three
pyramid levels, then the mask prototypes with ``head="seg"``) and is fx-traceable.

With :func:`gpa.frontends.counts.count` (torch convention) the sizes match the paper's tables; see
``docs/detectors.md``.

Example:
    >>> import torch, gpa.models
    >>> with torch.device("meta"):
    ...     model = gpa.models.yolo_csp(fusion="first")
    >>> model.input_shape
    (1, 3, 640, 640)
    >>> [tuple(t.shape) for t in model(torch.zeros(1, 3, 640, 640, device="meta"))]
    [(1, 351, 80, 80), (1, 351, 40, 40), (1, 351, 20, 20), (1, 32, 160, 160)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gpa.models.blocks import ConvBnAct, MaxPoolPyramid, darknet_block, stage
from gpa.models.cross_stage import FUSIONS, csp_stage
from gpa.models.darknet import (
    CSPDARKNET53,
    DARKNET53,
    DarkStageCfg,
    csp_darknet_stage,
    darknet_stage,
)
from gpa.models.layer_aggregation import ELANBlock, MPDown
from gpa.models.registry import knob_choice, knob_int, register

__all__ = [
    "HEADS",
    "AnchorFreeHead",
    "AnchorHead",
    "Backbone",
    "Detector",
    "FPNNeck",
    "PANNeck",
    "yolo_csp",
    "yolo_csp_stopgrad",
    "yolo_elan",
    "yolo_elan_af",
    "yolo_prn",
    "yolo_v3",
]

#: ``"seg"``: instance segmentation (the paper's models: boxes, classes, 32 mask
#: coefficients per anchor and a mask-prototype branch); ``"det"``: boxes and classes only.
HEADS = ("seg", "det")
STOPGRADS = ("identity", "block")

_ACT = "silu"
_INPUT = (1, 3, 640, 640)
_MASKS = 32  # mask coefficients per anchor / prototype maps
_PROTO_WIDTH = 256
_ANCHORS = 3  # anchors per level of the anchor-based heads


def _conv(c_in: int, c_out: int, k: int = 1, stride: int = 1) -> ConvBnAct:
    return ConvBnAct(c_in, c_out, k, stride, act=_ACT)


# --- the pieces ------------------------------------------------------------------------------


class Backbone(nn.Module):
    """``stem`` then ``stages`` in order; returns the outputs of the stages listed in
    ``taps`` (the C3, C4, C5 features of the neck)."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], taps: Sequence[int]) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.taps: tuple[int, ...] = tuple(taps)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.stem(x)
        feats = []
        for i, st in enumerate(self.stages):
            x = st(x)
            if i in self.taps:
                feats.append(x)
        return tuple(feats)


class FPNNeck(nn.Module):
    """YOLOv3's top-down feature pyramid (``cfg/baseline/yolov3.yaml``) on C3/C4/C5 of
    256/512/1024 channels.

    ``top5``: plain bottleneck 1024→512→1024, 1x1 →512, 3x3 →1024, 1x1 →512; ``out5``: 3x3
    →1024. ``reduce5``: 1x1 →256, upsample, concat with C4; ``top4``: plain bottlenecks
    768→256→512 and 512→256→512, 1x1 →256; ``out4``: 3x3 →512. ``reduce4``: 1x1 →128,
    upsample, concat with C3; ``top3``: three plain bottlenecks →128→256 (the P3 output).
    """

    def __init__(self) -> None:
        super().__init__()
        self.top5 = nn.Sequential(
            darknet_block(1024, 512, _ACT, shortcut=False),
            _conv(1024, 512),
            _conv(512, 1024, 3),
            _conv(1024, 512),
        )
        self.out5 = _conv(512, 1024, 3)
        self.reduce5 = _conv(512, 256)
        self.top4 = nn.Sequential(
            darknet_block(512, 256, _ACT, c_in=768, shortcut=False),
            darknet_block(512, 256, _ACT, shortcut=False),
            _conv(512, 256),
        )
        self.out4 = _conv(256, 512, 3)
        self.reduce4 = _conv(256, 128)
        self.top3 = nn.Sequential(
            darknet_block(256, 128, _ACT, c_in=384, shortcut=False),
            *(darknet_block(256, 128, _ACT, shortcut=False) for _ in range(2)),
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t5 = self.top5(c5)
        t4 = self.top4(torch.cat([self.up(self.reduce5(t5)), c4], dim=1))
        t3 = self.top3(torch.cat([self.up(self.reduce4(t4)), c3], dim=1))
        return t3, self.out4(t4), self.out5(t5)


BlockFn = Callable[[int, int], nn.Module]


class PANNeck(nn.Module):
    """The path-aggregation neck of YOLOR-CSP and YOLOv7 (widths 128/256/512 at P3/P4/P5).

    ``p5 = spp(C5)`` (512 channels); top-down: ``t4 = top4(cat(lateral4(C4),
    up(reduce5(p5))))``, ``t3 = top3(cat(lateral3(C3), up(reduce4(t4))))``; bottom-up:
    ``b4 = bottom4(cat(down3(t3), t4))``, ``b5 = bottom5(cat(down4(b4), p5))``; outputs:
    3x3 convs ``out3(t3)``, ``out4(b4)``, ``out5(b5)`` doubling the widths (256/512/1024).

    ``block(c_in, c_out)`` builds the four aggregation blocks; ``down(c)`` a stride-2
    downsampling from ``c`` to ``2c`` channels.
    """

    def __init__(
        self,
        c3: int,
        c4: int,
        spp: nn.Module,
        block: BlockFn,
        down: Callable[[int], nn.Module],
        widths: tuple[int, int, int] = (128, 256, 512),
    ) -> None:
        super().__init__()
        w3, w4, w5 = widths
        self.spp = spp
        self.reduce5 = _conv(w5, w4)
        self.lateral4 = _conv(c4, w4)
        self.top4 = block(2 * w4, w4)
        self.reduce4 = _conv(w4, w3)
        self.lateral3 = _conv(c3, w3)
        self.top3 = block(2 * w3, w3)
        self.down3 = down(w3)
        self.bottom4 = block(2 * w3 + w4, w4)
        self.down4 = down(w4)
        self.bottom5 = block(2 * w4 + w5, w5)
        self.out3 = _conv(w3, 2 * w3, 3)
        self.out4 = _conv(w4, 2 * w4, 3)
        self.out5 = _conv(w5, 2 * w5, 3)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p5 = self.spp(c5)
        t4 = self.top4(torch.cat([self.lateral4(c4), self.up(self.reduce5(p5))], dim=1))
        t3 = self.top3(torch.cat([self.lateral3(c3), self.up(self.reduce4(t4))], dim=1))
        b4 = self.bottom4(torch.cat([self.down3(t3), t4], dim=1))
        b5 = self.bottom5(torch.cat([self.down4(b4), p5], dim=1))
        return self.out3(t3), self.out4(b4), self.out5(b5)


class Implicit(nn.Module):
    """YOLOR's implicit knowledge: a learned per-channel vector added to (``"add"``) or
    multiplied with (``"mul"``) the input. Not a layer: it mixes no features."""

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.implicit = nn.Parameter(torch.full((1, channels, 1, 1), float(mode == "mul")))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.implicit if self.mode == "mul" else x + self.implicit


def _proto(c_in: int) -> nn.Sequential:
    """YOLOv5's mask prototypes: 3x3 →256, 2x nearest upsample, 3x3 256→256, 1x1 256→32."""
    return stage(
        cv1=_conv(c_in, _PROTO_WIDTH, 3),
        up=nn.Upsample(scale_factor=2, mode="nearest"),
        cv2=_conv(_PROTO_WIDTH, _PROTO_WIDTH, 3),
        cv3=_conv(_PROTO_WIDTH, _MASKS),
    )


class AnchorHead(nn.Module):
    """The anchor-based YOLOv5/YOLOR head: per level one 1x1 ``outputs.{i}`` conv (with bias)
    to ``3 * (5 + num_classes [+ 32 masks])`` channels; with ``implicit`` (YOLOR's
    ``IDetect``/``ISegment``) an implicit add before and an implicit multiply after it; with
    ``masks``, ``proto`` on the first level's feature. Returns the level outputs (and the
    prototypes)."""

    def __init__(
        self, channels: Sequence[int], num_classes: int, *, masks: bool, implicit: bool
    ) -> None:
        super().__init__()
        c_out = _ANCHORS * (5 + num_classes + (_MASKS if masks else 0))
        self.outputs = nn.ModuleList(nn.Conv2d(c, c_out, 1) for c in channels)
        self.implicit_add = (
            nn.ModuleList(Implicit(c, "add") for c in channels) if implicit else None
        )
        self.implicit_mul = (
            nn.ModuleList(Implicit(c_out, "mul") for _ in channels) if implicit else None
        )
        self.proto = _proto(channels[0]) if masks else None

    def forward(self, *feats: Tensor) -> tuple[Tensor, ...]:
        outs = []
        for i, (conv, x) in enumerate(zip(self.outputs, feats, strict=True)):
            if self.implicit_add is not None:
                x = self.implicit_add[i](x)
            y = conv(x)
            if self.implicit_mul is not None:
                y = self.implicit_mul[i](y)
            outs.append(y)
        if self.proto is not None:
            outs.append(self.proto(feats[0]))
        return tuple(outs)


def _branch(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convs then a 1x1 output conv with bias (a decoupled-head branch)."""
    return nn.Sequential(_conv(c_in, c_mid, 3), _conv(c_mid, c_mid, 3), nn.Conv2d(c_mid, c_out, 1))


class AnchorFreeHead(nn.Module):
    """YOLOv9's anchor-free decoupled head (reference §3, YOLO-ELAN-AF): per level a box
    branch (``box.{i}``, 4 x 16 distribution bins), a class branch (``cls.{i}``) and, with
    ``masks``, a mask-coefficient branch (``mask.{i}``, 32); plus ``proto``. Branch widths
    follow the first level's channels ``c``: box ``max(c/4, 64)``, class
    ``max(c, min(2 * num_classes, 128))``, mask ``max(c/4, 32)``. The inference-only
    distribution decoding (a fixed 16-weight conv) is left out. Returns per level the
    concatenation of its branches (and the prototypes)."""

    def __init__(self, channels: Sequence[int], num_classes: int, *, masks: bool) -> None:
        super().__init__()
        c0 = channels[0]
        c_box, c_cls = max(c0 // 4, 64), max(c0, min(2 * num_classes, 128))
        self.box = nn.ModuleList(_branch(c, c_box, 64) for c in channels)
        self.cls = nn.ModuleList(_branch(c, c_cls, num_classes) for c in channels)
        self.mask = (
            nn.ModuleList(_branch(c, max(c0 // 4, _MASKS), _MASKS) for c in channels)
            if masks
            else None
        )
        self.proto = _proto(c0) if masks else None

    def forward(self, *feats: Tensor) -> tuple[Tensor, ...]:
        outs = []
        for i, x in enumerate(feats):
            parts = [self.box[i](x), self.cls[i](x)]
            if self.mask is not None:
                parts.append(self.mask[i](x))
            outs.append(torch.cat(parts, dim=1))
        if self.proto is not None:
            outs.append(self.proto(feats[0]))
        return tuple(outs)


class Detector(nn.Module):
    """``head(*neck(*backbone(x)))``: a flat tuple of tensors."""

    def __init__(self, backbone: Backbone, neck: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.head(*self.neck(*self.backbone(x)))


# --- backbones and necks -----------------------------------------------------------------------


def _darknet53(identity_ratio: float = 1.0) -> Backbone:
    """Darknet-53 without classifier (YOLOv3's backbone): stem 3x3 →32, five stages."""
    stages, c = [], 32
    for cfg in DARKNET53:
        stages.append(darknet_stage(c, cfg, _ACT, identity_ratio=identity_ratio))
        c = cfg.out
    return Backbone(_conv(3, 32, 3), stages, taps=(2, 3, 4))


def _yolor_csp_backbone(fusion: str = "csp", stopgrad: str | None = None) -> Backbone:
    """YOLOR-CSP's backbone: stem 3x3 →32, a plain darknet stage (64, one block), then four
    CSP stages (``BottleneckCSPC`` for ``fusion="csp"``) of 128/256/512/1024 channels."""
    stages: list[nn.Module] = [darknet_stage(32, DarkStageCfg(64, 1), _ACT)]
    c = 64
    for cfg in CSPDARKNET53[1:]:
        st, c = csp_darknet_stage(c, cfg, _ACT, fusion=fusion, stopgrad=stopgrad)
        stages.append(st)
    return Backbone(_conv(3, 32, 3), stages, taps=(2, 3, 4))


def _sppcspc(c_in: int, c_out: int) -> nn.Module:
    """YOLOR's ``SPPCSPC``: a CSP stage with 1x1 parts of ``c_out`` channels whose block is
    3x3, 1x1, the max-pool pyramid (5, 9, 13), 1x1, 3x3, fused by a 1x1 after the concat."""
    block = nn.Sequential(
        _conv(c_out, c_out, 3),
        _conv(c_out, c_out),
        MaxPoolPyramid((5, 9, 13)),
        _conv(4 * c_out, c_out),
        _conv(c_out, c_out, 3),
    )
    st, _ = csp_stage(
        c_in,
        lambda c: (block, c),
        c_part1=c_out,
        c_part2=c_out,
        fusion="first",
        c_out=c_out,
        act=_ACT,
    )
    return st


def _csp_b(c_in: int, c_out: int, n: int = 2) -> nn.Module:
    """YOLOR's ``BottleneckCSPB``: ``down`` 1x1 →``c_out``; part 1 = its output through
    ``n`` plain bottlenecks (``c_out`` wide), part 2 = a 1x1 on it; concat; 1x1 →``c_out``."""
    st, _ = csp_stage(
        c_out,
        lambda c: (
            nn.Sequential(*(darknet_block(c, c, _ACT, shortcut=False) for _ in range(n))),
            c,
        ),
        c_part1=c_out,
        c_part2=c_out,
        split="cross",
        fusion="first",
        c_out=c_out,
        down=_conv(c_in, c_out),
        act=_ACT,
    )
    return st


def _csp_pan() -> PANNeck:
    """YOLOR-CSP's CSP-PAN: ``SPPCSPC``, ``BottleneckCSPB`` blocks, 3x3 stride-2 downs."""
    return PANNeck(256, 512, _sppcspc(1024, 512), _csp_b, lambda c: _conv(c, 2 * c, 3, 2))


def _elan_backbone() -> Backbone:
    """YOLOv7's backbone (reference §1.8): stem 3x3 →32, 3x3 s2 →64, 3x3 →64; stage 1:
    3x3 s2 →128 and ELAN(w=64) →256; stages 2-4: "MP" down and ELAN(w=128/256/256) →
    512/1024/1024. Each backbone ELAN taps every second of its four 3x3 convs."""
    stem = nn.Sequential(_conv(3, 32, 3), _conv(32, 64, 3, 2), _conv(64, 64, 3))
    stages = [stage(down=_conv(64, 128, 3, 2), elan=ELANBlock(128, 64, 256, act=_ACT))]
    for c_in, w, c_out in ((256, 128, 512), (512, 256, 1024), (1024, 256, 1024)):
        stages.append(stage(down=MPDown(c_in, c_in // 2, _ACT), elan=ELANBlock(c_in, w, c_out)))
    return Backbone(stem, stages, taps=(1, 2, 3))


def _elan_pan() -> PANNeck:
    """YOLOv7's neck: ``SPPCSPC``, neck ELANs (every one of four half-width 3x3 convs
    tapped), "MP" downs keeping the width in each path."""
    return PANNeck(
        512,
        1024,
        _sppcspc(1024, 512),
        lambda c_in, c_out: ELANBlock(
            c_in, c_out, c_out, n_convs=4, tap_every=1, c_conv=c_out // 2, act=_ACT
        ),
        lambda c: MPDown(c, c, _ACT),
    )


def _anchor_head(head: str, num_classes: int, implicit: bool) -> AnchorHead:
    head = knob_choice("head", head, HEADS)
    num_classes = knob_int("num_classes", num_classes)
    return AnchorHead((256, 512, 1024), num_classes, masks=head == "seg", implicit=implicit)


def _detector(backbone: Backbone, neck: nn.Module, head: nn.Module) -> Detector:
    model = Detector(backbone, neck, head)
    model.input_shape = _INPUT
    return model


# --- registered entries -----------------------------------------------------------------------

_SECTION = "§5, Tables 5-8"


@register(
    description="YOLO-v3 (Table 5/8): Darknet-53 backbone, FPN neck, YOLOv5 seg head",
    section=_SECTION,
    input_shape=_INPUT,
)
def yolo_v3(head: str = "seg", num_classes: int = 80) -> Detector:
    """YOLO-v3 as in ``cfg/baseline/yolov3.yaml`` (no SPP; the FLOPs of Table 5 need it)
    with YOLOv5's ``Segment`` head (``head="seg"``) or ``Detect`` (``"det"``).

    Paper: 194.6 GFLOPs, 64.3 M parameters; this build: 194.6 G, 63.31 M (the paper's
    parameter count matches neither public YOLOv3 configuration, see docs/detectors.md).
    """
    return _detector(_darknet53(), FPNNeck(), _anchor_head(head, num_classes, implicit=False))


@register(
    description="YOLO-PRN (Table 5/8): YOLO-v3 with half-channel masked residuals",
    section="§3.1, " + _SECTION,
    input_shape=_INPUT,
)
def yolo_prn(head: str = "seg", num_classes: int = 80) -> Detector:
    """:func:`yolo_v3` whose 23 backbone residual blocks are PRN's masked residual layer:
    the identity reaches only the first half of the channels. Same layers, parameters and
    FLOPs as YOLO-v3 (paper: 194.6 G, 64.3 M)."""
    return _detector(
        _darknet53(identity_ratio=0.5), FPNNeck(), _anchor_head(head, num_classes, implicit=False)
    )


@register(
    description="YOLO-CSP (YOLOR-CSP, Tables 3/6/8) with the Fig. 5 fusion of its CSP stages",
    section="§3.2, Fig. 5, " + _SECTION,
    input_shape=_INPUT,
)
def yolo_csp(fusion: str = "csp", head: str = "seg", num_classes: int = 80) -> Detector:
    """YOLOR-CSP (``cfg/baseline/yolor-csp.yaml``): CSPDarknet backbone, ``SPPCSPC`` and
    CSP-PAN neck, YOLOR's implicit ``ISegment`` head (``head="seg"``) or ``IDetect``.

    ``fusion`` changes the four backbone CSP stages only (Table 6): ``"csp"`` (Fig. 5 b,
    159.0 G, 54.29 M), ``"first"`` (c, 158.1 G, 53.94 M), ``"last"`` (d, 155.6 G,
    52.89 M), ``"none"`` (154.8 G, 52.54 M).
    """
    fusion = knob_choice("fusion", fusion, FUSIONS)
    return _detector(
        _yolor_csp_backbone(fusion), _csp_pan(), _anchor_head(head, num_classes, implicit=True)
    )


@register(
    description="YOLO-CSP with stop-gradient residual blocks in its CSP stages (Fig. 9, Table 3)",
    section="§4.3, Fig. 9, Table 3",
    input_shape=_INPUT,
)
def yolo_csp_stopgrad(where: str = "block", head: str = "seg", num_classes: int = 80) -> Detector:
    """:func:`yolo_csp` whose residual blocks inside the four backbone CSP stages detach
    the block input (``where="block"``: ``y = x + F(x.detach())``, likely Fig. 9 (a)) or the
    identity (``"identity"``: ``y = x.detach() + F(x)``, plain-like). Same forward pass,
    FLOPs and parameters as YOLO-CSP (159.0 G)."""
    where = knob_choice("where", where, STOPGRADS)
    return _detector(
        _yolor_csp_backbone(stopgrad=where),
        _csp_pan(),
        _anchor_head(head, num_classes, implicit=True),
    )


@register(
    description="YOLO-ELAN (YOLOv7-seg, ELAN-{2,1}s, Tables 7/8): ELAN backbone and neck",
    section="§3.3, " + _SECTION,
    input_shape=_INPUT,
)
def yolo_elan(head: str = "seg", num_classes: int = 80) -> Detector:
    """YOLOv7 with the ``ISegment`` head (``u7`` branch ``yolov7-seg.yaml``) or ``IDetect``:
    ELAN backbone (2 stacked 3x3 pairs per block), ``SPPCSPC``, neck ELANs and "MP" downs.

    Paper: 143.2 GFLOPs, 34.5 M; this build: 143.2 G, 38.29 M (the paper's parameter
    count matches no public configuration with these FLOPs, see docs/detectors.md).
    """
    return _detector(_elan_backbone(), _elan_pan(), _anchor_head(head, num_classes, implicit=True))


@register(
    description="YOLO-ELAN-AF (Table 8): YOLO-ELAN with YOLOv9's anchor-free decoupled head",
    section="§3.3, " + _SECTION,
    input_shape=_INPUT,
)
def yolo_elan_af(head: str = "seg", num_classes: int = 80) -> Detector:
    """YOLOv7-AF (YOLOv9's ``yolov7-af-seg.yaml``): YOLO-ELAN's backbone and neck with the
    anchor-free decoupled ``Segment`` head (``head="seg"``) or ``Detect`` (``"det"``).
    Paper: 172.6 GFLOPs, 45.9 M."""
    head = knob_choice("head", head, HEADS)
    num_classes = knob_int("num_classes", num_classes)
    return _detector(
        _elan_backbone(),
        _elan_pan(),
        AnchorFreeHead((256, 512, 1024), num_classes, masks=head == "seg"),
    )
