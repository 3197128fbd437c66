"""VoVNet / OSA modules, their ELAN re-planning and the +CSP variant (paper §3.3, §4.3,
Table 4; reference §1.7, §1.8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gpa.models.blocks import ConvBnAct, ZooNet, toy_input_shape
from gpa.models.registry import ZooError, knob_bool, knob_int, register

__all__ = [
    "OSA",
    "VoVStage",
    "VoVStageCfg",
    "vovnet",
    "vovnet99",
    "vovnet99_elan",
    "vovnet99_elan_csp",
]


class OSA(nn.Module):
    """One-shot aggregation module: a chain of ``n`` 3x3 convs (``c_in``→``m``, then
    ``m``→``m``; children ``convs.{j}``), one concat of ``[x, out_1, ..., out_n]`` and a
    1x1 ``transition`` to ``c_out``. With ``c_out=None`` there is no transition (ELAN
    re-planning): :meth:`chain` gives the conv outputs to the enclosing stage.

    Example:
        >>> osa = OSA(256, 160, 5, 512)
        >>> sum(m.weight.numel() for m in osa.modules() if isinstance(m, nn.Conv2d))
        1830912
    """

    def __init__(self, c_in: int, m: int, n: int, c_out: int | None, act: str = "relu") -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvBnAct(c_in if j == 0 else m, m, 3, act=act) for j in range(n)
        )
        self.transition = None if c_out is None else ConvBnAct(c_in + n * m, c_out, 1, act=act)

    def chain(self, x: Tensor) -> list[Tensor]:
        """Outputs of the chained 3x3 convs."""
        outs = []
        for conv in self.convs:
            x = conv(x)
            outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        outs = self.chain(x)
        if self.transition is None:
            return outs[-1]
        return self.transition(torch.cat([x, *outs], dim=1))


@dataclass(frozen=True)
class VoVStageCfg:
    """One VoVNet stage: conv width ``m``, output width ``out``, ``modules`` OSA modules of
    ``layers`` convs, and whether a 3x3 stride-2 max pool (ceil mode) opens the stage."""

    m: int
    out: int
    modules: int
    layers: int = 5
    downsample: bool = True


class VoVStage(nn.Module):
    """A stage of OSA modules (children ``pool``, ``part1``, ``part2``, ``blocks``,
    ``transition``; absent ones are ``None``).

    - plain (``elan=False, csp=False``): the OSA modules in sequence, each with its own
      transition;
    - ``elan=True`` (Table 4's re-planning, "leave only the transition layer of the last
      OSA module in each stage"): the 3x3 chain continues through all modules and one stage
      ``transition`` reads ``cat(x, every conv output)``;
    - ``csp=True``: the input is first split by two 1x1 convs ``part1`` (feeds the modules)
      and ``part2`` (crosses the stage); the stage ``transition`` fuses ``part2`` with the
      modules' output (with ELAN: with all their conv outputs).
    """

    def __init__(
        self,
        c_in: int,
        cfg: VoVStageCfg,
        *,
        elan: bool = False,
        csp: bool = False,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.elan, self.csp = elan, csp
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True) if cfg.downsample else None
        c_p1 = c_in - c_in // 2 if csp else c_in
        c_p2 = c_in // 2 if csp else 0
        self.part1 = ConvBnAct(c_in, c_p1, 1, act=act) if csp else None
        self.part2 = ConvBnAct(c_in, c_p2, 1, act=act) if csp else None
        blocks, c = [], c_p1
        for _ in range(cfg.modules):
            blocks.append(OSA(c, cfg.m, cfg.layers, None if elan else cfg.out, act=act))
            c = cfg.m if elan else cfg.out
        self.blocks = nn.ModuleList(blocks)
        if elan:
            c_cat = c_p1 + c_p2 + cfg.modules * cfg.layers * cfg.m
            self.transition = ConvBnAct(c_cat, cfg.out, 1, act=act)
        elif csp:
            self.transition = ConvBnAct(cfg.out + c_p2, cfg.out, 1, act=act)
        else:
            self.transition = None

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.part1 is not None:
            cross = self.part2(x)
            x = self.part1(x)
            taps = [cross, x]
        else:
            taps = [x]
        if self.elan:
            for block in self.blocks:
                outs = block.chain(x)
                taps.extend(outs)
                x = outs[-1]
            return self.transition(torch.cat(taps, dim=1))
        for block in self.blocks:
            x = block(x)
        if self.csp:
            return self.transition(torch.cat([x, cross], dim=1))
        return x


def build_vovnet(
    stem: nn.Module,
    c_stem: int,
    cfgs: tuple[VoVStageCfg, ...],
    num_classes: int,
    *,
    elan: bool = False,
    csp: bool = False,
) -> ZooNet:
    """A VoVNet classifier: ``stem`` (``c_stem`` output channels), :class:`VoVStage`s, GAP,
    linear ``fc``."""
    stages, c = [], c_stem
    for cfg in cfgs:
        stages.append(VoVStage(c, cfg, elan=elan, csp=csp))
        c = cfg.out
    return ZooNet(stem, stages, c, num_classes)


@register(
    description="VoVNet: stacked OSA modules (3x3 chain, one-shot concat, 1x1 transition)",
    section="§3.3, §4.3, Table 4",
)
def vovnet(
    stages: int = 1,
    osa_per_stage: int | tuple[int, ...] = 3,
    layers_per_osa: int = 3,
    elan: bool = False,
    csp: bool = False,
    width: int = 16,
    num_classes: int = 10,
) -> ZooNet:
    """Toy VoVNet: stem 3x3 conv ``S`` (``width``), ``stages`` stages, GAP, ``fc``.

    Stage ``i`` (a max pool opens every stage but the first) has ``osa_per_stage`` OSA
    modules (an int, or one int per stage) of ``layers_per_osa`` 3x3 convs of
    ``width * 2**i`` channels and outputs ``2 * width * 2**i`` channels. ``elan=True``
    keeps only one transition per stage (Table 4's re-planning); ``csp=True`` adds the
    CSP split (see :class:`VoVStage`).

    Worked example W8 of the reference is ``vovnet()``; W9 is ``vovnet(elan=True)``.
    Names: module ``k`` conv ``j`` = ``stages.0.blocks.{k-1}.convs.{j-1}.conv``; its
    transition ``T{k}`` = ``stages.0.blocks.{k-1}.transition.conv`` (with ``elan=True``
    the single ``T`` = ``stages.0.transition.conv``).
    """
    stages = knob_int("stages", stages)
    if isinstance(osa_per_stage, tuple | list):
        per_stage = tuple(knob_int("osa_per_stage", n) for n in osa_per_stage)
        if len(per_stage) != stages:
            raise ZooError(f"knob 'osa_per_stage' needs {stages} entries, got {len(per_stage)}")
    else:
        per_stage = (knob_int("osa_per_stage", osa_per_stage),) * stages
    layers_per_osa = knob_int("layers_per_osa", layers_per_osa)
    elan = knob_bool("elan", elan)
    csp = knob_bool("csp", csp)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    cfgs = tuple(
        VoVStageCfg(width * 2**i, 2 * width * 2**i, n, layers_per_osa, downsample=i > 0)
        for i, n in enumerate(per_stage)
    )
    model = build_vovnet(ConvBnAct(3, width, 3), width, cfgs, num_classes, elan=elan, csp=csp)
    model.input_shape = toy_input_shape(stages - 1)
    return model


#: VoVNet-99: stem 3x3 s2 64, 3x3 64, 3x3 s2 128; OSA modules 1/3/9/3 of 5 convs.
VOVNET99 = (
    VoVStageCfg(128, 256, 1, downsample=False),
    VoVStageCfg(160, 512, 3),
    VoVStageCfg(192, 768, 9),
    VoVStageCfg(224, 1024, 3),
)


def _vovnet99(num_classes: int, elan: bool, csp: bool) -> ZooNet:
    num_classes = knob_int("num_classes", num_classes)
    stem = nn.Sequential(ConvBnAct(3, 64, 3, 2), ConvBnAct(64, 64, 3), ConvBnAct(64, 128, 3, 2))
    return build_vovnet(stem, 128, VOVNET99, num_classes, elan=elan, csp=csp)


_V99 = (1, 3, 224, 224)


@register(
    description="VoVNet-99: the deep VoVNet of Table 4 (3 + 16 x 6 = 99 convs)",
    section="§4.3, Table 4",
    input_shape=_V99,
)
def vovnet99(num_classes: int = 1000) -> ZooNet:
    """VoVNet-99 (stem 64/64/128, OSA modules 1/3/9/3 of five 3x3 convs, widths
    128/160/192/224, outputs 256/512/768/1024), GAP and a linear classifier."""
    return _vovnet99(num_classes, elan=False, csp=False)


@register(
    description="VoVNet-99 re-planned with ELAN: one transition per stage (Table 4)",
    section="§4.3, Table 4",
    input_shape=_V99,
)
def vovnet99_elan(num_classes: int = 1000) -> ZooNet:
    """``vovnet99`` where only the last OSA module of each stage keeps a transition,
    reading every conv output of the stage (see :class:`VoVStage`)."""
    return _vovnet99(num_classes, elan=True, csp=False)


@register(
    description="VoVNet-99 re-planned with ELAN plus the CSP split (Table 4)",
    section="§4.3, Table 4",
    input_shape=_V99,
)
def vovnet99_elan_csp(num_classes: int = 1000) -> ZooNet:
    """``vovnet99_elan`` whose stage inputs are split in two halves by 1x1 convs, one
    crossing the stage to its transition (see :class:`VoVStage`)."""
    return _vovnet99(num_classes, elan=True, csp=True)
