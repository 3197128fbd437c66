"""Channel routes against real autograd, through operations whose arguments are easy to
misread (docs/semantics.md §8).

Each case applies one operation between two Linear layers (channels on the last axis).
The expected route is computed independently, with real autograd: which input channels of
the second layer each output channel of the first reaches (the union, over random inputs
and every position, of the channels with a nonzero gradient). gpa's segments and sources
must give the same (channel, input channel) pairs — a ``mixed`` source all of them — under
the fx and the export frontend, and the route must be exact: no ``channel_fallback``.

*Reductions*: a reduction's ``dim`` is not always its second argument (``x.norm(2, 1)``:
``p`` comes first; ``kthvalue(x, k, dim)``), ``keepdim`` not always its third
(``x.std(1, True, True)``: ``unbiased`` comes between), some return several reduced values
(``var_mean``, ``aminmax``), ``torch.max(a, b)`` is elementwise, and the export frontend
records ``F.normalize`` and ``x.norm`` as ``linalg_vector_norm``. Over the token axis
channel c stays at c; over the channel axis, multiplied back in, every channel reaches
every input channel.

*Windows*: pooling, resampling and instance norm keep channel positions except along the
axes they window over; over the tokens each channel stays itself, and a window sliding over
the channels themselves reaches at least its band of neighbours (it reached only itself).

*Constant indices*: ``gather``, ``take_along_dim`` and ``index_select`` with an index that
is a buffer or made in ``forward`` move channels exactly (export reads the latter as
``detach_(lift_fresh_copy(...))``).

*Several tensors in one value*: ``x.split(1)[::-1]`` or ``x.split(1)[1:] + ...`` is one fx
node holding a tuple; ``torch.cat`` of it must carry gradient and channels (it carried
neither under fx: the first layer was reported unreachable).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa

WIDTH = 4
SHAPE = (2, 5, 3)  # batch, tokens, input features


class Between(nn.Module):
    """``second(op(first(x)))`` with Linear layers: their channels on the last axis."""

    def __init__(self, op):
        super().__init__()
        self.first = nn.Linear(SHAPE[-1], WIDTH)
        self.second = nn.Linear(WIDTH, 2)
        self.op = op

    def forward(self, x):
        return self.second(self.op(self.first(x)))


def reached(op) -> torch.Tensor:
    """(channel of ``first``, input channel of ``second``) pairs with a nonzero gradient,
    by autograd: the op applied to a free leaf, one backward per input channel.

    A max over all values sends gradient to one element, so a channel reaches the others
    only in the draws where it holds the maximum (chance 1/4 a draw): 64 draws, from a
    fixed seed, leave no pair unseen that some input reaches."""
    found = torch.zeros(WIDTH, WIDTH, dtype=torch.bool)
    draws = torch.Generator().manual_seed(0)
    for _ in range(64):
        y = torch.randn(*SHAPE[:-1], WIDTH, generator=draws).requires_grad_()
        z = op(y)
        for j in range(WIDTH):
            (grad,) = torch.autograd.grad(z[..., j].sum(), y, retain_graph=True)
            found[:, j] |= grad.reshape(-1, WIDTH).ne(0).any(0)
    return found


ALONG_TOKENS = {  # reduce the token axis: channel c stays at c
    "norm-dim-keyword": lambda y: y.norm(dim=1),
    "norm-p-then-dim": lambda y: y.norm(2, 1),
    "torch-norm-p-then-dim": lambda y: torch.norm(y, 2, 1),
    "linalg-vector-norm": lambda y: torch.linalg.vector_norm(y, 2, 1),
    "linalg-norm": lambda y: torch.linalg.norm(y, 2, 1),
    "linalg-matrix-norm-dims": lambda y: torch.linalg.matrix_norm(y.transpose(1, 2), dim=(0, 2)),
    "normalize": lambda y: F.normalize(y, 2.0, 1),
    "std-unbiased-keepdim": lambda y: y.std(1, True, True).squeeze(1),
    "var-unbiased": lambda y: y.var(1, True),
    "var-keepdim-keyword": lambda y: y.var(1, keepdim=True)[:, 0],
    "var-mean-var": lambda y: torch.var_mean(y, 1)[0],
    "var-mean-mean": lambda y: torch.var_mean(y, 1)[1],
    "std-mean-mean": lambda y: torch.std_mean(y, dim=1)[1],
    "aminmax-min": lambda y: torch.aminmax(y, dim=1)[0],
    "aminmax-max": lambda y: torch.aminmax(y, dim=1).max,
    "max-values": lambda y: y.max(1).values,
    "median-values": lambda y: y.median(1)[0],
    "nanmedian-values": lambda y: y.nanmedian(1).values,
    "kthvalue-k-then-dim": lambda y: y.kthvalue(2, 1).values,
    "mode-dim": lambda y: y.mode(1).values,
    "logsumexp": lambda y: y.logsumexp(1),
    "amax-tuple": lambda y: y.amax((1,)),
    "max-of-two-tensors": lambda y: torch.max(y, 2 * y),
    "min-of-two-tensors": lambda y: torch.min(y, y - 1),
    "max-of-two-tensors-keyword": lambda y: torch.max(y, other=2 * y),
}

ACROSS_CHANNELS = {  # reduce the channel axis, multiply back: every channel everywhere
    "norm-p-then-dim": lambda y: y * y.norm(2, -1, keepdim=True),
    "std-unbiased-keepdim": lambda y: y * y.std(-1, True, True),
    "std-unbiased-only": lambda y: y * y.std(True),
    "amax-empty-dims": lambda y: y * torch.amax(y, dim=()),
    "kthvalue-default-dim": lambda y: y * y.kthvalue(2).values[..., None],
    "mode-default-dim": lambda y: y * y.mode().values[..., None],
    "linalg-matrix-norm-default": lambda y: y * torch.linalg.matrix_norm(y)[:, None, None],
    "var-mean-keepdim": lambda y: y * torch.var_mean(y, -1, keepdim=True)[1],
    # a number reduced again along its dim 0 or -1 (a ZeroDivisionError before)
    "sum-of-a-sum": lambda y: y * y.sum().sum(-1),
    "mean-of-a-sum": lambda y: y * y.sum().mean(0),
    "logsumexp-of-a-sum": lambda y: y * y.sum().logsumexp(-1),
}


class _Tokens(nn.Module):
    """``pool`` applied along the token axis (the channels moved to axis 1 meanwhile)."""

    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, y):
        return self.pool(y.transpose(1, 2)).transpose(1, 2)


WINDOWS_ALONG_TOKENS = {  # pooling, resampling, instance norm over the tokens
    "avg-pool": _Tokens(lambda t: F.avg_pool1d(t, 3, 1, 1)),
    "max-pool-with-indices": _Tokens(lambda t: F.max_pool1d(t, 2, return_indices=True)[0]),
    "max-pool-module": _Tokens(nn.MaxPool1d(3, 1, 1)),
    "lp-pool": _Tokens(lambda t: F.lp_pool1d(t.abs() + 1, 2, 2)),
    "adaptive-max-pool": _Tokens(lambda t: F.adaptive_max_pool1d(t, 2)),
    "interpolate": _Tokens(lambda t: F.interpolate(t, scale_factor=2.0, mode="linear")),
    "upsample-module": _Tokens(nn.Upsample(scale_factor=3)),
    "instance-norm": _Tokens(F.instance_norm),
    # the channel axis windowed, but each position is its own window
    "interpolate-same-size": lambda y: F.interpolate(y, size=WIDTH, mode="linear"),
    "adaptive-avg-pool-same-size": lambda y: F.adaptive_avg_pool1d(y, WIDTH),
}

WINDOWS_ACROSS_CHANNELS = {  # every channel of an instance: its statistics
    "instance-norm": F.instance_norm,
    "instance-norm-module": nn.InstanceNorm1d(5),
}


# Channels placed beside others: two channels at the same two input channels each reach
# both (mixed), a channel broadcast over all input channels reaches all of them.
PLACED = {
    "where-of-reversed": lambda y: torch.where(y > 0, y, y.flip(-1)),
    "sum-with-reversed": lambda y: y + y.flip(-1),
    "scaled-by-one-channel": lambda y: y * y[..., :1],
    "one-channel-expanded": lambda y: y[..., 1:2].expand(-1, -1, WIDTH) + y,
}


class _Reversed(nn.Module):
    """The channels through ``how(y, index)``, the index a buffer (default: in reverse)."""

    def __init__(self, how, index=None):
        super().__init__()
        self.how = how
        if index is None:
            index = torch.arange(WIDTH - 1, -1, -1).expand(*SHAPE[:-1], -1)
        self.register_buffer("index", index)

    def forward(self, y):
        return self.how(y, self.index)


class _TwoMasks(nn.Module):
    """Two pruned blocks' kept channels (masks of one length, three and one kept), each
    read through ``how`` and put side by side."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.register_buffer("a", torch.tensor([True, False, True, True]))
        self.register_buffer("b", torch.tensor([False, True, False, False]))

    def forward(self, y):
        return torch.cat([self.how(y, self.a), self.how(y, self.b)], -1)


