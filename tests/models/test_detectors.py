"""The paper's detectors (Tables 3-8, reference §3): sizes and gradient-path structure.

Sizes: FLOPs (2 per multiply-add, conv layers only) at 640x640 within 0.2 G of the paper,
parameters (torch convention: BN and biases included) within 0.5 % of the configuration
the reference reproduces. Paths: layer-level lengths as in docs/semantics.md (a layer feeding
the loss has length 1; the head's output convs feed the loss).

Hand-derived distances used below. ``D(t)`` is the number of layers on the shortest route
from tensor ``t`` to the loss; a layer's shortest path is ``1 + D(its output)``.

YOLO-CSP neck (SPPCSPC; BottleneckCSPB = 1x1 ``down``, cross 1x1 ``part2``, 1x1 ``T``, so
3 layers on its shortest route; 3x3 output convs; one head conv per level):
  - ``D(out_k) = 1``; ``D(b5) = D(b4) = D(t3) = 2`` (3x3 output conv + head conv);
  - input of ``bottom5``: 3 + 2 = 5, so ``D(p5) = 5`` (the top-down route is longer);
  - ``D(C5)`` = SPPCSPC's ``part2`` and ``T`` + ``D(p5)`` = 2 + 5 = 7;
  - ``D(t4)`` = min(``bottom4`` input 3 + 2, ``reduce4`` + ``top3`` input 1 + 5) = 5,
    so the input of ``top4`` is 3 + 5 = 8 and ``D(C4)`` = ``lateral4`` + 8 = 9 (crossing
    backbone stage 5 would cost D + P2 + T + D(C5) = 10);
  - ``D(C3)`` = ``lateral3`` + ``top3`` input (3 + D(t3) = 5) = 6.
So the backbone stages' transitions T3, T4, T5 have shortest 7, 10 and 8.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gpa
import gpa.models
from gpa.core.report import combination
from gpa.frontends.counts import count, count_flops
from gpa.models.blocks import Residual

# Every test here builds and analyses full-size YOLO detectors (tens of millions of
# parameters): 0.3 to 10 s each, 35 s in all.
pytestmark = pytest.mark.slow

G = 1e9

# (entry, knobs, paper GFLOPs, reproduced parameters in M) -- paper Tables 3, 5-8 and the
# reference's §1.6/§3 (YOLO-v3: the non-SPP yaml; YOLO-ELAN: yolov7-seg.yaml).
SIZES = [
    ("yolo_v3", {}, 194.6, 63.31),
    ("yolo_prn", {}, 194.6, 63.31),
    ("yolo_csp", {}, 159.0, 54.29),
    ("yolo_csp", {"fusion": "first"}, 158.1, 53.94),
    ("yolo_csp", {"fusion": "last"}, 155.6, 52.89),
    ("yolo_csp", {"fusion": "none"}, 154.8, 52.54),
    ("yolo_csp_stopgrad", {"where": "block"}, 159.0, 54.29),
    ("yolo_csp_stopgrad", {"where": "identity"}, 159.0, 54.29),
    ("yolo_elan", {}, 143.2, 38.29),
    ("yolo_elan_af", {}, 172.6, 45.93),
    # detection-only heads (reference §3, "Detection-only versions")
    ("yolo_v3", {"head": "det"}, 155.9, 61.95),
    ("yolo_csp", {"head": "det"}, 120.2, 52.92),
    ("yolo_elan_af", {"head": "det"}, 130.5, 43.59),
]

# The entries of gpa/models/yolo.py (their names are checked in test_zoo_registry.py; the fx
# tracing without in-place ops in test_zoo_build.py).
DETECTORS = [n for n in gpa.models.names() if gpa.models.describe(n).family == "yolo"]


def _meta(name: str, **knobs: object) -> nn.Module:
    with torch.device("meta"):
        return gpa.models.build(name, **knobs)


def _id(row: tuple) -> str:
    return row[0] + "".join(f"-{v}" for v in row[1].values())


_REPORTS: dict[tuple, gpa.Report] = {}


def _report(name: str, **knobs: object) -> gpa.Report:
    """gpa.analyze of a detector built on the meta device, once per session."""
    key = (name, tuple(sorted(knobs.items())))
    if key not in _REPORTS:
        model = _meta(name, **knobs)
        _REPORTS[key] = gpa.analyze(model, input_shape=model.input_shape)
    return _REPORTS[key]


_CHANNEL_REPORTS: dict[tuple, gpa.Report] = {}


def _channel_report(name: str, **knobs: object) -> gpa.Report:
    """gpa.analyze(..., channels=True) of a detector on the meta device, once per session."""
    key = (name, tuple(sorted(knobs.items())))
    if key not in _CHANNEL_REPORTS:
        model = _meta(name, **knobs)
        _CHANNEL_REPORTS[key] = gpa.analyze(model, input_shape=model.input_shape, channels=True)
    return _CHANNEL_REPORTS[key]


def _shortest(name: str, **knobs: object) -> dict[str, int]:
    return {k: r.shortest for k, r in _report(name, **knobs).layers.items()}


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "knobs", "gflops", "mparams"), SIZES, ids=map(_id, SIZES))
def test_size_matches_the_paper(name: str, knobs: dict, gflops: float, mparams: float) -> None:
    model = _meta(name, **knobs)
    assert model.input_shape == (1, 3, 640, 640)
    c = count(model)
    assert abs(c.total_flops / G - gflops) <= 0.2
    assert abs(c.total_params / 1e6 - mparams) <= 0.005 * mparams


@pytest.mark.parametrize(("name", "paper"), [("yolo_v3", 64.3), ("yolo_elan", 34.5)])
def test_documented_parameter_gaps(name: str, paper: float) -> None:
    """Table 8's 64.3 M (YOLO-v3) and 34.5 M (YOLO-ELAN) match no configuration with the
    paper's FLOPs (reference §3); docs/detectors.md lists the gap instead of forcing it."""
    params = count(_meta(name)).total_params / 1e6
    assert abs(params - paper) > 0.01 * paper


