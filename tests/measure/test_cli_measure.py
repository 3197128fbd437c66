"""``gpa measure``: exit codes, JSON keys, the target file's example_batches / loss_fn."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from click.testing import CliRunner

import gpa
from gpa.cli import main
from gpa.columns import LAYER_COLUMNS, MEASURED_COLUMNS
from tests.measure.test_measure import LAYER_KEYS

matplotlib.use("Agg")

TARGET = """
import torch, torch.nn as nn
torch.manual_seed(0)  # the same weights on every load
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
example_inputs = torch.zeros(1, 4)
"""

BATCHES = (
    TARGET
    + """
g = torch.Generator().manual_seed(3)
example_batches = [torch.randn(6, 4, generator=g) for _ in range(5)]
def loss_fn(outputs, batch):
    return 3.0 * outputs.pow(2).sum()
"""
)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "net.py"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_json_has_the_layer_keys(tmp_path: Path) -> None:
    target = _write(tmp_path, TARGET)
    result = CliRunner().invoke(
        main, ["measure", target, "--steps", "2", "--batch-size", "4", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["name"] for r in data["layers"]] == ["0", "2"]
    assert data["measurement"] == {
        "steps": 2,
        "batch_size": 4,
        "seed": 0,
        "device": "cpu",
        "loss": "virtual",
    }
    layer = data["layers"][0]
    assert set(LAYER_KEYS) <= set(layer)
    assert layer["shortest"] == 2 and layer["sources"] == ["2"]
    assert layer["most_similar"]["layer"] == "2"
    assert data["cka"]["layers"] == ["0", "2"] and data["cka"]["matrix"][0][0] == 1.0
    assert {"mean", "median", "pairs"} <= set(data["network"]["duplication"])


def test_the_mode_and_options_measured_under_are_recorded(tmp_path: Path) -> None:
    """Found by a new user: a measurement in eval mode could not be told from one in train
    mode (JSON and header recorded neither mode, inputs, options nor frontend, which a
    report records); they are the structural analysis's, as its JSON has them."""
    target = _write(tmp_path, TARGET)
    args = ["measure", target, "--steps", "1", "--batch-size", "2"]
    for mode, train in (("--train", True), ("--eval", False)):
        data = json.loads(CliRunner().invoke(main, [*args, mode, "--format", "json"]).output)
        report = gpa.analyze_target(target, {}, gpa.AnalysisOptions(train=train))
        assert (data["options"], data["tracer"]) == (report.options, report.tracer)
        assert data["options"]["train"] is train and data["inputs"] == report.inputs
        lines = CliRunner().invoke(main, [*args, mode]).output.splitlines()
        header = next(line for line in lines if line.startswith("measured: "))
        assert header.endswith(", train mode" if train else ", eval mode")


