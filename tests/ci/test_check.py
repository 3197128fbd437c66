"""Tests of ``gpa check``: rules, exit codes, ``[tool.gpa]``, baselines and output formats.

Expected values are derived by hand from the model structures:

* ``gpa.models:plainnet`` with depth d is stem conv → d convs → GAP → fc, a plain chain
  of d + 2 layers: ``stem.conv`` has shortest = longest = d + 2, block i (0-based)
  d + 1 − i, ``fc`` 1; so max_shortest = longest = d + 2 and mean_shortest = (d + 3) / 2.
* ``gpa.models:resnet`` with B basic blocks (docs/semantics.md §5): ``fc`` 1; block b
  (1-based) conv2 has shortest 2 and longest 2 + 2(B − b), conv1 3 and 3 + 2(B − b); the
  stem shortest 2 and longest 2B + 2. For B = 3: max_shortest 3, longest 8, mean_shortest
  (1 + 2 + 3·3 + 2·3) / 8 = 18 / 8 = 2.25.
* ``tests/data/check/chain.py``: ``layers.i`` of a chain of depth d has d − i; ``cut=c``
  detaches after ``layers.c`` (layers 0..c unreachable); ``spare`` is never called.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import gpa
import gpa.models
from gpa.ci.baseline import Snapshot, dump_baseline, read_baseline, regressions
from gpa.ci.check import CheckRun, ModelCheck, check_models, plan_models
from gpa.ci.config import ModelSettings, ModelSpec, find_config, load_config, parse_config
from gpa.ci.formats import format_github, format_junit, format_text
from gpa.ci.rules import LayerLimit, RuleResult, Rules, evaluate
from gpa.cli import main
from gpa.errors import GpaError
from gpa.target import load_target
from gpa.testing import assert_gradient_paths

DATA = Path(__file__).resolve().parents[1] / "data" / "check"
PROJECT = DATA / "project"
CHAIN = str(DATA / "chain.py")


@pytest.fixture(autouse=True)
def in_check_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from tests/data/check: no pyproject.toml with [tool.gpa] above it."""
    monkeypatch.chdir(DATA)


def run(*args: str, verbose: bool = True) -> Result:
    """``gpa check ARGS`` (with ``--verbose``: most tests read the lines of passing rules)."""
    extra = ["--verbose"] if verbose else []
    return CliRunner().invoke(main, ["check", *args, *extra], catch_exceptions=False)


def zoo(name: str, **knobs: object) -> gpa.Report:
    model = gpa.models.build(name, **knobs)
    return gpa.analyze(model, input_shape=model.input_shape)


def chain(depth: int = 3, cut: int | None = None, spare: bool = False) -> gpa.Report:
    report = gpa.api.analyze_target(CHAIN, {"depth": depth, "cut": cut, "spare": spare})
    return report


def single(report: gpa.Report, **rules: object) -> RuleResult:
    (result,) = evaluate(report, Rules(**rules))
    return result


# ------------------------------------------------------------------ rules


@pytest.mark.parametrize("depth", [2, 4, 6])
def test_max_shortest_on_plainnet_holds_at_depth_plus_two(depth: int) -> None:
    report = zoo("plainnet", depth=depth)
    assert single(report, max_shortest=depth + 2).passed
    result = single(report, max_shortest=depth + 1)
    assert not result.passed
    assert [(v.layer, v.value) for v in result.violations] == [("stem.conv", depth + 2)]


def test_max_shortest_failure_names_every_offending_layer_with_its_value() -> None:
    result = single(zoo("plainnet", depth=4), max_shortest=4)
    # stem.conv 6, blocks.0 5, blocks.1 4 (not above 4)
    assert result.message == (
        "max-shortest 4: 2 layers exceed it: stem.conv (6), stages.0.blocks.0.conv (5)"
    )


def test_max_shortest_on_resnet_is_three_for_every_depth() -> None:
    for blocks in (1, 3, 5):
        assert single(zoo("resnet", blocks=blocks), max_shortest=3).passed
    result = single(zoo("resnet", blocks=3), max_shortest=2)
    assert [(v.layer, v.value) for v in result.violations] == [
        (f"stages.0.blocks.{b}.conv1.conv", 3) for b in range(3)
    ]


def test_max_longest_on_resnet() -> None:
    report = zoo("resnet", blocks=3)
    assert single(report, max_longest=8).passed
    result = single(report, max_longest=6)
    # stem 8, block 1 conv1 3 + 2·2 = 7; block 1 conv2 2 + 4 = 6 is not above 6
    assert [(v.layer, v.value) for v in result.violations] == [
        ("stem.conv", 8),
        ("stages.0.blocks.0.conv1.conv", 7),
    ]


def test_max_longest_on_stop_gradient_resnet_equals_the_plain_depth() -> None:
    # identity detached: plain chain stem + 6 convs + fc, the stem has 8 on its only path
    report = zoo("resnet_stopgrad", blocks=3, where="identity")
    assert single(report, max_longest=8).passed
    assert single(report, max_shortest=7).violations[0].value == 8


