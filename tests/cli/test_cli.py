"""Tests of the ``gpa`` command line: options, formats, exit codes and error messages.

Fixture models live in tests/data; their expected numbers are derived by hand in
the comments next to each assertion.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

import gpa
from gpa.cli import main
from gpa.render.text import format_count, format_sources, format_timestamps

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(autouse=True)
def in_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every command from tests/data so targets and names are short and stable."""
    monkeypatch.chdir(DATA)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def analyze_json(*args: str) -> dict:
    result = run("analyze", *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {layer["name"]: layer for layer in report["layers"]}


def fails_with(*args: str) -> str:
    """Run ``gpa analyze ARGS``, check it is a user error (exit 2, no traceback), return stderr."""
    result = run("analyze", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert "Traceback (most recent call last)" not in result.stderr
    return result.stderr


# ------------------------------------------------------------------ basics


def test_version_and_help() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"gpa {gpa.__version__}\n"
    result = run("analyze", "--help")
    assert result.exit_code == 0
    for option in ("-k KEY=VALUE", "--input-shape", "--outputs", "--layer-type", "--leaf"):
        assert option in result.stdout
    assert "[text|json|csv|html|dot|graphml|node-link]" in result.stdout


def test_the_version_is_the_installed_ones_and_the_changelogs_open_release() -> None:
    # gpa --version and the JSON's gpa_version say what pip installed, a pre-release of
    # the release the CHANGELOG's first section describes
    from importlib.metadata import version

    from packaging.version import Version

    assert version("gpa") == gpa.__version__
    first = next(
        line
        for line in (DATA.parents[1] / "CHANGELOG.md").read_text().splitlines()
        if line.startswith("## ")
    )
    assert Version(gpa.__version__).base_version == first.split()[1]


def test_json_report_of_a_three_conv_chain() -> None:
    report = analyze_json("chain3.py")
    assert list(report) == [
        "gpa_version",
        "model",
        "tracer",
        "inputs",
        "options",
        "network",
        "layers",
        "notes",
    ]
    assert report["gpa_version"] == gpa.__version__
    assert report["model"] == "chain3.py:build_model"
    assert report["inputs"] == [{"shape": [1, 3, 8, 8], "dtype": "float32"}]
    # conv1 -> conv2 -> conv3 -> fc -> loss: conv i crosses 3 - i + 1 more layers plus itself
    assert [layer["name"] for layer in report["layers"]] == ["conv1", "conv2", "conv3", "fc"]
    assert [layer["shortest"] for layer in report["layers"]] == [4, 3, 2, 1]
    assert [layer["longest"] for layer in report["layers"]] == [4, 3, 2, 1]
    assert [layer["timestamps"] for layer in report["layers"]] == [[4], [3], [2], [1]]
    assert [layer["num_paths"] for layer in report["layers"]] == [1, 1, 1, 1]
    assert [layer["sources"] for layer in report["layers"]] == [
        ["conv2"],
        ["conv3"],
        ["fc"],
        ["<loss>"],
    ]
    first = report["layers"][0]
    assert list(first) == [
        "name",
        "type",
        "calls",
        "shortest",
        "longest",
        "timestamps",
        "num_paths",
        "path_histogram",
        "sources",
        "params",
        "flops",
    ]
    assert (first["type"], first["calls"], first["path_histogram"]) == ("Conv2d", 1, {"4": 1})
    # by hand: 3x3 convs 3->4 and 4->4 with bias on 8x8, linear 4->10; 2 FLOPs per multiply-add
    assert [layer["params"] for layer in report["layers"]] == [112, 148, 148, 50]
    assert [layer["flops"] for layer in report["layers"]] == [13824, 18432, 18432, 80]
    assert report["network"] == {
        "layers": 4,
        "max_shortest": 4,
        "min_shortest": 1,
        "mean_shortest": 2.5,
        "longest": 4,
        "unreachable": [],
        "params": 458,
        "flops": 50768,
        "count_convention": "torch",
    }
    assert report["notes"] == []


@pytest.mark.parametrize("fmt", ["text", "json", "csv"])
def test_output_is_byte_identical_across_runs(fmt: str) -> None:
    # ("table" was no format of analyze's: two identical usage errors had passed this)
    results = [run("analyze", "pair.py", "--format", fmt) for _ in range(2)]
    assert [r.exit_code for r in results] == [0, 0]
    assert results[0].stdout == results[1].stdout


def test_table_format() -> None:
    result = run("analyze", "chain3.py")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "model: chain3.py:build_model"
    assert lines[1] == "inputs: float32[1, 3, 8, 8]   tracer: fx"
    assert (
        lines[2].split()
        == (
            "layers: 4 max_shortest: 4 min_shortest: 1 mean_shortest: 2.50 longest: 4 unreachable: 0"
        ).split()
    )
    header = next(line for line in lines if line.startswith("layer "))
    assert header.split() == [
        "layer",
        "type",
        "calls",
        "shortest",
        "longest",
        "timestamps",
        "paths",
        "params",
        "flops",
        "sources",
    ]
    assert lines[3].split()[:4] == ["params:", "458", "flops:", "50.8K"]
    rows = {line.split()[0]: line.split() for line in lines[lines.index(header) + 2 :] if line}
    assert rows["conv1"] == ["conv1", "Conv2d", "1", "4", "4", "4", "1", "112", "13.8K", "conv2"]
    assert rows["fc"] == ["fc", "Linear", "1", "1", "1", "1", "1", "50", "80", "<loss>"]
    assert all(len(line) <= 120 for line in lines)
    assert "\x1b[" not in result.stdout  # no colour when not a terminal


def test_table_lists_unreachable_layers() -> None:
    result = run("analyze", "two_heads.py", "--outputs", "main")
    assert result.exit_code == 0
    assert "unreachable layers: aux" in result.stdout
    aux = next(line for line in result.stdout.splitlines() if line.startswith("aux "))
    # params 4*3 + 3, FLOPs 2 * 2 rows * 3 * 4 (counted in train mode, where aux runs)
    assert aux.split() == ["aux", "Linear", "1", "-", "-", "-", "0", "15", "48", "-"]


def test_csv_format() -> None:
    result = run("analyze", "pair.py", "--format", "csv")
    assert result.exit_code == 0
    # h = left(a) + right(b) is returned and also feeds mix: left reaches the loss
    # directly (length 1) and through mix (length 2)
    assert result.stdout == (
        "name,type,calls,shortest,longest,timestamps,num_paths,sources,params,flops\n"
        "left,Linear,1,1,2,1;2,2,mix;<loss>,16,24\n"
        "right,Linear,1,1,2,1;2,2,mix;<loss>,24,40\n"
        "mix,Linear,1,1,1,1,1,<loss>,10,16\n"
    )
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["timestamps"].split(";") == ["1", "2"]


def test_csv_format_with_channels() -> None:
    """``--channels`` left the CSV as it was (found by a surface review); it gains the text
    table's segments and combinations. By hand: every channel of left and right reaches
    the loss both directly and through mix (a linear mixes them all): one segment each,
    one combination; mix one segment."""
    result = run("analyze", "pair.py", "--channels", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "name,type,calls,shortest,longest,timestamps,num_paths,sources,params,flops,"
        "segments,gradient_combinations\n"
        "left,Linear,1,1,2,1;2,2,mix;<loss>,16,24,1,1\n"
        "right,Linear,1,1,2,1;2,2,mix;<loss>,24,40,1,1\n"
        "mix,Linear,1,1,1,1,1,<loss>,10,16,1,1\n"
    )


def test_output_file(tmp_path: Path) -> None:
    for fmt in ("text", "json", "csv"):
        target = tmp_path / f"report.{fmt}"
        result = run("analyze", "chain3.py", "--format", fmt, "-o", str(target))
        assert result.exit_code == 0
        assert result.stdout == ""
        expected = run("analyze", "chain3.py", "--format", fmt).stdout
        assert target.read_text(encoding="utf-8") == expected
    assert json.loads((tmp_path / "report.json").read_text())["network"]["max_shortest"] == 4


def test_output_file_that_cannot_be_written(tmp_path: Path) -> None:
    message = fails_with("chain3.py", "-o", str(tmp_path / "no" / "such" / "dir" / "r.txt"))
    assert message.startswith("error: cannot write")


# ------------------------------------------------------------- options


def test_factory_kwargs() -> None:
    # Stack(depth=3): three chained linears -> shortest 3, 2, 1
    report = analyze_json("factory.py:build", "-k", "depth=3", "-k", "act=tanh")
    assert [(r["name"], r["shortest"]) for r in report["layers"]] == [
        ("layers.0", 3),
        ("layers.1", 2),
        ("layers.2", 1),
    ]
    # factory.py defines example_inputs() returning zeros(2, 4)
    assert report["inputs"] == [{"shape": [2, 4], "dtype": "float32"}]


def test_factory_kwargs_change_the_model() -> None:
    narrow = analyze_json("chain3.py", "-k", "width=2", "--input-shape", "1,3,5,5")
    assert narrow["inputs"] == [{"shape": [1, 3, 5, 5], "dtype": "float32"}]
    assert [r["shortest"] for r in narrow["layers"]] == [4, 3, 2, 1]


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("depth", "invalid option 'depth': expected key=value"),
        ("2x=1", "is not a valid keyword-argument name"),
    ],
)
def test_bad_kwargs_are_usage_errors(option: str, fragment: str) -> None:
    result = run("analyze", "chain3.py", "-k", option)
    assert result.exit_code == 2
    assert "Invalid value for '-k'" in result.stderr
    assert fragment in result.stderr