def test_example_batches_and_loss_fn_from_the_file(tmp_path: Path) -> None:
    """The file's 5 batches (at most --steps used) and loss: a hand backward agrees."""
    target = _write(tmp_path, BATCHES)
    result = CliRunner().invoke(main, ["measure", target, "--steps", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["measurement"]["loss"] == "user" and data["measurement"]["steps"] == 1
    from gpa.target import load_target

    loaded = load_target(target)
    x = loaded.example_batches[0]
    loaded.loss_fn(loaded.model(x), x).backward()
    w = loaded.model[2]
    expected = float(torch.cat([w.weight.grad.flatten(), w.bias.grad]).norm())
    assert data["layers"][1]["weight_grad_norm"] == pytest.approx(expected, rel=1e-5)


LABELLED = (
    TARGET
    + """
g = torch.Generator().manual_seed(3)
example_batches = [(torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g))]
def forward_inputs(batch):
    return batch[0]
def loss_fn(outputs, batch):
    return torch.nn.functional.cross_entropy(outputs, batch[1])
"""
)


def test_inputs_and_targets_batches_from_the_file(tmp_path: Path) -> None:
    """The file's (inputs, targets) batches, forward_inputs and cross-entropy loss_fn: a
    hand backward agrees; a forward_inputs that is no function is refused (exit 2)."""
    target = _write(tmp_path, LABELLED)
    result = CliRunner().invoke(main, ["measure", target, "--steps", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["measurement"]["batch_size"] == 6
    from gpa.target import load_target

    loaded = load_target(target)
    x, y = loaded.example_batches[0]
    torch.nn.functional.cross_entropy(loaded.model(x), y).backward()
    w = loaded.model[2]
    expected = float(torch.cat([w.weight.grad.flatten(), w.bias.grad]).norm())
    assert data["layers"][1]["weight_grad_norm"] == pytest.approx(expected, rel=1e-5)
    broken = _write(tmp_path, LABELLED + "forward_inputs = 0\n")
    refused = CliRunner().invoke(main, ["measure", broken, "--steps", "1"])
    assert refused.exit_code == 2
    assert "forward_inputs in" in refused.output and "must be a function" in refused.output


def test_the_readme_example_measures_on_its_labelled_batches() -> None:
    """``gpa measure examples/tiny_resnet.py``: the file's (images, labels) batches, its
    forward_inputs and cross-entropy loss_fn; every layer's weight-gradient norm is the
    mean over the steps of a hand backward's (train mode: batch statistics)."""
    example = str(Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.py")
    result = CliRunner().invoke(main, ["measure", example, "--steps", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["measurement"]["loss"] == "user" and data["measurement"]["batch_size"] == 8
    from gpa.target import load_target

    torch.manual_seed(0)  # as gpa measure builds it (--seed 0)
    loaded = load_target(example)
    model, norms = loaded.model.train(), {}
    for images, labels in loaded.example_batches[:2]:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        for name, module in model.named_modules():
            grads = [p.grad.flatten() for p in module.parameters(recurse=False)]
            if grads and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                norms.setdefault(name, []).append(float(torch.cat(grads).norm()))
    measured = {layer["name"]: layer["weight_grad_norm"] for layer in data["layers"]}
    assert measured.keys() == norms.keys()
    for name, per_step in norms.items():
        assert measured[name] == pytest.approx(sum(per_step) / 2, rel=1e-5), name


def test_table_csv_html_and_output_file(tmp_path: Path) -> None:
    target = _write(tmp_path, TARGET)
    run = CliRunner().invoke
    table = run(main, ["measure", target, "--steps", "1", "--batch-size", "4"])
    assert table.exit_code == 0 and "duplication" in table.output and "most similar" in table.output
    csv = run(
        main, ["measure", target, "--steps", "4", "--batch-size", "16", "--format", "csv"]
    )  # (64 samples, 8 channels: no chance note on stderr, which the runner mixes in)
    assert csv.exit_code == 0
    assert csv.output.splitlines()[0].startswith("name,type,shortest,longest")
    assert len(csv.output.splitlines()) == 3
    out = tmp_path / "m.html"
    html = run(
        main,
        [
            "measure",
            target,
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--format",
            "html",
            "-o",
            str(out),
        ],
    )
    assert html.exit_code == 0
    assert_page_with_cka(out.read_text(encoding="utf-8"), target)


def assert_page_with_cka(page: str, target: str) -> None:
    """``gpa measure --format html`` writes a whole page, as ``gpa analyze --format html``
    does (found by a new user: it wrote a fragment, without charset or the CKA matrix),
    holding the layer table and the CKA matrix the JSON has, cell by cell."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<meta charset='utf-8'>" in page and "<title>gpa measure: " in page
    data = json.loads(
        CliRunner()
        .invoke(main, ["measure", target, "--steps", "1", "--batch-size", "4", "--format", "json"])
        .output
    )
    matrix = data["cka"]["matrix"]
    assert data["cka"]["layers"] == ["0", "2"] and matrix[0][0] == matrix[1][1] == 1.0
    cka = page.split("<table class='gpa-cka'>")[1].split("</table>")[0]
    shown = [float(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", cka)]
    assert shown == pytest.approx([v for row in matrix for v in row], abs=6e-4)  # (3 digits)
    assert cka.count("<tr><th>") == 3  # a head row, then one row per layer


def test_exit_codes(tmp_path: Path) -> None:
    run = CliRunner().invoke
    assert run(main, ["measure", str(tmp_path / "missing.py")]).exit_code == 2
    assert run(main, ["measure", _write(tmp_path, TARGET), "--steps", "0"]).exit_code == 2
    assert run(main, ["measure", _write(tmp_path, TARGET), "--device", "tpu"]).exit_code == 2
    no_inputs = _write(tmp_path, "import torch.nn as nn\nmodel = nn.Linear(2, 2)\n")
    result = run(main, ["measure", no_inputs])
    assert result.exit_code == 2 and "needs inputs" in result.output


def test_draw_measured_kinds() -> None:
    import gpa.plot
    from gpa.errors import GpaError
    from gpa.measure import measure

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    m = measure(net, torch.zeros(1, 3), steps=1, batch_size=4)
    fig = gpa.plot.draw("gradnorm", [m])
    assert {p.get_gid() for p in fig.axes[0].patches} == {"bar:0", "bar:1"}
    heat = gpa.plot.draw("duplication", [m])
    assert heat.axes[0].images[0].get_gid() == "heatmap"
    assert heat.axes[0].images[0].get_array()[0, 0] == 1.0
    (line,) = [x for x in heat.axes[1].lines if x.get_gid() == "chance"]  # (the colour bar)
    assert line.get_ydata()[0] == m.duplication["chance"]
    with pytest.raises(GpaError, match="measurement"):
        gpa.plot.draw("gradnorm", [m.report])


@pytest.mark.slow  # subprocess
def test_cli_subprocess_on_a_zoo_model() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpa",
            "measure",
            "gpa.models:prn",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["layers"]) == 8 and data["network"]["duplication"]["pairs"] == 28


def test_import_gpa_does_not_import_torch() -> None:
    code = "import gpa, sys; assert 'torch' not in sys.modules; print(callable(gpa.measure))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_same_seed_same_bytes_from_the_command_line() -> None:
    """The model a target builds takes its initial weights from torch's generator: the
    command seeds it, so two runs with the same --seed print the same JSON (semantics §11)."""
    args = ["measure", "gpa.models:resnet", "--steps", "2", "--batch-size", "4", "--format", "json"]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert first.exit_code == second.exit_code == 0, first.output
    assert first.stdout == second.stdout
    third = CliRunner().invoke(main, [*args, "--seed", "1"])
    assert third.stdout != first.stdout


def test_table_fits_the_terminal_with_names_whole(monkeypatch) -> None:
    """As gpa analyze's table: at COLUMNS=80 every line fits, layer names are whole, and a
    note names the columns left out."""
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(
        main, ["measure", "gpa.models:resnet", "--steps", "2", "--batch-size", "4"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "stages.0.blocks.0.conv1.conv" in result.stdout
    assert "columns left out to fit 80 characters" in result.stdout.replace("\n", " ")


def test_text_is_the_default_format_as_in_every_command(tmp_path: Path) -> None:
    """``--format text`` was refused (measure called it ``table``; found by a surface
    review); ``--eval`` too. Both now run: the same table."""
    target = _write(tmp_path, TARGET)
    args = ["measure", target, "--steps", "1", "--batch-size", "4", "-q"]
    default = CliRunner().invoke(main, args)
    text = CliRunner().invoke(main, [*args, "--format", "text"])
    assert default.exit_code == text.exit_code == 0, text.output
    assert default.output == text.output
    assert "0" in default.output.split() and "2" in default.output.split()
    evaluated = CliRunner().invoke(main, [*args, "--eval"])
    assert evaluated.exit_code == 0, evaluated.output


def test_plot_and_measure_take_the_same_step_options(tmp_path: Path) -> None:
    """Found by a new user: ``gpa plot --kind gradnorm`` measures as ``gpa measure`` does
    but refused its ``--steps`` and ``--batch-size`` (a YOLO took minutes at the
    defaults); they are declared once for both now, and refused for a kind that measures
    nothing."""
    target = _write(tmp_path, TARGET)
    image = str(tmp_path / "gn.png")
    steps = ["--steps", "1", "--batch-size", "2", "--seed", "3", "--device", "cpu"]
    drawn = CliRunner().invoke(main, ["plot", target, "--kind", "gradnorm", "-o", image, *steps])
    assert drawn.exit_code == 0, drawn.output
    assert Path(image).stat().st_size > 0
    refused = CliRunner().invoke(main, ["plot", target, "--kind", "profile", "--steps", "1"])
    assert refused.exit_code == 2
    assert "--steps: how measured steps run, for --kind gradnorm or duplication" in refused.output


def test_the_text_says_what_each_step_held_and_wide_keeps_every_column(tmp_path: Path) -> None:
    """Found by a new user: the text never said the inputs measured (a YOLO at 640 x 640,
    32 to a batch), and ``--wide``, which ``gpa analyze`` takes to show the columns left
    out, was refused. The model takes 4 features: float32[batch, 4]."""
    target = _write(tmp_path, TARGET)
    args = ["measure", target, "--steps", "1", "--batch-size", "3"]
    narrow = CliRunner().invoke(main, args, env={"COLUMNS": "40"})
    assert narrow.exit_code == 0, narrow.output
    assert "inputs per step: float32[3, 4]" in narrow.output
    assert "columns left out" in narrow.output
    wide = CliRunner().invoke(main, [*args, "--wide"], env={"COLUMNS": "40"})
    assert wide.exit_code == 0, wide.output
    assert "columns left out" not in wide.output
    assert "most similar" in wide.output and "frozen" in wide.output


def test_columns_choose_the_measured_table_as_they_choose_analyzes(tmp_path: Path) -> None:
    """Found by the last session's review: ``gpa analyze --columns`` chose its table's
    columns, ``gpa measure --columns`` was no option (exit 2), and ``measure --wide``
    with ``--format json`` was taken and did nothing. Now ``--columns`` gives measure's
    table those of its CSV header, in the order given, after the layer's name."""
    target = _write(tmp_path, TARGET)
    args = ["measure", target, "--steps", "1", "--batch-size", "3"]
    chosen = CliRunner().invoke(main, [*args, "--columns", "relative_norm,type"])
    assert chosen.exit_code == 0, chosen.output
    header = next(line for line in chosen.output.splitlines() if line.split()[:1] == ["layer"])
    assert header.split() == ["layer", "rel", "type"]
    csv_header = CliRunner().invoke(main, [*args, "--format", "csv"]).stdout.splitlines()[0]
    assert csv_header.split(",") == ["name", *MEASURED_COLUMNS]
    unknown = CliRunner().invoke(main, [*args, "--columns", "relative_norm,paths"])
    assert unknown.exit_code == 2
    assert "unknown column(s) paths; choose from type, shortest" in unknown.stderr


@pytest.mark.parametrize("fmt", ["json", "csv", "html"])
@pytest.mark.parametrize("flags", [["--wide"], ["--columns", "type"]])
def test_options_of_the_measured_table_are_refused_with_another_format(
    tmp_path: Path, fmt: str, flags: list[str]
) -> None:
    """As ``gpa analyze`` refuses them (tests/render/test_table.py): the other formats
    hold every layer and column, so the option would do nothing. Refused before any step
    runs."""
    target = _write(tmp_path, TARGET)
    result = CliRunner().invoke(main, ["measure", target, *flags, "--format", fmt])
    assert result.exit_code == 2
    assert f"{flags[0]} shapes the text table; --format {fmt} holds every" in result.stderr


def test_the_help_names_the_columns_each_table_has() -> None:
    """The column names the help lists (``gpa.columns``, imported without a renderer for
    ``gpa --help``) are the tables' own: the measured CSV's header (above) and the
    analysed table's."""
    import gpa.render.text as analysed

    assert analysed.COLUMNS == LAYER_COLUMNS
    for command, names in (("analyze", LAYER_COLUMNS), ("measure", MEASURED_COLUMNS)):
        text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
        assert f"(of: {', '.join(names)})" in text