class _Taken(nn.Module):
    """``torch.take`` of the channels in reverse order, by a constant flat index."""

    def __init__(self):
        super().__init__()
        flat = torch.arange(SHAPE[0] * SHAPE[1] * WIDTH).view(*SHAPE[:-1], WIDTH)
        self.register_buffer("index", flat.flip(-1))

    def forward(self, y):
        return torch.take(y, self.index)


MOVED = {  # more data movement: probed
    "repeat-interleave": lambda y: y.repeat_interleave(2, -1)[..., 1::2].flip(-1),
    "tile": lambda y: y.tile(1, 1, 2)[..., 2:6],
    "tensor-unfold": lambda y: y.unfold(-1, 2, 2).flip(-1).flatten(-2),
    "im2col": lambda y: F.unfold(y.transpose(1, 2).unsqueeze(-1), (1, 1)).transpose(1, 2),
    "diag-embed-diagonal": lambda y: torch.diag_embed(y).diagonal(dim1=-2, dim2=-1),
    "take": _Taken(),
}

AXES = {  # permutations and reshapes: direct rules, the same answer as the probe
    "heads-transposed": lambda y: y.view(2, 5, 2, 2).transpose(-1, -2).flatten(-2),
    "heads-unflattened-mT": lambda y: y.unflatten(-1, (2, 2)).mT.reshape(2, 5, WIDTH),
    "tokens-and-channels-swapped": lambda y: y.permute(0, 2, 1).flip(1).permute(0, 2, 1),
    "channels-moved-first": lambda y: y.movedim(-1, 0).flip(0).movedim(0, -1),
    "flattened-and-viewed": lambda y: (
        y.flatten().view(2, 5, 2, 2).swapaxes(-1, -2).reshape(2, 5, -1)
    ),
    "squeezed-and-unsqueezed": lambda y: y.unsqueeze(1).transpose(1, -1).squeeze(-1).mT,
    "moveaxis-and-T": lambda y: torch.moveaxis(y, -1, 0).flip(0).T.permute(1, 0, 2),
    # cat of tensors whose channels lie on several axes, or everywhere in one of them
    "cat-of-a-rolled-cat": lambda y: torch.cat(
        [torch.cat([y[:, :2].roll(1, -1), y[:, 2:]], 1), y.flip(-1)], 1
    ),
    "cat-beside-a-norm": lambda y: torch.cat([y[..., :2], F.layer_norm(y[..., 2:], (2,))], -1),
    "slice-of-a-rolled-cat": lambda y: torch.cat(
        [torch.cat([y[:, :2].roll(1, -1), y[:, 2:]], 1)] * 2, -1
    )[:, 1:4, 2:6],
    "cat-twice-beside-a-norm": lambda y: torch.cat(
        [y[:, :1].flip(-1), F.layer_norm(y, (WIDTH,)), y[:, :1].flip(-1)], 1
    ),
    # a stream cut and put back together, as TNT's blocks do (the sum of a piece and its
    # roll: two terms of one producer at the same positions)
    "cut-and-put-back": lambda y: _put_back(_put_back(torch.cat([y[:, :1].flip(-1), y[:, 1:]], 1))),
    "cut-and-put-back-beside-a-norm": lambda y: _put_back(
        torch.cat([y[:, :2], F.layer_norm(y[:, 2:], (WIDTH,))], 1)
    ),
    "norm-cut-and-put-back": lambda y: _scaled_back(
        torch.cat([y[:, :1].flip(-1), F.layer_norm(y[:, 1:], (WIDTH,))], 1)
    ),
}


