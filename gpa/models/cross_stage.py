"""CSPNet: cross stage partial stages and the four fusion variants of Fig. 5
(paper §3.2, reference §1.6)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gpa.models.blocks import (
    ConvBnAct,
    ZooNet,
    basic_block,
    bottleneck_block,
    darknet_block,
    toy_input_shape,
)
from gpa.models.dense import dense_stage
from gpa.models.registry import knob_choice, knob_int, register

__all__ = ["FUSIONS", "CSPStage", "csp", "csp_stage"]

#: Fig. 5 variants: (b) "csp" = transition → concat → transition; (c) "first" = concat →
#: transition; (d) "last" = transition → concat; "none" = concat only (Table 6).
FUSIONS = ("csp", "first", "last", "none")
SPLITS = ("conv", "slice")
BASES = ("resnet", "resnext", "darknet", "densenet")

BlocksFn = Callable[[int], tuple[nn.Module, int]]


class CSPStage(nn.Module):
    """A cross stage partial stage.

    ``x = down(x)``; part 1 = ``part1(x)`` and part 2 = ``part2(x)`` (two 1x1 convs, the
    authors' YOLO code), part 1 = ``x`` itself and part 2 = ``part2(x)`` (``part1`` ``None``:
    YOLOR's ``BottleneckCSPB``, whose first conv is ``down``), or the channel slices
    ``x[:, :split_at]`` / ``x[:, split_at:]`` (``part1``/``part2`` ``None``, Fig. 4);
    ``b = blocks(part 1)``, then
    ``partial_transition`` (Tb) if present; ``y = cat(b, part 2)``, then ``transition``
    (T) if present. Absent children are ``None``.
    """

    def __init__(
        self,
        *,
        blocks: nn.Module,
        down: nn.Module | None = None,
        part1: nn.Module | None = None,
        part2: nn.Module | None = None,
        split_at: int | None = None,
        partial_transition: nn.Module | None = None,
        transition: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (part2 is None) == (split_at is None) or (part1 is not None and part2 is None):
            raise ValueError(
                "give part2 (and optionally part1) for a conv split, or split_at (slice split)"
            )
        self.down = down
        self.part1 = part1
        self.part2 = part2
        self.blocks = blocks
        self.partial_transition = partial_transition
        self.transition = transition
        self.split_at = split_at

    def forward(self, x: Tensor) -> Tensor:
        if self.down is not None:
            x = self.down(x)
        if self.part2 is not None:
            p1 = x if self.part1 is None else self.part1(x)
            p2 = self.part2(x)
        else:
            p1, p2 = x[:, : self.split_at], x[:, self.split_at :]
        b = self.blocks(p1)
        if self.partial_transition is not None:
            b = self.partial_transition(b)
        y = torch.cat([b, p2], dim=1)
        return y if self.transition is None else self.transition(y)


def csp_stage(
    c_in: int,
    blocks_fn: BlocksFn,
    *,
    c_part1: int,
    c_part2: int,
    fusion: str = "csp",
    split: str = "conv",
    c_tb: int | None = None,
    c_out: int | None = None,
    down: nn.Module | None = None,
    act: str = "relu",
) -> tuple[CSPStage, int]:
    """Build a :class:`CSPStage` on a ``c_in``-channel input (after ``down``).

    ``blocks_fn(c)`` returns the computational block for a ``c``-channel part 1 and its
    output width. ``split="cross"`` makes only part 2 a 1x1 conv and feeds the stage input
    itself to the blocks (needs ``c_part1 == c_in``; YOLOR's ``BottleneckCSPB``). Tb (``fusion`` "csp"/"last") is a 1x1 conv to ``c_tb`` channels (default:
    the block's width); T ("csp"/"first") a 1x1 conv to ``c_out`` channels (default: the
    concat's width). ``split="slice"`` needs ``c_part1 + c_part2 == c_in``.
    Returns the stage and its output width.

    Example (YOLOR-CSP's ``BottleneckCSPC`` at 256 channels, 8 darknet blocks):
        >>> from torch import nn
        >>> st, c = csp_stage(256, lambda c: (nn.Sequential(*(darknet_block(c, c)
        ...     for _ in range(8))), c), c_part1=128, c_part2=128, c_out=256)
        >>> c, sum(m.weight.numel() for m in st.modules() if isinstance(m, nn.Conv2d))
        (256, 1458176)
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if split == "conv":
        parts = {
            "part1": ConvBnAct(c_in, c_part1, 1, act=act),
            "part2": ConvBnAct(c_in, c_part2, 1, act=act),
        }
    elif split == "cross":
        if c_part1 != c_in:
            raise ValueError(f"cross split needs c_part1 == c_in ({c_in})")
        parts = {"part2": ConvBnAct(c_in, c_part2, 1, act=act)}
    elif split == "slice":
        if c_part1 + c_part2 != c_in:
            raise ValueError(f"slice split needs c_part1 + c_part2 == c_in ({c_in})")
        parts = {"split_at": c_part1}
    else:
        raise ValueError(f"split must be one of {(*SPLITS, 'cross')}, got {split!r}")
    blocks, c_b = blocks_fn(c_part1)
    tb = None
    if fusion in ("csp", "last"):
        tb = ConvBnAct(c_b, c_tb or c_b, 1, act=act)
        c_b = c_tb or c_b
    c_cat = c_b + c_part2
    t = None
    if fusion in ("csp", "first"):
        t = ConvBnAct(c_cat, c_out or c_cat, 1, act=act)
    st = CSPStage(blocks=blocks, down=down, partial_transition=tb, transition=t, **parts)
    return st, (c_cat if t is None else (c_out or c_cat))


def _toy_blocks(base: str, n: int) -> BlocksFn:
    """The computational block of the toy ``csp`` family for each base network."""

    def build(c: int) -> tuple[nn.Module, int]:
        if base == "densenet":
            return dense_stage(c, n, max(1, c // 2))
        if base == "resnet":
            make = lambda: basic_block(c, c)  # noqa: E731
        elif base == "darknet":
            make = lambda: darknet_block(c, c, act="relu")  # noqa: E731
        else:  # resnext: 1x1, grouped 3x3 (cardinality 4), 1x1, all c wide
            groups = 4 if c % 4 == 0 else 1
            make = lambda: bottleneck_block(c, c, c, groups=groups)  # noqa: E731
        return nn.Sequential(*(make() for _ in range(n))), c

    return build


@register(
    description="CSPNet: stages split in two parts, one crossing the stage (Fig. 5 fusions)",
    section="§3.2, Fig. 4/5, Table 6",
)
def csp(
    base: str = "darknet",
    fusion: str = "csp",
    split: str = "conv",
    stages: int = 2,
    blocks: int = 2,
    width: int = 16,
    num_classes: int = 10,
) -> ZooNet:
    """Toy CSPNet: stem 3x3 conv ``S`` (``width``), ``stages`` CSP stages, GAP, ``fc``.

    Stage ``i`` has ``c = 2 * width * 2**i`` channels: ``D`` = 3x3 stride-2 conv to ``c``;
    the split into two halves (``split="conv"``: ``P1``, ``P2`` = 1x1 convs to ``c/2``;
    ``"slice"``: channel slices); ``blocks`` computational blocks of ``base`` on part 1
    (``"resnet"``: basic 3x3-3x3 residual; ``"darknet"``: 1x1-3x3 residual, inner width
    ``c/2``; ``"resnext"``: 1x1, grouped 3x3, 1x1 residual; ``"densenet"``: a dense block
    of ``blocks`` layers, growth ``c/4``); then the ``fusion`` of Fig. 5: ``"csp"``
    ``T(cat(Tb(B), P2))``, ``"first"`` ``T(cat(B, P2))``, ``"last"`` ``cat(Tb(B), P2)``,
    ``"none"`` ``cat(B, P2)``.

    Worked example W10 of the reference (its four columns) is ``csp(fusion=...)`` with the
    defaults ``base="darknet", split="conv", stages=2, blocks=2`` (``base="resnet"`` gives
    the same paths). Names: ``s{i}.D`` = ``stages.{i-1}.down.conv``, ``P1``/``P2`` =
    ``part1.conv``/``part2.conv``, ``a{j}``/``b{j}`` = ``blocks.{j-1}.conv1.conv``/
    ``conv2.conv``, ``Tb`` = ``partial_transition.conv``, ``T`` = ``transition.conv``.
    """
    base = knob_choice("base", base, BASES)
    fusion = knob_choice("fusion", fusion, FUSIONS)
    split = knob_choice("split", split, SPLITS)
    stages = knob_int("stages", stages)
    blocks = knob_int("blocks", blocks)
    width = knob_int("width", width)
    num_classes = knob_int("num_classes", num_classes)
    mods, c_prev = [], width
    for i in range(stages):
        c = 2 * width * 2**i
        st, c_prev = csp_stage(
            c,
            _toy_blocks(base, blocks),
            c_part1=c // 2,
            c_part2=c - c // 2,
            fusion=fusion,
            split=split,
            c_tb=c // 2,
            c_out=c,
            down=ConvBnAct(c_prev, c, 3, 2),
        )
        mods.append(st)
    model = ZooNet(ConvBnAct(3, width, 3), mods, c_prev, num_classes)
    model.input_shape = toy_input_shape(stages)
    return model
