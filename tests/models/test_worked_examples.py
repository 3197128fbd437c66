"""The worked examples W1-W11 of the reference (architectures.md §4.3) as golden tests.

Every expected number below is copied from the reference's tables (or, where marked
"derived", worked out by hand from the structure it describes); none comes from gpa.
Convention (reference §0): a gradient path length counts the weight layers (conv/linear)
on the path from the loss, the layer itself included, so the classifier FC has 1/1.
Each table lists every weight layer of the model: (shortest, longest).
"""

from __future__ import annotations

import pytest
from torch import nn

import gpa
import gpa.models

Table = dict[str, tuple[int, int]]


def _analyze(model: nn.Module):
    return gpa.analyze(model, input_shape=model.input_shape)


def _check(model: nn.Module, expected: Table, network: tuple[int, int] | None = None):
    report = _analyze(model)
    got = {name: (rec.shortest, rec.longest) for name, rec in report.layers.items()}
    assert got == expected
    if network is not None:
        assert (report.network.max_shortest, report.network.longest) == network
    return report


def _blocks(pairs: list[tuple[tuple[int, int], tuple[int, int]]]) -> Table:
    """Residual-trunk rows a_k / b_k of ``stages.0.blocks.{k-1}.conv{1,2}.conv``."""
    out: Table = {}
    for k, (a, b) in enumerate(pairs):
        out[f"stages.0.blocks.{k}.conv1.conv"] = a
        out[f"stages.0.blocks.{k}.conv2.conv"] = b
    return out


# W1 PlainNet (S, c1..c6, FC): S 8/8, c1 7/7, ..., c6 2/2, FC 1/1.
W1: Table = {
    "stem.conv": (8, 8),
    **{f"stages.0.blocks.{i}.conv": (7 - i, 7 - i) for i in range(6)},
    "fc": (1, 1),
}
# W2 ResNet: S 2/8, a1 3/7, b1 2/6, a2 3/5, b2 2/4, a3 3/3, b3 2/2, FC 1/1.
W2: Table = {
    "stem.conv": (2, 8),
    **_blocks([((3, 7), (2, 6)), ((3, 5), (2, 4)), ((3, 3), (2, 2))]),
    "fc": (1, 1),
}
# W3 identity detached: identical to W1 (PlainNet-like).
W3: Table = {
    "stem.conv": (8, 8),
    **_blocks([((7, 7), (6, 6)), ((5, 5), (4, 4)), ((3, 3), (2, 2))]),
    "fc": (1, 1),
}
# W4 block input detached: S 2/2, a_k 3/3, b_k 2/2, FC 1/1.
W4: Table = {"stem.conv": (2, 2), **_blocks([((3, 3), (2, 2))] * 3), "fc": (1, 1)}


def test_w1_plainnet() -> None:
    _check(gpa.models.plainnet(), W1, network=(8, 8))


def test_w2_resnet() -> None:
    report = _check(gpa.models.resnet(), W2, network=(3, 8))
    # Path histograms of the reference: S {2:1, 4:3, 6:3, 8:1}; a1 {3:1, 5:2, 7:1}.
    assert dict(report.layers["stem.conv"].path_histogram) == {2: 1, 4: 3, 6: 3, 8: 1}
    a1 = report.layers["stages.0.blocks.0.conv1.conv"]
    assert dict(a1.path_histogram) == {3: 1, 5: 2, 7: 1}
    assert report.layers["stem.conv"].num_paths == 8  # 2**K paths for K = 3 blocks


def test_w3_stopgrad_identity() -> None:
    _check(gpa.models.resnet_stopgrad(where="identity"), W3, network=(8, 8))


def test_w4_stopgrad_block() -> None:
    _check(gpa.models.resnet_stopgrad(where="block"), W4, network=(3, 3))


def test_w5_prn_layer_level() -> None:
    """W5 gives values per filter group (.A = identity channels, .B = masked channels):
    S.A 2/8, S.B 4/8, b_k.A 2/(6,4,2), b_k.B (4,4,2)/(6,4,2), a_k as in W2. Per layer
    (min of the groups' shortest, max of their longest) this is W2's table; the layer
    with the largest shortest path is then a_k (3), while the reference's network value 4
    is S.B's, a filter group."""
    _check(gpa.models.prn(), W2, network=(3, 8))


