"""A baseline records how each model was analysed; numbers read otherwise are not compared.

``tests/data/check/two_heads.py``, by hand (train mode, every output): ``head`` and
``aux`` 1, ``block.1`` 2, ``block.0`` 3, ``stem`` shortest 2 and longest 4. Left out of
the loss, switched to eval mode or read with ``block`` as a leaf, its layers' paths
change for that alone — the baseline must say so rather than call them regressions or
improvements (docs/ci.md, "Baselines").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from gpa.api import analyze_target
from gpa.ci.baseline import Snapshot, regressions
from gpa.cli import main
from gpa.compare import compare
from gpa.options import AnalysisOptions

DATA = Path(__file__).resolve().parents[1] / "data" / "check"
TWO = str(DATA / "two_heads.py")


@pytest.fixture(autouse=True)
def in_check_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)


def gpa_cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def written(tmp_path: Path, *options: str) -> Path:
    path = tmp_path / "base.json"
    result = gpa_cli("check", TWO, *options, "--write-baseline", str(path), "--allow-empty")
    assert result.exit_code == 0, result.output
    return path


# (options the baseline was written with, options checked with, the difference named)
OTHERWISE = [
    (("--outputs", "1"), (), "outputs 1 -> all"),
    ((), ("--outputs", "0"), "outputs all -> 0"),
    ((), ("--eval",), "train true -> false"),
    (("--eval",), ("--train",), "train false -> true"),
    ((), ("--leaf", "block"), "leaf_modules none -> block"),
    ((), ("--layer-type", "Linear"), "layer_types default -> torch.nn.Linear"),
    ((), ("--input-shape", "2,4"), "inputs 1×4 float32 -> 2×4 float32"),
    # fx and export agree here, but not wherever one cannot see a layer (§1.6)
    ((), ("--tracer", "export"), "frontend fx -> export"),
]


@pytest.mark.parametrize(("before", "now", "difference"), OTHERWISE)
def test_a_baseline_is_not_compared_with_numbers_read_otherwise(
    tmp_path: Path, before: tuple[str, ...], now: tuple[str, ...], difference: str
) -> None:
    """Before, each pair passed or failed on numbers read otherwise: the baseline of
    ``--outputs 1`` (block and head unreachable) "improved" when checked with every output,
    and the one of every output "regressed" under ``--outputs 0`` or ``--eval`` (aux
    unreachable)."""
    path = written(tmp_path, *before)
    result = gpa_cli("check", TWO, *now, "--baseline", str(path))
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0] == (
        f"FAIL {TWO}: baseline: not compared: analysed otherwise than the baseline records "
        f"({difference}); write the baseline again (--write-baseline) if that is intended"
    )
    # the same settings again: compared, and nothing changed
    result = gpa_cli("check", TWO, *before, "--baseline", str(path), "-v")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"PASS {TWO}: baseline: ok (unchanged)"


def test_settings_from_the_configuration_are_recorded_as_well(tmp_path: Path) -> None:
    """[tool.gpa] sets a model's options as the command line does: a baseline written
    with the model in eval mode is not compared once the table says train mode."""
    config = tmp_path / "pyproject.toml"
    table = f'[tool.gpa.models.two]\ntarget = "{TWO}"\n'
    config.write_text(table + "train = false\n")
    path = tmp_path / "base.json"
    result = gpa_cli("check", "--config", str(config), "--write-baseline", str(path))
    assert result.exit_code == 0, result.output
    recorded = json.loads(path.read_text())["models"]["two"]
    assert recorded["options"]["train"] is False
    assert recorded["inputs"] == [{"shape": [1, 4], "dtype": "float32"}]
    assert recorded["tracer"] == "fx"
    config.write_text(table)
    result = gpa_cli("check", "--config", str(config), "--baseline", str(path))
    assert result.exit_code == 1
    assert "not compared: analysed otherwise than the baseline records (train false -> true)" in (
        result.stdout
    )


def test_what_leaves_every_path_as_it_is_is_named_not_failed(tmp_path: Path) -> None:
    """The channel analysis and the count convention change no path (docs/semantics.md
    §8, §9): compared, and named. Parameters by hand: 80 counting weights and biases, 64
    counting weights only (16 + 2 × 16 + 2 × 8). The frontend asked for is no setting of
    its own: asking for fx, which auto ran, changes nothing."""
    path = written(tmp_path)
    result = gpa_cli(
        "check", TWO, "--baseline", str(path), "-v", "--channels", "--count-convention", "darknet"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"PASS {TWO}: baseline: ok (channels false -> true; count_convention torch -> "
        "darknet; params 80 -> 64)"
    )
    result = gpa_cli("check", TWO, "--baseline", str(path), "-v", "--tracer", "fx")
    assert result.stdout.splitlines()[0] == f"PASS {TWO}: baseline: ok (unchanged)"


def test_a_baseline_without_settings_is_compared_and_says_so(tmp_path: Path) -> None:
    """A baseline of format 1 records no settings: compared as before, with a word."""
    path = written(tmp_path)
    data = json.loads(path.read_text())
    data["gpa_baseline"] = 1
    for entry in data["models"].values():
        for key in ("inputs", "options", "tracer"):
            del entry[key]
    path.write_text(json.dumps(data))
    result = gpa_cli("check", TWO, "--eval", "--baseline", str(path))
    # eval mode: aux is not called, so the stem's shortest path is the block's (4) and
    # the network's max_shortest 4 (train: block.0's 3) — regressions the old baseline
    # cannot tell from a change of the model; what the rule does not judge is named too:
    # aux's longest path (1, then none) and the FLOPs (aux's 2 · 4 · 2 = 16 of 128 gone)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == (
        f"FAIL {TWO}: baseline: 3 regressions: stem (shortest 2 -> 4), aux (unreachable), "
        "max_shortest 3 -> 4; also longest path changed in 1 layer; flops 128 -> 112; the "
        "baseline records no analysis settings to check: write it again"
    )
    result = gpa_cli("check", TWO, "--baseline", str(path), "-v")
    assert result.stdout.splitlines()[0] == (
        f"PASS {TWO}: baseline: ok (unchanged; the baseline records no analysis settings to "
        "check: write it again)"
    )


def report(**options: object) -> object:
    knobs = {"frozen": options.pop("frozen", False)}
    return analyze_target(TWO, knobs, AnalysisOptions(**options))


def test_the_rule_reads_the_settings_of_a_report_from_python() -> None:
    """gpa.ci.baseline.regressions on reports made in Python: the same check."""
    result = regressions(report(train=False), Snapshot.of(report()))
    assert not result.passed
    assert [v.value for v in result.violations] == ["train true -> false"]
    assert regressions(report(outputs=1), Snapshot.of(report(outputs="1"))).message == (
        "baseline: ok (unchanged)"
    )


def test_compare_says_how_the_sides_were_read_otherwise(tmp_path: Path) -> None:
    """gpa compare compares what it is given, and says when the sides were read otherwise:
    a saved report, a baseline and an analysed TARGET alike."""
    c = compare(report(), report(train=False))
    assert c.notes == ["A and B were analysed otherwise (train true -> false)"]
    # a saved report of --outputs 1 against a baseline of every output
    saved = tmp_path / "aux.json"
    result = gpa_cli("analyze", TWO, "--outputs", "1", "--format", "json", "-o", str(saved))
    assert result.exit_code == 0, result.output
    path = written(tmp_path)
    result = gpa_cli("compare", str(saved), str(path), "--format", "json")
    assert json.loads(result.stdout)["notes"] == [
        "A and B were analysed otherwise (outputs 1 -> all)"
    ]
    # an analysed TARGET in eval mode against the same baseline
    result = gpa_cli("compare", str(path), TWO, "--eval", "--format", "json")
    assert json.loads(result.stdout)["notes"] == [
        f"A ({path}) is compared as saved: the options given (train) do not apply to it",
        "A and B were analysed otherwise (train true -> false)",
    ]


def test_compare_gives_each_sides_notes() -> None:
    """Each side's own notes, by side: before, gpa compare dropped them."""
    c = compare(report(), report(frozen=True))
    assert c.notes == [
        "B: 1 layer's parameters are frozen (requires_grad=False): stem; gradient paths are "
        "structural, so they are analysed as any other layer's, though a real backward "
        "leaves their weights without gradient (and a re-entrant checkpoint given only what "
        "they compute passes none on in training, docs/semantics.md §1.7)"
    ]
    note = c.notes[0].removeprefix("B: ")
    result = gpa_cli("compare", TWO, TWO, "-k", "frozen=True")  # -k: both sides
    assert result.stdout.splitlines()[-2:] == ["notes:", f"  - A and B: {note}"]


