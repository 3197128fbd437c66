"""DenseNet: dense blocks with transitions (reference §1.4)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from gpa.models.blocks import (
    AggregationStage,
    ConvBnAct,
    NormActConv,
    Transition,
    ZooNet,
    toy_input_shape,
)
from gpa.models.registry import knob_bool, knob_int, register

__all__ = ["dense_layer", "dense_stage", "densenet"]


def dense_layer(c_in: int, growth: int, bottleneck: bool = False) -> nn.Module:
    """One dense layer: BN-ReLU-3x3 to ``growth`` channels (child ``conv``); with
    ``bottleneck`` (DenseNet-BC) BN-ReLU-1x1 to ``4 * growth`` first (children ``conv1``,
    ``conv2``)."""
    if not bottleneck:
        return NormActConv(c_in, growth, 3)
    return nn.Sequential(
        OrderedDict(
            conv1=NormActConv(c_in, 4 * growth, 1), conv2=NormActConv(4 * growth, growth, 3)
        )
    )


def dense_stage(
    c_in: int,
    layers: int,
    growth: int,
    *,
    bottleneck: bool = False,
    transition: int | None = None,
) -> tuple[AggregationStage, int]:
    """A dense block: layer ``l`` reads ``cat(x0, ..., x_{l-1})``, the block outputs
    ``cat(x0, ..., x_L)``; then an optional transition to ``transition`` channels with
    2x2 average pooling. Returns the stage and its output width."""
    widths = [c_in] + [growth] * layers
    sources = [list(range(i)) for i in range(1, layers + 1)]
    output = list(range(layers + 1))
    mods = [
        dense_layer(AggregationStage.width(widths, src, "concat"), growth, bottleneck)
        for src in sources
    ]
    c_out = sum(widths)
    trans = None if transition is None else Transition(c_out, transition)
    block = AggregationStage(mods, sources, output, mode="concat", transition=trans)
    return block, (c_out if transition is None else transition)


@register(
    description="DenseNet: dense blocks (concatenate all earlier outputs) with transitions",
    section="Table 1",
)
def densenet(
    blocks: int = 2,
    layers: int = 3,
    growth: int = 8,
    bottleneck: bool = False,
    width: int = 16,
    num_classes: int = 10,
) -> ZooNet:
    """DenseNet: stem 3x3 conv (``width``), ``blocks`` dense blocks of ``layers`` layers
    with growth rate ``growth``, a transition (BN-ReLU-1x1 with compression 0.5, 2x2
    average pooling) between consecutive blocks, GAP, ``fc`` on the last block's concat.

    Worked example W6 of the reference is ``densenet()`` (``blocks=2, layers=3``):
    ``S`` = ``stem.conv``, ``D{b}.H{l}`` = ``stages.{b-1}.layers.{l-1}.conv``,
    ``T1`` = ``stages.0.transition.conv``, ``FC`` = ``fc``.
    """
    blocks = knob_int("blocks", blocks)
    layers = knob_int("layers", layers)
    growth = knob_int("growth", growth)
    bottleneck = knob_bool("bottleneck", bottleneck)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    stages, c = [], width
    for b in range(blocks):
        last = b == blocks - 1
        c_cat = c + layers * growth
        st, c = dense_stage(
            c, layers, growth, bottleneck=bottleneck, transition=None if last else c_cat // 2
        )
        stages.append(st)
    model = ZooNet(ConvBnAct(3, width, 3), stages, c, num_classes)
    model.input_shape = toy_input_shape(blocks - 1)
    return model
