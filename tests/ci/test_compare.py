"""Tests of ``gpa compare`` and :func:`gpa.compare.compare`.

``tests/data/check/chain.py``: ``layers.i`` of a chain of depth d has shortest = longest
= d − i (the last layer feeds the loss: 1). The project fixture
``tests/data/check/project/pyproject.toml`` names ``short`` (a chain of 2) and ``plain``
(``gpa.models:plainnet`` with depth 2: stem 4, blocks 3 and 2, fc 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

import gpa
from gpa.api import analyze_target
from gpa.ci.baseline import Snapshot, dump_baseline
from gpa.cli import main
from gpa.compare import compare, format_comparison, load_side
from gpa.errors import GpaError
from gpa.options import AnalysisOptions

DATA = Path(__file__).resolve().parents[1] / "data" / "check"
CHAIN = str(DATA / "chain.py")
CONFIG = str(DATA / "project" / "pyproject.toml")


@pytest.fixture(autouse=True)
def in_check_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["compare", *args], catch_exceptions=False)


def chain(depth: int, **knobs: object) -> gpa.Report:
    return analyze_target(CHAIN, {"depth": depth, **knobs})


def test_compare_two_reports() -> None:
    c = compare(chain(2), chain(3))
    # depth 2: 2, 1 (mean 1.5); depth 3: 3, 2, 1 (mean 2)
    assert c.network == {
        "layers": (2, 3),
        "max_shortest": (2, 3),
        "min_shortest": (1, 1),
        "mean_shortest": (1.5, 2.0),
        "longest": (2, 3),
        "unreachable": (0, 0),
        "params": (40, 60),  # Linear(4, 4): 16 + 4 each
        "flops": (64, 96),  # 2 · 4 · 4 each, on one row
        "count_convention": ("torch", "torch"),
    }
    assert [(d.name, d.shortest, d.longest) for d in c.changed] == [
        ("layers.0", (2, 3), (2, 3)),
        ("layers.1", (1, 2), (1, 2)),
    ]
    assert (c.same, c.only_a, c.only_b) == (0, [], ["layers.2"])


def test_compare_identical_models_has_no_changes() -> None:
    c = compare(chain(3), chain(3))
    assert (c.changed, c.same, c.only_a, c.only_b) == ([], 3, [], [])


def test_compare_unreachable_layers() -> None:
    # cut=0 detaches layers.0: unreachable on the B side; spare exists only on B
    c = compare(chain(2), chain(2, cut=0, spare=True))
    assert c.network["unreachable"] == (0, 2)
    assert [(d.name, d.shortest) for d in c.changed] == [("layers.0", (2, None))]
    assert c.only_b == ["spare"]


def test_compare_a_report_with_a_snapshot() -> None:
    c = compare(chain(3), Snapshot.of(chain(3)))
    assert c.same == 3 and not c.changed


def test_format_comparison_table() -> None:
    # by hand: Linear(4, 4) holds 16 + 4 parameters and costs 2 · 4 · 4 FLOPs on one row
    text = format_comparison(compare(chain(2), chain(3), names=("two", "three")))
    assert text == (
        "A: two\n"
        "B: three\n"
        "\n"
        "metric                A      B  delta\n"
        "layers                2      3     +1\n"
        "max_shortest          2      3     +1\n"
        "min_shortest          1      1\n"
        "mean_shortest      1.50   2.00  +0.50\n"
        "longest               2      3     +1\n"
        "unreachable           0      0\n"
        "params               40     60    +20\n"
        "flops                64     96    +32\n"
        "count_convention  torch  torch\n"
        "\n"
        "layers in both: 2, differing: 2\n"
        "layer     shortest A  shortest B  delta  longest A  longest B  delta\n"
        "layers.0           2           3     +1          2          3     +1\n"
        "layers.1           1           2     +1          1          2     +1\n"
        "only in B (1): layers.2\n"
    )


def test_cli_compare_configured_models_as_json() -> None:
    result = run("short", "plain", "--config", CONFIG, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["a"] == "short" and data["b"] == "plain"
    assert data["network"]["max_shortest"] == [2, 4]
    # no layer names in common: nn.Sequential indices vs zoo names
    assert data["layers"]["changed"] == []
    assert data["layers"]["only_a"] == ["0", "1"]
    assert data["layers"]["only_b"] == [
        "stem.conv",
        "stages.0.blocks.0.conv",
        "stages.0.blocks.1.conv",
        "fc",
    ]


def test_cli_compare_with_a_baseline_file(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(dump_baseline({"c": Snapshot.of(chain(3))}))
    result = run(CHAIN, str(base), "-k", "depth=4", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["network"]["max_shortest"] == [4, 3]
    assert data["layers"]["changed"][0] == {
        "name": "layers.0",
        "shortest": [4, 3],
        "longest": [4, 3],
    }
    assert data["layers"]["only_a"] == ["layers.3"]
    # a baseline with several models needs FILE:MODEL
    base.write_text(dump_baseline({"c": Snapshot.of(chain(3)), "d": Snapshot.of(chain(2))}))
    result = run(CHAIN, str(base))
    assert result.exit_code == 2
    assert "holds 2 models; name one as" in result.stderr
    result = run(CHAIN, f"{base}:d", "-k", "depth=2", "--format", "json")
    assert json.loads(result.stdout)["layers"]["same"] == 2


def test_cli_compare_with_a_saved_report(tmp_path: Path) -> None:
    saved = tmp_path / "report.json"
    saved.write_text(chain(2).to_json())
    result = run(str(saved), CHAIN, "-k", "depth=2")
    assert result.exit_code == 0
    assert "layers in both: 2, differing: 0\n" in result.stdout


def test_load_side_errors(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(dump_baseline({"c": Snapshot.of(chain(2))}))
    with pytest.raises(GpaError, match="has no model 'x'"):
        load_side(f"{base}:x")
    with pytest.raises(GpaError, match="cannot read"):
        load_side(str(tmp_path / "none.json"))
    assert run("missing.py", CHAIN).exit_code == 2


def test_cli_compare_channels_adds_gradient_combinations(tmp_path: Path) -> None:
    """At channel level each linear of the chain is one segment with its own combination:
    layers.2 gets round 1 from the loss, layers.1 round 2 from layers.2, layers.0 round 3
    from layers.1, so 3 distinct combinations (docs/semantics.md §8). Without --channels the
    metric is not compared; a side saved without channels shows none."""
    result = run(CHAIN, CHAIN, "--channels", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["network"]["gradient_combinations"] == [3, 3]
    result = run(CHAIN, CHAIN, "--format", "json")
    assert "gradient_combinations" not in json.loads(result.stdout)["network"]
    saved = tmp_path / "report.json"
    saved.write_text(chain(3).to_json())
    result = run(str(saved), CHAIN, "--channels")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert ["gradient_combinations", "-", "3"] in [line.split() for line in lines]
    # --channels analysed B; the saved A stays as saved, and the output says so
    assert lines[-2:] == [
        f"  - A ({saved}) is compared as saved: the options given (channels) do not apply to it",
        "  - A and B were analysed otherwise (channels false -> true)",
    ]
    # a side saved at channel level took --channels already: nothing to say of it
    saved.write_text(analyze_target(CHAIN, {"depth": 3}, AnalysisOptions(channels=True)).to_json())
    result = run(str(saved), CHAIN, "--channels")
    assert result.exit_code == 0 and "notes:" not in result.stdout


def _pair(groups: int, channels: bool) -> gpa.Report:
    """Two 1×1 convolutions, the second in ``groups`` groups."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1, groups=groups))
    return gpa.analyze(net, input_shape=(1, 3, 2, 2), channels=channels)