def test_max_mean_shortest() -> None:
    assert single(zoo("resnet", blocks=3), max_mean_shortest=2.25).passed
    result = single(zoo("resnet", blocks=3), max_mean_shortest=2.2)
    assert result.message == "max-mean-shortest 2.2: mean_shortest 2.25 exceeds it"
    # plainnet depth 5: (5 + 3) / 2 = 4
    assert single(zoo("plainnet", depth=5), max_mean_shortest=4).passed
    assert not single(zoo("plainnet", depth=5), max_mean_shortest=3.9).passed


def test_no_unreachable() -> None:
    assert single(zoo("resnet"), no_unreachable=True).passed
    result = single(chain(depth=3, cut=1, spare=True), no_unreachable=True)
    assert result.message == (
        "no-unreachable: 3 layers receive no gradient: layers.0, layers.1, spare"
    )
    one = single(chain(depth=2, spare=True), no_unreachable=True)
    assert one.message == "no-unreachable: 1 layer receives no gradient: spare"


def test_layers_allowed_no_gradient_are_spared_by_no_unreachable() -> None:
    """Found by a review of the YOLO line: a detection head's DFL is called only in
    inference, so ``--no-unreachable`` failed every YOLO model in train mode, with no way
    to spare it. By hand: cut=1 on depth 3 leaves layers.0 and layers.1 without gradient,
    and spare is never called."""
    report = chain(depth=3, cut=1, spare=True)
    allowed = (LayerLimit("spare", allow_unreachable=True),)
    result = single(report, no_unreachable=True, layers=allowed)
    assert result.message == "no-unreachable: 2 layers receive no gradient: layers.0, layers.1"
    allowed += (LayerLimit("layers.[01]", allow_unreachable=True),)
    result = single(report, no_unreachable=True, layers=allowed)
    assert result.passed
    # (found by a new user: "ok (every layer receives gradient) but 3 layers allowed none"
    # contradicted itself)
    assert result.message == "no-unreachable: ok (3 layers receive no gradient, allowed)"
    assert Rules(layers=allowed).is_empty  # sparing checks nothing by itself


def test_allow_unreachable_on_every_surface() -> None:
    flags = run(CHAIN, "-k", "spare=true", "--no-unreachable", "--allow-unreachable", "spare")
    assert flags.exit_code == 0, flags.output
    assert run(CHAIN, "-k", "spare=true", "--no-unreachable").exit_code == 1
    config = parse_config(
        {"no_unreachable": True, "layers": {"spare": {"allow_unreachable": True}}}
    )
    assert config.defaults.rules.layers == (LayerLimit("spare", allow_unreachable=True),)
    with pytest.raises(GpaError, match=r"allow_unreachable: expected true or false"):
        parse_config({"layers": {"spare": {"allow_unreachable": 1}}})
    model = load_target(CHAIN, {"spare": True}).model
    assert_gradient_paths(
        model,
        input_shape=(1, 4),
        no_unreachable=True,
        layers={"spare": {"allow_unreachable": True}},
    )
    with pytest.raises(AssertionError, match="1 layer receives no gradient: spare"):
        assert_gradient_paths(model, input_shape=(1, 4), no_unreachable=True)


def test_limits_ignore_unreachable_layers() -> None:
    # cut=0 on depth 3: layers.0 unreachable, layers.1 has 2, layers.2 has 1
    report = chain(depth=3, cut=0)
    assert single(report, max_shortest=2).passed
    assert single(report, max_longest=2).passed


def test_layer_pattern_limits() -> None:
    report = zoo("resnet", blocks=3)
    limit = LayerLimit("stages.0.blocks.0.*", max_shortest=2, max_longest=6)
    shortest, longest = evaluate(report, Rules(layers=(limit,)))
    assert shortest.rule == "layers[stages.0.blocks.0.*].max-shortest"
    assert [(v.layer, v.value) for v in shortest.violations] == [
        ("stages.0.blocks.0.conv1.conv", 3)
    ]
    assert [(v.layer, v.value) for v in longest.violations] == [("stages.0.blocks.0.conv1.conv", 7)]
    # the last block: conv1 has longest 3, conv2 2
    (last,) = evaluate(report, Rules(layers=(LayerLimit("*blocks.2*", max_longest=3),)))
    assert last.passed


def test_layer_pattern_matching_no_layer_fails() -> None:
    (result,) = evaluate(zoo("resnet"), Rules(layers=(LayerLimit("head.*", max_shortest=1),)))
    assert not result.passed
    assert result.message == "layers[head.*].max-shortest 1: the pattern matches no layer"


def test_rules_come_in_a_fixed_order() -> None:
    rules = Rules(
        max_mean_shortest=9.0,
        no_unreachable=True,
        max_longest=9,
        max_shortest=9,
        layers=(LayerLimit("fc", max_shortest=1),),
    )
    names = [r.rule for r in evaluate(zoo("resnet"), rules)]
    assert names == [
        "max-shortest",
        "max-longest",
        "no-unreachable",
        "max-mean-shortest",
        "layers[fc].max-shortest",
    ]


