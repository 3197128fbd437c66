"""gpa.counts: parameter and FLOP counting on the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpa.errors import GpaError, ShapeError
from gpa.frontends.counts import Counts, count, count_flops, count_params


def test_conv_bn_counts_by_hand() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    c = count(net, input_shape=(2, 3, 5, 5))
    assert c.params == {"0": 3 * 8 * 9 + 8, "1": 16}
    # 2 FLOPs per multiply-add: 2 * (8*5*5 outputs per image) * (3*9) * batch 2; no bias adds
    assert c.flops == {"0": 2 * 8 * 25 * 27 * 2}
    dk = count(net, input_shape=(2, 3, 5, 5), convention="darknet")
    assert dk.params == {"0": 216} and dk.total_params == 216
    assert dk.flops == c.flops
    # the name every analysis option has it by (found by a surface audit)
    named = count(net, input_shape=(2, 3, 5, 5), count_convention="darknet")
    assert (named.params, named.convention) == (dk.params, "darknet")


def test_norms_keep_shapes_in_the_counting_pass() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.InstanceNorm2d(8, affine=True),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.LayerNorm(8 * 16),
        nn.Linear(8 * 16, 3),
    )
    c = count(net.train(), input_shape=(1, 3, 4, 4))  # batch 1: train-mode BN would refuse it
    assert c.flops == {"0": 2 * 8 * 16 * 27, "6": 2 * 3 * 128}
    assert c.params == {"0": 224, "1": 16, "2": 16, "3": 16, "5": 256, "6": 387}


def test_strided_grouped_transposed_linear_bilinear() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=False)
    assert count_flops(conv, input_shape=(1, 8, 8, 8)) == {"": 2 * 16 * 4 * 4 * (2 * 9)}
    convt = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
    # every input element meets (6/2)*2*2 weights
    assert count_flops(convt, input_shape=(1, 4, 3, 3)) == {"": 2 * 36 * 3 * 4}
    conv1d = nn.Conv1d(2, 4, 3)
    assert count_flops(conv1d, input_shape=(1, 2, 10)) == {"": 2 * 4 * 8 * 2 * 3}
    lin = nn.Linear(5, 7)
    assert count_flops(lin, input_shape=(3, 5)) == {"": 2 * 3 * 7 * 5}
    bil = nn.Bilinear(2, 3, 4)
    assert count_flops(bil, input_shape=[(1, 2), (1, 3)]) == {"": 2 * 4 * 2 * 3}
    assert count_params(bil, "darknet") == {"": 24}


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.head = nn.Linear(4, 4, bias=False)
        self.tied = nn.Linear(4, 4, bias=False)
        self.tied.weight = self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.conv(x)).mean((2, 3))
        return self.tied(self.head(y))


def test_repeated_calls_add_up_and_shared_weights_count_once() -> None:
    c = count(_Twice(), input_shape=(1, 4, 2, 2))
    assert c.flops["conv"] == 2 * (2 * 4 * 4 * 4)
    assert c.flops["head"] == c.flops["tied"] == 2 * 16
    assert c.params == {"conv": 16, "head": 16}


def test_model_is_left_untouched() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    net[1].eval()  # a mixed train/eval state must survive
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count(net, input_shape=(1, 3, 8, 8))
    after = net.state_dict()
    assert all(
        after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items()
    )
    assert net.training and not net[1].training and net[2].training


def test_inputs_from_tensor_shape_list_or_model_attribute() -> None:
    lin = nn.Linear(4, 2)
    big = torch.empty(1000, 4, device="meta")
    assert count_flops(lin, big) == {"": 2 * 1000 * 2 * 4}
    assert count_flops(lin, (torch.zeros(2, 4),)) == {"": 2 * 2 * 2 * 4}
    lin.input_shape = (3, 4)
    assert count(lin).total_flops == 2 * 3 * 2 * 4


def test_meta_model_counts() -> None:
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    assert count(net, input_shape=(1, 3, 4, 4)).total_flops == 2 * (4 * 4 * 27 + 2 * 16)


def test_errors() -> None:
    lin = nn.Linear(4, 2)
    with pytest.raises(GpaError, match="input_shape"):
        count(lin)
    with pytest.raises(GpaError, match="convention"):
        count(lin, input_shape=(1, 4), convention="caffe")
    with pytest.raises(ShapeError, match=r"\(1, 5\)"):
        count(lin, input_shape=(1, 5))


def test_counts_str_and_totals() -> None:
    c = Counts("darknet", {"a": 41_573_216}, {"a": 18_570_231_808})
    assert c.total_params == 41_573_216 and c.total_flops == 18_570_231_808
    assert str(c).startswith("41.57 M params, 18.57 GFLOPs (darknet convention")


class _LowRank(nn.Module):
    """weight = A @ B, from two factors of rank 2 (originals (8, 2) and (2, 8))."""

    def forward(self, a, b):
        return a @ b

    def right_inverse(self, w):
        u, s, v = torch.linalg.svd(w)
        return u[:, :2] * s[:2], v[:2]


def _low_rank(layer: nn.Linear) -> nn.Linear:
    nn.utils.parametrize.register_parametrization(layer, "weight", _LowRank())
    return layer


PARAMETRIZED = {
    "spectral_norm": nn.utils.parametrizations.spectral_norm,
    "weight_norm": nn.utils.parametrizations.weight_norm,
    "orthogonal": nn.utils.parametrizations.orthogonal,
    "legacy_spectral_norm": nn.utils.spectral_norm,
    # (found by a review: counted by its largest factor, 16)
    "low_rank": _low_rank,
}


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
@pytest.mark.parametrize("kind", PARAMETRIZED)
def test_parametrized_weights_count_each_once_and_change_nothing(kind: str, tracer: str) -> None:
    """Found by a new user: darknet's count read each parametrized weight by computing it
    (spectral norm's power iteration: its buffers changed in train mode), and told shared
    weights by the identity of that fresh tensor, which the next read may reuse: six
    spectral-normed Linear(8, 8) counted 192 or 256 weights. By hand: 6 × 8 × 8 = 384,
    each layer 64; the model's state (buffers, parameters) is as before the analysis."""
    import gpa

    torch.manual_seed(0)
    net = nn.Sequential(*(PARAMETRIZED[kind](nn.Linear(8, 8)) for _ in range(6))).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert count_params(net, "darknet") == {str(i): 64 for i in range(6)}
    report = gpa.analyze(net, (torch.randn(2, 8),), tracer=tracer, count_convention="darknet")
    assert {name: layer.params for name, layer in report.layers.items()} == {
        str(i): 64 for i in range(6)
    }
    assert report.network.params == 384
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