def _scaled_back(z):
    return torch.cat([z[:, :2], z[:, 2:] * 2], 1)


def _put_back(z):
    return torch.cat([z[:, 0:1], z[:, 1:] + z[:, 1:].roll(1, -1)], 1)


class _AfterToken(nn.Module):
    """A learned token (a parameter of whole-number values) put before the tokens."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.arange(WIDTH, 0.0, -1).view(1, 1, WIDTH))  # 4, 3, 2, 1

    def forward(self, y):
        return torch.cat([self.token.expand(y.shape[0], -1, -1), y], 1)


# Constant data beside the channels (a class token, a constant embedding): probed, they
# hold no channel, whatever their values (values 1-4 were read as channel positions: the
# class token's row reached every input channel from one channel, "mixed").
CONSTANT_DATA = {
    "class-token-parameter": _AfterToken(),
    "class-token-made-in-forward": lambda y: torch.cat([torch.full((2, 1, WIDTH), 2.0), y], 1),
    "stacked-beside-a-constant": lambda y: torch.stack([y, torch.full_like(y, 3.0)], 1).flatten(
        1, 2
    ),
    # padding values are data too (2.0 and 3.0 were read as channels 1 and 2)
    "padded-token-of-threes": lambda y: F.pad(y, (0, 0, 1, 0), value=3.0),
    "constant-pad-module-of-twos": _Tokens(nn.ConstantPad1d((1, 1), 2.0)),
    "padded-with-minus-infinity": lambda y: F.pad(y, (0, 0, 0, 1), value=float("-inf")).clamp(-9),
    "constant-embedding-computed": lambda y: torch.cat([torch.ones(2, 3, WIDTH) * 2 + 1, y], 1),
}

CONSTANT_INDEX = {  # data movement by a constant index: probed
    "gather": _Reversed(lambda y, i: y.gather(-1, i)),
    "take-along-dim": _Reversed(lambda y, i: torch.take_along_dim(y, i, -1)),
    "index-select-made-in-forward": lambda y: y.index_select(-1, torch.tensor([3, 2, 1, 0])),
    # export reads these as operations on constants: evaluated for their values
    "index-by-buffer": _Reversed(lambda y, i: y[..., i], torch.tensor([3, 0, 0, 2])),
    "index-by-list": lambda y: y[..., [3, 0, 0, 2]],
    # a boolean mask (a pruned layer's kept channels): the meta device cannot apply it,
    # the flow pass reads its real values (a ShapeError before, under every tracer)
    "mask-by-buffer": _Reversed(
        lambda y, m: torch.cat([y[..., m], y[..., ~m]], -1),
        torch.tensor([True, False, True, False]),
    ),
    # two masks alike in shape but not in what they keep: no result of one is the other's
    "two-masks": _TwoMasks(lambda y, m: y[..., m]),
    "two-masks-nonzero": _TwoMasks(lambda y, m: y[..., m.nonzero()[:, 0]]),
    "mask-nonzero-by-buffer": _Reversed(
        lambda y, m: torch.cat([y[..., m.nonzero()[:, 0]], y[..., ~m]], -1),
        torch.tensor([False, True, True, False]),
    ),
    "index-by-arange": lambda y: y[..., torch.arange(WIDTH - 1, -1, -1)],
    "take-along-dim-by-a-view": _Reversed(
        lambda y, i: torch.take_along_dim(y, i.view(1, 1, WIDTH), -1), torch.tensor([1, 0, 3, 2])
    ),
}

STRUCTURED = {  # one fx node holding several tensors
    "cat-of-reversed-split": lambda y: torch.cat(y.split([1, 3], -1)[::-1], -1),
    "cat-of-reversed-chunk": lambda y: torch.cat(y.chunk(2, -1)[::-1], -1),
    "stack-of-reversed-unbind": lambda y: torch.stack(y.unbind(-1)[::-1], -1),
    "cat-of-tuple-sum": lambda y: torch.cat(y.split(1, -1)[1:] + y.split(1, -1)[:1], -1),
    "cat-of-tuple-repeat": lambda y: torch.cat(y.split(2, -1)[:1] * 2, -1),
}


def _under_no_grad(write):
    """``write`` into the tensor in place under ``no_grad``: autograd records nothing, so
    each channel still reaches itself (docs/semantics.md §1.2), whatever was written."""

    def op(y):
        with torch.no_grad():
            write(y)
        return y * 1

    return op


WRITTEN_UNDER_NO_GRAD = {
    "copy-of-reversed": _under_no_grad(lambda y: y.copy_(y.flip(-1))),
    "function-in-place": _under_no_grad(torch.relu_),
    "times-rolled": _under_no_grad(lambda y: y.mul_(y.roll(1, -1))),
    "masked-fill": _under_no_grad(lambda y: y.masked_fill_(y > 0, 0.0)),
    "augmented": _under_no_grad(lambda y: _added_reversed(y)),
    "out": _under_no_grad(lambda y: torch.add(y, y.flip(-1), out=y)),  # export: aten.add.out
}


def _added_reversed(y):
    y += y.flip(-1)  # an augmented assignment (fx: operator.iadd)


def _heads(y: torch.Tensor, heads: int = 2) -> torch.Tensor:
    """(batch, tokens, channels) -> (batch, heads, tokens, channels per head)."""
    return y.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merged(y: torch.Tensor) -> torch.Tensor:
    return y.transpose(1, 2).flatten(2)


# Multi-head attention (found by a new user on Hugging Face models: scaled_dot_product_
# attention let every channel of q and k reach every head's outputs, where a head's
# outputs send gradient to its own channels alone, as the written-out form showed)
ATTENTION = {
    "sdpa-heads": lambda y: _merged(F.scaled_dot_product_attention(*[_heads(y)] * 3)),
    "sdpa-heads-causal": lambda y: _merged(
        F.scaled_dot_product_attention(_heads(y), _heads(y), _heads(y), is_causal=True)
    ),
    "sdpa-one-head-of-keys": lambda y: _merged(
        F.scaled_dot_product_attention(_heads(y), *[y[..., :2].unsqueeze(1)] * 2)
    ),
    "sdpa-values-elsewhere": lambda y: _merged(
        F.scaled_dot_product_attention(_heads(y), _heads(y), _heads(y).flip(1))
    ),
    # a mask made of channels, added to q·kᵀ (a relative-position MLP's, T5's bias): its
    # row of a query position reaches that position's outputs (found by a review: dropped)
    "sdpa-mask-of-channels": lambda y: _merged(
        F.scaled_dot_product_attention(
            *[_heads(y)] * 3, attn_mask=(y[..., :1] @ y[..., 1:2].transpose(1, 2)).unsqueeze(1)
        )
    ),
    "sdpa-by-keyword": lambda y: _merged(
        F.scaled_dot_product_attention(query=_heads(y), key=_heads(y), value=_heads(y))
    ),
    "attention-written-out": lambda y: _merged(
        torch.softmax(_heads(y) @ _heads(y).transpose(-1, -2), -1) @ _heads(y)
    ),
}


CASES = (
    [(name, op) for name, op in ALONG_TOKENS.items()]
    + list(ATTENTION.items())
    + [(f"{name}-under-no-grad", op) for name, op in WRITTEN_UNDER_NO_GRAD.items()]
    + [(f"{name}-across", op) for name, op in ACROSS_CHANNELS.items()]
    + list(STRUCTURED.items())
    + list(CONSTANT_INDEX.items())
    + list(MOVED.items())
    + list(AXES.items())
    + list(CONSTANT_DATA.items())
    + list(PLACED.items())
    + [(f"{name}-window", op) for name, op in WINDOWS_ALONG_TOKENS.items()]
    + [(f"{name}-window-across", op) for name, op in WINDOWS_ACROSS_CHANNELS.items()]
)

# Windows sliding over the channels themselves: a pooled axis that carries channels
# collapses (every channel found along it reaches all of it), over but never under the
# band of neighbours each channel really reaches (it reached only itself before).
OVER_CHANNELS = {
    "avg-pool": lambda y: F.avg_pool1d(y, 3, 1, 1),
    "max-pool": lambda y: F.max_pool1d(y, 3, 1, 1),
    "avg-pool-2d": lambda y: F.avg_pool2d(y, 3, 1, 1),
    "max-pool-module": nn.MaxPool1d(3, 1, 1),
}


def routed(record: dict) -> torch.Tensor:
    """The (channel, input channel of ``second``) pairs a layer record's segments give."""
    found = torch.zeros(WIDTH, WIDTH, dtype=torch.bool)
    for segment in record["segments"]:
        lo, hi = segment["channels"]
        for source in segment["sources"]:
            assert source["from"] == "second"
            a, b = source["channels"]
            if source.get("mixed", False):
                found[lo:hi, a:b] = True
            else:  # a block of input channels each, shifted along with the channel
                block, rest = divmod(b - a, hi - lo)
                assert rest == 0
                for c in range(lo, hi):
                    found[c, a + (c - lo) * block : a + (c - lo + 1) * block] = True
    return found


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("name, op", CASES, ids=[c[0] for c in CASES])
def test_routes_equal_autograds(name, op, tracer):
    report = gpa.analyze(Between(op), (torch.randn(*SHAPE),), channels=True, tracer=tracer)
    record = report.to_dict()["layers"][0]
    assert record["name"] == "first"
    assert "channel_fallback" not in record
    assert record["shortest"] == 2  # reachable, as under the autograd tracer
    assert torch.equal(routed(record), reached(op))


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("op", OVER_CHANNELS.values(), ids=list(OVER_CHANNELS))
def test_windows_over_the_channels_reach_at_least_their_band(op, tracer):
    report = gpa.analyze(Between(op), (torch.randn(*SHAPE),), channels=True, tracer=tracer)
    route, truth = routed(report.to_dict()["layers"][0]), reached(op)
    assert not truth.all()  # a band: a channel and its neighbours
    assert torch.equal(route | truth, route)  # never under
    assert route.all()  # the documented over-approximation: the axis collapses


