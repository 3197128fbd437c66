"""The paper's structural claims (reference architectures.md §4.1) as tests.

Each test names the part of the paper it checks. Expected values come from the paper's
statements, the reference's closed forms (§4.2) or hand derivation, never from gpa's own
output. Lengths follow gpa's convention (reference §0): a path counts its weight layers,
the layer itself and the classifier included. Models are small (width 4) and built on the
meta device.
"""

from __future__ import annotations

import pytest
import torch

import gpa
import gpa.models
from gpa.growth import scaling

# Scaling studies: every test analyses a family at several sizes (0.1 to 4 s each).
pytestmark = pytest.mark.slow

DEPTHS = [2, 4, 8, 16, 32]  # five depths, doubling, for every Table 1 fit


def _analyze(name: str, **knobs):
    with torch.device("meta"):
        model = gpa.models.build(name, width=4, **knobs)
    return gpa.analyze(model, input_shape=model.input_shape)


def _shortest(report) -> dict[str, int]:
    return {name: rec.shortest for name, rec in report.layers.items()}


# --- Table 1 (from SparseNet, Zhu et al. 2018) ------------------------------------------------

# (entry, knob, fixed knobs, values, shortest-path class, parameter class)
TABLE1 = {
    "PlainNet": ("plainnet", "depth", {}, DEPTHS, "O(N)", "O(N)"),
    "ResNet": ("resnet", "blocks", {}, DEPTHS, "O(1)", "O(N)"),
    "DenseNet": ("densenet", "layers", {"blocks": 1, "growth": 4}, DEPTHS, "O(1)", "O(N²)"),
    # layers = 2^k - 1, so that the deepest path's popcount(L + 1 - i) spans 1 .. k
    "Sparse ResNet": (
        "sparsenet",
        "layers",
        {"aggregation": "sum", "growth": 4},
        [3, 7, 15, 31, 63],
        "O(log N)",
        "O(N)",
    ),
    "Sparse DenseNet": (
        "sparsenet",
        "layers",
        {"aggregation": "concat", "growth": 4},
        [3, 7, 15, 31, 63],
        "O(log N)",
        "O(N log N)",
    ),
}


@pytest.mark.parametrize("row", list(TABLE1))
def test_table1_shortest_path_and_parameter_growth(row: str) -> None:
    """Table 1: the order of the shortest gradient path and of the parameters, by fit."""
    name, knob, fixed, values, shortest, params = TABLE1[row]
    result = scaling(name, knob, values, width=4, **fixed)
    assert len(result.points) >= 5
    assert result.growth["max_shortest"] == shortest
    assert result.growth["params"] == params


def test_table1_closed_forms_behind_the_fits() -> None:
    """Table 1 / reference §4.2: the exact values the fits summarise."""
    for depth in DEPTHS:  # PlainNet: stem + depth convs + FC, a chain: max_shortest = N
        net = _analyze("plainnet", depth=depth).network
        assert net.max_shortest == net.longest == depth + 2
    for blocks in DEPTHS:  # ResNet: first conv of a block 3, longest 2 * blocks + 2
        net = _analyze("resnet", blocks=blocks).network
        assert (net.max_shortest, net.longest) == (3, 2 * blocks + 2)
    for layers in [3, 7, 15, 31]:  # SparseNet: 2 + popcount(L + 1 - i) is at most 2 + log2(L + 1)
        net = _analyze("sparsenet", layers=layers, aggregation="sum", growth=4).network
        assert net.max_shortest == 2 + (layers + 1).bit_length() - 1


# --- Section 3.3 ------------------------------------------------------------------------------


@pytest.mark.parametrize("modules", [1, 2, 3, 5])
def test_section_3_3_one_more_osa_module_raises_every_earlier_shortest_path_by_one(
    modules: int,
) -> None:
    """§3.3: each stacked OSA module holds a transition, so every earlier layer's +1."""
    before = _shortest(_analyze("vovnet", osa_per_stage=modules))
    after = _shortest(_analyze("vovnet", osa_per_stage=modules + 1))
    earlier = [n for n in before if n != "fc"]
    assert earlier and all(after[n] == before[n] + 1 for n in earlier)
    assert after["fc"] == before["fc"] == 1
    # reference §4.2: a conv of module k (1-based) of K has shortest K - k + 3
    for k in range(1, modules + 2):
        conv = f"stages.0.blocks.{k - 1}.convs.0.conv"
        assert after[conv] == modules + 1 - k + 3


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
def test_section_3_3_one_more_residual_block_raises_only_the_longest_path(blocks: int) -> None:
    """§3.3: stacking a residual block changes no shortest path but lengthens the longest."""
    small = _analyze("resnet", blocks=blocks)
    big = _analyze("resnet", blocks=blocks + 1)
    before, after = _shortest(small), _shortest(big)
    assert all(after[n] == before[n] for n in before)
    assert big.network.longest == small.network.longest + 2  # one block = two convs
    assert big.layers["stem.conv"].longest == small.layers["stem.conv"].longest + 2
    assert big.network.max_shortest == small.network.max_shortest == 3


