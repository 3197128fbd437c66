"""Tests of gpa.plot and ``gpa plot``: what each figure shows, on small and large zoo models.

Expected numbers are derived by hand from the architectures (docs/semantics.md §5 and §8):

* ResNet with B basic blocks: fc has timestamp 1; block b's conv2 has shortest 2, its conv1
  shortest 3; the stem has timestamps 2, 4, …, 2B + 2 and C(B, k) paths of length 2 + 2k.
* PRN with 2 blocks, identity on the first 8 of 16 channels: the stem's channels 0–8 reach
  fc through the identities (timestamps 2, 4, 6); channels 8–16 only enter block 0's conv1
  (timestamps 4, 6). Block 0's conv2 splits the same way, (2, 4) and (4,).
* DenseNet with one dense block of 3 layers and no transition: fc reads the concatenation
  [stem 16 | layer0 8 | layer1 8 | layer2 8], so at round 2 the four convs receive gradient
  from fc through four different channel ranges.
* PlainNet of depth D: a chain of D + 1 convs and a linear; conv i has path length D + 3 − i.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from click.testing import CliRunner
from matplotlib.colors import to_hex
from torch import nn

import gpa
import gpa.models
import gpa.plot
from gpa.cli import main
from gpa.errors import GpaError

_CACHE: dict[tuple, gpa.Report] = {}


def report(name: str, channels: bool = True, **knobs: object) -> gpa.Report:
    """A zoo model analysed on the meta device, cached for the module."""
    key = (name, channels, tuple(sorted(knobs.items())))
    if key not in _CACHE:
        with torch.device("meta"):
            model = gpa.models.build(name, **knobs)
        _CACHE[key] = gpa.analyze(
            model, input_shape=model.input_shape, channels=channels, name=name
        )
    return _CACHE[key]


def patches(fig, prefix: str) -> list:
    return [p for p in fig.axes[0].patches if (p.get_gid() or "").startswith(prefix)]


def gids(fig, prefix: str) -> list[str]:
    return [p.get_gid() for p in patches(fig, prefix)]


def colour(patch) -> str:
    return to_hex(patch.get_facecolor())


R3 = [
    "stem.conv",
    *(f"stages.0.blocks.{b}.conv{i}.conv" for b in range(3) for i in (1, 2)),
    "fc",
]


# ------------------------------------------------------------------ timestamps (Fig. 7)


def test_timestamps_small_resnet_draws_every_layer_edge_and_stamp() -> None:
    fig = gpa.plot.timestamps(report("resnet", blocks=3))
    ax = fig.axes[0]
    assert gids(fig, "unit:") == [f"unit:{n}" for n in R3]
    assert gids(fig, "segment:") == []  # a ResNet has one segment per layer
    assert gids(fig, "loss") == ["loss"]
    # x labels: the layers in forward order, then the loss
    assert [t.get_text() for t in ax.get_xticklabels()] == [*R3, "loss"]
    # Data-flow edges: stem -> 3 conv1 + fc (4), conv1 -> conv2 (3), conv2 of block b ->
    # later conv1s and fc (3 + 2 + 1), fc -> loss (1): 14 in all, the shortcuts as arcs.
    edges = gids(fig, "edge:")
    assert len(edges) == 14
    assert "edge:stem.conv->stages.0.blocks.2.conv1.conv" in edges
    assert "edge:fc-><loss>" in edges
    arcs = [p for p in patches(fig, "edge:") if "rad=0" not in str(p.get_connectionstyle())]
    assert arcs  # skips are drawn bent
    # Timestamps written in the boxes: stem 2,4,6,8 (up to 4 values a line), conv1 of block 0
    # 3,5,7, fc 1.
    stamps = {
        t.get_gid(): t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("stamps")
    }
    assert stamps["stamps:unit:stem.conv"] == "2,4,6,8"
    assert stamps["stamps:unit:stages.0.blocks.0.conv1.conv"] == "3,5,7"
    assert stamps["stamps:unit:fc"] == "1"
    # Colour by shortest path: all conv1 (3) alike, stem and conv2 (2) alike, fc (1) apart.
    by = {p.get_gid()[5:]: colour(p) for p in patches(fig, "unit:")}
    conv1 = {by[n] for n in R3 if n.endswith("conv1.conv")}
    two = {by[n] for n in R3 if n.endswith("conv2.conv")} | {by["stem.conv"]}
    assert len(conv1) == 1 and len(two) == 1 and len({*conv1, *two, by["fc"]}) == 3
    # the colour bar is labelled and has one tick per length 1..3
    bar = fig.axes[1]
    assert bar.get_ylabel() == "shortest gradient path"
    assert list(bar.get_yticks()) == [1, 2, 3]


def test_timestamps_prn_draws_segments_as_stacked_parts() -> None:
    fig = gpa.plot.timestamps(report("prn", blocks=2))
    segs = gids(fig, "segment:")
    assert segs == [
        "segment:stem.conv:0-8",
        "segment:stem.conv:8-16",
        "segment:stages.0.blocks.0.conv2.conv:0-8",
        "segment:stages.0.blocks.0.conv2.conv:8-16",
    ]
    assert len(gids(fig, "unit:")) == 4  # the other four layers are one part each
    parts = {p.get_gid(): p for p in patches(fig, "segment:stem")}
    low, high = parts["segment:stem.conv:0-8"], parts["segment:stem.conv:8-16"]
    # stacked: same x, the first channels below, together the full box height
    assert low.get_x() == high.get_x()
    assert low.get_y() < high.get_y() == pytest.approx(low.get_y() + low.get_height())
    # each part has its own timestamps and colour (shortest 2 vs 4)
    texts = {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid()}
    # (channel ranges as the sources' labels write them: half-open, not "0-8" beside the
    # timestamps' inclusive "4–7")
    assert texts["stamps:segment:stem.conv:0-8"] == "2,4,6\nch [0:8]"
    assert texts["stamps:segment:stem.conv:8-16"] == "4,6\nch [8:16]"
    assert colour(low) != colour(high)


def test_segment_labels_stay_in_their_boxes(tmp_path) -> None:
    """Found by a new user: with a dozen layers (vertical labels), the labels of a split
    layer's channel segments ("ch [0:16]: 7,9,11,13") ran out of their half-height boxes
    and over each other. Each label lies within its box once drawn; the segments of one
    layer are labelled alike (both with their channel ranges, or both without)."""
    net = gpa.models.build("prn", blocks=6)  # 14 layers, 6 of them in two segments
    fig = gpa.plot.timestamps(gpa.analyze(net, input_shape=net.input_shape, channels=True))
    fig.savefig(tmp_path / "t.png")  # (laid out as saved)
    texts = {t.get_gid(): t for t in fig.axes[0].texts if str(t.get_gid()).startswith("stamps:")}
    boxes = {p.get_gid(): p for p in patches(fig, "segment:")}
    assert len(boxes) == 12
    by_layer: dict[str, set[bool]] = {}
    for gid, box in boxes.items():
        text = texts[f"stamps:{gid}"]
        inner, bounds = text.get_window_extent(), box.get_window_extent()
        clipped = text.get_clip_path() is not None
        assert clipped or (inner.y0 >= bounds.y0 - 1 and inner.y1 <= bounds.y1 + 1), gid
        by_layer.setdefault(gid.rsplit(":", 1)[0], set()).add(text.get_text().startswith("ch "))
    assert all(len(named) == 1 for named in by_layer.values())


@pytest.mark.slow  # over 1 s
def test_timestamps_large_model_collapses_to_a_legible_figure() -> None:
    r = report("resnet", blocks=75)  # 152 layers
    assert len(r.layers) == 152
    fig = gpa.plot.timestamps(r)
    drawn = gpa.plot.units(r)
    boxes = patches(fig, "unit:")
    assert gpa.plot.MAX_UNITS / 3 <= len(boxes) <= gpa.plot.MAX_UNITS
    assert len(boxes) == len(drawn)
    # every layer is drawn exactly once, in forward order
    assert [m for u in drawn for m in u.members] == list(r.layers)
    # the union of the drawn timestamps: 1 (fc), even 2..152 (stem, conv2), odd 3..151 (conv1)
    assert sorted({t for u in drawn for t in u.timestamps}) == list(range(1, 153))
    # legible: no text below 6.5 pt, a figure at most 40 inches wide
    ax = fig.axes[0]
    sizes = [t.get_fontsize() for t in ax.texts] + [t.get_fontsize() for t in ax.get_xticklabels()]
    assert min(sizes) >= 6.5
    assert fig.get_size_inches()[0] <= 40
    assert "collapsed" in ax.get_title()


@pytest.mark.slow  # over 1 s (a 75-block ResNet)
def test_timestamps_explicit_depth() -> None:
    fig = gpa.plot.timestamps(report("resnet", blocks=75), depth=2)
    assert gids(fig, "unit:") == ["unit:stem.conv", "unit:stages.0", "unit:fc"]
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["stem.conv", "stages.0 (150)", "fc", "loss"]
    with pytest.raises(GpaError, match="depth"):
        gpa.plot.timestamps(report("resnet", blocks=3), depth=-1)
    # depth 0: every layer its own unit
    every = gpa.plot.timestamps(report("resnet", blocks=3), depth=0)
    assert len(gids(every, "unit:")) == 8


def test_timestamps_without_channel_analysis() -> None:
    fig = gpa.plot.timestamps(report("prn", channels=False, blocks=2))
    assert gids(fig, "segment:") == []
    assert len(gids(fig, "unit:")) == 6


# ------------------------------------------------------------------ sources (Fig. 8)


def receiving(fig) -> dict[str, set[str]]:
    """Drawn part -> the colours of the sources filling it."""
    found: dict[str, set[str]] = {}
    for p in patches(fig, "source:"):
        _, unit, part, _ = p.get_gid().split(":", 3)
        found.setdefault(f"{unit}:{part}", set()).add(colour(p))
    return found


def legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_sources_resnet_one_source_everywhere() -> None:
    fig = gpa.plot.sources(report("resnet", blocks=3), t=2)
    got = receiving(fig)
    # round 2: the stem and the three conv2 receive from fc, through the same add
    assert set(got) == {"stem.conv:", *(f"stages.0.blocks.{b}.conv2.conv:" for b in range(3))}
    assert len(set().union(*got.values())) == 1
    assert legend(fig) == ["fc [0:16]"]
    assert "round 2" in fig.axes[0].get_title()
    hatched = [p.get_gid() for p in patches(fig, "unit:") if p.get_hatch()]
    assert sorted(hatched) == sorted(
        ["unit:fc", *(f"unit:stages.0.blocks.{b}.conv1.conv" for b in range(3))]
    )
    # the round-2 deliveries are drawn as arrows from fc
    assert len(gids(fig, "delivery:fc->")) == 4


def test_sources_prn_is_partial() -> None:
    fig = gpa.plot.sources(report("prn", blocks=2), t=2)
    got = receiving(fig)
    # only the identity's channels of the stem and of block 0's conv2 receive at round 2
    assert set(got) == {
        "stem.conv:0-8",
        "stages.0.blocks.0.conv2.conv:0-8",
        "stages.0.blocks.1.conv2.conv:",
    }
    assert sorted(legend(fig)) == ["fc [0:16]", "fc [0:8]"]
    hatched = [p.get_gid() for p in fig.axes[0].patches if p.get_hatch()]
    assert "segment:stem.conv:8-16" in hatched and len(hatched) == 8 - 3


def test_sources_densenet_different_channel_ranges_of_one_round() -> None:
    fig = gpa.plot.sources(report("densenet", blocks=1, layers=3), t=2)
    got = receiving(fig)
    assert len(got) == 4
    assert len(set().union(*got.values())) == 4  # one colour per channel range
    assert sorted(legend(fig)) == ["fc [0:16]", "fc [16:24]", "fc [24:32]", "fc [32:40]"]


def test_sources_round_one_is_the_loss() -> None:
    fig = gpa.plot.sources(report("resnet", blocks=3), t=1)
    assert set(receiving(fig)) == {"fc:"}
    assert legend(fig) == ["<loss> [0:10]"]
    with pytest.raises(GpaError, match="round"):
        gpa.plot.sources(report("resnet", blocks=3), t=0)


def test_sources_without_channel_analysis_names_layers() -> None:
    fig = gpa.plot.sources(report("prn", channels=False, blocks=2), t=2)
    # at layer level the stem and both conv2 receive at round 2, all from fc
    assert set(receiving(fig)) == {
        "stem.conv:",
        "stages.0.blocks.0.conv2.conv:",
        "stages.0.blocks.1.conv2.conv:",
    }
    assert legend(fig) == ["fc"]


@pytest.mark.slow  # over 1 s
def test_sources_large_model_collapsed() -> None:
    r = report("resnet", blocks=75)
    fig = gpa.plot.sources(r, t=2)
    # collapsed: sources named by the unit they are drawn in; at round 2 only fc sends
    assert legend(fig) == ["fc"]
    hatched = [p.get_gid() for p in patches(fig, "unit:") if p.get_hatch()]
    assert hatched == ["unit:fc"]  # every other unit holds the stem or a conv2
    assert len(patches(fig, "unit:")) <= gpa.plot.MAX_UNITS


# ------------------------------------------------------------------ profile


def line(fig, gid: str) -> list[float]:
    (found,) = [x for x in fig.axes[0].lines if x.get_gid() == gid]
    return found.get_ydata().tolist()


def test_profile_overlays_models() -> None:
    fig = gpa.plot.profile(
        report("plainnet", channels=False, depth=3), report("resnet", channels=False, blocks=2)
    )
    assert line(fig, "shortest:plainnet") == [5, 4, 3, 2, 1]
    assert line(fig, "longest:plainnet") == [5, 4, 3, 2, 1]
    assert line(fig, "shortest:resnet") == [2, 3, 2, 3, 2, 1]
    assert line(fig, "longest:resnet") == [6, 5, 4, 3, 2, 1]
    assert sorted(legend(fig)) == sorted(
        ["plainnet: shortest", "plainnet: longest", "resnet: shortest", "resnet: longest"]
    )
    bands = [c.get_gid() for c in fig.axes[0].collections if c.get_gid()]
    assert {"band:plainnet", "band:resnet"} <= set(bands)
    # every timestamp is a dot: the resnet stem alone has 3 (2, 4, 6)
    (dots,) = [c for c in fig.axes[0].collections if c.get_gid() == "stamps:resnet"]
    assert len(dots.get_offsets()) == 3 + 2 + 2 + 1 + 1 + 1


@pytest.mark.slow  # about 1 s (a 150-conv PlainNet)
def test_profile_large() -> None:
    fig = gpa.plot.profile(report("plainnet", channels=False, depth=150))
    assert line(fig, "shortest:plainnet") == list(range(152, 0, -1))
    with pytest.raises(GpaError, match="names"):
        gpa.plot.profile(report("plainnet", channels=False, depth=3), names=["a", "b"])


# ------------------------------------------------------------------ histogram


def bars(fig) -> dict[int, float]:
    return {int(p.get_gid()[4:]): p.get_height() for p in patches(fig, "bar:")}


@pytest.mark.slow  # a 75-block ResNet
def test_histogram_small_and_large() -> None:
    fig = gpa.plot.histogram(report("resnet", blocks=3), "stem.conv")
    assert bars(fig) == {2: 1, 4: 3, 6: 3, 8: 1}
    assert fig.axes[0].get_yscale() == "linear"
    assert "8 path(s)" in fig.axes[0].get_title()
    big = gpa.plot.histogram(report("resnet", blocks=75), "stem.conv")
    heights = bars(big)
    assert heights == {2 + 2 * k: float(math.comb(75, k)) for k in range(76)}
    assert big.axes[0].get_yscale() == "log"


def test_histogram_of_a_file_target_shows_its_whole_title_and_whole_counts(tmp_path) -> None:
    """Found by a new user: the title of a model named by a long file path ran off the
    figure (its longest path cut away) and the count axis had ticks at 0.5. By hand: a
    chain of three Linear layers, the first has one path of length 3."""
    long = f"{tmp_path}/a/very/long/checkout/of/a/research/repository/nets/model.py:build"
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    fig = gpa.plot.histogram(gpa.analyze(net, input_shape=(1, 2), name=long), "0")
    ax = fig.axes[0]
    assert ax.get_title().splitlines() == [long, "0 — 1 path(s), shortest 3, longest 3"]
    assert all(t == int(t) for t in ax.get_yticks())


def test_histogram_unknown_layer() -> None:
    with pytest.raises(GpaError, match="did you mean stem.conv"):
        gpa.plot.histogram(report("resnet", blocks=3), "stem.cnv")


@pytest.mark.parametrize("name", ["stem", "nolayer", "stem.cnv"])
def test_a_layer_no_report_has_is_said_alike_by_plot_and_explain(name: str) -> None:
    """Found by a new user: ``gpa explain`` suggested the layers a block holds ("stem"
    holds stem.conv) where ``gpa plot --kind histogram`` suggested nothing; one message."""
    from gpa.render.explain import explanation

    analysed = report("resnet", blocks=3)
    with pytest.raises(GpaError) as plotted:
        gpa.plot.histogram(analysed, name)
    with pytest.raises(GpaError) as explained:
        explanation(analysed, name)
    assert str(plotted.value) == str(explained.value)
    assert str(plotted.value).startswith(f"resnet has no layer named {name!r}")


# ------------------------------------------------------------------ scaling (Table 1)


def test_scaling_from_result_dicts() -> None:
    """A hand-written result (the documented to_dict() layout) is drawn as given."""
    plain = {
        "model": "plainnet",
        "points": [{"layers": n, "max_shortest": n, "longest": n} for n in (4, 8, 16)],
        "fits": {
            "max_shortest": {"growth": "O(N)", "a": 0.0, "b": 1.0},
            "longest": {"growth": "O(N)", "a": 0.0, "b": 1.0},
        },
    }
    res = {
        "model": "resnet",
        "points": [{"layers": n, "max_shortest": 3, "longest": n} for n in (6, 10, 18)],
        "fits": {
            "max_shortest": {"growth": "O(1)", "a": 3.0, "b": 0.0},
            "longest": {"growth": "O(N)", "a": 0.0, "b": 1.0},
        },
    }
    fig = gpa.plot.scaling([plain, res])
    left, right = fig.axes
    assert left.get_xscale() == left.get_yscale() == "log"
    assert [t.get_text() for t in left.get_legend().get_texts()] == [
        "plainnet: O(N)",
        "resnet: O(1)",
    ]
    assert [t.get_text() for t in right.get_legend().get_texts()] == [
        "plainnet: O(N)",
        "resnet: O(N)",
    ]
    (pts,) = [x for x in left.lines if x.get_gid() == "points:max_shortest:resnet"]
    assert pts.get_ydata().tolist() == [3, 3, 3]
    (fit,) = [x for x in left.lines if x.get_gid() == "fit:max_shortest:resnet"]
    assert set(fit.get_ydata().tolist()) == {3.0}
    (fit,) = [x for x in left.lines if x.get_gid() == "fit:max_shortest:plainnet"]
    assert fit.get_xdata().tolist() == pytest.approx(fit.get_ydata().tolist())
    with pytest.raises(GpaError, match="scaling"):
        gpa.plot.scaling([{"model": "x"}])


def test_scaling_of_a_real_study() -> None:
    result = gpa.scaling("resnet", "blocks", [1, 2, 4], width=4)
    fig = gpa.plot.scaling(result)
    # ResNet keeps max_shortest at 3: O(1) (paper, Table 1)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["resnet: O(1)"]
    (pts,) = [x for x in fig.axes[1].lines if x.get_gid() == "points:longest:resnet"]
    # 1 + 2B + 1 layers; longest path 2B + 2
    assert pts.get_xdata().tolist() == [4, 6, 10]
    assert pts.get_ydata().tolist() == [4, 6, 10]


# ------------------------------------------------------------------ draw / save / CLI

MAGIC = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}


@pytest.mark.slow  # over 1 s
def test_draw_and_save(tmp_path: Path) -> None:
    r = report("resnet", blocks=3)
    with pytest.raises(GpaError, match="histogram needs --layer"):
        gpa.plot.draw("histogram", [r])
    with pytest.raises(GpaError, match="unknown plot kind"):
        gpa.plot.draw("pie", [r])
    with pytest.raises(GpaError, match="one model"):
        gpa.plot.draw("timestamps", [r, r])
    fig = gpa.plot.draw("sources", [r], t=2)
    for ext, magic in MAGIC.items():
        gpa.plot.save(fig, tmp_path / f"f.{ext}")
        assert (tmp_path / f"f.{ext}").read_bytes().startswith(magic)
    with pytest.raises(GpaError, match=r"\.png, \.svg or \.pdf"):
        gpa.plot.save(fig, tmp_path / "f.jpg")


def gpa_plot(*args: str):
    return CliRunner().invoke(main, ["plot", *args], catch_exceptions=False)


@pytest.mark.slow  # a sweep: every kind and format through the CLI
@pytest.mark.parametrize("kind", ["timestamps", "sources", "profile", "histogram"])
@pytest.mark.parametrize("ext", ["png", "svg", "pdf"])
def test_cli_plot_every_kind_and_format(tmp_path: Path, kind: str, ext: str) -> None:
    out = tmp_path / f"{kind}.{ext}"
    extra = ["--layer", "stem.conv"] if kind == "histogram" else []
    result = gpa_plot("gpa.models:resnet", "-k", "blocks=2", "--kind", kind, *extra, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(MAGIC[ext])
    assert f"wrote {out}" in result.output


def test_cli_plot_svg_content(tmp_path: Path) -> None:
    """The SVG keeps the artists' ids: one part per PRN segment, the round-2 sources."""
    out = tmp_path / "prn.svg"
    result = gpa_plot(
        "gpa.models:prn", "-k", "blocks=2", "--kind", "sources", "--round", "2", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert 'id="segment:stem.conv:8-16"' in svg
    assert svg.count('id="source:') == 3
    out = tmp_path / "collapsed.svg"
    result = gpa_plot("gpa.models:resnet", "-k", "blocks=3", "--depth", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text().count('id="unit:') == 3  # stem.conv, stages.0, fc


def test_cli_plot_profile_of_two_targets(tmp_path: Path) -> None:
    out = tmp_path / "p.svg"
    result = gpa_plot("gpa.models:vovnet", "gpa.models:elan", "--kind", "profile", "-o", str(out))
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert svg.count('id="shortest:') == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "histogram"], "needs --layer"),
        (["--kind", "histogram", "--layer", "nope"], "no layer named 'nope'"),
        (["-o", "x.jpg"], ".png, .svg or .pdf"),
        (["gpa.models:elan", "--kind", "sources"], "only --kind profile overlays"),
    ],
)
def test_cli_plot_user_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = gpa_plot("gpa.models:resnet", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_sources_round_default_and_range(tmp_path) -> None:
    """Issue 15 §6. resnet with 2 blocks: the loss feeds fc alone at round 1; at round 2
    fc feeds the second block's conv2 and the residual stream's other layers, so the
    default is round 2; the longest path bounds the rounds."""
    import gpa.models
    from gpa.errors import GpaError
    from gpa.render.plot import busiest_first_round, sources

    m = gpa.models.build("resnet", blocks=2)
    report = gpa.analyze(m, input_shape=m.input_shape)
    at = {t: [n for n, r in report.layers.items() if t in r.timestamps] for t in (1, 2)}
    assert len(at[1]) == 1 and len(at[2]) > 1  # by the definition, independently
    assert busiest_first_round(report) == 2
    longest = report.network.longest
    with pytest.raises(GpaError, match=f"rounds 1 to {longest}"):
        sources(report, longest + 1)
    result = CliRunner().invoke(
        main,
        ["plot", "gpa.models:resnet", "-k", "blocks=2", "--kind", "sources",
         "--round", str(longest + 1), "-o", str(tmp_path / "s.png")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"rounds 1 to {longest}" in result.output


@pytest.mark.parametrize("kind", ["gradnorm", "duplication"])
def test_cli_draws_measured_kinds(tmp_path, kind) -> None:
    """`gpa plot --kind gradnorm|duplication` measures the target (gpa measure) and draws it."""
    out = tmp_path / f"{kind}.png"
    result = CliRunner().invoke(
        main, ["plot", "gpa.models:plainnet", "-k", "depth=2", "--kind", kind, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("blocks", [2, 30])
def test_colour_bar_ticks_are_whole_path_lengths(blocks) -> None:
    """Issue 15 §6: shortest path lengths are integers, so are the colour bar's ticks,
    for a short range and a long one (a 30-block plainnet: 1 to 32)."""
    import gpa.models

    m = gpa.models.build("plainnet", depth=blocks)
    fig = gpa.plot.timestamps(gpa.analyze(m, input_shape=m.input_shape))
    fig.canvas.draw()
    bar = fig.axes[-1]
    ticks = [t for t in bar.get_yticks() if bar.get_ylim()[0] <= t <= bar.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_profile_names_curves_drawn_over_each_other() -> None:
    """Issue 15 §6: two models with identical paths (resnet and prn at 3 blocks: PRN's
    partial residual keeps every layer-level path of ResNet, semantics §5 W5) would hide
    each other's curves; the legend says so."""
    import gpa.models

    reports = []
    for name in ("resnet", "prn"):
        m = gpa.models.build(name, blocks=3)
        reports.append(gpa.analyze(m, input_shape=m.input_shape, name=name))
    assert [r.shortest for r in reports[0].layers.values()] == [
        r.shortest for r in reports[1].layers.values()
    ]
    labels = gpa.plot.profile(*reports).axes[0].get_legend_handles_labels()[1]
    assert "prn (same curves as resnet): shortest" in labels
    assert "resnet: shortest" in labels


def test_a_collapsed_unit_is_coloured_by_its_worst_layer() -> None:
    """A collapsed unit was coloured by the first of its timestamps — its best layer's
    shortest path — so a figure hid the model's longest shortest path (found by a review
    on RT-DETR: the colour bar stopped at 11, max_shortest 14). By hand, in a residual
    stage each conv1 reaches the loss through its conv2, the identity sums and fc (3),
    each conv2 through the sums and fc (2): the stage's worst is 3, its best 2."""
    r = report("resnet", blocks=3)
    (stage,) = [u for u in gpa.plot.units(r, depth=2) if u.name == "stages.0"]
    assert stage.timestamps[0] == 2
    assert [p.shortest for p in stage.parts] == [3]
    fig = gpa.plot.timestamps(r, depth=2)
    bar = fig.axes[1]  # the colour bar spans the path lengths drawn: stem's 2 ... stage's 3
    assert bar.get_ylim()[1] >= 3.5


@pytest.mark.parametrize("kind", ["timestamps", "histogram", "gradnorm"])
def test_several_targets_for_a_one_model_figure_are_refused_before_any_analysis(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two targets for a figure of one model were refused only after both were analysed
    or measured (seconds each), as "draws one measurement, not a report" (found by a
    review of every surface): refused first, naming the count."""
    import importlib

    import gpa.api

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("analysed before the request was checked")

    monkeypatch.setattr(gpa.api, "analyze_model", never)
    # the package, not gpa.measure the function (which that name is once gpa exported it)
    monkeypatch.setattr(importlib.import_module("gpa.measure"), "measure_target", never)
    result = CliRunner().invoke(
        main, ["plot", "gpa.models:resnet", "gpa.models:prn", "--kind", kind]
    )
    assert result.exit_code == 2
    assert f"--kind {kind} draws one" in result.output
    assert "2 targets were given; only --kind profile overlays several" in result.output


def test_an_unreachable_layer_is_named_in_the_legend() -> None:
    """Found by a new user: an unreachable layer (YOLO's DFL convolution) is a white box
    with "-" that no legend explained; the legend names it, and is absent where every
    layer is reached."""

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.dead = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.b(self.a(x)) + self.dead(x).detach()

    fig = gpa.plot.timestamps(gpa.analyze(Detached(), input_shape=(1, 2)))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "no gradient (unreachable)"
    ]
    reached = gpa.plot.timestamps(gpa.analyze(nn.Sequential(nn.Linear(2, 2)), input_shape=(1, 2)))
    assert reached.axes[0].get_legend() is None