def test_compare_channels_finds_layers_differing_only_in_their_combinations(
    tmp_path: Path,
) -> None:
    """By hand (docs/semantics.md §8): in both nets layer 0 has shortest = longest = 2 and
    layer 1 has 1. With a plain second convolution, layer 0 is one segment fed by all of
    layer 1's input channels at round 2 (1 combination); with two groups, its channels 0–1
    feed group 0 and 2–3 group 1: two segments with different sources (2 combinations).
    Layer 1 is one segment fed by the loss in both. Network: {(2, 1[0:4]), (1, loss)} = 2
    against {(2, 1 group 0), (2, 1 group 1), (1, loss)} = 3."""
    c = compare(_pair(1, True), _pair(2, True))
    assert c.network["gradient_combinations"] == (2, 3)
    assert [d.to_dict() for d in c.changed] == [
        {"name": "0", "shortest": [2, 2], "longest": [2, 2], "gradient_combinations": [1, 2]}
    ]
    assert c.same == 1
    text = format_comparison(c).splitlines()
    assert "layers in both: 2, differing: 1" in text
    assert text[-1].split() == ["0", "2", "2", "2", "2", "1", "2", "+1"]
    assert text[-2].split()[-3:] == ["combinations", "B", "delta"]
    # a saved channel-level report compares so too; one without channels is not compared
    saved = tmp_path / "grouped.json"
    saved.write_text(_pair(2, True).to_json())
    assert compare(_pair(1, True), load_side(str(saved))).changed == c.changed
    plain = compare(_pair(1, True), _pair(2, False))
    assert (plain.changed, plain.same) == ([], 2)
    assert plain.network["gradient_combinations"] == (2, None)