def _stage(name: str) -> int | None:
    """1-based stage index of a csp layer name, None outside the stages."""
    return int(name.split(".")[1]) + 1 if name.startswith("stages.") else None


@pytest.mark.parametrize("stages", [2, 3])
def test_section_3_3_fusion_first_shortens_each_stage_block_by_one(stages: int) -> None:
    """§3.3, Fig. 5(c): fusion first lowers the computational block's shortest path by 1."""
    csp = _shortest(_analyze("csp", fusion="csp", stages=stages))
    first = _shortest(_analyze("csp", fusion="first", stages=stages))
    block = [n for n in first if ".blocks." in n]
    assert len(block) == 4 * stages  # 2 residual blocks of 2 convs per stage
    assert all(first[n] == csp[n] - 1 for n in block)
    # the block path's entry P1 goes with the block; everything outside the block path
    # (stem, downsampling, cross path P2, fusion transition, FC) keeps its shortest path
    assert all(first[n] == csp[n] - 1 for n in first if n.endswith("part1.conv"))
    outside = [n for n in first if ".blocks." not in n and not n.endswith("part1.conv")]
    assert all(first[n] == csp[n] for n in outside)
    assert not any(n.endswith("partial_transition.conv") for n in first)


@pytest.mark.parametrize("stages", [2, 3])
def test_section_3_3_fusion_last_shortens_every_layer_by_one_per_stage_crossed(
    stages: int,
) -> None:
    """§3.3, Fig. 5(d): fusion last lowers every layer's shortest path by 1 per stage crossed."""
    csp = _shortest(_analyze("csp", fusion="csp", stages=stages))
    last = _shortest(_analyze("csp", fusion="last", stages=stages))
    for name, shortest in last.items():
        stage = _stage(name)
        if name == "fc":
            crossed = 0
        elif stage is None:  # the stem lies below every stage
            crossed = stages
        else:  # its own stage and every later one
            crossed = stages - stage + 1
        assert shortest == csp[name] - crossed, name
    assert not any(n.endswith(".transition.conv") for n in last)


def test_section_3_3_elan_replanned_vovnet_keeps_max_shortest_constant() -> None:
    """§3.3/§4.3, Table 4: OSA modules without their transitions (ELAN) keep max_shortest."""
    modules = [1, 2, 4, 8, 16]
    plain = scaling("vovnet", "osa_per_stage", modules, width=4)
    elan = scaling("vovnet", "osa_per_stage", modules, width=4, elan=True)
    assert plain.growth["max_shortest"] == "O(N)"
    assert elan.growth["max_shortest"] == "O(1)"
    # reference §4.2: module 1's convs have K + 2 in plain VoVNet, every conv 3 with ELAN
    assert [p.max_shortest for p in plain.points] == [k + 2 for k in modules]
    assert [p.max_shortest for p in elan.points] == [3] * len(modules)


def test_section_3_3_elan_max_shortest_does_not_grow_with_pairs() -> None:
    """§3.3, Fig. 6: stacking 3x3 pairs inside an ELAN block leaves max_shortest unchanged."""
    result = scaling("elan", "pairs", [1, 2, 4, 8, 16], width=4)
    assert result.growth["max_shortest"] == "O(1)"
    assert result.growth["longest"] == "O(N)"
    # W11 (2 stages, 2 pairs): max_shortest 8, at every number of pairs
    assert [p.max_shortest for p in result.points] == [8] * 5
    # reference §4.2: the longest path grows by 2 per pair in each of the 2 stages
    longest = [p.longest for p in result.points]
    assert [b - a for a, b in zip(longest, longest[1:], strict=False)] == [
        4 * 1,
        4 * 2,
        4 * 4,
        4 * 8,
    ]


# --- Fig. 9 (Section 4.3) ---------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 3, 6])
def test_fig9_stop_gradient_on_identity_is_plain(blocks: int) -> None:
    """Fig. 9, identity detached: every layer has shortest = longest (PlainNet-like)."""
    report = _analyze("resnet_stopgrad", blocks=blocks, where="identity")
    assert all(rec.shortest == rec.longest for rec in report.layers.values())
    # a chain of 2 * blocks + 2 weight layers
    assert report.layers["stem.conv"].shortest == 2 * blocks + 2


@pytest.mark.parametrize("blocks", [1, 3, 6])
def test_fig9_stop_gradient_on_block_input_gives_single_path_lengths(blocks: int) -> None:
    """Fig. 9, block input detached: each block layer one path length; stem shortest = longest."""
    report = _analyze("resnet_stopgrad", blocks=blocks, where="block")
    block = {n: r for n, r in report.layers.items() if ".blocks." in n}
    assert len(block) == 2 * blocks
    assert all(len(rec.timestamps) == 1 for rec in block.values())
    # reference W4: a_k 3, b_k 2 (the paper's in-trunk 2 and 1), stem 2/2
    assert {n: r.shortest for n, r in block.items()} == {
        n: 3 if n.endswith("conv1.conv") else 2 for n in block
    }
    stem = report.layers["stem.conv"]
    assert stem.shortest == stem.longest == 2