# ------------------------------------------------------------------ exit codes


def test_exit_0_when_every_rule_holds() -> None:
    result = run("gpa.models:resnet", "--max-shortest", "3", "--no-unreachable")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "1 model, 2 rules: 2 passed, 0 failed, 0 errors"


def test_exit_1_when_a_rule_fails() -> None:
    result = run("gpa.models:plainnet", "-k", "depth=2", "--max-shortest", "3")
    assert result.exit_code == 1
    assert result.stdout == (
        "FAIL gpa.models:plainnet: max-shortest 3: 1 layer exceeds it: stem.conv (4)\n"
        "1 model, 1 rule: 0 passed, 1 failed, 0 errors\n"
    )


def test_exit_2_for_a_missing_file() -> None:
    result = run("missing.py", "--max-shortest", "3")
    assert result.exit_code == 2
    assert result.stdout.startswith("ERROR missing.py: file not found: missing.py")


def test_exit_2_for_an_untraceable_model_never_a_pass() -> None:
    result = run("untraceable.py", "gpa.models:resnet", "--max-shortest", "3", "--tracer", "fx")
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ERROR untraceable.py: torch.fx cannot trace Branchy")
    # the other model is still checked
    assert "PASS gpa.models:resnet: max-shortest 3: ok (max_shortest 3)" in lines
    # the model in error had its rule too: not checked, never counted as none
    assert lines[-1] == "2 models, 2 rules: 1 passed, 0 failed, 1 not checked, 1 error"
    assert "Traceback (most recent call last)" not in result.output


def test_the_rules_of_a_model_in_error_are_counted_as_not_checked() -> None:
    # the summary said "0 rules" for a model in error, as if it had none
    args = ("untraceable.py", "gpa.models:resnet", "--max-shortest", "3", "--no-unreachable")
    data = json.loads(run(*args, "--tracer", "fx", "--format", "json").stdout)
    assert data["summary"] == {
        "errors": 1,
        "failed": 0,
        "models": 2,
        "passed": 2,
        "rules": 4,
        "unchecked": 2,
    }
    assert [len(m["rules"]) for m in data["models"]] == [0, 2]


@pytest.mark.parametrize(
    "rules",
    [
        Rules(),
        Rules(max_shortest=3, no_unreachable=False),
        Rules(max_longest=9, no_unreachable=True, max_mean_shortest=2.5),
        Rules(layers=(LayerLimit("stages.*", 2, 3), LayerLimit("stem*", max_longest=4))),
    ],
)
def test_the_count_of_rules_is_what_evaluate_gives(rules: Rules) -> None:
    report = gpa.analyze(gpa.models.plainnet(depth=2), input_shape=(1, 3, 32, 32))
    assert rules.count == len(evaluate(report, rules))


def test_exit_2_for_errors_even_when_rules_also_fail() -> None:
    result = run("untraceable.py", "gpa.models:resnet", "--max-shortest", "2", "--tracer", "fx")
    assert result.exit_code == 2


def test_model_error_goes_to_stderr_in_machine_formats() -> None:
    result = run("missing.py", "--format", "json", "--no-unreachable")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: missing.py: file not found")
    assert json.loads(result.stdout)["models"][0]["error"].startswith("file not found")


@pytest.mark.parametrize(
    "args",
    [
        ["gpa.models:resnet", "--max-shortest", "0"],
        ["gpa.models:resnet", "--max-longest", "x"],
        ["gpa.models:resnet", "--format", "xml"],
        ["gpa.models:resnet", "--input-shape", "1,a"],
    ],
)
def test_exit_2_for_usage_errors(args: list[str]) -> None:
    assert run(*args).exit_code == 2


def test_exit_2_with_nothing_to_check() -> None:
    result = run()
    assert result.exit_code == 2
    assert result.stderr.startswith("error: nothing to check: give a TARGET")


def test_model_options_are_those_of_analyze() -> None:
    # --input-shape replaces the file's shape; --layer-type Linear keeps the chain
    args = (CHAIN, "--input-shape", "2,4", "--layer-type", "Linear", "--eval")
    result = run(*args, "--allow-empty")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"PASS {CHAIN}: analysed (no rules configured)")
    # without --allow-empty, a check of no rule is an error: it would pass silently
    empty = run(*args)
    assert empty.exit_code == 2
    assert "no rules configured" in empty.stderr and "--allow-empty" in empty.stderr


# ------------------------------------------------------------------ configuration


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_checks_every_model_from_a_subdirectory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECT / "sub")
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # plain: depth 2 → max_shortest 4; residual: B = 3; short: chain of 2, mean (2+1)/2
    assert lines == [
        "PASS plain: max-shortest 4: ok (max_shortest 4)",
        "PASS plain: no-unreachable: ok (every layer receives gradient)",
        "PASS residual: max-shortest 3: ok (max_shortest 3)",
        "PASS residual: max-longest 8: ok (longest 8)",
        "PASS residual: no-unreachable: ok (every layer receives gradient)",
        "PASS residual: layers[stages.0.blocks.2.*].max-longest 3: ok (longest 3)",
        "PASS residual: layers[fc].max-shortest 1: ok (shortest 1)",
        "PASS short: no-unreachable: ok (every layer receives gradient)",
        "PASS short: max-mean-shortest 1.5: ok (mean_shortest 1.5)",
        "3 models, 9 rules: 9 passed, 0 failed, 0 errors",
    ]


