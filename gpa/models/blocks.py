"""Small building blocks shared by the families of :mod:`gpa.models`.

Every weight layer is an ``nn.Conv2d`` (or the classifier's ``nn.Linear``/1x1 conv)
living in a child named ``conv``, so layer names read like
``stages.0.blocks.1.conv1.conv``. Forward passes are written for ``torch.fx``:
no in-place operations on activations, no data-dependent Python control flow;
every branch depends on attributes fixed at construction time.
"""

from __future__ import annotations

import functools
import operator
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "AggregationStage",
    "ConvBnAct",
    "MaxPoolPyramid",
    "NormActConv",
    "Residual",
    "Transition",
    "ZooNet",
    "basic_block",
    "bottleneck_block",
    "darknet_block",
    "make_act",
    "partial_add",
    "stage",
    "toy_input_shape",
]


def make_act(act: str | None) -> nn.Module:
    """An activation module: ``"relu"``, ``"leaky"`` (slope 0.1, darknet), ``"silu"``,
    or ``None``/``"linear"`` for none (``nn.Identity``)."""
    if act is None or act == "linear":
        return nn.Identity()
    if act == "relu":
        return nn.ReLU()
    if act == "leaky":
        return nn.LeakyReLU(0.1)
    if act == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {act!r}")


class ConvBnAct(nn.Sequential):
    """``Conv2d(bias=False)`` → ``BatchNorm2d`` → activation, with "same" padding ``k // 2``.

    The children are ``conv``, ``bn`` and ``act``.

    Example:
        >>> ConvBnAct(3, 8, k=3, stride=2).conv
        Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                bn=nn.BatchNorm2d(c_out),
                act=make_act(act),
            )
        )


class NormActConv(nn.Sequential):
    """Pre-activation unit ``BatchNorm2d`` → activation → ``Conv2d(bias=False)`` (DenseNet style).

    The children are ``norm``, ``act`` and ``conv``.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 3, act: str | None = "relu") -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(c_in),
                act=make_act(act),
                conv=nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False),
            )
        )


class Transition(nn.Sequential):
    """DenseNet/SparseNet transition: BN → ReLU → 1x1 conv, then optionally 2x2 average pooling.

    The children are ``norm``, ``act``, ``conv`` (and ``pool``).
    """

    def __init__(self, c_in: int, c_out: int, pool: bool = True) -> None:
        parts: OrderedDict[str, nn.Module] = OrderedDict(
            norm=nn.BatchNorm2d(c_in), act=nn.ReLU(), conv=nn.Conv2d(c_in, c_out, 1, bias=False)
        )
        if pool:
            parts["pool"] = nn.AvgPool2d(2)
        super().__init__(parts)


def stage(**children: nn.Module | None) -> nn.Sequential:
    """An ``nn.Sequential`` of the given named children, in order, skipping ``None`` ones.

    Example:
        >>> list(dict(stage(down=None, blocks=nn.Identity()).named_children()))
        ['blocks']
    """
    return nn.Sequential(OrderedDict((k, v) for k, v in children.items() if v is not None))


def partial_add(f: Tensor, x: Tensor, *, k: int, c_f: int, c_x: int, stride: int = 1) -> Tensor:
    """Darknet's partial shortcut: add ``x`` onto the first ``k`` channels of ``f``.

    ``x`` is first subsampled spatially (``x[:, :, ::stride, ::stride]``); only its first
    ``k`` channels are used; the output has ``f``'s shape. Gradient reaches exactly the
    first ``k`` channels of ``x`` and all channels of ``f``. ``k``, ``c_f`` (channels of
    ``f``) and ``c_x`` (channels of ``x``) are static ints, so ``torch.fx`` can trace it.

    Example:
        >>> f, x = torch.zeros(1, 4, 2, 2), torch.ones(1, 2, 4, 4)
        >>> partial_add(f, x, k=2, c_f=4, c_x=2, stride=2)[0, :, 0, 0].tolist()
        [1.0, 1.0, 0.0, 0.0]
    """
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    if k != c_x:
        x = x[:, :k]
    if k == c_f:
        return f + x
    return torch.cat([f[:, :k] + x, f[:, k:]], dim=1)


