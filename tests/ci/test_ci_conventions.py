"""``gpa check`` as CI tools behave (issue 15 §3): failures only by default, --verbose,
--exit-zero, no silent pass when nothing is checked, annotations on the right line, SARIF.

tests/data/sarif-schema-2.1.0.json is the OASIS SARIF 2.1.0 JSON schema (the
``sarif-2.1.0-rtm.5`` schema, as distributed in the MIT-licensed npm package
``@microsoft/jest-sarif``); SARIF output is validated against it with jsonschema.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from gpa.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
SCHEMA = json.loads((DATA / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
PLAIN = ("gpa.models:plainnet", "-k", "depth=2")  # max_shortest 4 (stem.conv), longest 4

# A project whose rules sit on known lines (numbered from 1 below).
PYPROJECT = """\
[project]
name = "demo"

[tool.gpa]
no_unreachable = true

[tool.gpa.models.plain]
target = "gpa.models:plainnet"
kwargs = { depth = 2 }
max_shortest = 3
max_longest = 9

[tool.gpa.models.gone]
target = "missing.py"
"""
LINES = {"tool.gpa": 4, "no_unreachable": 5, "plain": 7, "plain.max_shortest": 10, "gone": 13}


def check(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, ["check", *args])
    with runner.isolated_filesystem(temp_dir=cwd):
        return runner.invoke(main, ["check", *args])


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_text_shows_failures_only_unless_verbose() -> None:
    quiet = check(*PLAIN, "--max-shortest", "3", "--max-longest", "9")
    assert quiet.exit_code == 1
    assert quiet.stdout.splitlines() == [
        "FAIL gpa.models:plainnet: max-shortest 3: 1 layer exceeds it: stem.conv (4)",
        "1 model, 2 rules: 1 passed, 1 failed, 0 errors",
    ]
    loud = check(*PLAIN, "--max-shortest", "3", "--max-longest", "9", "--verbose")
    assert loud.stdout.splitlines()[1] == "PASS gpa.models:plainnet: max-longest 9: ok (longest 4)"


def test_exit_zero_keeps_errors_at_2(project: Path) -> None:
    failing = check(*PLAIN, "--max-shortest", "3", "--exit-zero")
    assert failing.exit_code == 0 and "FAIL" in failing.stdout
    with_error = check("--exit-zero")  # the configured 'gone' model cannot be loaded
    assert with_error.exit_code == 2
    # the JSON keeps what the check found, for a later step (docs/ci.md)
    as_json = check(*PLAIN, "--max-shortest", "3", "--exit-zero", "--format", "json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["exit_code"] == 1


def test_nothing_to_check_is_an_error_unless_allowed() -> None:
    empty = check(*PLAIN)
    assert empty.exit_code == 2
    assert "no rules configured for gpa.models:plainnet" in empty.stderr
    allowed = check(*PLAIN, "--allow-empty")
    assert allowed.exit_code == 0
    assert allowed.stdout == "1 model, 0 rules: 0 passed, 0 failed, 0 errors\n"


def test_writing_a_baseline_needs_no_rules(tmp_path: Path) -> None:
    # the bootstrap step of docs/ci.md
    out = tmp_path / "baseline.json"
    result = check(*PLAIN, "--write-baseline", str(out))
    assert result.exit_code == 0 and json.loads(out.read_text())["models"]


def test_github_annotations_point_at_the_configuration_lines(project: Path) -> None:
    result = check("--format", "github")
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"::error file=pyproject.toml,line={LINES['plain.max_shortest']},"
        "title=gpa check plain max-shortest::max-shortest 3: 1 layer exceeds it: stem.conv (4)"
    )
    assert lines[1].startswith(
        f"::error file=pyproject.toml,line={LINES['gone']},title=gpa check gone::file not found"
    )
    assert lines[-1].startswith("gpa check: 2 models,")


def test_a_rule_set_in_tool_gpa_points_there(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        PYPROJECT.replace('target = "missing.py"', 'target = "gpa.models:resnet_stopgrad"')
    )
    result = check("--format", "github")
    # resnet_stopgrad: the detached identity leaves no layer unreachable, so every
    # no-unreachable rule holds; plain still breaks max_shortest
    assert result.exit_code == 1
    assert all(f"line={LINES['no_unreachable']}" not in line for line in result.stdout.splitlines())


def _sarif(result) -> dict:
    log = json.loads(result.stdout)
    jsonschema.validate(log, SCHEMA)
    return log


def test_sarif_is_valid_and_locates_results(project: Path) -> None:
    log = _sarif(check("--format", "sarif"))
    (run,) = log["runs"]
    assert run["tool"]["driver"]["name"] == "gpa"
    assert run["invocations"][0]["executionSuccessful"] is False  # "gone" is in error
    ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["max-shortest", "analysis"]
    assert {r["ruleId"] for r in results} <= ids
    located = [r["locations"][0]["physicalLocation"] for r in results]
    assert [(p["artifactLocation"]["uri"], p["region"]["startLine"]) for p in located] == [
        ("pyproject.toml", LINES["plain.max_shortest"]),
        ("pyproject.toml", LINES["gone"]),
    ]
    assert results[0]["message"]["text"] == (
        "plain: max-shortest 3: 1 layer exceeds it: stem.conv (4)"
    )


def test_sarif_of_a_passing_run_and_of_command_line_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ok = _sarif(check(*PLAIN, "--max-shortest", "4", "--format", "sarif"))
    assert ok["runs"][0]["results"] == []
    assert ok["runs"][0]["invocations"][0]["executionSuccessful"] is True
    failing = _sarif(check(*PLAIN, "--max-shortest", "3", "--format", "sarif"))
    (result,) = failing["runs"][0]["results"]
    # stem.conv is called from gpa's own zoo: outside a checkout run elsewhere, and a
    # command-line rule has no configuration line
    assert "locations" not in result


def test_per_layer_rule_annotations_point_at_the_model_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `layers` rule is per layer: each offending layer is annotated at the line of the
    model's code that calls it, relative to the working directory (the checkout).
    examples/tiny_resnet.py calls conv1 at line 19 in every block; each block's conv1
    reaches the loss through its conv2 and the residual stream (shortest 3), so all three
    break max_shortest 2."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.gpa.models.tiny]\n"
        f'target = "{root / "examples" / "tiny_resnet.py"}"\n'
        'layers = { "blocks.*.conv1" = { max_shortest = 2 } }\n'
    )
    result = CliRunner().invoke(
        main, ["check", "--config", str(tmp_path / "pyproject.toml"), "--format", "github"]
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert [e.split(",title=")[0] for e in errors] == [
        "::error file=examples/tiny_resnet.py,line=19"
    ] * 3
    assert [e.rsplit(": ", 1)[1] for e in errors] == [f"blocks.{i}.conv1 (3)" for i in range(3)]


def test_per_layer_rule_outside_the_checkout_points_at_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer called from code outside the working directory (an installed library, here
    gpa's own zoo seen from a temporary directory) cannot be annotated on a diff: the
    annotation goes to the configuration line of the rule."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.gpa.models.plain]\ntarget = "gpa.models:plainnet"\nkwargs = { depth = 2 }\n'
        'layers = { "stem.*" = { max_shortest = 2 } }\n'
    )
    result = check("--format", "github")
    assert result.exit_code == 1, result.output
    (error,) = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert error.startswith("::error file=pyproject.toml,line=4,")


def test_command_line_rules_are_placed_on_each_offending_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--max-shortest``/``--max-longest``/``--no-unreachable`` name layers as a
    ``layers`` rule does, so each offending layer is annotated at its line, in GitHub's
    format and in SARIF. tests/data/check/sequential.py: body.0 → body.1 → head, all called
    at line 11; by hand body.0's shortest path is 3, body.1's 2, head's 1."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    target = "tests/data/check/sequential.py"
    github = check(target, "--max-shortest", "1", "--format", "github")
    assert github.exit_code == 1
    errors = [line for line in github.stdout.splitlines() if line.startswith("::error")]
    assert [e.split(",title=")[0] for e in errors] == [f"::error file={target},line=11"] * 2
    assert [e.rsplit("::", 1)[1] for e in errors] == [
        "max-shortest 1: body.0 (3)",
        "max-shortest 1: body.1 (2)",
    ]
    results = _sarif(check(target, "--max-shortest", "1", "--format", "sarif"))["runs"][0]
    located = [r["locations"][0]["physicalLocation"] for r in results["results"]]
    assert [(p["artifactLocation"]["uri"], p["region"]["startLine"]) for p in located] == [
        (target, 11),
        (target, 11),
    ]


LIBRARY = """\
from torch import nn


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x))


class LinearAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.act = nn.Linear(4, 4), nn.ReLU()

    def forward(self, x):
        return self.act(self.linear(x))
"""
USER = """\
from torch import nn
from pairlib import Pair


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre, self.pair, self.head = nn.Linear(4, 4), Pair(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.pair(self.pre(x)))


model = Model()
input_shape = (1, 4)
"""


def _checkout_using_a_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: str) -> None:
    """Work in a checkout holding ``user.py`` (the text ``user``), with :data:`LIBRARY`
    installed outside it as ``pairlib``."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "pairlib.py").write_text(LIBRARY)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "user.py").write_text(user)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.chdir(tmp_path / "repo")


def test_a_library_in_a_virtualenv_inside_the_checkout_is_no_line_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A virtualenv inside the checkout (``.venv``) holds the libraries' files below the
    working directory: their lines are no lines of a diff either. By hand: pre → pair.a →
    pair.b → head gives shortest paths 4, 3, 2, 1 (pre at user.py line 11)."""
    (tmp_path / "repo").mkdir()
    installed = tmp_path / "repo" / ".venv" / "lib" / "python3.11" / "site-packages"
    installed.mkdir(parents=True)
    (installed / "pairlib.py").write_text(LIBRARY)
    (tmp_path / "repo" / "user.py").write_text(USER)
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.chdir(tmp_path / "repo")
    github = check("user.py", "--max-shortest", "1", "--format", "github")
    assert [line for line in github.stdout.splitlines() if line.startswith("::error")] == [
        "::error file=user.py,line=11,title=gpa check user.py max-shortest::"
        "max-shortest 1: pre (4)",
        "::error file=user.py,line=1,title=gpa check user.py max-shortest::"
        "max-shortest 1: also pair.a (3), pair.b (2) (called from no line of the checkout)",
    ]


def test_layers_called_from_outside_the_checkout_are_named_at_the_rules_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offending layers whose call lies in an installed library (pair.a, pair.b in
    pairlib.py, outside the working directory) cannot be placed on a diff; they are not
    dropped either, but named together at the rule's own line (for a command-line rule,
    the model file's first line) beside the one placed on the checkout's line (pre, line
    11). By hand: the chain
    pre → pair.a → pair.b → head gives shortest paths 4, 3, 2, 1."""
    _checkout_using_a_library(tmp_path, monkeypatch, USER)
    github = check("user.py", "--max-shortest", "1", "--format", "github")
    assert github.exit_code == 1
    errors = [line for line in github.stdout.splitlines() if line.startswith("::error")]
    assert errors == [
        "::error file=user.py,line=11,title=gpa check user.py max-shortest::"
        "max-shortest 1: pre (4)",
        "::error file=user.py,line=1,title=gpa check user.py max-shortest::"
        "max-shortest 1: also pair.a (3), pair.b (2) (called from no line of the checkout)",
    ]
    sarif = _sarif(check("user.py", "--max-shortest", "1", "--format", "sarif"))
    placed, rest = sarif["runs"][0]["results"]
    assert placed["locations"][0]["physicalLocation"]["region"]["startLine"] == 11
    # no line of its own (a command-line rule): the model's file, which code scanning needs
    assert rest["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "user.py"
    assert "pair.a (3), pair.b (2)" in rest["message"]["text"]
    # a `layers` rule splits alike (the layers outside the checkout were dropped before),
    # the rest pointing at the configuration line setting it
    (tmp_path / "repo" / "pyproject.toml").write_text(
        '[tool.gpa.models.user]\ntarget = "user.py"\nlayers = { "*" = { max_shortest = 1 } }\n'
    )
    errors = check("--format", "github").stdout.splitlines()
    assert [e.split("::")[1].split(",title=")[0] for e in errors[:2]] == [
        "error file=user.py,line=11",
        "error file=pyproject.toml,line=3",
    ]
    assert errors[1].endswith(
        "::layers[*].max-shortest 1: also pair.a (3), pair.b (2) (called from no line of the checkout)"
    )


# tests/data/check/wrapped.py: a → project(·, p.weight) → b, where project() is a
# torch.fx.wrap function fx cannot trace into (it reads a global). By hand: fx sees a and
# b only (a's shortest path 2: a → b), autograd sees p too (a → p → b: a's shortest 3).
WRAPPED = str(DATA / "check" / "wrapped.py")
UNSEEN = "'project' is a function fx keeps whole"


@pytest.mark.parametrize(
    ("tracer", "layers", "max_shortest", "note"),
    [
        ("fx", 2, 2, UNSEEN),
        ("auto", 3, 3, "tracer auto used autograd: fx: cannot look into project"),
    ],
)
def test_notes_and_tracer_reach_every_format(tracer, layers, max_shortest, note) -> None:
    """A rule that holds on a model seen only in part must not pass silently: every format
    carries the notes `gpa analyze` prints (`--tracer fx` misses p, and says so)."""
    args = (WRAPPED, "--tracer", tracer, "--max-shortest", "5")
    text = check(*args)
    assert text.exit_code == 0
    (line,) = [s for s in text.stdout.splitlines() if s.startswith("NOTE ")]
    assert line.startswith(f"NOTE {WRAPPED}: {note}")

    (model,) = json.loads(check(*args, "--format", "json").stdout)["models"]
    assert model["tracer"] == ("fx" if tracer == "fx" else "autograd")
    assert model["network"]["layers"] == layers
    assert model["network"]["max_shortest"] == max_shortest
    (json_note,) = model["notes"]
    assert json_note.startswith(note)

    github = check(*args, "--format", "github").stdout.splitlines()
    assert github[0].startswith(f"::notice title=gpa check {WRAPPED}::{note}")

    out = check(*args, "--format", "junit").stdout
    assert f"<system-out>note: {note}" in out

    log = _sarif(check(*args, "--format", "sarif"))
    (run,) = log["runs"]
    assert run["results"] == []  # a note is no finding
    (notification,) = run["invocations"][0]["toolExecutionNotifications"]
    assert notification["level"] == "note"
    assert notification["message"]["text"].startswith(f"{WRAPPED}: {note}")


def test_no_notes_no_note_lines() -> None:
    result = check(*PLAIN, "--max-shortest", "4")
    assert "NOTE" not in result.stdout
    (model,) = json.loads(check(*PLAIN, "--max-shortest", "4", "--format", "json").stdout)["models"]
    assert (model["tracer"], model["notes"]) == ("fx", [])


USER_WRAPPED = """\
from torch import nn
from pairlib import LinearAct


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = LinearAct(), LinearAct(), nn.Linear(4, 2)

    def forward(self, x):
        x = self.a(x)
        return self.head(self.b(x))


model = Model()
input_shape = (1, 4)
"""


def test_layers_a_library_wrapper_holds_are_annotated_where_the_checkout_calls_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library's layer–activation wrapper (as Ultralytics' ``Conv`` in a user's model)
    calls its one layer at a line of the library; the layer is placed where the user's
    code calls the wrapper, so it is annotated on the checkout (it was named at the rule's
    line, "called from no line of the checkout"). By hand: a.linear → b.linear → head
    gives shortest paths 3, 2, 1; the wrappers are called at user.py lines 11 and 12."""
    _checkout_using_a_library(tmp_path, monkeypatch, USER_WRAPPED)
    github = check("user.py", "--max-shortest", "1", "--format", "github")
    assert github.exit_code == 1
    assert [line for line in github.stdout.splitlines() if line.startswith("::error")] == [
        "::error file=user.py,line=11,title=gpa check user.py max-shortest::"
        "max-shortest 1: a.linear (3)",
        "::error file=user.py,line=12,title=gpa check user.py max-shortest::"
        "max-shortest 1: b.linear (2)",
    ]


CHAIN = """\
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.extra = nn.Linear(4, 4) if LONGER else None

    def forward(self, x):
        x = self.a(x)
        x = self.extra(x) if self.extra is not None else x
        return self.head(self.b(x))


LONGER = False
model = Model()
input_shape = (1, 4)
"""


def test_a_baseline_regression_of_the_network_is_annotated_at_the_rules_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a new user: the network's own regression (max_shortest) was listed as
    "also None (max_shortest 3 -> 4) (called from no line of the checkout)". By hand: the
    chain a → b → head gives a shortest 3; with `extra` after a, 4 (b and head unchanged).
    The layer's regression is placed at its line (11), the network's at the line setting
    the rule (pyproject.toml line 2)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user.py").write_text(CHAIN)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.gpa]\nbaseline = "baseline.json"\n\n[tool.gpa.models.user]\ntarget = "user.py"\n'
    )
    assert check("--write-baseline", "baseline.json").exit_code == 0
    (tmp_path / "user.py").write_text(CHAIN.replace("LONGER = False", "LONGER = True"))
    result = check("--format", "github")
    assert result.exit_code == 1, result.output
    assert [line for line in result.stdout.splitlines() if line.startswith("::error")] == [
        "::error file=user.py,line=11,title=gpa check user baseline::baseline: a (shortest 3 -> 4)",
        "::error file=pyproject.toml,line=2,title=gpa check user baseline::"
        "baseline: max_shortest 3 -> 4",
    ]
