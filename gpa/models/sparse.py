"""SparseNet: exponential-offset aggregation, concat (Sparse DenseNet) or sum (Sparse
ResNet) (reference §1.5)."""

from __future__ import annotations

from gpa.models.blocks import AggregationStage, ConvBnAct, NormActConv, Transition, ZooNet
from gpa.models.registry import knob_choice, knob_int, register

__all__ = ["exponential_sources", "sparsenet"]


def exponential_sources(index: int) -> list[int]:
    """Features aggregated by layer ``index``: ``index - 2**j`` for j = 0, 1, ... while
    non-negative, newest first.

    Example:
        >>> exponential_sources(7), exponential_sources(9)
        ([6, 5, 3], [8, 7, 5, 1])
    """
    out, offset = [], 1
    while index - offset >= 0:
        out.append(index - offset)
        offset *= 2
    return out


@register(
    description="SparseNet: each layer aggregates the outputs at offsets 1, 2, 4, 8, ...",
    section="Table 1",
)
def sparsenet(
    layers: int = 8,
    aggregation: str = "concat",
    growth: int = 8,
    width: int = 16,
    num_classes: int = 10,
) -> ZooNet:
    """SparseNet: stem 3x3 conv ``S`` (``width``), one block of ``layers`` BN-ReLU-3x3
    layers, a transition ``T`` (BN-ReLU-1x1 keeping the width, 2x2 average pooling), GAP,
    ``fc``.

    Layer ``l`` reads the features at offsets 1, 2, 4, ... (feature 0 is the stem output);
    the block output uses the same rule as a virtual layer ``layers + 1``.
    ``aggregation="concat"`` is Sparse DenseNet (newest first; layers output ``growth``
    channels); ``"sum"`` is Sparse ResNet (every layer outputs ``width`` channels and
    ``growth`` is ignored).

    Worked example W7 of the reference is ``sparsenet()`` (``layers=8``): ``S`` =
    ``stem.conv``, ``H{i}`` = ``stages.0.layers.{i-1}.conv``, ``T`` =
    ``stages.0.transition.conv``, ``FC`` = ``fc``.
    """
    layers = knob_int("layers", layers)
    aggregation = knob_choice("aggregation", aggregation, ("concat", "sum"))
    growth = knob_int("growth", growth)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    out_w = growth if aggregation == "concat" else width
    widths = [width] + [out_w] * layers
    sources = [exponential_sources(i) for i in range(1, layers + 1)]
    output = exponential_sources(layers + 1)
    mods = [
        NormActConv(AggregationStage.width(widths, src, aggregation), out_w, 3) for src in sources
    ]
    c = AggregationStage.width(widths, output, aggregation)
    block = AggregationStage(mods, sources, output, mode=aggregation, transition=Transition(c, c))
    return ZooNet(ConvBnAct(3, width, 3), [block], c, num_classes)