@pytest.mark.parametrize("name", DETECTORS)
def test_outputs_per_head(name: str) -> None:
    """Seg heads: 3 anchors x (5 + classes + 32 masks) per level (anchor-free: 64 box bins
    + classes + 32) and 32 prototypes at 160x160; det heads drop masks and prototypes."""
    x = torch.zeros(1, 3, 640, 640, device="meta")
    free = name == "yolo_elan_af"
    for head, classes in (("seg", 3), ("det", 80)):
        with torch.no_grad():
            outs = _meta(name, head=head, num_classes=classes).eval()(x)
        masks = 32 if head == "seg" else 0
        per_level = 64 + classes + masks if free else 3 * (5 + classes + masks)
        expected = [(1, per_level, 640 // s, 640 // s) for s in (8, 16, 32)]
        if head == "seg":
            expected.append((1, 32, 160, 160))
        assert [tuple(t.shape) for t in outs] == expected


def test_knob_errors_are_zoo_errors() -> None:
    with pytest.raises(gpa.models.ZooError, match="fusion"):
        gpa.models.build("yolo_csp", fusion="middle")
    with pytest.raises(gpa.models.ZooError, match="head"):
        gpa.models.build("yolo_elan", head="pose")
    with pytest.raises(gpa.models.ZooError, match="where"):
        gpa.models.build("yolo_csp_stopgrad", where="output")


# --- YOLO-PRN vs YOLO-v3 --------------------------------------------------------------------


def test_prn_masks_half_of_every_backbone_residual() -> None:
    """Reference §3: the masked residual (k = C/2) in all 1+2+8+8+4 = 23 residual blocks."""
    for name, ratio in (("yolo_v3", 1), ("yolo_prn", 2)):
        res = [m for m in _meta(name).modules() if isinstance(m, Residual)]
        assert len(res) == 23
        assert all(m.k == m.c_out // ratio for m in res)


def test_prn_has_the_layers_flops_and_layer_paths_of_v3() -> None:
    """Masking the identity removes no connection between layers: half of every block
    input's channels still take the shortcut, so every layer-level route of YOLO-v3 exists
    in YOLO-PRN and no route is added. The difference (which channels get which
    timestamps) is channel level."""
    v3, prn = _meta("yolo_v3"), _meta("yolo_prn")
    x = (1, 3, 640, 640)
    assert count_flops(v3, input_shape=x) == count_flops(prn, input_shape=x)
    a, b = _report("yolo_v3"), _report("yolo_prn")
    assert [(r.name, r.type) for r in a.layers.values()] == [
        (r.name, r.type) for r in b.layers.values()
    ]
    assert {k: (r.shortest, r.longest) for k, r in a.layers.items()} == {
        k: (r.shortest, r.longest) for k, r in b.layers.items()
    }


# Darknet-53 (paper Table 5's backbone of YOLO-v3/PRN): stage widths and residual blocks.
DARKNET_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


def _masked_block_inputs() -> dict[str, tuple[int, int]]:
    """Producer of each masked block's input -> (that block's conv1, stage width C).

    Block 0 of a stage takes the stage's stride-2 ``down`` conv; block j > 0 takes block
    j - 1's ``conv2``. The last block's conv2 feeds the next stage (or the neck) whole.
    """
    found = {}
    for s, (width, blocks) in enumerate(DARKNET_STAGES):
        stage = f"backbone.stages.{s}"
        for j in range(blocks):
            producer = f"{stage}.down.conv" if j == 0 else f"{stage}.blocks.{j - 1}.conv2.conv"
            found[producer] = (f"{stage}.blocks.{j}.conv1.conv", width)
    return found


def _width(model: nn.Module, layer: str) -> int:
    return model.get_submodule(layer).out_channels


def test_prn_has_more_gradient_combinations_than_v3() -> None:
    """Channel level (docs/semantics.md §8), derived by hand.

    YOLO-v3: every layer's output is consumed whole (a conv reads all its channels, a
    concat keeps them as one block) and the only adds are residual ones, where the block
    input also feeds the block's conv1: no two layers get the same gradient. So one segment
    per layer and one combination per layer: 78.

    YOLO-PRN: a masked block computes ``y = F(x) + x[:, :C/2]`` (concatenated with
    ``F(x)[:, C/2:]``). The first half of the block input ``x`` sends gradient to conv1
    (its input channels [0, C/2)) and through the identity onward to the later blocks; the
    second half to conv1 only (input channels [C/2, C)), arriving later (shortest: conv1's
    plus one). So the layer producing each masked block's input gets two segments with
    different sources, where YOLO-v3's has one: 23 blocks, 78 + 23 = 101 combinations.
    """
    v3, prn = _channel_report("yolo_v3"), _channel_report("yolo_prn")
    model = _meta("yolo_v3")
    for layer, record in v3.layers.items():
        assert [(g.start, g.stop) for g in record.segments] == [(0, _width(model, layer))]
    assert v3.network.gradient_combinations == 78

    masked = _masked_block_inputs()
    assert len(masked) == 23
    for layer, record in prn.layers.items():
        width = _width(model, layer)
        cuts = [(g.start, g.stop) for g in record.segments]
        if layer not in masked:
            assert cuts == [(0, width)], layer
            continue
        conv1, c = masked[layer]
        assert width == c and cuts == [(0, c // 2), (c // 2, c)], layer
        kept, dropped = record.segments
        assert [(x.sender, x.channels) for x in dropped.sources] == [(conv1, (c // 2, c))]
        senders = [(x.sender, x.channels) for x in kept.sources]
        assert senders[0] == (conv1, (0, c // 2)) and len(senders) >= 2, layer
        assert dropped.paths.shortest == prn.layers[conv1].shortest + 1
        assert record.gradient_combinations == 2
    assert prn.network.gradient_combinations == 78 + 23


# One segment per layer and a combination of its own, for the reasons given for YOLO-v3
# above: YOLO-CSP computes both parts of a stage with their own 1x1 convs (no layer's
# output is split), ELAN's taps and the "MP" branches are concatenated whole, and every
# residual add's input also feeds the block's conv1. The fusion variants (Fig. 5) thus
# change the combinations at channel level only through the transitions they remove:
# 118 layers, 4 Tb removed ("first"), 4 T ("last"), both ("none").
DISTINCT = [
    ("yolo_csp", {}, 118),
    ("yolo_csp", {"fusion": "first"}, 114),
    ("yolo_csp", {"fusion": "last"}, 114),
    ("yolo_csp", {"fusion": "none"}, 110),
    ("yolo_csp_stopgrad", {"where": "identity"}, 118),
    ("yolo_elan", {}, 95),
    ("yolo_elan_af", {}, 119),
]


@pytest.mark.parametrize(("name", "knobs", "layers"), DISTINCT, ids=map(_id, DISTINCT))
def test_one_combination_per_layer(name: str, knobs: dict, layers: int) -> None:
    rep = _channel_report(name, **knobs)
    assert rep.network.layers == layers
    assert all(len(r.segments) == 1 for r in rep.layers.values())
    assert rep.network.gradient_combinations == layers


# --- network-level numbers, derived by hand -------------------------------------------------


def test_v3_network_paths() -> None:
    """max_shortest 11: the stem crosses the 3x3 stride-2 convs of stages 1-3 (residual
    blocks cost nothing on the identity) = 4 layers, then C3 → top3's three plain
    bottlenecks (6) → head conv (1). longest 73: stem 1 + stages 1+2·1, 1+2·2, 1+2·8,
    1+2·8, 1+2·4 (= 52 so far), top5 2+3, reduce5, top4 2+2+1, reduce4, top3 6 (= 70),
    then the 3 prototype convs on the P3 output. Layers: backbone 1 + 5 + 2·23 = 52, neck
    5 + 1 + 1 + 5 + 1 + 1 + 6 = 20, head 3 output convs + 3 prototype convs = 6."""
    net = _report("yolo_v3").network
    assert (net.max_shortest, net.longest, net.layers) == (11, 73, 52 + 20 + 6)


def test_elan_and_csp_max_shortest_tie_at_the_stem() -> None:
    """The issue expected YOLO-ELAN's max_shortest below YOLO-CSP's; at layer level they
    are equal, both at the first stem conv:

    - YOLO-CSP: stem 1 + stage 1's stride-2 conv 1 (its residual block is bypassed) +
      (D, P2, T) of CSP stages 2 and 3 (3 + 3) + D(C3) 6 = 14;
    - YOLO-ELAN: stem 3 + stage 1's stride-2 conv 1 + ELAN (a, T) 2 + MP's pooled 1x1 1 +
      ELAN (a, T) 2 + D(C3) = lateral 1x1, neck ELAN (a, T), 3x3 out, head = 5: 14.

    A stage costs 3 on the shortest route in both (CSP: D, P2, T; ELAN: pooled 1x1, a, T);
    YOLOv7's deeper stem (+1) cancels its shallower neck block (ELAN-H: 2, CSPB: 3). What
    ELAN does lower is the longest path: 72 against 100 (derived below).
    """
    csp, elan = _report("yolo_csp"), _report("yolo_elan")
    assert csp.network.max_shortest == elan.network.max_shortest == 14
    assert csp.layers["backbone.stem.conv"].shortest == 14
    assert elan.layers["backbone.stem.0.conv"].shortest == 14


def test_longest_paths_of_csp_and_elan() -> None:
    """Longest = every conv on the deepest chain, stem to head.

    YOLO-CSP: stem 1, stage 1 (D + 2) 3, CSP stages D + P1 + 2n + Tb + T with n = 2, 8, 8, 4
    (8, 20, 20, 12: 64 so far), SPPCSPC's block route P1, 3x3, 1x1, 1x1, 3x3, T (70),
    then four times [reduce or down 1 + CSPB (down, 2 plain bottlenecks, T) 6] (98), out5,
    head: 100.

    YOLO-ELAN: stem 3, stage 1 D + ELAN (b, 4 convs, T) 7 (10), stages 2-4 MP (1x1, 3x3 s2)
    2 + ELAN 6 (34), SPPCSPC 6 (40), reduce5/reduce4 1 + neck ELAN 6, twice (54), MP 2 +
    neck ELAN 6, twice (70), out5, head: 72.
    """
    assert _report("yolo_csp").network.longest == 100
    assert _report("yolo_elan").network.longest == 72


def test_csp_transitions_shortest() -> None:
    """T3, T4, T5 = 1 + D(C3), 1 + D(C4), 1 + D(C5) (module docstring)."""
    s = _shortest("yolo_csp")
    assert [s[f"backbone.stages.{i}.transition.conv"] for i in (2, 3, 4)] == [7, 10, 8]


def test_elan_block_layers_stay_close_to_their_transition() -> None:
    """Stack in computational block: in every backbone ELAN the deepest layer (the first
    conv of a pair) is 2 above the stage transition (conv, tapped conv, T), however many
    pairs are stacked; in a CSP stage a residual conv1 is 3 above T (conv1, conv2, Tb)."""
    s = _shortest("yolo_elan")
    for i in range(4):
        stg = f"backbone.stages.{i}.elan"
        layers = [k for k in s if k.startswith(stg + ".")]
        assert max(s[k] for k in layers) - s[f"{stg}.transition.conv"] == 2
    c = _shortest("yolo_csp")
    for i in range(1, 5):
        stg = f"backbone.stages.{i}"
        layers = [k for k in c if k.startswith(stg + ".")]
        assert max(c[k] for k in layers) - c[f"{stg}.transition.conv"] == 3


# --- Fig. 5 fusion variants (reference §4.1, W10) ------------------------------------------


def _kind(layer: str) -> tuple[int, str] | None:
    """(stage index, part) of a backbone layer; stem and the plain stage 1 count as stage -1
    and 0; None outside the backbone."""
    parts = layer.split(".")
    if parts[0] != "backbone":
        return None
    if parts[1] == "stem":
        return (-1, "stem")
    return (int(parts[2]), parts[3])


def _fusion_delta(fusion: str, layer: str) -> int:
    """Change of a layer's shortest path from YOLO-CSP (Fig. 5 b) to ``fusion``.

    - "first" removes Tb: the routes from P1 and the residual convs lose a layer; D, P2 and
      T route through P2 → T, which is unchanged; nothing outside the stage changes.
    - "last" removes T: every route loses one layer per CSP stage it crosses before leaving
      the backbone. The shortest routes leave at C3 from stage 3 and below (D(C3) = 6 beats
      crossing stage 4), at C4 from stage 4 (D(C4) = 9 against 2 + D(C5) = 9 without T5:
      still 9) and at C5 from stage 5. So stages 3, 4, 5 (indices 2-4): -1; the 128-channel
      CSP stage (index 1), the plain stage and the stem cross two CSP stages (2 and 3): -2.
    - "none" removes both: the two deltas add up.
    """
    kind = _kind(layer)
    if kind is None:
        return 0
    stage, part = kind
    first = -1 if stage >= 1 and part in ("part1", "blocks") else 0
    last = -1 if stage >= 2 else -2
    return {"first": first, "last": last, "none": first + last}[fusion]


@pytest.mark.parametrize("fusion", ["first", "last", "none"])
def test_fusion_variants_change_paths_as_fig5_claims(fusion: str) -> None:
    base = _shortest("yolo_csp", fusion="csp")
    variant = _shortest("yolo_csp", fusion=fusion)
    removed = {"first": ("partial_transition",), "last": ("transition",)}
    removed["none"] = removed["first"] + removed["last"]
    gone = {k for k in base if _kind(k) and _kind(k)[1] in removed[fusion]}
    assert len(gone) == 4 * len(removed[fusion])
    assert set(variant) == set(base) - gone
    assert {k: variant[k] - base[k] for k in variant} == {
        k: _fusion_delta(fusion, k) for k in variant
    }


# --- Fig. 9 stop-gradient ablations (reference §1.9, W3/W4) --------------------------------

CSP_BLOCKS = {1: 2, 2: 8, 3: 8, 4: 4}  # backbone stage index -> residual blocks


@pytest.mark.parametrize("where", ["block", "identity"])
def test_stopgrad_trunks(where: str) -> None:
    """Inside each backbone CSP stage (n blocks, Tb after the last one):

    - ``x + F(x.detach())`` (W4): a block's output reaches Tb only through the identities
      of the later blocks, so conv2 = Tb + 1, conv1 = Tb + 2 and P1 = Tb + 1, each with
      Tb's spread (longest - shortest): no path inside the trunk is longer than another.
    - ``x.detach() + F(x)`` (W3): the trunk is a plain chain; block j's conv2 is
      2(n - 1 - j) + 1 above Tb, conv1 one more, P1 = Tb + 2n + 1, again with Tb's spread.
    """
    rep = _report("yolo_csp_stopgrad", where=where)
    for i, n in CSP_BLOCKS.items():
        stg = f"backbone.stages.{i}"
        tb = rep.layers[f"{stg}.partial_transition.conv"]
        spread = tb.longest - tb.shortest
        expect = {f"{stg}.part1.conv": 1 if where == "block" else 2 * n + 1}
        for j in range(n):
            above = 1 if where == "block" else 2 * (n - 1 - j) + 1
            expect[f"{stg}.blocks.{j}.conv2.conv"] = above
            expect[f"{stg}.blocks.{j}.conv1.conv"] = above + 1
        for layer, above in expect.items():
            r = rep.layers[layer]
            assert (r.shortest - tb.shortest, r.longest - r.shortest) == (above, spread), layer


def test_stopgrad_leaves_the_forward_pass_alone() -> None:
    plain = count_flops(_meta("yolo_csp"), input_shape=(1, 3, 640, 640))
    for where in ("block", "identity"):
        model = _meta("yolo_csp_stopgrad", where=where)
        assert count_flops(model, input_shape=(1, 3, 640, 640)) == plain


def test_stopgrad_block_duplicates_gradient_combinations() -> None:
    """``y = x + F(x.detach())`` (Fig. 9): in a CSP stage of n blocks the part-1 conv and
    the n residual conv2s reach Tb only through the chain of adds (their conv1 routes are
    detached), so all n + 1 receive Tb's gradient at the same round: one combination
    instead of n + 1. YOLO-CSP's 118 lose 2 + 8 + 8 + 4 = 22: 96."""
    rep = _channel_report("yolo_csp_stopgrad", where="block")
    for i, n in CSP_BLOCKS.items():
        stg = f"backbone.stages.{i}"
        chain = [f"{stg}.part1.conv"] + [f"{stg}.blocks.{j}.conv2.conv" for j in range(n)]
        tb = f"{stg}.partial_transition.conv"
        for layer in chain:
            (segment,) = rep.layers[layer].segments
            assert {x.sender for x in segment.sources} == {tb}, layer
        assert len({combination(rep.layers[k].segments[0]) for k in chain}) == 1
    assert rep.network.gradient_combinations == 118 - 22


# --- docs/detectors.md ----------------------------------------------------------------------


def test_detectors_doc_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/detectors.md is what scripts/gen_detectors_doc.py generates now."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "gen_detectors_doc.py"
    spec = importlib.util.spec_from_file_location("gen_detectors_doc", path)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # its dataclasses look it up
    spec.loader.exec_module(script)
    assert script.main(["--check"]) == 0, "docs/detectors.md is stale: run " + path.name
