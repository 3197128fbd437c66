"""PRN: masked and asymmetric residual layers (paper §3.1, reference §1.3)."""

from __future__ import annotations

from gpa.models.blocks import ZooNet, basic_block
from gpa.models.registry import knob_bool, knob_int, knob_ratio, register
from gpa.models.residual import residual_net

__all__ = ["prn"]


@register(
    description="PRN: residual blocks whose identity reaches only the first channels",
    section="§3.1, Fig. 3, Table 5",
)
def prn(
    blocks: int = 3,
    ratio: float = 0.5,
    asymmetric: bool = False,
    width: int = 16,
    num_classes: int = 10,
) -> ZooNet:
    """Partial residual network: :func:`resnet`'s layout with partial shortcuts.

    ``asymmetric=False`` (masked residual layer): every block is
    ``y[:, :k] = F(x)[:, :k] + x[:, :k]; y[:, k:] = F(x)[:, k:]`` with
    ``k = round(ratio * width)``: the first ``ratio`` of the channels receive the identity.

    ``asymmetric=True`` (asymmetric residual layer, no projection conv): the blocks
    alternate between widening ``width`` → ``round(width / ratio)`` channels, where the
    identity is added onto the first ``width`` output channels (again the first ``ratio``
    of them), and narrowing back to ``width``, where only the first ``width`` channels of
    the wider shortcut are added (darknet's ``[shortcut]`` semantics, as in
    yolov3-tiny-prn).

    Worked example W5 of the reference is ``prn()`` (``blocks=3, ratio=0.5``); layer
    names as in :func:`resnet`. ``ratio=1`` gives ``resnet``.
    """
    blocks = knob_int("blocks", blocks)
    ratio = knob_ratio("ratio", ratio)
    asymmetric = knob_bool("asymmetric", asymmetric)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    if asymmetric:
        wide = max(width, round(width / ratio))
        return residual_net(
            blocks,
            width,
            num_classes,
            lambda i, ci, co: basic_block(ci, co),
            widths=lambda i: wide if i % 2 == 0 else width,
        )
    k = max(1, round(ratio * width))
    return residual_net(
        blocks, width, num_classes, lambda i, ci, co: basic_block(ci, co, identity_channels=k)
    )