class Residual(nn.Module):
    """A residual block ``y = act(F(x) + shortcut(x))`` with darknet partial shortcuts.

    ``F`` is the chain of ``convs`` (registered as ``conv1``, ``conv2``, ...). The shortcut
    is :func:`partial_add`: the first ``identity_channels`` channels of ``x`` (spatially
    subsampled by ``stride``) are added onto the first channels of ``F(x)``; no projection
    conv. ``identity_channels`` defaults to ``min(c_in, c_out)``: the plain identity when
    the shapes match, the asymmetric residual of PRN otherwise; a smaller value is PRN's
    masked residual.

    ``stopgrad`` implements Fig. 9 of the paper: ``"identity"`` gives
    ``x.detach() + F(x)``, ``"block"`` gives ``x + F(x.detach())``.
    """

    def __init__(
        self,
        convs: Sequence[nn.Module],
        *,
        c_in: int,
        c_out: int,
        stride: int = 1,
        identity_channels: int | None = None,
        act: str | None = None,
        stopgrad: str | None = None,
    ) -> None:
        super().__init__()
        if stopgrad not in (None, "identity", "block"):
            raise ValueError(f"stopgrad must be None, 'identity' or 'block', got {stopgrad!r}")
        k = min(c_in, c_out) if identity_channels is None else identity_channels
        if not 1 <= k <= min(c_in, c_out):
            raise ValueError(f"identity_channels must be in 1..{min(c_in, c_out)}, got {k}")
        self._conv_names: tuple[str, ...] = tuple(f"conv{i + 1}" for i in range(len(convs)))
        for conv_name, conv in zip(self._conv_names, convs, strict=True):
            self.add_module(conv_name, conv)
        self.act = make_act(act)
        self.c_in, self.c_out, self.stride, self.k, self.stopgrad = (
            c_in,
            c_out,
            stride,
            k,
            stopgrad,
        )

    def forward(self, x: Tensor) -> Tensor:
        f = x.detach() if self.stopgrad == "block" else x
        for conv_name in self._conv_names:
            f = self._modules[conv_name](f)
        shortcut = x.detach() if self.stopgrad == "identity" else x
        y = partial_add(f, shortcut, k=self.k, c_f=self.c_out, c_x=self.c_in, stride=self.stride)
        return self.act(y)

    def extra_repr(self) -> str:
        extra = f", stopgrad={self.stopgrad!r}" if self.stopgrad else ""
        return f"identity_channels={self.k}, stride={self.stride}{extra}"


def basic_block(
    c_in: int,
    c_out: int,
    *,
    identity_channels: int | None = None,
    stopgrad: str | None = None,
    act: str = "relu",
) -> Residual:
    """ResNet basic block: 3x3 → 3x3 (no activation before the add), activation after the add."""
    return Residual(
        [ConvBnAct(c_in, c_out, 3, act=act), ConvBnAct(c_out, c_out, 3, act=None)],
        c_in=c_in,
        c_out=c_out,
        identity_channels=identity_channels,
        stopgrad=stopgrad,
        act=act,
    )


def bottleneck_block(
    c_in: int,
    mid: int,
    c_out: int,
    *,
    stride: int = 1,
    groups: int = 1,
    identity_channels: int | None = None,
    stopgrad: str | None = None,
    act: str = "relu",
) -> Residual:
    """ResNet(-X) bottleneck: 1x1 c_in→mid, 3x3 mid→mid (stride, groups), 1x1 mid→c_out
    (linear), activation after the add. Stride on the 3x3 ("v1.5")."""
    return Residual(
        [
            ConvBnAct(c_in, mid, 1, act=act),
            ConvBnAct(mid, mid, 3, stride, groups, act=act),
            ConvBnAct(mid, c_out, 1, act=None),
        ],
        c_in=c_in,
        c_out=c_out,
        stride=stride,
        identity_channels=identity_channels,
        stopgrad=stopgrad,
        act=act,
    )


