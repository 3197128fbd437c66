"""ELAN as implemented in YOLOv7, and its neck variant ELAN-H (paper §3.3, reference §1.8)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpa.models.blocks import ConvBnAct, ZooNet, stage, toy_input_shape
from gpa.models.registry import knob_int, register

__all__ = ["ELANBlock", "MPDown", "elan", "elan_h"]


class ELANBlock(nn.Module):
    """An ELAN block: two 1x1 entries ``part2`` (the cross path, YOLOv7's ``a``) and
    ``part1`` (the block entry ``b``), a chain of ``n_convs`` 3x3 convs (``convs.{j}``,
    ``c_hidden``→``c_conv``, then ``c_conv``→``c_conv``) starting from ``b``, and one 1x1
    ``transition`` to ``c_out`` reading ``cat(taps newest first, b, a)``, where every
    ``tap_every``-th conv output is a tap.

    YOLOv7's backbone ELAN is ``tap_every=2`` (a tap after every 3x3 pair) with
    ``c_conv = c_hidden``; the neck ELAN-H is ``tap_every=1`` with ``c_conv = c_hidden // 2``.

    Example (the P3 ELAN of YOLOv7):
        >>> blk = ELANBlock(256, 128, 512)
        >>> sum(m.weight.numel() for m in blk.modules() if isinstance(m, nn.Conv2d))
        917504
    """

    def __init__(
        self,
        c_in: int,
        c_hidden: int,
        c_out: int,
        *,
        n_convs: int = 4,
        tap_every: int = 2,
        c_conv: int | None = None,
        act: str = "silu",
    ) -> None:
        super().__init__()
        if n_convs < tap_every or n_convs % tap_every:
            raise ValueError(f"n_convs ({n_convs}) must be a multiple of tap_every ({tap_every})")
        c_conv = c_conv or c_hidden
        self.part2 = ConvBnAct(c_in, c_hidden, 1, act=act)
        self.part1 = ConvBnAct(c_in, c_hidden, 1, act=act)
        self.convs = nn.ModuleList(
            ConvBnAct(c_hidden if j == 0 else c_conv, c_conv, 3, act=act) for j in range(n_convs)
        )
        self.taps: tuple[int, ...] = tuple(j for j in range(n_convs) if (j + 1) % tap_every == 0)
        c_cat = 2 * c_hidden + len(self.taps) * c_conv
        self.transition = ConvBnAct(c_cat, c_out, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        a = self.part2(x)
        b = self.part1(x)
        outs, h = [], b
        for conv in self.convs:
            h = conv(h)
            outs.append(h)
        taps = [outs[j] for j in reversed(self.taps)]
        return self.transition(torch.cat([*taps, b, a], dim=1))


class MPDown(nn.Module):
    """YOLOv7's "MP" downsampling between ELAN stages (reference §1.8): two halving paths,
    ``cat(conv(part1(x)), pool_conv(maxpool(x)))`` with ``part1`` a 1x1 conv
    ``c_in``→``c_branch``, ``conv`` a 3x3 stride-2 conv ``c_branch``→``c_branch``,
    ``maxpool`` 2x2 stride 2 and ``pool_conv`` a 1x1 conv ``c_in``→``c_branch``. The output
    has ``2 * c_branch`` channels (the backbone uses ``c_branch = c_in / 2``, the neck
    ``c_branch = c_in``).

    Example:
        >>> MPDown(8, 4)(torch.zeros(1, 8, 4, 4)).shape
        torch.Size([1, 8, 2, 2])
    """

    def __init__(self, c_in: int, c_branch: int, act: str = "silu") -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2)
        self.pool_conv = ConvBnAct(c_in, c_branch, 1, act=act)
        self.part1 = ConvBnAct(c_in, c_branch, 1, act=act)
        self.conv = ConvBnAct(c_branch, c_branch, 3, 2, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(self.part1(x)), self.pool_conv(self.pool(x))], dim=1)


def _elan_net(stages: int, width: int, num_classes: int, make_block, c_out_mult: int) -> ZooNet:
    """Stem 3x3 conv, then per stage ``i`` (``w = width * 2**i``): ``down`` = 3x3 stride-2
    conv to ``2w`` and ``elan`` = ``make_block(2w, w)`` with ``c_out_mult * w`` outputs."""
    mods, c = [], width
    for i in range(stages):
        w = width * 2**i
        mods.append(stage(down=ConvBnAct(c, 2 * w, 3, 2, act="silu"), elan=make_block(2 * w, w)))
        c = c_out_mult * w
    model = ZooNet(ConvBnAct(3, width, 3, act="silu"), mods, c, num_classes)
    model.input_shape = toy_input_shape(stages)
    return model


@register(
    description="ELAN (YOLOv7): 1x1 entries, a chain of 3x3 pairs tapped per pair, one transition",
    section="§3.3, Fig. 6, Table 7",
)
def elan(stages: int = 2, pairs: int = 2, width: int = 16, num_classes: int = 10) -> ZooNet:
    """Toy ELAN network: stem 3x3 conv ``S``, ``stages`` stages of [``D`` = 3x3 stride-2
    conv, an :class:`ELANBlock` with ``pairs`` pairs of 3x3 convs of ``w = width * 2**i``
    channels and ``4w`` outputs (YOLOv7: 2 pairs; YOLOv7-X: 3)], GAP, ``fc``.

    Worked example W11 of the reference is ``elan()`` (``stages=2, pairs=2``); its
    one-stage YOLOv7-X variant is ``elan(stages=1, pairs=3)``. Names: ``s{i}.D`` =
    ``stages.{i-1}.down.conv``, ``a`` = ``stages.{i-1}.elan.part2.conv``, ``b`` =
    ``...elan.part1.conv``, ``c{j}`` = ``...elan.convs.{j-1}.conv``, ``T`` =
    ``...elan.transition.conv``.
    """
    stages = knob_int("stages", stages)
    pairs = knob_int("pairs", pairs)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    return _elan_net(
        stages,
        width,
        num_classes,
        lambda c, w: ELANBlock(c, w, 4 * w, n_convs=2 * pairs, tap_every=2),
        c_out_mult=4,
    )


@register(
    description="ELAN-H (YOLOv7 neck): ELAN with half-width 3x3 convs, every output tapped",
    section="§3.3 (ELAN-H: the neck variant)",
)
def elan_h(stages: int = 2, convs: int = 4, width: int = 16, num_classes: int = 10) -> ZooNet:
    """Toy ELAN-H network: like :func:`elan`, but each block is YOLOv7's neck ELAN: 1x1
    entries ``a``, ``b`` of ``w`` channels, ``convs`` chained 3x3 convs of ``w/2`` channels,
    a transition reading ``cat(c_n, ..., c_1, b, a)`` and giving ``2w`` channels. Names
    as in :func:`elan`."""
    stages = knob_int("stages", stages)
    convs = knob_int("convs", convs)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    return _elan_net(
        stages,
        width,
        num_classes,
        lambda c, w: ELANBlock(c, w, 2 * w, n_convs=convs, tap_every=1, c_conv=max(1, w // 2)),
        c_out_mult=2,
    )