def test_command_line_overrides_the_file() -> None:
    result = run("--config", str(PROJECT / "pyproject.toml"), "plain", "--max-shortest", "3")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == (
        "FAIL plain: max-shortest 3: 1 layer exceeds it: stem.conv (4)"
    )
    # -k merges into the configured kwargs: depth 3 → stem 5
    result = run("--config", str(PROJECT / "pyproject.toml"), "plain", "-k", "depth=3")
    assert result.stdout.splitlines()[0] == (
        "FAIL plain: max-shortest 4: 1 layer exceeds it: stem.conv (5)"
    )


def test_a_plain_target_gets_the_config_defaults() -> None:
    result = run("--config", str(PROJECT / "pyproject.toml"), CHAIN, "-k", "spare=True")
    assert result.exit_code == 1
    assert "no-unreachable: 1 layer receives no gradient: spare" in result.stdout


def test_parse_config_precedence() -> None:
    config = parse_config(
        {
            "max_shortest": 5,
            "kwargs": {"width": 8},
            "layers": {"fc": {"max_shortest": 1}},
            "models": {
                "a": {"target": "x.py", "max_shortest": 3, "kwargs": {"depth": 2}},
                "b": {"target": "pkg.mod:f", "layers": {"fc": {"max_longest": 2}}},
            },
        }
    )
    a, b = config.models["a"], config.models["b"]
    assert a.settings.rules.max_shortest == 3
    assert dict(a.settings.kwargs) == {"width": 8, "depth": 2}
    assert b.settings.rules.max_shortest == 5
    assert b.settings.rules.layers == (LayerLimit("fc", None, 2),)
    assert b.target == "pkg.mod:f"
    override = ModelSettings(kwargs={"depth": 4}, rules=Rules(max_shortest=9))
    (planned,) = plan_models(["a"], config, override)
    assert planned.settings.rules.max_shortest == 9
    assert dict(planned.settings.kwargs) == {"width": 8, "depth": 4}


def test_relative_targets_and_baseline_are_relative_to_the_config(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[tool.gpa]\nbaseline = "base.json"\n'
        '[tool.gpa.models.m]\ntarget = "nets/m.py:build"\n'
        '[tool.gpa.models.n]\ntarget = "pkg.mod:build"\n',
    )
    config = load_config(path)
    assert config.models["m"].target == f"{tmp_path / 'nets' / 'm.py'}:build"
    assert config.models["n"].target == "pkg.mod:build"
    assert config.baseline == tmp_path / "base.json"


@pytest.mark.parametrize("where", [".", "nets"])
def test_a_configured_file_target_is_named_as_the_configuration_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Reports, plot titles and the gate's JSON named a configured model by its absolute
    path (``/home/me/repo/nets/m.py:model``: another name on every machine): now as the
    configuration writes it, from whichever directory gpa runs."""
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "m.py").write_text((DATA / "chain.py").read_text())
    write_config(tmp_path, '[tool.gpa.models.m]\ntarget = "nets/m.py:model"\nmax_shortest = 3\n')
    monkeypatch.chdir(tmp_path / where)
    analysed = CliRunner().invoke(main, ["analyze", "m"], catch_exceptions=False)
    assert analysed.exit_code == 0, analysed.output
    assert analysed.output.splitlines()[0] == "model: nets/m.py:model"
    checked = CliRunner().invoke(main, ["check", "--format", "json"], catch_exceptions=False)
    assert checked.exit_code == 0, checked.output
    assert [m["target"] for m in json.loads(checked.output)["models"]] == ["nets/m.py:model"]
    for command in (
        ["measure", "m", "--steps", "1", "--batch-size", "2"],
        ["scale", "m", "--knob", "depth", "--values", "2,3,4"],
    ):
        done = CliRunner().invoke(main, [*command, "--format", "json"], catch_exceptions=False)
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["model"] == "nets/m.py:model", command[0]


def test_configured_models_load_after_the_working_directory_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configuration is read in one directory, the models checked from another (a
    script using the API): the targets still load (found by a review)."""
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "m.py").write_text((DATA / "chain.py").read_text())
    path = write_config(tmp_path, '[tool.gpa.models.m]\ntarget = "nets/m.py"\nmax_shortest = 3\n')
    specs = plan_models([], load_config(path))
    monkeypatch.chdir(DATA)
    run = check_models(specs)
    (checked,) = run.models
    assert checked.error is None and checked.passed  # chain of depth 3: max shortest 3
    assert checked.report.model == "nets/m.py:model"