def test_unknown_factory_kwarg() -> None:
    message = fails_with("chain3.py", "-k", "depht=3")
    assert "build_model in chain3.py does not accept 'depht'" in message
    assert "it accepts: width" in message


def test_repeated_input_shapes() -> None:
    report = analyze_json("pair.py", "--input-shape", "2,3", "--input-shape", "2,5")
    assert report["inputs"] == [
        {"shape": [2, 3], "dtype": "float32"},
        {"shape": [2, 5], "dtype": "float32"},
    ]
    assert by_name(report)["left"]["timestamps"] == [1, 2]


def test_bad_input_shape_is_a_usage_error() -> None:
    result = run("analyze", "chain3.py", "--input-shape", "1,three,8,8")
    assert result.exit_code == 2
    assert "Invalid value for '--input-shape'" in result.stderr
    assert "'three' is not a whole number" in result.stderr


def test_eval_mode_drops_the_training_only_head() -> None:
    # train: body feeds main and aux -> two paths of length 2; eval: only main is returned
    train = by_name(analyze_json("two_heads.py"))
    assert (train["body"]["num_paths"], train["body"]["sources"]) == (2, ["main", "aux"])
    assert train["aux"]["shortest"] == 1
    evaluated = analyze_json("two_heads.py", "--eval")
    layers = by_name(evaluated)
    assert (layers["body"]["num_paths"], layers["body"]["sources"]) == (1, ["main"])
    assert evaluated["network"]["unreachable"] == ["aux"]
    assert layers["aux"]["calls"] == 0


