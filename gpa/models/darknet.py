"""The ImageNet backbones of Table 2 in the authors' darknet definitions (reference §2).

All six use darknet's partial ``[shortcut]`` instead of projection convs (a shortcut from
a narrower or larger tensor is added onto the first channels, subsampled spatially), leaky
ReLU (0.1) and a classifier made of global average pooling followed by a 1x1 conv with
bias. With :func:`gpa.frontends.counts.count` and ``convention="darknet"`` at 256x256 they give
Table 2's numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from gpa.models.blocks import ConvBnAct, ZooNet, bottleneck_block, darknet_block, stage
from gpa.models.cross_stage import csp_stage
from gpa.models.registry import knob_int, register

__all__ = [
    "CSPDARKNET53",
    "DARKNET53",
    "CSPDarkStageCfg",
    "CSPResStageCfg",
    "DarkStageCfg",
    "ResStageCfg",
    "cspdarknet53",
    "cspresnet50",
    "cspresnext50",
    "csp_darknet_stage",
    "darknet53",
    "darknet_stage",
    "resnet50_darknet",
    "resnext50_darknet",
]

_ACT = "leaky"
_INPUT = (1, 3, 256, 256)


@dataclass(frozen=True)
class DarkStageCfg:
    """A Darknet-53 stage: 3x3 stride-2 conv to ``out``, ``blocks`` residual blocks
    ``out``→``out/2``→``out``."""

    out: int
    blocks: int


@dataclass(frozen=True)
class CSPDarkStageCfg:
    """A CSPDarknet-53 stage: 3x3 stride-2 conv to ``out``; P1, P2: 1x1 ``out``→``part``;
    ``blocks`` residual blocks ``part``→``mid``→``part``; Tb ``part``→``part``; T
    ``2*part``→``out``."""

    out: int
    blocks: int
    part: int
    mid: int


@dataclass(frozen=True)
class ResStageCfg:
    """A darknet ResNet(-X) stage: ``blocks`` bottlenecks ``→mid→mid(groups)→out``; the
    first has the stage's ``stride`` on its 3x3 and a partial shortcut."""

    blocks: int
    mid: int
    out: int
    stride: int
    groups: int = 1


@dataclass(frozen=True)
class CSPResStageCfg:
    """A darknet CSPResNet(-X) stage.

    ``pre``: if set, the stage opens with 1x1 ``→pre`` and 3x3 stride-2 ``pre→pre``
    (``groups``). P1: 1x1 to ``part1``; P2: 1x1 to ``part2``; ``blocks`` bottlenecks
    ``→mid→mid(groups)→width`` (the first from ``part1`` with a partial shortcut);
    Tb: 1x1 ``width→width``; concat; T: 1x1 to ``transition`` if set (otherwise the next
    stage's ``pre`` fuses).
    """

    blocks: int
    width: int
    mid: int
    part1: int
    part2: int
    pre: int | None = None
    groups: int = 1
    transition: int | None = None