# W6 DenseNet: S 3/9, D1.H1 3/8, D1.H2 3/7, D1.H3 3/6, T1 2/5, D2.H1 2/4, D2.H2 2/3,
# D2.H3 2/2, FC 1/1.
W6: Table = {
    "stem.conv": (3, 9),
    "stages.0.layers.0.conv": (3, 8),
    "stages.0.layers.1.conv": (3, 7),
    "stages.0.layers.2.conv": (3, 6),
    "stages.0.transition.conv": (2, 5),
    "stages.1.layers.0.conv": (2, 4),
    "stages.1.layers.1.conv": (2, 3),
    "stages.1.layers.2.conv": (2, 2),
    "fc": (1, 1),
}


def test_w6_densenet() -> None:
    _check(gpa.models.densenet(), W6, network=(3, 9))


# W7 SparseNet (8 layers): S 4/11, H1 3/10, H2 5/9, H3 4/8, H4 4/7, H5 3/6, H6 4/5,
# H7 3/4, H8 3/3, T 2/2, FC 1/1.
_W7_H = [(3, 10), (5, 9), (4, 8), (4, 7), (3, 6), (4, 5), (3, 4), (3, 3)]
W7: Table = {
    "stem.conv": (4, 11),
    **{f"stages.0.layers.{i}.conv": v for i, v in enumerate(_W7_H)},
    "stages.0.transition.conv": (2, 2),
    "fc": (1, 1),
}


def test_w7_sparsenet() -> None:
    _check(gpa.models.sparsenet(), W7, network=(5, 11))


# W8 VoVNet (3 OSA modules of 3 convs + T): module 1 convs 5/(13,12,11), T1 4/10;
# module 2 convs 4/(9,8,7), T2 3/6; module 3 convs 3/(5,4,3), T3 2/2; S 5/14.
W8: Table = {"stem.conv": (5, 14)}
for _k, (_short, _longs, _t) in enumerate(
    [(5, (13, 12, 11), (4, 10)), (4, (9, 8, 7), (3, 6)), (3, (5, 4, 3), (2, 2))]
):
    for _j, _long in enumerate(_longs):
        W8[f"stages.0.blocks.{_k}.convs.{_j}.conv"] = (_short, _long)
    W8[f"stages.0.blocks.{_k}.transition.conv"] = _t
W8["fc"] = (1, 1)

# W9 VoVNet ELAN-ized: every conv 3, S 3/12, T 2/2. The convs' longest paths are derived:
# conv g (0-based, of the 9-conv chain) reaches T through the rest of the chain: 11 - g.
W9: Table = {
    "stem.conv": (3, 12),
    **{f"stages.0.blocks.{g // 3}.convs.{g % 3}.conv": (3, 11 - g) for g in range(9)},
    "stages.0.transition.conv": (2, 2),
    "fc": (1, 1),
}


def test_w8_vovnet() -> None:
    _check(gpa.models.vovnet(), W8, network=(5, 14))


def test_w9_vovnet_elan() -> None:
    _check(gpa.models.vovnet(elan=True), W9, network=(3, 12))


# W10 CSP, reference names -> module names of gpa.models.csp().
W10_NAMES = {"S": "stem.conv", "FC": "fc"}
for _s in (1, 2):
    _p = f"stages.{_s - 1}"
    W10_NAMES |= {
        f"s{_s}.D": f"{_p}.down.conv",
        f"s{_s}.P1": f"{_p}.part1.conv",
        f"s{_s}.P2": f"{_p}.part2.conv",
        f"s{_s}.a1": f"{_p}.blocks.0.conv1.conv",
        f"s{_s}.b1": f"{_p}.blocks.0.conv2.conv",
        f"s{_s}.a2": f"{_p}.blocks.1.conv1.conv",
        f"s{_s}.b2": f"{_p}.blocks.1.conv2.conv",
        f"s{_s}.Tb": f"{_p}.partial_transition.conv",
        f"s{_s}.T": f"{_p}.transition.conv",
    }