def darknet_block(
    c: int,
    mid: int,
    act: str = "leaky",
    *,
    c_in: int | None = None,
    shortcut: bool = True,
    identity_channels: int | None = None,
    stopgrad: str | None = None,
) -> Residual | nn.Sequential:
    """Darknet residual block: 1x1 c_in→mid, 3x3 mid→c, ``y = x + F(x)`` with no activation
    after (YOLO's ``Bottleneck``). ``c_in`` defaults to ``c``.

    ``identity_channels`` and ``stopgrad`` are passed to :class:`Residual` (PRN's masked
    residual, Fig. 9). ``shortcut=False`` gives the plain pair of convs of the YOLO necks:
    an ``nn.Sequential`` with the same children ``conv1``, ``conv2`` and no add.

    Example:
        >>> type(darknet_block(8, 4)).__name__, type(darknet_block(8, 4, shortcut=False)).__name__
        ('Residual', 'Sequential')
    """
    c_in = c if c_in is None else c_in
    convs = [ConvBnAct(c_in, mid, 1, act=act), ConvBnAct(mid, c, 3, act=act)]
    if not shortcut:
        return stage(conv1=convs[0], conv2=convs[1])
    return Residual(
        convs, c_in=c_in, c_out=c, identity_channels=identity_channels, stopgrad=stopgrad
    )


class MaxPoolPyramid(nn.Module):
    """Spatial pyramid pooling (SPP): ``cat([x, maxpool_k1(x), maxpool_k2(x), ...])`` with
    stride-1, "same"-padded max pools; the output has ``(1 + len(kernels))`` times the
    input's channels. No weights.

    Example:
        >>> MaxPoolPyramid()(torch.zeros(1, 2, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(self, kernels: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, *(pool(x) for pool in self.pools)], dim=1)


class AggregationStage(nn.Module):
    """Layers that each read an aggregation of earlier outputs (DenseNet, SparseNet).

    Feature 0 is the stage input; feature ``i`` (1-based) is the output of ``layers[i-1]``,
    which reads the aggregation of the features listed in ``sources[i-1]``. The stage
    output aggregates the features listed in ``output`` and then goes through
    ``transition`` if one is given. ``mode`` is ``"concat"`` (channel concatenation in the
    listed order) or ``"sum"``.

    Children: ``layers`` (``nn.ModuleList``) and ``transition`` (or ``None``).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        sources: Sequence[Sequence[int]],
        output: Sequence[int],
        *,
        mode: str = "concat",
        transition: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("concat", "sum"):
            raise ValueError(f"mode must be 'concat' or 'sum', got {mode!r}")
        if len(layers) != len(sources):
            raise ValueError("one source list per layer is needed")
        self.layers = nn.ModuleList(layers)
        self.transition = transition
        self.mode = mode
        self.sources: tuple[tuple[int, ...], ...] = tuple(tuple(s) for s in sources)
        self.output: tuple[int, ...] = tuple(output)

    def _aggregate(self, parts: list[Tensor]) -> Tensor:
        if len(parts) == 1:
            return parts[0]
        if self.mode == "concat":
            return torch.cat(parts, dim=1)
        return functools.reduce(operator.add, parts)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for layer, src in zip(self.layers, self.sources, strict=True):
            feats.append(layer(self._aggregate([feats[i] for i in src])))
        y = self._aggregate([feats[i] for i in self.output])
        return y if self.transition is None else self.transition(y)

    @staticmethod
    def width(widths: Sequence[int], src: Sequence[int], mode: str) -> int:
        """Channels of the aggregation of features ``src`` whose widths are ``widths``."""
        return sum(widths[i] for i in src) if mode == "concat" else widths[src[0]]


class ZooNet(nn.Module):
    """A classification network: ``stem`` → ``stages`` → global average pool → ``fc``.

    ``fc`` is an ``nn.Linear`` (toy families) or, with ``conv_head=True``, a 1x1
    ``nn.Conv2d`` with bias applied after the pooling (darknet's classifier, Table 2).
    The output has shape ``(N, num_classes)``.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        features: int,
        num_classes: int,
        *,
        conv_head: bool = False,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = conv_head
        self.fc: nn.Module = (
            nn.Conv2d(features, num_classes, 1) if conv_head else nn.Linear(features, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x)))
        if self.conv_head:
            return torch.flatten(self.fc(x), 1)
        return self.fc(torch.flatten(x, 1))


def toy_input_shape(downsamples: int) -> tuple[int, int, int, int]:
    """The toy families' input shape: 64x64, or larger so that ``downsamples`` halvings
    still leave a 2x2 map (BatchNorm in train mode needs more than one value)."""
    side = max(64, 2 ** (downsamples + 1))
    return (1, 3, side, side)
