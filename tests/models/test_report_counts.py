"""Parameters and FLOPs in ``gpa.analyze`` reports (issue 3, §2), and the zoo on the CLI.

Expected values are worked out by hand (a multiply-add = 2 FLOPs), taken from the
reference (architectures.md §2), or computed independently by :func:`gpa.counts.count`
(forward hooks on a meta forward pass, where the report uses the analysis' shapes).
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gpa
import gpa.models
from gpa.cli import main
from gpa.errors import GpaError
from gpa.frontends.counts import count
from gpa.target import load_target

TOY = [n for n in gpa.models.names() if gpa.models.describe(n).input_shape == (1, 3, 64, 64)]


class ConvBnHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # 108 weights + 4 biases
        self.bn = nn.BatchNorm2d(4)  # 8
        self.fc = nn.Linear(4, 10)  # 40 weights + 10 biases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_params_and_flops_by_hand() -> None:
    report = gpa.analyze(ConvBnHead(), input_shape=(2, 3, 5, 5))
    conv, fc = report.layers["conv"], report.layers["fc"]
    # conv: 2 * (2*4*5*5 outputs) * (3*3*3 products each); fc: 2 * (2*10 outputs) * 4
    assert (conv.params, conv.flops) == (112, 2 * 200 * 27)
    assert (fc.params, fc.flops) == (50, 2 * 20 * 4)
    assert report.network.params == 112 + 8 + 50  # the norm counts in the network total
    assert report.network.flops == 10800 + 160
    assert report.network.count_convention == "torch"
    darknet = gpa.analyze(ConvBnHead(), input_shape=(2, 3, 5, 5), count_convention="darknet")
    assert [r.params for r in darknet.layers.values()] == [108, 40]
    assert darknet.network.params == 148
    assert darknet.network.flops == report.network.flops


def test_json_fields() -> None:
    data = gpa.analyze(ConvBnHead(), input_shape=(1, 3, 5, 5)).to_dict()
    assert [(r["params"], r["flops"]) for r in data["layers"]] == [(112, 5400), (50, 80)]
    assert (data["network"]["params"], data["network"]["flops"]) == (170, 5480)
    assert data["network"]["count_convention"] == "torch"


def test_without_inputs_flops_are_none_with_a_note() -> None:
    report = gpa.analyze(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))
    assert [r.params for r in report.layers.values()] == [15, 8]
    assert [r.flops for r in report.layers.values()] == [None, None]
    assert report.network.params == 23 and report.network.flops is None
    assert any("FLOPs were not counted" in note for note in report.notes)


def test_repeated_calls_add_up_and_a_leaf_model_is_its_own_layer() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.lin(x))

    rec = gpa.analyze(Twice(), input_shape=(1, 3)).layers["lin"]
    assert (rec.calls, rec.params, rec.flops) == (2, 12, 2 * (2 * 3 * 3))
    leaf = gpa.analyze(nn.Linear(5, 2), input_shape=(1, 5)).layers["Linear"]
    assert (leaf.params, leaf.flops) == (12, 20)


def test_functional_layer_on_a_root_parameter() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.weight)

    report = gpa.analyze(Functional(), input_shape=(1, 3))
    assert report.layers["weight"].params == 6
    assert report.layers["weight"].flops is None  # only conv/linear/bilinear modules
    assert report.network.params == 6


def test_unknown_convention_is_a_user_error() -> None:
    with pytest.raises(GpaError, match="count convention"):
        gpa.analyze(nn.Linear(2, 2), input_shape=(1, 2), count_convention="keras")


@pytest.mark.slow  # a sweep: every toy zoo entry, both conventions
@pytest.mark.parametrize("convention", ["torch", "darknet"])
@pytest.mark.parametrize("name", TOY)
def test_report_agrees_with_the_hook_count(name: str, convention: str) -> None:
    """Shapes from the analysis and hooks on a separate forward pass give the same counts."""
    with torch.device("meta"):
        model = gpa.models.build(name, width=4)  # every 64x64 entry has a width knob
    report = gpa.analyze(model, input_shape=model.input_shape, count_convention=convention)
    hooks = count(model, convention=convention)
    assert report.network.params == hooks.total_params
    # the hooks count in eval mode, the report in train mode: the zoo does not differ
    assert report.network.flops == hooks.total_flops
    assert {n: r.flops for n, r in report.layers.items()} == dict(hooks.flops)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.slow  # over 1 s
def test_cli_count_convention_reproduces_table2_darknet53() -> None:
    result = run(
        "analyze", "gpa.models:darknet53", "--count-convention", "darknet", "--format", "json"
    )
    assert result.exit_code == 0
    network = json.loads(result.stdout)["network"]
    assert network["params"] == 41_573_216  # reference §2.1
    assert abs(network["flops"] / 1e9 - 18.57) / 18.57 < 0.005  # Table 2
    table = run("analyze", "gpa.models:darknet53", "--count-convention", "darknet").stdout
    assert "params: 41.6M   flops: 18.6G   (darknet convention" in table


def test_cli_zoo_lists_every_entry() -> None:
    result = run("zoo")
    assert result.exit_code == 0
    for info in gpa.models.entries():
        assert f"{info.name}: {info.description}" in result.stdout
        assert f"section: {info.section}" in result.stdout
    assert "knobs: depth=6, width=16, num_classes=10   input: 1x3x64x64" in result.stdout
    rows = json.loads(run("zoo", "--format", "json").stdout)
    assert [r["name"] for r in rows] == gpa.models.names()
    assert rows[1]["knobs"] == {"blocks": 3, "bottleneck": False, "width": 16, "num_classes": 10}
    assert rows[1]["input_shape"] == [1, 3, 64, 64]


def test_cli_zoo_writes_to_a_file_as_every_command_does(tmp_path) -> None:
    """Found by a surface audit: ``gpa zoo`` took ``--format`` but not ``-o``, which every
    other command writing text takes."""
    written = tmp_path / "zoo.json"
    result = run("zoo", "--format", "json", "-o", str(written))
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(written.read_text())[0]["name"] == gpa.models.names()[0]


@pytest.mark.slow  # every zoo entry at full size
@pytest.mark.parametrize("name", gpa.models.names())
def test_every_entry_loads_with_its_own_input_shape(name: str) -> None:
    """``gpa analyze gpa.models:NAME`` needs no --input-shape: the loader finds one."""
    with torch.device("meta"):
        loaded = load_target(f"gpa.models:{name}")
    assert loaded.input_shape == [gpa.models.describe(name).input_shape]


def test_cli_analyze_zoo_entry_with_a_knob() -> None:
    result = run(
        "analyze", "gpa.models:resnet", "-k", "blocks=2", "-k", "width=4", "--format", "json"
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["inputs"] == [{"shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert (data["network"]["layers"], data["network"]["longest"]) == (6, 6)  # stem, 4 convs, fc


def test_cli_scale() -> None:
    result = run("scale", "resnet", "--knob", "blocks", "--values", "1,2,4,8,16", "-k", "width=4")
    assert result.exit_code == 0
    assert "growth: max_shortest O(1)   longest O(N)   params O(N)" in result.stdout
    data = json.loads(
        run(
            "scale",
            "plainnet",
            "--knob",
            "depth",
            "--values",
            "1,2,3",
            "-k",
            "width=4",
            "--format",
            "json",
        ).stdout
    )
    # a chain of stem + depth convs + fc: N = depth + 2 layers, max_shortest = longest = N
    assert [(p["value"], p["layers"], p["max_shortest"]) for p in data["points"]] == [
        (1, 3, 3),
        (2, 4, 4),
        (3, 5, 5),
    ]
    assert data["n"] == "layers" and data["fits"]["longest"]["growth"] == "O(N)"


def test_cli_scale_errors_are_user_errors() -> None:
    result = CliRunner().invoke(main, ["scale", "resnet", "--knob", "depth", "--values", "1,2,3"])
    assert result.exit_code == 2 and "has no knob 'depth'" in result.output
    result = CliRunner().invoke(main, ["scale", "resnet", "--knob", "blocks", "--values", "1,2"])
    assert result.exit_code == 2 and "at least 3" in result.output


def test_cli_scale_varies_a_knob_the_configuration_fixes(tmp_path, monkeypatch) -> None:
    """Found by a new user: a model of [tool.gpa.models] whose kwargs set the knob (or a
    global [tool.gpa] kwargs) was refused, "knob 'depth' is the one being varied"; the
    command line wins over the configuration. By hand: plainnet's N = depth + 2 layers.
    Fixed by -k as well, it is refused still."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.gpa.models.plain]\ntarget = "gpa.models:plainnet"\n'
        "kwargs = { depth = 2, width = 4 }\n"
    )
    result = run("scale", "plain", "--knob", "depth", "--values", "1,2,3", "--format", "json")
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)["points"]
    assert [(p["value"], p["layers"]) for p in points] == [(1, 3), (2, 4), (3, 5)]
    fixed = CliRunner().invoke(
        main, ["scale", "plain", "--knob", "depth", "--values", "1,2,3", "-k", "depth=2"]
    )
    assert fixed.exit_code == 2 and "is the one being varied" in fixed.output