# Columns: CSP (b), fusion first, fusion last, no fusion; None = the layer does not exist.
W10_ROWS = {
    "S": [(8, 18), (8, 16), (6, 16), (6, 14)],
    "s1.D": [(7, 17), (7, 15), (5, 15), (5, 13)],
    "s1.P1": [(7, 16), (6, 14), (5, 14), (4, 12)],
    "s1.P2": [(6, 11), (6, 10), (4, 9), (4, 8)],
    "s1.a1": [(8, 15), (7, 13), (6, 13), (5, 11)],
    "s1.b1": [(7, 14), (6, 12), (5, 12), (4, 10)],
    "s1.a2": [(8, 13), (7, 11), (6, 11), (5, 9)],
    "s1.b2": [(7, 12), (6, 10), (5, 10), (4, 8)],
    "s1.Tb": [(6, 11), None, (4, 9), None],
    "s1.T": [(5, 10), (5, 9), None, None],
    "s2.D": [(4, 9), (4, 8), (3, 8), (3, 7)],
    "s2.P1": [(4, 8), (3, 7), (3, 7), (2, 6)],
    "s2.P2": [(3, 3), (3, 3), (2, 2), (2, 2)],
    "s2.a1": [(5, 7), (4, 6), (4, 6), (3, 5)],
    "s2.b1": [(4, 6), (3, 5), (3, 5), (2, 4)],
    "s2.a2": [(5, 5), (4, 4), (4, 4), (3, 3)],
    "s2.b2": [(4, 4), (3, 3), (3, 3), (2, 2)],
    "s2.Tb": [(3, 3), None, (2, 2), None],
    "s2.T": [(2, 2), (2, 2), None, None],
    "FC": [(1, 1)] * 4,
}
W10_NETWORK = {"csp": (8, 18), "first": (8, 16), "last": (6, 16), "none": (6, 14)}


@pytest.mark.parametrize("column", range(4), ids=list(W10_NETWORK))
def test_w10_csp_fusions(column: int) -> None:
    fusion = list(W10_NETWORK)[column]
    expected = {
        W10_NAMES[ref]: cells[column]
        for ref, cells in W10_ROWS.items()
        if cells[column] is not None
    }
    _check(gpa.models.csp(fusion=fusion), expected, network=W10_NETWORK[fusion])


@pytest.mark.parametrize("base", ["resnet", "darknet"])
def test_w10_does_not_depend_on_the_two_conv_residual_base(base: str) -> None:
    expected = {W10_NAMES[ref]: cells[0] for ref, cells in W10_ROWS.items()}
    _check(gpa.models.csp(base=base), expected)


def _elan_names(stage: int, convs: int) -> dict[str, str]:
    p = f"stages.{stage - 1}"
    names = {
        f"s{stage}.D": f"{p}.down.conv",
        f"s{stage}.a": f"{p}.elan.part2.conv",
        f"s{stage}.b": f"{p}.elan.part1.conv",
        f"s{stage}.T": f"{p}.elan.transition.conv",
    }
    names |= {f"s{stage}.c{j}": f"{p}.elan.convs.{j - 1}.conv" for j in range(1, convs + 1)}
    return names


# W11 ELAN, 2 stages of 2 pairs.
W11_NAMES = {"S": "stem.conv", "FC": "fc", **_elan_names(1, 4), **_elan_names(2, 4)}
W11_ROWS = {
    "S": (8, 16),
    "s1.D": (7, 15),
    "s1.a": (6, 10),
    "s1.b": (6, 14),
    "s1.c1": (7, 13),
    "s1.c2": (6, 12),
    "s1.c3": (7, 11),
    "s1.c4": (6, 10),
    "s1.T": (5, 9),
    "s2.D": (4, 8),
    "s2.a": (3, 3),
    "s2.b": (3, 7),
    "s2.c1": (4, 6),
    "s2.c2": (3, 5),
    "s2.c3": (4, 4),
    "s2.c4": (3, 3),
    "s2.T": (2, 2),
    "FC": (1, 1),
}
# One stage, 3 pairs (YOLOv7-X style): tapped c2/c4/c6 shortest 3, first-of-pair convs 4,
# a 3/3, b 3/9, S 5/11 (reference). Derived: D 4/10, T 2/2, c_j longest 9 - j.
W11X_NAMES = {"S": "stem.conv", "FC": "fc", **_elan_names(1, 6)}
W11X_ROWS = {
    "S": (5, 11),
    "s1.D": (4, 10),
    "s1.a": (3, 3),
    "s1.b": (3, 9),
    **{f"s1.c{j}": (4 if j % 2 else 3, 9 - j) for j in range(1, 7)},
    "s1.T": (2, 2),
    "FC": (1, 1),
}


def test_w11_elan() -> None:
    expected = {W11_NAMES[k]: v for k, v in W11_ROWS.items()}
    _check(gpa.models.elan(), expected, network=(8, 16))


def test_w11_elan_three_pairs() -> None:
    expected = {W11X_NAMES[k]: v for k, v in W11X_ROWS.items()}
    _check(gpa.models.elan(stages=1, pairs=3), expected, network=(5, 11))