def test_an_object_among_the_inputs_is_recorded_the_same_in_every_run(tmp_path: Path) -> None:
    """A plain object's repr holds its address, and a target file's class the private
    module name made from the file's path: a baseline never matched in CI (a fresh clone
    elsewhere). Recorded without either (and the report's JSON is the same in every run,
    semantics §7)."""
    original = DATA / "configured.py"
    path = tmp_path / "base.json"
    result = gpa_cli("check", str(original), "--write-baseline", str(path), "--allow-empty")
    assert result.exit_code == 0, result.output
    recorded = json.loads(path.read_text())["models"][str(original)]["inputs"]
    assert recorded == [
        {"shape": [1, 4], "dtype": "float32"},
        {"value": "<configured.Cfg>"},
    ]
    clone = tmp_path / "clone"
    clone.mkdir()
    moved = clone / "configured.py"
    moved.write_text(original.read_text())
    data = json.loads(path.read_text())
    data["models"] = {str(moved): data["models"][str(original)]}
    path.write_text(json.dumps(data))
    result = gpa_cli("check", str(moved), "--baseline", str(path), "-v")
    assert result.stdout.splitlines()[0] == f"PASS {moved}: baseline: ok (unchanged)"


def test_one_setting_spelled_otherwise_is_the_same_setting(tmp_path: Path) -> None:
    """A class by its name, its public path or itself; outputs in another order, twice:
    one setting each (the review of the first version refused them)."""
    path = written(tmp_path, "--layer-type", "Linear", "--outputs", "0", "--outputs", "1")
    result = gpa_cli(
        "check", TWO, "--baseline", str(path), "-v",
        "--layer-type", "torch.nn.Linear", "--layer-type", "Linear",
        "--outputs", "1", "--outputs", "0", "--outputs", "1",
    )  # fmt: skip
    assert result.stdout.splitlines()[0] == f"PASS {TWO}: baseline: ok (unchanged)"
    entry = Snapshot.from_dict(json.loads(path.read_text())["models"][TWO], "base")
    now = report(layer_types=[nn.Linear], outputs=[1, 0])
    assert regressions(now, entry).message == "baseline: ok (unchanged)"