def test_outputs_select_by_key_and_index() -> None:
    main_only = analyze_json("two_heads.py", "--outputs", "main")
    assert main_only["network"]["unreachable"] == ["aux"]
    assert by_name(main_only)["body"]["num_paths"] == 1
    # output 0 is mix(h): left only reaches the loss through mix
    first = by_name(analyze_json("pair.py", "--outputs", "0"))
    assert (first["left"]["shortest"], first["left"]["longest"]) == (2, 2)
    assert first["left"]["sources"] == ["mix"]
    # output 1 is h itself: mix gets no gradient
    second = analyze_json("pair.py", "--outputs", "1")
    assert second["network"]["unreachable"] == ["mix"]
    assert by_name(second)["left"]["timestamps"] == [1]
    both = analyze_json("pair.py", "--outputs", "0", "--outputs", "1")
    assert by_name(both)["left"]["timestamps"] == [1, 2]


def test_unknown_output_key() -> None:
    message = fails_with("two_heads.py", "--outputs", "logits")
    assert "'logits'" in message and "'main'" in message and "'aux'" in message


def test_layer_type_overrides_the_layer_set() -> None:
    only_fc = analyze_json("chain3.py", "--layer-type", "Linear")
    assert [(r["name"], r["shortest"]) for r in only_fc["layers"]] == [("fc", 1)]
    convs = analyze_json("chain3.py", "--layer-type", "torch.nn.Conv2d")
    assert [(r["name"], r["shortest"]) for r in convs["layers"]] == [
        ("conv1", 3),
        ("conv2", 2),
        ("conv3", 1),
    ]