def test_a_baseline_model_named_with_colons_is_found(tmp_path: Path) -> None:
    """Baselines name models by their TARGETs, which hold colons (``file.py:factory``,
    ``ultralytics:yolov9t.yaml``); ``base.json:MODEL`` split at its last colon and looked
    for a file ``base.json:file.py``."""
    base = tmp_path / "base.json"
    target = f"{CHAIN}:chain"
    base.write_text(dump_baseline({target: Snapshot.of(chain(2)), "other": Snapshot.of(chain(3))}))
    assert load_side(f"{base}:{target}").layers == {"layers.0": (2, 2), "layers.1": (1, 1)}
    result = run(f"{base}:{target}", CHAIN, "-k", "depth=2", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["layers"]["changed"], data["layers"]["same"]) == ([], 2)
    assert data["notes"] == [
        f"A ({base}:{target}) is compared as saved: the options given (-k depth) do not apply to it"
    ]


def test_many_layers_of_one_side_are_listed_briefly_in_text() -> None:
    """A chain of 2 against one of 20: 18 layers only in B, a line of each name before."""
    c = compare(chain(2), chain(20))
    assert len(c.only_b) == 18  # layers.2 … layers.19, all in the JSON
    (line,) = [line for line in format_comparison(c).splitlines() if line.startswith("only")]
    names = ", ".join(f"layers.{i}" for i in range(2, 14))
    assert line == f"only in B (18): {names}, … 6 more (--format json lists all)"


def test_cli_compare_counts_in_the_convention_asked() -> None:
    """``--count-convention`` had no visible effect: compare showed no parameters nor FLOPs
    (found by a surface review). By hand, darknet counts weights only: 16 per Linear(4, 4)."""
    result = run(CHAIN, CHAIN, "-k", "depth=2", "--count-convention", "darknet", "--format", "json")
    assert result.exit_code == 0, result.output
    network = json.loads(result.stdout)["network"]
    assert network["params"] == [32, 32]
    assert network["flops"] == [64, 64]
    assert network["count_convention"] == ["darknet", "darknet"]


@pytest.mark.parametrize("side", ["A", "B"])
def test_a_side_that_cannot_be_read_is_named(side: str) -> None:
    """Which side failed, even where both name the same file (before, the error alone)."""
    args = ["untraceable.py", CHAIN] if side == "A" else [CHAIN, "untraceable.py"]
    result = run(*args, "--tracer", "fx")
    assert result.exit_code == 2
    assert result.output.startswith(
        f"error: {side} (untraceable.py): torch.fx cannot trace Branchy"
    )
    result = run(CHAIN, f"{CHAIN}:nothing")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: B ({CHAIN}:nothing): ")


def test_layers_of_a_baseline_side_are_listed_in_forward_order(tmp_path: Path) -> None:
    """Found by a new user: compared with a baseline file (which holds its layers sorted
    by name), the layers were listed by name (layers.10 before layers.2; a stem last). By
    hand: chains of 12 and 11 layers share layers.0 … layers.10, each one round apart."""
    base = tmp_path / "base.json"
    base.write_text(dump_baseline({"c": Snapshot.of(chain(12))}))
    forward = [f"layers.{i}" for i in range(11)]
    data = json.loads(run(str(base), CHAIN, "-k", "depth=11", "--format", "json").stdout)
    assert [d["name"] for d in data["layers"]["changed"]] == forward
    assert [d["shortest"] for d in data["layers"]["changed"]] == [
        [12 - i, 11 - i] for i in range(11)
    ]
    text = run(str(base), CHAIN, "-k", "depth=11").stdout.splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("layer "))
    assert [line.split()[0] for line in text[start + 1 : start + 12]] == forward