def test_find_config_searches_upward_for_a_tool_gpa_table() -> None:
    assert find_config(PROJECT / "sub") == PROJECT / "pyproject.toml"
    # the repository's own pyproject.toml has no [tool.gpa]: not a configuration
    assert find_config(DATA) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tool.gpa]\nmax_shortst = 3\n", "unknown key 'max_shortst' in [tool.gpa] of"),
        (
            '[tool.gpa.models.m]\ntarget = "a.py"\nmax_longets = 3\n',
            "unknown key 'max_longets' in tool.gpa.models.m of",
        ),
        (
            '[tool.gpa.models.m]\ntarget = "a.py"\nlayers = { "fc" = { max_mean = 1 } }\n',
            "unknown key 'max_mean' in tool.gpa.models.m.layers.fc",
        ),
        ("[tool.gpa.models.m]\nkwargs = { depth = 2 }\n", "tool.gpa.models.m: missing 'target'"),
        (
            '[tool.gpa.models.m]\ntarget = "a.py"\nmax_shortest = "3"\n',
            "tool.gpa.models.m.max_shortest: expected a positive integer, got '3'",
        ),
        (
            '[tool.gpa.models.m]\ntarget = "a.py"\nno_unreachable = 1\n',
            "tool.gpa.models.m.no_unreachable: expected true or false, got 1",
        ),
        (
            '[tool.gpa.models.m]\ntarget = "a.py"\ninput_shape = [1, 0]\n',
            "tool.gpa.models.m.input_shape: input_shape must be a shape of positive sizes",
        ),
        (
            '[tool.gpa.models.m]\ntarget = "a.py"\ninput_shape = "1,a"\n',
            "tool.gpa.models.m.input_shape: invalid shape '1,a': 'a' is not a whole number",
        ),
        ("[tool.gpa\n", "is not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(GpaError, match=None) as info:
        load_config(path)
    assert message in str(info.value)
    result = run("--config", str(path))
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize("shape", ['"1,4"', '"1x4"', '["1,4"]', "[1, 4]"])
def test_input_shape_is_written_in_the_configuration_as_on_the_command_line(
    tmp_path: Path, shape: str
) -> None:
    """Found by a new user: ``input_shape = "1,3,32,32"`` was refused in [tool.gpa]
    though ``--input-shape 1,3,32,32`` is taken and docs/ci.md says a single string is
    accepted. By hand: the chain of depth 2 gives max_shortest 2 on (1, 4)."""
    path = write_config(
        tmp_path,
        f'[tool.gpa.models.c]\ntarget = "{CHAIN}"\nkwargs = {{ depth = 2 }}\n'
        f"input_shape = {shape}\nmax_shortest = 2\n",
    )
    out = tmp_path / "base.json"
    result = run("--config", str(path), "--write-baseline", str(out))
    assert result.exit_code == 0, result.output
    assert "PASS c: max-shortest 2" in result.stdout
    entry = json.loads(out.read_text())["models"]["c"]
    assert entry["inputs"] == [{"shape": [1, 4], "dtype": "float32"}]
    assert gpa.analyze(gpa.models.plainnet(depth=1), input_shape="1,3,8,8").inputs == [
        {"shape": [1, 3, 8, 8], "dtype": "float32"}
    ]


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(GpaError, match=r"did you mean 'max_shortest'\?"):
        parse_config({"max_shortst": 3})


def test_config_file_without_tool_gpa(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[project]\nname = 'x'\n")
    result = run("--config", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"error: {path} has no [tool.gpa] table\n"


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "none.toml"))
    assert result.exit_code == 2
    assert "not found" in result.stderr


# ------------------------------------------------------------------ baselines


def test_baseline_file_is_stable_sorted_json(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert run(CHAIN, "-k", "depth=2", "--write-baseline", str(first)).exit_code == 0
    assert run(CHAIN, "-k", "depth=2", "--write-baseline", str(second)).exit_code == 0
    text = first.read_text()
    assert text == second.read_text()
    assert text.endswith("}\n")
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    entry = data["models"][CHAIN]
    assert entry["layers"] == {
        "layers.0": {"longest": 2, "shortest": 2},
        "layers.1": {"longest": 1, "shortest": 1},
    }
    keys = ("layers", "longest", "max_shortest", "mean_shortest", "min_shortest", "unreachable")
    assert {k: entry["network"][k] for k in keys} == {
        "layers": 2,
        "longest": 2,
        "max_shortest": 2,
        "mean_shortest": 1.5,
        "min_shortest": 1,
        "unreachable": [],
    }


def test_a_baseline_is_written_beside_a_failing_rule(tmp_path: Path) -> None:
    """The rules given run beside --write-baseline: the baseline records the numbers
    (written), the failing rule fails the command (exit 1), as docs/ci.md says. By hand:
    the chain of depth 2 has max_shortest 2 > 1."""
    path = tmp_path / "base.json"
    result = run(CHAIN, "-k", "depth=2", "--max-shortest", "1", "--write-baseline", str(path))
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "max-shortest" in result.stdout
    assert json.loads(path.read_text())["models"][CHAIN]["network"]["max_shortest"] == 2


def baseline_of(tmp_path: Path, *knobs: str) -> Path:
    path = tmp_path / "base.json"
    args = [a for k in knobs for a in ("-k", k)]
    assert run(CHAIN, *args, "--write-baseline", str(path)).exit_code == 0
    return path


def test_baseline_regression_fails(tmp_path: Path) -> None:
    path = baseline_of(tmp_path, "depth=3")
    result = run(CHAIN, "-k", "depth=4", "--baseline", str(path))
    assert result.exit_code == 1
    # every old layer moved one further from the loss; layers.3 is new and reachable;
    # not judged but named: the old layers' longest paths (+1 each), the network's
    # longest, and a Linear(4, 4) more (20 parameters, 2 × 16 FLOPs at batch 1)
    assert result.stdout.splitlines()[0] == (
        f"FAIL {CHAIN}: baseline: 4 regressions: layers.0 (shortest 3 -> 4), "
        "layers.1 (shortest 2 -> 3), layers.2 (shortest 1 -> 2), max_shortest 3 -> 4; also "
        "1 new layer (layers.3); longest path changed in 3 layers; longest 3 -> 4; params "
        "60 -> 80; flops 96 -> 128"
    )


def test_baseline_improvement_passes_and_is_reported(tmp_path: Path) -> None:
    path = baseline_of(tmp_path, "depth=3")
    result = run(CHAIN, "-k", "depth=2", "--baseline", str(path))
    assert result.exit_code == 0
    assert result.stdout == (
        # and, not judged: layers.2 gone, layers.0 and .1 longest 3 -> 2 and 2 -> 1,
        # the network's longest 3 -> 2; a Linear(4, 4) less: 20 parameters and
        # 2 × 16 FLOPs (batch 1) fewer
        f"PASS {CHAIN}: baseline: ok (3 improvements; 1 layer gone (layers.2); longest path "
        "changed in 2 layers; longest 3 -> 2; params 60 -> 40; flops 96 -> 64)\n"
        "    improved: layers.0 shortest 3 -> 2\n"
        "    improved: layers.1 shortest 2 -> 1\n"
        "    improved: max_shortest 3 -> 2\n"
        "1 model, 1 rule: 1 passed, 0 failed, 0 errors\n"
    )


def test_baseline_ok_says_what_changed_that_it_does_not_judge() -> None:
    """A model grown by layers whose shortest paths are as they were passed as
    "unchanged" (a Qwen2 of 3 layers against one of 2)."""
    now = chain(depth=2)  # layers.0: 2, 2; layers.1: 1, 1; longest 2
    before = replace(
        Snapshot.of(now), network={"max_shortest": 2, "longest": 1}, layers={"layers.0": (2, 1)}
    )
    result = regressions(now, before)
    assert result.passed and result.improvements == ()
    assert result.message == (
        "baseline: ok (1 new layer (layers.1); longest path changed in 1 layer; longest 1 -> 2)"
    )
    assert regressions(now, Snapshot.of(now)).message == "baseline: ok (unchanged)"
    # wider layers, the same paths: their parameters (and FLOPs) changed all the same
    wider = Snapshot.of(now)
    wider = replace(wider, network={**wider.network, "params": wider.network["params"] + 1})
    old_params = wider.network["params"]
    assert regressions(now, wider).message == (
        f"baseline: ok (params {old_params} -> {old_params - 1})"
    )


def test_baseline_new_unreachable_layer_is_a_regression(tmp_path: Path) -> None:
    path = baseline_of(tmp_path, "depth=2")
    # cut=0: layers.0 loses its gradient; spare is a new layer that receives none
    result = run(CHAIN, "-k", "depth=2", "-k", "cut=0", "-k", "spare=True", "--baseline", str(path))
    assert result.exit_code == 1
    # also named: layers.0's longest path (2, then none), the network's, spare's weights;
    # max_shortest fell from 2 to 1 only because layers.0 is cut off: no improvement
    assert result.stdout.splitlines()[0] == (
        f"FAIL {CHAIN}: baseline: 2 regressions: layers.0 (unreachable), spare (unreachable); "
        "also max_shortest 2 -> 1 (over the layers still reached); longest path changed in 1 "
        "layer; longest 2 -> 1; params 40 -> 60"
    )
    assert "improved" not in result.stdout


def test_baseline_layer_reached_again_is_an_improvement(tmp_path: Path) -> None:
    # baseline: layers.0 detached (unreachable), layers.1 has 1, so max_shortest 1
    path = baseline_of(tmp_path, "depth=2", "cut=0")
    result = run(CHAIN, "-k", "depth=2", "--baseline", str(path))
    # layers.0 is reached again (shortest 2), which also lifts max_shortest from 1 to 2
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:2] == [
        f"FAIL {CHAIN}: baseline: 1 regression: max_shortest 1 -> 2; also longest path "
        "changed in 1 layer; longest 1 -> 2",
        "    improved: layers.0 receives gradient again (shortest 2)",
    ]


def test_baseline_layer_reached_again_library() -> None:
    old = Snapshot.of(chain(depth=2, cut=0))
    new = chain(depth=2)
    result = regressions(new, old)
    # layers.0 is reached again (improvement) but max_shortest grows from 1 to 2
    assert not result.passed
    assert result.improvements == ("layers.0 receives gradient again (shortest 2)",)
    assert [v.value for v in result.violations] == ["max_shortest 1 -> 2"]


def test_baseline_unchanged_and_missing_entries(tmp_path: Path) -> None:
    path = baseline_of(tmp_path, "depth=2")
    result = run(CHAIN, "-k", "depth=2", "--baseline", str(path))
    assert result.stdout.splitlines()[0] == f"PASS {CHAIN}: baseline: ok (unchanged)"
    other = run("gpa.models:resnet", "--baseline", str(path))
    assert other.exit_code == 0
    assert other.stdout.splitlines()[0] == (
        "PASS gpa.models:resnet: baseline: ok (no entry for this model, not compared)"
    )


def test_baseline_errors(tmp_path: Path) -> None:
    result = run(CHAIN, "--baseline", str(tmp_path / "none.json"))
    assert result.exit_code == 2
    assert "create it with gpa check --write-baseline" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    assert "is not a gpa baseline" in run(CHAIN, "--baseline", str(bad)).stderr


def test_baseline_is_not_written_when_a_model_fails(tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    result = run(CHAIN, "missing.py", "--write-baseline", str(path))
    assert result.exit_code == 2
    assert not path.exists()


def test_read_baseline_roundtrip() -> None:
    report = chain(depth=2, spare=True)
    text = dump_baseline({"c": Snapshot.of(report)})
    path = DATA / "roundtrip.json"
    try:
        path.write_text(text)
        snapshot = read_baseline(path)["c"]
    finally:
        path.unlink()
    assert dict(snapshot.layers) == {"layers.0": (2, 2), "layers.1": (1, 1), "spare": (None, None)}
    assert snapshot.unreachable == {"spare"}


def test_config_baseline_key_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        tmp_path,
        f'[tool.gpa]\nbaseline = "base.json"\n[tool.gpa.models.c]\ntarget = "{CHAIN}"\n'
        "kwargs = { depth = 2 }\n",
    )
    monkeypatch.chdir(tmp_path)
    assert run("--write-baseline", "base.json").exit_code == 0
    result = run("-k", "depth=3")
    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL c: baseline: 3 regressions")


# ------------------------------------------------------------------ formats


def mixed_run() -> CheckRun:
    """resnet passing max-shortest 3, plainnet depth 2 failing it, a missing file."""
    specs = [
        ModelSpec("resnet", "gpa.models:resnet", ModelSettings(rules=Rules(max_shortest=3))),
        ModelSpec(
            "plain",
            "gpa.models:plainnet",
            ModelSettings(kwargs={"depth": 2}, rules=Rules(max_shortest=3, no_unreachable=True)),
        ),
        ModelSpec("gone", "missing.py"),
    ]
    return check_models(specs)


def test_text_format() -> None:
    text = format_text(mixed_run(), verbose=True)
    assert text.splitlines()[:4] == [
        "PASS resnet: max-shortest 3: ok (max_shortest 3)",
        "FAIL plain: max-shortest 3: 1 layer exceeds it: stem.conv (4)",
        "PASS plain: no-unreachable: ok (every layer receives gradient)",
        "ERROR gone: file not found: missing.py (looked in "
        f"{DATA}); check the path, or use package.module:attr to import an installed module",
    ]
    assert text.splitlines()[-1] == "3 models, 3 rules: 2 passed, 1 failed, 1 error"
    assert "\x1b[" not in text
    assert "\x1b[" in format_text(mixed_run(), color=True)


def test_json_format() -> None:
    result = run("gpa.models:plainnet", "-k", "depth=2", "--max-shortest", "3", "--format", "json")
    data = json.loads(result.stdout)
    assert data["exit_code"] == 1
    assert data["summary"] == {
        "errors": 0,
        "failed": 1,
        "models": 1,
        "passed": 0,
        "rules": 1,
        "unchecked": 0,
    }
    (model,) = data["models"]
    assert model["network"]["max_shortest"] == 4
    (rule,) = model["rules"]
    assert rule["rule"] == "max-shortest"
    assert rule["limit"] == 3
    assert rule["violations"] == [{"layer": "stem.conv", "value": 4}]


def test_junit_format_structure() -> None:
    root = ET.fromstring(format_junit(mixed_run()))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["resnet", "plain", "gone"]
    cases = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert cases == [
        ("resnet", "max-shortest"),
        ("plain", "max-shortest"),
        ("plain", "no-unreachable"),
        ("gone", "analyse"),
    ]
    plain_fail = suites[1].find("testcase/failure")
    assert plain_fail.get("message") == "max-shortest 3: 1 layer exceeds it: stem.conv (4)"
    assert plain_fail.text == "stem.conv: 4"
    assert suites[1].get("failures") == "1"
    assert suites[0].find("testcase/failure") is None
    error = suites[2].find("testcase/error")
    assert error.get("message").startswith("file not found: missing.py")
    assert {c.get("time") for c in root.iter("testcase")} == {"0"}


def test_junit_totals_count_the_test_cases_written(tmp_path: Path) -> None:
    """Found by a new user: a model that cannot be analysed, given two rules, was counted
    as three tests at the top (its two rules and the error) around one test case; the
    totals are those of the suites, which count the cases written."""
    (tmp_path / "broken.py").write_text("this is not python(\n")
    result = run(str(tmp_path / "broken.py"), "--max-shortest", "3", "--max-longest", "9",
                 "--format", "junit")  # fmt: skip
    assert result.exit_code == 2
    root = ET.fromstring(result.stdout[: result.stdout.index("</testsuites>") + 13])
    assert len(list(root.iter("testcase"))) == 1
    for key in ("tests", "failures", "errors"):
        assert root.get(key) == str(sum(int(s.get(key)) for s in root.findall("testsuite")))
    assert (root.get("tests"), root.get("errors")) == ("1", "1")


def test_junit_via_cli_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "junit.xml"
    result = run("gpa.models:resnet", "--max-shortest", "2", "--format", "junit", "-o", str(out))
    assert result.exit_code == 1
    assert result.stdout == ""
    root = ET.parse(out).getroot()
    (case,) = root.iter("testcase")
    assert case.find("failure").text.splitlines() == [
        f"stages.0.blocks.{b}.conv1.conv: 3" for b in range(3)
    ]


def test_github_format_lines() -> None:
    lines = format_github(mixed_run()).splitlines()
    assert lines == [
        "::error title=gpa check plain max-shortest::max-shortest 3: 1 layer exceeds it: "
        "stem.conv (4)",
        "::error title=gpa check gone::file not found: missing.py (looked in "
        f"{DATA}); check the path, or use package.module:attr to import an installed module",
        "gpa check: 3 models, 3 rules: 2 passed, 1 failed, 1 error",
    ]


def test_github_format_escapes_and_notices() -> None:
    rule = RuleResult("baseline", None, True, "baseline: ok", (), ("a: 50%\nb",))
    run_ = CheckRun([ModelCheck("m:x,y", "t", results=[rule])])
    assert format_github(run_).splitlines()[0] == (
        "::notice title=gpa check m%3Ax%2Cy baseline::improved: a: 50%25%0Ab"
    )


@pytest.mark.parametrize("fmt", ["text", "json", "junit", "github"])
def test_output_is_byte_identical_between_runs(fmt: str) -> None:
    args = ["gpa.models:resnet", CHAIN, "--max-shortest", "2", "--no-unreachable"]
    first = run(*args, "--format", fmt)
    second = run(*args, "--format", fmt)
    assert first.exit_code == second.exit_code == 1
    assert first.stdout_bytes == second.stdout_bytes


def test_pre_commit_hook_runs_gpa_check() -> None:
    text = (Path(__file__).resolve().parents[2] / ".pre-commit-hooks.yaml").read_text()
    assert "- id: gpa-check\n" in text
    assert "  entry: gpa check\n" in text
    assert "  pass_filenames: false\n" in text


def test_no_color_without_a_terminal() -> None:
    result = run("gpa.models:resnet", "--max-shortest", "3")
    assert result.exit_code == 0
    assert "\x1b[" not in result.stdout


def test_a_configured_option_naming_nothing_is_an_error_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error said "unknown module class 'Nope'" with nothing to find it by in a
    configuration of many models (found by a surface review); it names the option, by
    its key and its flag, and a factory's keyword is said to come from -k or kwargs."""
    write_config(
        tmp_path,
        f"""
        [tool.gpa]
        max_shortest = 9
        [tool.gpa.models.types]
        target = "{CHAIN}"
        layer_types = ["Nope"]
        [tool.gpa.models.leaf]
        target = "{CHAIN}"
        leaf_modules = ["nope.name"]
        [tool.gpa.models.knob]
        target = "{CHAIN}"
        kwargs = {{ bogus = 1 }}
        """,
    )
    monkeypatch.chdir(tmp_path)
    lines = run(verbose=False).stdout.splitlines()
    assert lines[0].startswith("ERROR types: layer_types (--layer-type): unknown module class")
    assert lines[1].startswith("ERROR leaf: leaf_modules (--leaf): 'nope.name' is not the name")
    assert "does not accept 'bogus' (given with -k or kwargs)" in lines[2]


@pytest.mark.parametrize("limit", ["nan", "-1", "0.5"])
def test_a_limit_that_can_never_fail_or_never_pass_is_refused(limit: str) -> None:
    """``--max-mean-shortest nan`` passed every model (nothing compares greater than NaN:
    found by an adversarial review); ``-1`` failed every model (a mean of path lengths is
    1 at least: found by a surface audit). Both are a bad value, exit 2."""
    result = CliRunner().invoke(
        main, ["check", "gpa.models:plainnet", "--max-mean-shortest", limit]
    )
    assert result.exit_code == 2
    said = "--max-mean-shortest: expected a finite number of at least 1, got"
    assert f"{said} {float(limit)}" in result.output
