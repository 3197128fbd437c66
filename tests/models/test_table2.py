"""Table 2 of the paper reproduced by the darknet backbones of gpa.models at 256x256
(reference §2: conv/linear weights only, classifier included; a multiply-add = 2 FLOPs)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from gpa.frontends.counts import count, count_params

# Table 2's six full-size backbones (20 to 40 M parameters), counted at 256x256.
pytestmark = pytest.mark.slow

# name: (paper GFLOPs, paper M params, reference conv-weight total, reference total incl. BN/bias)
TABLE2 = {
    "darknet53": (18.57, 41.57, 41_573_216, 41_609_928),
    "cspdarknet53": (13.07, 27.61, 27_605_856, 27_642_184),
    "resnet50_darknet": (9.74, 22.73, 22_734_016, 22_780_456),
    "cspresnet50": (8.97, 21.57, 21_566_656, 21_607_848),
    "resnext50_darknet": (10.11, 22.19, 22_190_784, 22_252_328),
    "cspresnext50": (7.93, 20.50, 20_499_136, 20_557_480),
}

# Per-part conv weights of the reference (§2.1-§2.6): stem, stage 1..n, classifier.
PARTS = {
    "darknet53": [864, 38_912, 237_568, 2_916_352, 11_665_408, 25_690_112, 1_024_000],
    "cspdarknet53": [864, 59_392, 192_512, 1_753_088, 7_012_352, 17_563_648, 1_024_000],
    "resnet50_darknet": [9_408, 196_608, 1_081_344, 6_553_600, 12_845_056, 2_048_000],
    "cspresnet50": [9_408, 184_320, 950_272, 5_505_024, 13_893_632, 1_024_000],
    "resnext50_darknet": [9_408, 185_856, 1_056_768, 6_471_680, 12_419_072, 2_048_000],
    "cspresnext50": [9_408, 132_608, 729_088, 4_112_384, 13_467_648, 2_048_000],
}


@pytest.fixture(scope="module")
def darknet_counts(meta_model):
    return {name: count(meta_model(name), convention="darknet") for name in TABLE2}


@pytest.mark.parametrize("name", TABLE2)
def test_table2_within_half_a_percent(name: str, darknet_counts, meta_model) -> None:
    gflops, mparams, _, _ = TABLE2[name]
    c = darknet_counts[name]
    assert meta_model(name).input_shape == (1, 3, 256, 256)
    assert abs(c.total_flops / 1e9 - gflops) / gflops < 0.005
    assert abs(c.total_params / 1e6 - mparams) / mparams < 0.005


@pytest.mark.parametrize("name", TABLE2)
def test_table2_exact(name: str, darknet_counts) -> None:
    gflops, mparams, weights, _ = TABLE2[name]
    c = darknet_counts[name]
    assert c.total_params == weights
    assert round(c.total_params / 1e6, 2) == mparams
    assert round(c.total_flops / 1e9, 2) == gflops


@pytest.mark.parametrize("name", TABLE2)
def test_table2_per_stage_weights(name: str, darknet_counts) -> None:
    parts: dict[str, int] = defaultdict(int)
    for module, n in darknet_counts[name].params.items():
        head = module.split(".")[0]
        parts[".".join(module.split(".")[:2]) if head == "stages" else head] += n
    assert list(parts.values()) == PARTS[name]


@pytest.mark.parametrize("name", TABLE2)
def test_torch_convention_adds_bn_and_bias(name: str, meta_model) -> None:
    assert sum(count_params(meta_model(name), "torch").values()) == TABLE2[name][3]
