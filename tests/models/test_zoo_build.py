"""Every zoo entry builds with its defaults, runs on the meta device, traces with torch.fx,
and the shared blocks route gradient exactly where the reference says."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import gpa.models
from gpa.models.blocks import ConvBnAct, Residual, partial_add
from gpa.models.cross_stage import csp_stage
from gpa.models.layer_aggregation import ELANBlock
from gpa.models.one_shot import OSA
from gpa.models.sparse import exponential_sources

TABLE2 = {
    "darknet53",
    "cspdarknet53",
    "resnet50_darknet",
    "cspresnet50",
    "resnext50_darknet",
    "cspresnext50",
}
BIG = TABLE2 | {"vovnet99", "vovnet99_elan", "vovnet99_elan_csp"}
# The detectors (tests/models/test_detectors.py) return tuples of feature maps, not logits.
DETECTORS = {n for n in gpa.models.names() if gpa.models.describe(n).family == "yolo"}
CLASSIFIERS = [n for n in gpa.models.names() if n not in DETECTORS]
TOY = [n for n in CLASSIFIERS if n not in BIG]


def _meta(name: str, **knobs: object) -> nn.Module:
    with torch.device("meta"):
        return gpa.models.build(name, **knobs)


def _conv_weights(module: nn.Module, bn: bool = False) -> int:
    n = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))
    if bn:
        n += sum(
            p.numel()
            for m in module.modules()
            if isinstance(m, nn.BatchNorm2d)
            for p in m.parameters()
        )
    return n


@pytest.mark.slow  # every zoo entry at full size
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_entry_builds_and_runs_on_meta(name: str, meta_model) -> None:
    model = meta_model(name)
    shape = model.input_shape
    assert isinstance(shape, tuple) and len(shape) == 4 and shape[:2] == (1, 3)
    assert shape == gpa.models.describe(name).input_shape
    out = model(torch.zeros(shape, device="meta"))
    classes = gpa.models.describe(name).knobs["num_classes"]
    assert tuple(out.shape) == (1, classes)


@pytest.mark.slow  # every zoo entry at full size
@pytest.mark.parametrize("name", gpa.models.names())
def test_entry_traces_with_fx_without_inplace_ops(name: str, meta_model) -> None:
    model = meta_model(name)
    graph = torch.fx.symbolic_trace(model).graph
    inplace = [
        n.target
        for n in graph.nodes
        if n.op == "call_method" and n.target.endswith("_") and not n.target.startswith("__")
    ]
    assert not inplace, f"in-place methods in forward: {inplace}"
    assert not [m for m in model.modules() if getattr(m, "inplace", False)]


@pytest.mark.parametrize("name", TOY)
def test_toy_entry_runs_for_real(name: str) -> None:
    model = gpa.models.build(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: threading only adds contention
    try:
        with torch.no_grad():
            out = model.eval()(torch.randn(model.input_shape))
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(out).all()


@pytest.mark.slow  # every zoo classifier at full size
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_layer_names_are_readable(name: str, meta_model) -> None:
    model = meta_model(name)
    pattern = re.compile(r"^(fc|stem(\.\d+|\.conv)*\.conv|stages\.\d+\.[\w.]*conv\d?(\.conv)?)$")
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layers[-1] == "fc"
    bad = [n for n in layers if not pattern.match(n)]
    assert not bad, bad


@pytest.mark.slow  # a sweep of zoo knob variants
@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("plainnet", {"depth": 12, "width": 8}),
        ("resnet", {"blocks": 5, "bottleneck": True, "width": 32}),
        ("prn", {"blocks": 5, "ratio": 0.25, "asymmetric": True}),
        ("densenet", {"blocks": 4, "layers": 2, "bottleneck": True}),
        ("sparsenet", {"layers": 17, "aggregation": "sum"}),
        ("csp", {"base": "densenet", "fusion": "first", "split": "slice", "stages": 3}),
        ("csp", {"base": "resnext", "fusion": "none", "blocks": 1}),
        ("csp", {"base": "resnet", "fusion": "last", "split": "slice"}),
        ("vovnet", {"stages": 3, "osa_per_stage": (1, 2, 1), "elan": True, "csp": True}),
        ("vovnet", {"stages": 2, "csp": True}),
        ("elan", {"stages": 3, "pairs": 3}),
        ("elan_h", {"stages": 1, "convs": 6}),
    ],
)
def test_knob_variants_run_on_meta(name: str, knobs: dict) -> None:
    model = _meta(name, **knobs)
    out = model(torch.zeros(model.input_shape, device="meta"))
    assert out.shape[0] == 1
    torch.fx.symbolic_trace(model)


def test_deep_toy_input_keeps_a_2x2_map() -> None:
    assert _meta("csp", stages=6).input_shape == (1, 3, 128, 128)
    assert _meta("densenet", blocks=8).input_shape == (1, 3, 256, 256)


# --- structure facts of the reference -------------------------------------------------------


def test_plainnet_and_resnet_depth() -> None:
    convs = [m for m in gpa.models.plainnet(depth=5).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6  # stem + 5
    res = gpa.models.resnet(blocks=4, bottleneck=True, width=32)
    assert len([m for m in res.modules() if isinstance(m, nn.Conv2d)]) == 1 + 4 * 3


def test_prn_masks_first_ratio_of_channels() -> None:
    blocks = gpa.models.prn(blocks=3, ratio=0.25, width=16).stages[0].blocks
    assert [b.k for b in blocks] == [4, 4, 4]
    asym = gpa.models.prn(blocks=3, ratio=0.5, asymmetric=True, width=16).stages[0].blocks
    assert [(b.c_in, b.c_out, b.k) for b in asym] == [(16, 32, 16), (32, 16, 16), (16, 32, 16)]


def test_sparsenet_offsets_follow_reference() -> None:
    # Reference §1.5, L=8: layer 7 reads x6, x5, x3; the block outputs cat(x8, x7, x5, x1).
    assert exponential_sources(7) == [6, 5, 3]
    assert exponential_sources(9) == [8, 7, 5, 1]
    block = gpa.models.sparsenet().stages[0]
    assert block.sources[6] == (6, 5, 3) and block.output == (8, 7, 5, 1)
    summed = gpa.models.sparsenet(aggregation="sum", width=12).stages[0]
    assert {m.conv.out_channels for m in summed.layers} == {12}


def test_densenet_concat_widths() -> None:
    st = gpa.models.densenet(blocks=1, layers=4, growth=8, width=16).stages[0]
    assert [m.conv.in_channels for m in st.layers] == [16, 24, 32, 40]
    assert st.output == (0, 1, 2, 3, 4) and st.transition is None


@pytest.mark.parametrize(
    ("fusion", "tb", "t"),
    [("csp", True, True), ("first", False, True), ("last", True, False), ("none", False, False)],
)
def test_csp_fusion_variants_have_the_fig5_transitions(fusion: str, tb: bool, t: bool) -> None:
    for st in gpa.models.csp(fusion=fusion).stages:
        assert (st.partial_transition is not None) == tb
        assert (st.transition is not None) == t
        assert st.part1 is not None and st.split_at is None
    sliced = gpa.models.csp(fusion=fusion, split="slice").stages[0]
    assert sliced.part1 is None and sliced.split_at == 16


def test_vovnet99_has_99_conv_layers(meta_model) -> None:
    def convs(name: str) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in meta_model(name).modules())

    assert convs("vovnet99") == 3 + 16 * 6
    assert convs("vovnet99_elan") == 3 + 16 * 5 + 4  # one transition per stage
    assert convs("vovnet99_elan_csp") == 3 + 16 * 5 + 4 + 2 * 4  # + P1/P2 per stage


def test_table2_backbone_conv_layer_counts(meta_model) -> None:
    def convs(name: str) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in meta_model(name).modules())

    assert convs("darknet53") == 52 + 1  # 52 convs + classifier (reference §2.1)
    assert convs("cspdarknet53") == 72 + 1  # 72 convs + classifier (reference §2.2)


def test_osa_unit_conv_weights() -> None:
    # Reference §1.7: 256*160*9 + 4*160*160*9 + (256+800)*512.
    assert _conv_weights(OSA(256, 160, 5, 512)) == 1_830_912


def test_elan_p3_unit_conv_weights() -> None:
    # Reference §1.8: P3 ELAN c_in=256, w=128, c_out=512.
    blk = ELANBlock(256, 128, 512)
    assert _conv_weights(blk) == 917_504
    assert _conv_weights(blk, bn=True) == 920_064


def test_bottleneck_cspc_unit_conv_weights() -> None:
    # Reference §3: YOLOR-CSP's CSPC stage 3 (256->256, n=8, darknet blocks c_->c_->c_).
    from gpa.models.blocks import darknet_block

    st, c = csp_stage(
        256,
        lambda p: (nn.Sequential(*(darknet_block(p, p) for _ in range(8))), p),
        c_part1=128,
        c_part2=128,
        c_out=256,
    )
    assert c == 256
    assert _conv_weights(st) == 1_458_176
    assert _conv_weights(st, bn=True) == 1_463_552


# --- gradient routing of the shared blocks ----------------------------------------------


def test_partial_add_routes_gradient_to_the_first_channels_only() -> None:
    f = torch.zeros(1, 6, 2, 2, requires_grad=True)
    x = torch.ones(1, 4, 4, 4, requires_grad=True)
    y = partial_add(f, x, k=4, c_f=6, c_x=4, stride=2)
    assert y.shape == f.shape
    assert torch.equal(y[0, :, 1, 1], torch.tensor([1.0, 1, 1, 1, 0, 0]))
    y.sum().backward()
    assert torch.equal(f.grad, torch.ones_like(f))
    expected = torch.zeros(1, 4, 4, 4)
    expected[:, :, ::2, ::2] = 1
    assert torch.equal(x.grad, expected)


def test_partial_add_masked_and_wider_shortcut() -> None:
    x = torch.ones(1, 8, 2, 2, requires_grad=True)
    partial_add(torch.zeros(1, 8, 2, 2), x, k=2, c_f=8, c_x=8).sum().backward()
    assert x.grad[:, :2].eq(1).all() and x.grad[:, 2:].eq(0).all()
    x.grad = None
    y = partial_add(torch.zeros(1, 3, 2, 2), x, k=3, c_f=3, c_x=8)
    y.sum().backward()
    assert x.grad[:, :3].eq(1).all() and x.grad[:, 3:].eq(0).all()


@pytest.mark.parametrize("where", ["identity", "block"])
def test_residual_stopgrad(where: str) -> None:
    torch.manual_seed(0)
    block = Residual([ConvBnAct(4, 4, 3, act=None)], c_in=4, c_out=4, stopgrad=where).eval()
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    block(x).sum().backward()
    if where == "block":  # y = x + F(x.detach()): x gets the identity's gradient only
        assert torch.equal(x.grad, torch.ones_like(x))
    else:  # y = x.detach() + F(x): x gets F's gradient only
        x2 = x.detach().clone().requires_grad_(True)
        block.conv1(x2).sum().backward()
        assert torch.allclose(x.grad, x2.grad)