def test_the_cases_are_what_their_names_say():
    """Over the tokens each channel stays itself; over the channels they all mix."""
    for op in [*ALONG_TOKENS.values(), *WINDOWS_ALONG_TOKENS.values()]:
        assert torch.equal(reached(op), torch.eye(WIDTH, dtype=torch.bool))
    for op in [*ACROSS_CHANNELS.values(), *WINDOWS_ACROSS_CHANNELS.values()]:
        assert reached(op).all()


class StatePassing(nn.Module):
    """Two LSTMs, the second started from the first's final state ``(h, c)``: one fx node
    holding two tensors, passed as one argument."""

    def __init__(self):
        super().__init__()
        self.first = nn.LSTM(SHAPE[-1], WIDTH, batch_first=True)
        self.second = nn.LSTM(WIDTH, WIDTH, batch_first=True)

    def forward(self, x):
        y, state = self.first(x)
        z, _ = self.second(y, state)
        return z


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_a_tuple_argument_delivers_each_of_its_tensors(tracer):
    # By hand (§8): the output's channel c reaches the second LSTM's input channel c; the
    # state (every channel of the first LSTM in each of h and c) reaches all of its
    # arguments 1 and 2. Arguments are numbered over the tensors, h and c apart, as the
    # export frontend sees them.
    report = gpa.analyze(StatePassing(), (torch.randn(*SHAPE),), channels=True, tracer=tracer)
    (segment,) = report.to_dict()["layers"][0]["segments"]
    assert segment["channels"] == [0, WIDTH]
    assert [
        (s["from"], s["argument"], s["channels"], s.get("mixed", False)) for s in segment["sources"]
    ] == [
        ("second", 0, [0, WIDTH], False),
        ("second", 1, [0, WIDTH], True),
        ("second", 2, [0, WIDTH], True),
    ]