def test_unknown_layer_type() -> None:
    message = fails_with("chain3.py", "--layer-type", "Conv9d")
    # the option named: the value may come from [tool.gpa] as well as from the flag
    assert "layer_types (--layer-type): unknown module class 'Conv9d'" in message


def test_leaf_by_class_and_by_name() -> None:
    # b1 = (a, b), b2 = (a, b), head: five convs in a chain
    plain = analyze_json("blocks.py")
    assert [(r["name"], r["shortest"]) for r in plain["layers"]] == [
        ("b1.a", 5),
        ("b1.b", 4),
        ("b2.a", 3),
        ("b2.b", 2),
        ("head", 1),
    ]
    # each Block is a leaf containing convs, hence a single layer
    by_class = analyze_json("blocks.py", "--leaf", "Block")
    assert [(r["name"], r["type"], r["shortest"]) for r in by_class["layers"]] == [
        ("b1", "Block", 3),
        ("b2", "Block", 2),
        ("head", "Conv2d", 1),
    ]
    by_module_name = analyze_json("blocks.py", "--leaf", "b1")
    assert [(r["name"], r["shortest"]) for r in by_module_name["layers"]] == [
        ("b1", 4),
        ("b2.a", 3),
        ("b2.b", 2),
        ("head", 1),
    ]


BLOCKS_AS_LEAVES = [("b1", 3), ("b2", 2), ("head", 1)]  # by hand, as in the test above