class Linear(nn.Module):
    """Not torch's: a class of the same name is another setting."""


def test_classes_of_one_name_are_told_apart() -> None:
    ours = AnalysisOptions(layer_types=[Linear]).to_dict()["layer_types"]
    assert ours == [f"{__name__}.Linear"]
    assert AnalysisOptions(layer_types=[nn.Linear]).to_dict()["layer_types"] == ["torch.nn.Linear"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options": 5}, "'options' an object"),
        ({"inputs": [[1, 4]]}, "'inputs' must be a list of objects"),
        ({"gpa_baseline": 99}, "has format 99, newer than this gpa reads (2)"),
    ],
)
def test_a_malformed_baseline_is_an_error_not_a_difference(
    tmp_path: Path, change: dict, message: str
) -> None:
    """Before, a traceback (exit 1, as a failed rule), or a newer file read silently."""
    path = written(tmp_path)
    data = json.loads(path.read_text())
    if "gpa_baseline" in change:
        data.update(change)
    else:
        data["models"][TWO].update(change)
    path.write_text(json.dumps(data))
    for args in (("check", TWO, "--baseline", str(path)), ("compare", str(path), TWO)):
        result = gpa_cli(*args)
        assert result.exit_code == 2
        assert message in result.output


def test_compare_names_the_sides_that_record_no_settings(tmp_path: Path) -> None:
    """A side written before gpa recorded settings: said so, of either side or both."""
    old = tmp_path / "old.json"
    data = json.loads(report().to_json())
    del data["options"]
    old.write_text(json.dumps(data))
    unknown = "not record how {} analysed (written before gpa recorded it): other settings "
    unknown += "cannot be told from other numbers"
    result = gpa_cli("compare", str(old), TWO, "--format", "json")
    assert json.loads(result.stdout)["notes"] == ["A does " + unknown.format("it was")]
    result = gpa_cli("compare", str(old), str(old), "--format", "json")
    assert json.loads(result.stdout)["notes"] == ["A and B do " + unknown.format("they were")]


@pytest.mark.parametrize(
    ("value", "described"),
    [
        ({"logits", "boxes", "features"}, "{'boxes', 'features', 'logits'}"),
        (Path("/anywhere/data.txt"), "<pathlib.PosixPath>"),
        (AnalysisOptions(), "<gpa.AnalysisOptions>"),  # a dataclass: values unread
        ([torch.ones(2, 3), None, (1,)], "[float32[2, 3], None, (1,)]"),
    ],
)
def test_inputs_that_are_no_tensors_are_described_the_same_in_every_run(value, described):
    """A set's order changes with Python's hash seed, a dataclass holding a tensor prints
    its random values, a path the checkout's (review: a baseline failed on every run)."""
    from gpa.frontends.inputs import describe_value

    assert describe_value(value) == described