DARKNET53 = tuple(DarkStageCfg(o, n) for o, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)))
CSPDARKNET53 = (CSPDarkStageCfg(64, 1, 64, 32),) + tuple(
    CSPDarkStageCfg(o, n, o // 2, o // 2) for o, n in ((128, 2), (256, 8), (512, 8), (1024, 4))
)
RESNET50 = (
    ResStageCfg(3, 64, 256, 1),
    ResStageCfg(4, 128, 512, 2),
    ResStageCfg(6, 256, 1024, 2),
    ResStageCfg(3, 512, 2048, 2),
)
RESNEXT50 = (
    ResStageCfg(3, 128, 256, 1, 32),
    ResStageCfg(4, 256, 512, 2, 32),
    ResStageCfg(6, 512, 1024, 2, 32),
    ResStageCfg(3, 1024, 2048, 2, 32),
)
CSPRESNET50 = (
    CSPResStageCfg(3, 128, 64, 64, 128),
    CSPResStageCfg(3, 256, 128, 256, 256, pre=128),
    CSPResStageCfg(5, 512, 256, 512, 512, pre=256),
    CSPResStageCfg(2, 1024, 512, 1024, 1024, pre=512, transition=1024),
)
CSPRESNEXT50 = (
    CSPResStageCfg(3, 128, 128, 64, 128, groups=32),
    CSPResStageCfg(3, 256, 256, 256, 256, pre=256, groups=32),
    CSPResStageCfg(5, 512, 512, 512, 512, pre=512, groups=32),
    CSPResStageCfg(2, 1024, 1024, 1024, 1024, pre=1024, groups=32, transition=2048),
)


def darknet_stage(
    c_in: int, cfg: DarkStageCfg, act: str = _ACT, *, identity_ratio: float = 1.0
) -> nn.Sequential:
    """A Darknet-53 stage on a ``c_in``-channel input: ``down`` = 3x3 stride-2 conv to
    ``cfg.out``, then ``blocks`` = ``cfg.blocks`` darknet residual blocks
    ``out``→``out/2``→``out``. ``identity_ratio < 1`` gives PRN's masked residual: only the
    first ``round(identity_ratio * out)`` channels receive the identity."""
    k = max(1, round(identity_ratio * cfg.out))
    blocks = nn.Sequential(
        *(darknet_block(cfg.out, cfg.out // 2, act, identity_channels=k) for _ in range(cfg.blocks))
    )
    return stage(down=ConvBnAct(c_in, cfg.out, 3, 2, act=act), blocks=blocks)


def csp_darknet_stage(
    c_in: int,
    cfg: CSPDarkStageCfg,
    act: str = _ACT,
    *,
    fusion: str = "csp",
    stopgrad: str | None = None,
) -> tuple[nn.Module, int]:
    """A CSPDarknet stage on a ``c_in``-channel input (see :class:`CSPDarkStageCfg`) with
    the ``fusion`` of Fig. 5; ``stopgrad`` is passed to every residual block (Fig. 9).
    Returns the stage and its output width (``cfg.out`` for every fusion)."""
    return csp_stage(
        cfg.out,
        lambda p: (
            nn.Sequential(
                *(darknet_block(p, cfg.mid, act, stopgrad=stopgrad) for _ in range(cfg.blocks))
            ),
            p,
        ),
        c_part1=cfg.part,
        c_part2=cfg.part,
        fusion=fusion,
        c_out=cfg.out,
        down=ConvBnAct(c_in, cfg.out, 3, 2, act=act),
        act=act,
    )


def _head(stem: nn.Module, stages: list[nn.Module], c: int, num_classes: int) -> ZooNet:
    return ZooNet(stem, stages, c, knob_int("num_classes", num_classes), conv_head=True)


def _resnet_stem() -> nn.Sequential:
    """7x7 stride-2 conv 3→64 and a 2x2 stride-2 max pool (children ``conv``, ``pool``)."""
    return nn.Sequential(
        OrderedDict(conv=ConvBnAct(3, 64, 7, 2, act=_ACT), pool=nn.MaxPool2d(2, 2))
    )


def _bottlenecks(c_in: int, n: int, mid: int, out: int, stride: int, groups: int) -> nn.Sequential:
    """``n`` darknet bottlenecks (leaky after the add); the first maps ``c_in``→``out``
    with ``stride`` and a partial shortcut."""
    return nn.Sequential(
        *(
            bottleneck_block(
                c_in if i == 0 else out,
                mid,
                out,
                stride=stride if i == 0 else 1,
                groups=groups,
                act=_ACT,
            )
            for i in range(n)
        )
    )


@register(
    description="Darknet-53 (Table 2): 52 convs with darknet residual blocks, 18.57 GFLOPs",
    section="§5.1, Table 2",
    input_shape=_INPUT,
)
def darknet53(num_classes: int = 1000) -> ZooNet:
    """Darknet-53 (``cfg/darknet53.cfg``): stem 3x3 3→32, five stages of [3x3 stride-2
    conv, residual blocks c→c/2→c] with 1/2/8/8/4 blocks and widths 64..1024, GAP, 1x1
    conv 1024→1000. Darknet convention: 41,573,216 weights, 18.57 GFLOPs at 256x256."""
    stages, c = [], 32
    for cfg in DARKNET53:
        stages.append(darknet_stage(c, cfg))
        c = cfg.out
    return _head(ConvBnAct(3, 32, 3, act=_ACT), stages, c, num_classes)


@register(
    description="CSPDarknet-53 (Table 2): Darknet-53 with CSP stages (Fig. 5 b), 13.07 GFLOPs",
    section="§3.2, §5.1, Table 2",
    input_shape=_INPUT,
)
def cspdarknet53(num_classes: int = 1000) -> ZooNet:
    """CSPDarknet-53 (``cfg/csdarknet53.cfg``): each stage is [3x3 stride-2 conv D; P1,
    P2 1x1; darknet blocks on P1; Tb; concat with P2; T]. Stage 1 keeps 64-wide parts and
    a 32-wide block; stages 2-5 use halves and c/2-wide blocks. Darknet convention:
    27,605,856 weights, 13.07 GFLOPs at 256x256."""
    stages, c = [], 32
    for cfg in CSPDARKNET53:
        st, c = csp_darknet_stage(c, cfg)
        stages.append(st)
    return _head(ConvBnAct(3, 32, 3, act=_ACT), stages, c, num_classes)


def _darknet_resnet(cfgs: tuple[ResStageCfg, ...], num_classes: int) -> ZooNet:
    stages, c = [], 64
    for cfg in cfgs:
        stages.append(
            stage(blocks=_bottlenecks(c, cfg.blocks, cfg.mid, cfg.out, cfg.stride, cfg.groups))
        )
        c = cfg.out
    return _head(_resnet_stem(), stages, c, num_classes)


def _darknet_cspresnet(cfgs: tuple[CSPResStageCfg, ...], num_classes: int) -> ZooNet:
    stages, c = [], 64
    for cfg in cfgs:
        down = None
        if cfg.pre is not None:
            down = nn.Sequential(
                OrderedDict(
                    conv1=ConvBnAct(c, cfg.pre, 1, act=_ACT),
                    conv2=ConvBnAct(cfg.pre, cfg.pre, 3, 2, cfg.groups, act=_ACT),
                )
            )
            c = cfg.pre
        st, c = csp_stage(
            c,
            lambda p, cfg=cfg: (
                _bottlenecks(p, cfg.blocks, cfg.mid, cfg.width, 1, cfg.groups),
                cfg.width,
            ),
            c_part1=cfg.part1,
            c_part2=cfg.part2,
            fusion="last" if cfg.transition is None else "csp",
            c_tb=cfg.width,
            c_out=cfg.transition,
            down=down,
            act=_ACT,
        )
        stages.append(st)
    return _head(_resnet_stem(), stages, c, num_classes)


@register(
    description="ResNet-50, darknet version (Table 2): partial shortcuts, no projections",
    section="§5.1, Table 2",
    input_shape=_INPUT,
)
def resnet50_darknet(num_classes: int = 1000) -> ZooNet:
    """ResNet-50 as in darknet's ``cfg/resnet50.cfg``: 7x7 stem and 2x2 max pool,
    bottlenecks 3/4/6/3 (widths 64..512, outputs 256..2048, stride on the 3x3), partial
    shortcuts instead of projection convs, GAP, 1x1 conv 2048→1000. Darknet convention:
    22,734,016 weights, 9.74 GFLOPs at 256x256."""
    return _darknet_resnet(RESNET50, num_classes)


@register(
    description="CSPResNet-50 (Table 2): ResNet-50 with cross stage partial stages",
    section="§3.2, §5.1, Table 2",
    input_shape=_INPUT,
)
def cspresnet50(num_classes: int = 1000) -> ZooNet:
    """CSPResNet-50 (``cfg/csresnet50.cfg``): 7x7 stem; stage 1 splits into P1 (64) and
    P2 (128); stages 2-4 open with 1x1 + 3x3 stride-2 "pre" convs; bottlenecks 3/3/5/2;
    Tb per stage, no fusion T except after the last stage (2048→1024); GAP, 1x1 conv
    1024→1000. Darknet convention: 21,566,656 weights, 8.97 GFLOPs at 256x256."""
    return _darknet_cspresnet(CSPRESNET50, num_classes)


@register(
    description="ResNeXt-50 32x4d, darknet version (Table 2): grouped 3x3, partial shortcuts",
    section="§5.1, Table 2",
    input_shape=_INPUT,
)
def resnext50_darknet(num_classes: int = 1000) -> ZooNet:
    """ResNeXt-50 32x4d in darknet form: :func:`resnet50_darknet` with bottleneck widths
    128..1024 and 32-group 3x3 convs. Darknet convention: 22,190,784 weights,
    10.11 GFLOPs at 256x256."""
    return _darknet_resnet(RESNEXT50, num_classes)


@register(
    description="CSPResNeXt-50 (Table 2): ResNeXt-50 with cross stage partial stages",
    section="§3.2, §5.1, Table 2",
    input_shape=_INPUT,
)
def cspresnext50(num_classes: int = 1000) -> ZooNet:
    """CSPResNeXt-50 (``cfg/csresnext50.cfg``): like :func:`cspresnet50` with
    bottleneck ratio 1 (blocks C→C→C(g32)→C), grouped "pre" 3x3 and a final T
    2048→2048; GAP, 1x1 conv 2048→1000. Darknet convention: 20,499,136 weights,
    7.93 GFLOPs at 256x256."""
    return _darknet_cspresnet(CSPRESNEXT50, num_classes)