@pytest.fixture
def blocks_in_a_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's repository holding tests/data/blocks.py as ``nets/blocks.py``, run from
    its root."""
    (tmp_path / "nets").mkdir()
    shutil.copy(DATA / "blocks.py", tmp_path / "nets" / "blocks.py")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("spelt", ["Block", "nets.blocks.Block", "blocks.Block"])
def test_a_target_files_class_is_a_leaf_however_the_user_spells_it(
    blocks_in_a_package: Path, spelt: str
) -> None:
    """``--leaf nets.blocks.Block`` (the file's dotted path from the repository) matched no
    module without a word — under ``python -m gpa`` it imported the file again, a second
    class — so the blocks were read layer by layer and a gate passed that should fail;
    ``blocks.Block``, the spelling a report records, was refused (found by a new user)."""
    report = analyze_json("nets/blocks.py", "--leaf", spelt)
    assert [(r["name"], r["shortest"]) for r in report["layers"]] == BLOCKS_AS_LEAVES
    assert report["options"]["leaf_modules"] == ["blocks.Block"]
    by_type = analyze_json("nets/blocks.py", "--layer-type", spelt, "--layer-type", "Conv2d")
    assert [(r["name"], r["shortest"]) for r in by_type["layers"]] == BLOCKS_AS_LEAVES


def test_a_target_files_class_imported_again_by_its_package_path_is_the_same_class(
    blocks_in_a_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From elsewhere, with the repository on ``sys.path``, ``nets.blocks.Block`` imports the
    file a second time: its class is the model's class still."""
    monkeypatch.syspath_prepend(str(blocks_in_a_package))
    (blocks_in_a_package / "elsewhere").mkdir()
    monkeypatch.chdir(blocks_in_a_package / "elsewhere")
    target = str(blocks_in_a_package / "nets" / "blocks.py")
    report = analyze_json(target, "--leaf", "nets.blocks.Block")
    assert [(r["name"], r["shortest"]) for r in report["layers"]] == BLOCKS_AS_LEAVES


@pytest.mark.parametrize("where", [".", "nets"])
def test_a_leaf_spelt_by_its_package_path_holds_in_the_gate(
    blocks_in_a_package: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """From the repository's root and from a subdirectory alike (gpa check finds the
    configuration upward): the class's path names its file wherever gpa runs."""
    (blocks_in_a_package / "pyproject.toml").write_text(
        '[tool.gpa.models.net]\ntarget = "nets/blocks.py"\n'
        'leaf_modules = ["nets.blocks.Block"]\nmax_shortest = 2\n'
    )
    monkeypatch.chdir(blocks_in_a_package / where)
    result = run("check")
    assert result.exit_code == 1, result.output  # b1's shortest path is 3 (by hand)
    assert "b1 (3)" in result.output


NESTED = """
from torch import nn


class Outer(nn.Module):
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x))

    def __init__(self):
        super().__init__()
        self.i, self.head = Outer.Inner(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.i(x))


def build_model():
    model = Outer()
    model.input_shape = (1, 4)
    return model
"""


@pytest.mark.parametrize("spelt", ["Inner", "Outer.Inner", "nested.Outer.Inner"])
def test_a_nested_class_is_a_leaf_by_its_qualified_name(tmp_path: Path, spelt: str) -> None:
    """``Outer.Inner``, as fx's messages name the class to declare a leaf, was refused."""
    (tmp_path / "nested.py").write_text(NESTED)
    report = analyze_json(str(tmp_path / "nested.py"), "--leaf", spelt)
    # by hand: head feeds the loss (1); the leaf i through it (2)
    assert [(r["name"], r["shortest"]) for r in report["layers"]] == [("i", 2), ("head", 1)]


SHADOWING = """
import torch
from torch import nn


class GELU(nn.Module):  # as diffusers' activations.GELU: a projection, then the activation
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, 4 * d)

    def forward(self, x):
        return torch.nn.functional.gelu(self.proj(x))


class Net(nn.Module):
    def __init__(self, torch_gelu=False):
        super().__init__()
        self.ff, self.out = GELU(8), nn.Linear(32, 8)
        self.act = nn.GELU() if torch_gelu else nn.Identity()

    def forward(self, x):
        return self.out(self.act(self.ff(x)))


def build_model(torch_gelu=False):
    model = Net(torch_gelu)
    model.input_shape = (2, 8)
    return model
"""


@pytest.mark.parametrize(
    ("args", "records"),
    [
        # the model uses no torch.nn.GELU: its own GELU is the leaf, one layer
        ((), [("ff", 2), ("out", 1)]),
        # it uses both: the bare name stays torch's (which holds no layer), as documented
        (("-k", "torch_gelu=True"), [("ff.proj", 2), ("out", 1)]),
    ],
)
def test_a_bare_torch_name_the_model_uses_only_its_own_class_of_names_that(
    tmp_path: Path, args: tuple[str, ...], records: list[tuple[str, int]]
) -> None:
    """Found by a survey of diffusers' models: SD3's feed-forward is diffusers' own
    ``GELU`` (a projection and the activation), and ``--leaf GELU`` named
    ``torch.nn.GELU``, which the model never uses: nothing became a leaf, and fx kept
    failing where the user had declared the leaf. A bare name of a torch.nn class the
    model does not use names the model's own class of that name. By hand: ``out`` feeds
    the loss (1), the leaf ``ff`` (or its ``proj``) through it (2)."""
    (tmp_path / "shadow.py").write_text(SHADOWING)
    report = analyze_json(str(tmp_path / "shadow.py"), "--leaf", "GELU", *args)
    assert [(r["name"], r["shortest"]) for r in report["layers"]] == records
    explicit = analyze_json(str(tmp_path / "shadow.py"), "--leaf", "nn.GELU")
    assert [r["name"] for r in explicit["layers"]] == ["ff.proj", "out"]  # nn.GELU: torch's


class _Gated:
    class GELU(nn.Module):  # a second class of the model's own named GELU
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x) * torch.sigmoid(x)


class _Plain:
    class GELU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(self.proj(x))


def test_a_bare_torch_name_two_classes_of_the_model_have_is_ambiguous() -> None:
    """Found by the review of the change above: with two classes of its own named ``GELU``
    and no ``torch.nn.GELU``, ``--leaf GELU`` still named torch's class and made no leaf,
    with a note alone; a name of the model's alone two classes share is refused as
    ambiguous, naming both, and so is this one."""
    model = nn.Sequential(_Gated.GELU(), _Plain.GELU(), nn.Linear(8, 2))
    with pytest.raises(gpa.GpaError, match="class name 'GELU' is ambiguous in this model: "):
        gpa.analyze(model, input_shape=(2, 8), leaf_modules=["GELU"])
    report = gpa.analyze(model, input_shape=(2, 8), leaf_modules=[_Plain.GELU])
    assert list(report.layers) == ["0.proj", "1", "2"]  # the one named: a leaf


def test_a_class_no_module_of_the_model_is_of_is_noted(
    blocks_in_a_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leaf class, or a layer type of the user's, that no module is of selects nothing:
    noted (a torch class in a layer-type list many models share is not)."""
    (blocks_in_a_package / "nets" / "extra.py").write_text(
        "from torch import nn\n\n\nclass Unused(nn.Module):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(blocks_in_a_package))
    report = analyze_json(
        "nets/blocks.py",
        *("--leaf", "LSTM", "--layer-type", "Conv2d", "--layer-type", "GRU"),
        *("--layer-type", "nets.extra.Unused"),
    )
    assert len(report["layers"]) == 5  # every convolution, as without the options
    notes = [n for n in report["notes"] if "no module of the model is of this class" in n]
    assert notes == [
        "leaf_modules (--leaf) torch.nn.LSTM: no module of the model is of this class, so it "
        "makes no leaf",
        "layer_types (--layer-type) nets.extra.Unused: no module of the model is of this class, "
        "so it counts no layer",
    ]


def test_a_scripted_module_is_of_the_class_it_was_compiled_from_for_the_note() -> None:
    class Scripted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.jit.script(nn.Conv2d(3, 3, 3, padding=1))
            self.b = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    for option in ({"layer_types": [nn.Conv2d, nn.Linear]}, {"leaf_modules": [nn.Conv2d]}):
        report = gpa.analyze(Scripted(), input_shape=(1, 3, 8, 8), **option)
        assert list(report.layers) == ["a", "b"]
        assert not [n for n in report.notes if "no module of the model is of" in n]


def test_unknown_leaf() -> None:
    message = fails_with("blocks.py", "--leaf", "b3")
    assert "leaf_modules (--leaf): 'b3' is not the name of a submodule of the model" in message
    assert "Block" in message


def test_import_spec_target() -> None:
    report = analyze_json(
        "torch.nn:Linear", "-k", "in_features=3", "-k", "out_features=2", "--input-shape", "4,3"
    )
    assert report["model"] == "torch.nn:Linear"
    assert report["inputs"] == [{"shape": [4, 3], "dtype": "float32"}]
    # the root module is the only layer: fx traces its forward, F.linear(x, weight)
    assert [(r["shortest"], r["longest"], r["num_paths"]) for r in report["layers"]] == [(1, 1, 1)]
    assert report["network"]["layers"] == 1


def test_no_inputs_still_runs_and_prints_the_notes() -> None:
    result = run("analyze", "no_inputs.py")
    assert result.exit_code == 0
    assert "inputs: none" in result.stdout
    notes = result.stdout[result.stdout.index("\nnotes:\n") :]
    assert "no example inputs" in notes and "--input-shape" in notes
    report = analyze_json("no_inputs.py")
    assert report["inputs"] is None
    assert [(r["name"], r["shortest"]) for r in report["layers"]] == [("0", 2), ("2", 1)]
    assert any("no example inputs" in note for note in report["notes"])
    csv_result = run("analyze", "no_inputs.py", "--format", "csv")
    assert csv_result.stdout.startswith("name,type,")
    assert csv_result.stderr.startswith("note: no example inputs")


def test_bad_format_is_a_usage_error() -> None:
    result = run("analyze", "chain3.py", "--format", "xml")
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.stderr


def test_missing_target_argument_is_a_usage_error() -> None:
    result = run("analyze")
    assert result.exit_code == 2
    assert "Missing argument 'TARGET'" in result.stderr


# ------------------------------------------------------ errors (issue 2 §7)


def test_error_missing_file() -> None:
    message = fails_with("nets/mine.py:build")
    assert message.startswith("error: file not found: nets/mine.py")


def test_error_exception_while_importing() -> None:
    message = fails_with("import_error.py")
    assert "importing import_error.py failed" in message
    assert 'File "import_error.py", line 6, in <module>' in message
    assert 'MAX_DEPTH = LIMITS["detph"]' in message
    assert "KeyError: 'detph'" in message
    assert "importlib" not in message


def test_error_syntax_error_in_file(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def build_model(:\n    pass\n")
    message = fails_with(str(tmp_path / "broken.py"))
    assert 'broken.py", line 1' in message and "SyntaxError" in message


def test_error_no_model_found() -> None:
    message = fails_with("no_model.py")
    assert "no model found in no_model.py" in message
    assert "looked for model, build_model, get_model, create_model" in message
    assert "TinyNet" in message and "make_net" in message


def test_error_missing_attr() -> None:
    message = fails_with("factory.py:buld")
    assert "factory.py has no attribute 'buld' (did you mean 'build'?)" in message


def test_error_factory_raises() -> None:
    message = fails_with("factory_raises.py")
    assert "build_model() from factory_raises.py raised an exception" in message
    assert 'File "factory_raises.py", line 8, in _check' in message
    assert "ValueError: width must be a multiple of 8, got 12" in message


def test_error_factory_returns_no_module() -> None:
    message = fails_with("not_module.py")
    assert "returned builtins.dict, not a torch.nn.Module" in message


def test_error_unimportable_module() -> None:
    message = fails_with("no_such_pkg_for_gpa_tests.nets:build")
    assert "cannot import module 'no_such_pkg_for_gpa_tests.nets'" in message


def test_error_model_fx_cannot_trace() -> None:
    message = fails_with("untraceable.py", "--tracer", "fx")
    assert "cannot trace" in message
    assert "control flow" in message
    # points at the model's own source file and line
    assert 'untraceable.py", line 14, in forward' in message
    assert "if x.sum() > 0:" in message


def test_error_input_shape_does_not_fit() -> None:
    message = fails_with("convnet.py", "--input-shape", "1,4,8,8")
    assert "'stem'" in message  # the layer
    assert "(1, 4, 8, 8)" in message  # the shape it received
    assert "(8, 3, 3, 3)" in message  # the shape its weight expects


def test_error_model_without_layers() -> None:
    message = fails_with("no_layers.py")
    assert "has no layers" in message
    assert "--layer-type" in message


def test_internal_error_exits_1_with_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(gpa.api, "analyze_model", broken)
    result = run("analyze", "chain3.py")
    assert result.exit_code == 1
    assert result.stderr.startswith("internal error: gpa ")
    assert "bug in gpa" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: simulated bug" in result.stderr


# ---------------------------------------------------------- real processes


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)
    env["COLUMNS"] = "120"  # the table fits COLUMNS: the width of run()'s (tests/conftest.py)
    return env


@pytest.mark.slow  # subprocesses
def test_console_script_in_a_subprocess() -> None:
    script = shutil.which("gpa") or str(Path(sys.executable).with_name("gpa"))
    done = subprocess.run(
        [script, "analyze", "chain3.py", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=DATA,
        env=_subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert [r["shortest"] for r in json.loads(done.stdout)["layers"]] == [4, 3, 2, 1]
    table = subprocess.run(
        [script, "analyze", "chain3.py"],
        capture_output=True,
        text=True,
        cwd=DATA,
        env=_subprocess_env(),
        timeout=300,
    )
    assert table.returncode == 0
    assert table.stdout == run("analyze", "chain3.py").stdout


@pytest.mark.slow  # subprocesses
def test_python_dash_m_in_a_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpa", "analyze", "factory_raises.py"],
        capture_output=True,
        text=True,
        cwd=DATA,
        env=_subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: building the model failed")
    assert "Traceback (most recent call last)" not in done.stderr
    version = subprocess.run(
        [sys.executable, "-m", "gpa", "--version"], capture_output=True, text=True, timeout=300
    )
    assert (version.returncode, version.stdout) == (0, f"gpa {gpa.__version__}\n")


# ------------------------------------------------------------ formatting helpers


def test_format_helpers() -> None:
    # exact: runs as ranges, an equal step of five or more values as "a–b by k"
    assert format_timestamps([2, 4, 6, 8]) == "2, 4, 6, 8"
    assert format_timestamps(list(range(2, 42, 2))) == "2–40 by 2"
    assert format_timestamps([6, *range(8, 49), 50]) == "6, 8–48, 50"
    assert format_timestamps([1, 2, 4, 5, 6, 9]) == "1, 2, 4–6, 9"
    assert format_timestamps([1, 3, 5, 7, 9, 10, 11]) == "1–9 by 2, 10, 11"
    assert format_timestamps(range(1, 30, 3), limit=3) == "1–28 by 3"
    assert format_timestamps([1, 4, 9, 16, 25], limit=3) == "1, 4, …, 25 (5 values)"
    assert format_timestamps([]) == "-"
    assert format_count(999_999) == "999999"
    assert format_count(2**100) == "1.27e+30"
    assert format_count(10**400) == "1.00e+400"
    assert format_sources(["a", "b"]) == "a, b"
    assert format_sources(["a", "b", "c", "d", "e"]) == "a, b, … (+3)"
