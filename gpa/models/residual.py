"""ResNet (residual blocks) and the Fig. 9 stop-gradient variants (reference §1.2, §1.9)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gpa.models.blocks import ConvBnAct, Residual, ZooNet, basic_block, bottleneck_block, stage
from gpa.models.registry import knob_bool, knob_choice, knob_int, register

__all__ = ["residual_net", "resnet", "resnet_stopgrad"]


def residual_net(
    blocks: int,
    width: int,
    num_classes: int,
    make_block: Callable[[int, int, int], Residual],
    widths: Callable[[int], int] | None = None,
) -> ZooNet:
    """One-stage residual network: stem 3x3 conv → ``blocks`` residual blocks → GAP → ``fc``.

    ``make_block(i, c_in, c_out)`` builds block ``i``; ``widths(i)`` is the output width
    of block ``i`` (default: ``width`` for all). Shared by ``resnet``, ``prn`` and
    ``resnet_stopgrad``; no downsampling, so every block keeps the spatial size.
    """
    widths = widths or (lambda i: width)
    body, c = [], width
    for i in range(blocks):
        body.append(make_block(i, c, widths(i)))
        c = widths(i)
    stem = ConvBnAct(3, width, 3)
    return ZooNet(stem, [stage(blocks=nn.Sequential(*body))], c, num_classes)


def _residual_knobs(blocks: int, width: int, num_classes: int) -> tuple[int, int, int]:
    return (
        knob_int("blocks", blocks),
        knob_int("width", width),
        knob_int("num_classes", num_classes),
    )


@register(
    description="ResNet: stem conv, residual blocks with identity shortcuts, GAP, linear",
    section="Table 1",
)
def resnet(
    blocks: int = 3, bottleneck: bool = False, width: int = 16, num_classes: int = 10
) -> ZooNet:
    """ResNet with one stage of ``blocks`` residual blocks of ``width`` channels.

    ``bottleneck=False``: basic blocks (3x3, 3x3); ``True``: bottlenecks
    (1x1 to ``width // 4``, 3x3, 1x1 back to ``width``). Identity shortcuts only.

    Worked example W2 of the reference is ``resnet()`` (``blocks=3``): stem ``S`` =
    ``stem.conv``, ``a_k`` = ``stages.0.blocks.{k-1}.conv1.conv``, ``b_k`` =
    ``stages.0.blocks.{k-1}.conv2.conv``, ``FC`` = ``fc``.
    """
    blocks, width, num_classes = _residual_knobs(blocks, width, num_classes)
    bottleneck = knob_bool("bottleneck", bottleneck)
    if bottleneck:
        mid = max(1, width // 4)
        return residual_net(
            blocks, width, num_classes, lambda i, ci, co: bottleneck_block(ci, mid, co)
        )
    return residual_net(blocks, width, num_classes, lambda i, ci, co: basic_block(ci, co))


@register(
    description="ResNet with a stop-gradient on the identity or on the block input (Fig. 9)",
    section="§4.3, Fig. 9, Table 3",
)
def resnet_stopgrad(
    blocks: int = 3, where: str = "identity", width: int = 16, num_classes: int = 10
) -> ZooNet:
    """``resnet`` with Fig. 9's stop-gradient in every block (the forward pass is unchanged).

    ``where="identity"``: ``y = x.detach() + F(x)``: the backward graph is PlainNet-like;
    worked example W3 is ``resnet_stopgrad(where="identity")``.
    ``where="block"``: ``y = x + F(x.detach())``: ``F`` learns but passes no gradient to
    ``x``; worked example W4 is ``resnet_stopgrad(where="block")``.
    Layer names as in :func:`resnet`.
    """
    blocks, width, num_classes = _residual_knobs(blocks, width, num_classes)
    where = knob_choice("where", where, ("identity", "block"))
    return residual_net(
        blocks, width, num_classes, lambda i, ci, co: basic_block(ci, co, stopgrad=where)
    )
