"""PlainNet: a chain of convolutions without any shortcut (paper Table 1, reference §1.1)."""

from __future__ import annotations

from torch import nn

from gpa.models.blocks import ConvBnAct, ZooNet, stage
from gpa.models.registry import knob_int, register

__all__ = ["plainnet"]


@register(
    description="PlainNet: stem conv, a chain of 3x3 convs with no shortcut, GAP, linear",
    section="Table 1",
)
def plainnet(depth: int = 6, width: int = 16, num_classes: int = 10) -> ZooNet:
    """PlainNet: stem 3x3 conv ``S``, ``depth`` 3x3 convs of ``width`` channels, GAP, ``fc``.

    Gradient paths: the layer at depth d below the loss has shortest = longest = d.

    Worked example W1 of the reference (S, c1..c6, FC) is ``plainnet()``
    (``depth=6``); layer names: ``stem.conv``, ``stages.0.blocks.{0..5}.conv``, ``fc``.

    Example:
        >>> plainnet(depth=2).stages[0].blocks[1].conv.kernel_size
        (3, 3)
    """
    depth = knob_int("depth", depth)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    body = nn.Sequential(*(ConvBnAct(width, width, 3) for _ in range(depth)))
    return ZooNet(ConvBnAct(3, width, 3), [stage(blocks=body)], width, num_classes)