def written(y: torch.Tensor, how: str) -> torch.Tensor:
    """``y`` written into in place, with gradient: fx records a call of this function (it
    is wrapped) and traces into it by value (``setitem_``); export's graph spells the
    writes ``slice_scatter``, ``select_scatter``, ``index_put``, ``copy`` and ``fill``."""
    y = y.clone()
    if how == "moved":
        y[..., 0:2] = y[..., 2:4]  # channels 0, 1 overwritten: they reach nothing
    elif how == "filled":
        y[..., 0] = 0.0  # channel 0 overwritten by a constant
    elif how == "strided":
        y[..., 0::2] = y[..., 0::2].sigmoid()  # every channel stays where it is
    elif how == "indexed":
        y[..., [0, 1]] = y[..., [3, 2]]
    elif how == "into-zeros":  # a buffer of zeros filled with channels 0, 1 moved to 2, 3
        y, made = torch.zeros_like(y), y
        y[..., 2:4] = made[..., 0:2]
    else:
        y.copy_(y.flip(-1))
    return y


torch.fx.wrap("written")

# fx keeps a wrapped call whole where its writes read the memory they write in a way its
# check of writes does not follow (a strided view read into the write, a copy of a flip):
# a noted fallback, as §8 allows; export's functional graph routes them all.
WRITES = [
    *(
        (how, tracer)
        for how in ("moved", "filled", "indexed", "into-zeros")
        for tracer in ("fx", "export")
    ),
    ("strided", "export"),
    ("copied", "export"),
]