class _ConvBnAct(nn.Module):
    """Ultralytics' Conv in small: a convolution, its norm and activation."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c1, c2, 1), nn.BatchNorm2d(c2), nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = _ConvBnAct(3, 4), _ConvBnAct(4, 4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.b(self.a(x)))


@pytest.mark.parametrize("how", ["leaf", "layer_type"])
def test_the_flops_note_says_whether_there_is_a_total(how: str) -> None:
    """Found by a new user on YOLO: the wrapper read as a leaf (beside the default layer
    types) and as the only layer type both got "the total leaves them out", where the
    second has no total at all. By hand: head, a 1×1 conv 4 -> 2 on 5×5, costs
    2 × 8 × 25 = 400 FLOPs; the wrappers are not counted."""
    options = {"leaf_modules": [_ConvBnAct]} if how == "leaf" else {"layer_types": [_ConvBnAct]}
    report = gpa.analyze(_Wrapped(), input_shape=(1, 3, 5, 5), **options)
    (note,) = [n for n in report.notes if "FLOPs were not counted" in n]
    assert note.startswith("FLOPs were not counted for layers of type _ConvBnAct: only torch's")
    if how == "leaf":
        assert report.network.flops == 400 and note.endswith("; the total leaves them out")
    else:
        assert report.network.flops is None and note.endswith(", so there is no total")