@pytest.mark.parametrize(("how", "tracer"), WRITES)
def test_writes_in_place_with_gradient_route_as_autograd(how, tracer):
    """A write into part of a tensor fell back (every channel reaching every position):
    an Ultralytics pose head's ``y[:, 2::3] = …`` merged the segments of every layer before
    it (found by a survey against autograd on yolo11n-pose)."""
    op = lambda y, how=how: written(y, how)  # noqa: E731 (by its global name: fx's wrap)
    report = gpa.analyze(Between(op), (torch.randn(*SHAPE),), channels=True, tracer=tracer)
    record = report.to_dict()["layers"][0]
    assert "channel_fallback" not in record
    assert torch.equal(routed(record), reached(op))


class _NormedHalves(nn.Module):
    """c1 -> batch norm -> halves to a and b -> a write in place: export's graph then
    spells batch norm with its statistics (``_native_batch_norm_legit_no_training``,
    ``_native_batch_norm_legit_functional``)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        p, q = self.bn(self.c1(x)).chunk(2, 1)
        out = torch.cat([self.a(p), self.b(q)], 1).clone()
        out[:, 0:2] = out[:, 0:2].sigmoid()
        return out


@pytest.mark.parametrize("train", [False, True])
def test_batch_norm_with_its_statistics_keeps_each_channel_where_it_is(train):
    """By hand: c1's first four channels reach the loss through a, the last four through b
    (two segments); batch norm fell back and merged them into one reaching both."""
    report = gpa.analyze(
        _NormedHalves(), (torch.randn(2, 3, 8, 8),), channels=True, train=train, tracer="export"
    )
    record = report.layers["c1"]
    assert record.channel_fallbacks == ()
    found = [(s.start, s.stop, [x.sender for x in s.sources]) for s in record.segments]
    assert found == [(0, 4, ["a"]), (4, 8, ["b"])]
