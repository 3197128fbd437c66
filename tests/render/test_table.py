"""The terminal table (issue 15 §1): fits its width, keeps names whole, collapses big models."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gpa
import gpa.models
from gpa.cli import main
from gpa.render.text import COLLAPSE_ABOVE, folded_name, format_table


class Dense(nn.Module):
    """Long qualified names (``features.denseblock1.denselayerK.conv1``), residual sums."""

    def __init__(self, layers: int = 6) -> None:
        super().__init__()
        self.features = nn.Module()
        self.features.denseblock1 = nn.Module()
        for k in range(layers):
            layer = nn.Module()
            layer.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.features.denseblock1.add_module(f"denselayer{k + 1}", layer)
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features.denseblock1.children():
            x = x + layer.conv1(x)
        return self.classifier(x.mean((2, 3)))


@pytest.fixture(scope="module")
def report() -> gpa.Report:
    return gpa.analyze(Dense(), input_shape=(1, 4, 8, 8))


def _rows(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


@pytest.mark.parametrize("width", [80, 200])
def test_fits_the_width_and_keeps_every_name_whole(report: gpa.Report, width: int) -> None:
    text = format_table(report, width=width)
    assert all(len(line) <= width for line in text.splitlines())
    rows = [row for row in _rows(text)[2:] if not row.startswith(" ")]  # not continuations
    assert [row.split()[0] for row in rows] == list(report.layers)  # grep finds each name
    # each source name appears unbroken wherever sources are shown
    if "sources" in _rows(text)[0]:
        for record in report.layers.values():
            for source in record.sources[:2]:
                assert re.search(rf"(^|\s){re.escape(source)}(,|\s|$)", text)


def test_narrow_terminal_drops_sources_first_and_says_so(report: gpa.Report) -> None:
    narrow = format_table(report, width=80)
    header = _rows(narrow)[0].split()
    assert "sources" not in header and {"layer", "shortest", "longest"} <= set(header)
    assert "columns left out to fit 80 characters: " in narrow
    assert "--wide shows all" in narrow
    wide = format_table(report, width=200)
    assert _rows(wide)[0].split()[-1] == "sources"


def test_columns_picks_them_in_order(report: gpa.Report) -> None:
    # in the order asked for, as `ps -o` takes its columns (the table's own order was
    # kept before: found by a review of every surface)
    text = format_table(report, width=80, columns=["longest", "shortest"])
    assert _rows(text)[0].split() == ["layer", "longest", "shortest"]
    twice = format_table(report, width=80, columns=["longest", "shortest", "longest"])
    assert _rows(twice)[0].split() == ["layer", "longest", "shortest"]
    with pytest.raises(ValueError, match="unknown column"):
        format_table(report, columns=["nope"])


def test_wide_prints_everything_unwrapped(report: gpa.Report) -> None:
    text = format_table(report, width=40, wide=True)
    rows = _rows(text)
    assert rows[0].split()[-1] == "sources"
    assert len(rows) == 2 + len(report.layers)  # one line per layer: nothing wrapped


def test_wide_lists_every_source(report: gpa.Report) -> None:
    """Found by a new user: ``--wide`` ("every column, nothing wrapped") still cut a
    layer's sources to three. denselayer1's output feeds the five later layers and the
    classifier (residual sums): its six sources, each named."""
    first = "features.denseblock1.denselayer1.conv1"
    assert len(report.layers[first].sources) == 6
    line = next(r for r in _rows(format_table(report, wide=True)) if r.startswith(first))
    assert "(+" not in line and all(s in line for s in report.layers[first].sources)
    narrow = next(r for r in _rows(format_table(report, width=400)) if r.startswith(first))
    assert "… (+4)" in narrow  # the default: two named, then how many more


def test_cli_columns_wide_and_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    target = "gpa.models:resnet"
    monkeypatch.setenv("COLUMNS", "80")
    narrow = runner.invoke(main, ["analyze", target])
    assert narrow.exit_code == 0 and max(map(len, narrow.stdout.splitlines())) <= 80
    monkeypatch.setenv("COLUMNS", "200")
    broad = runner.invoke(main, ["analyze", target])
    assert "sources" in broad.stdout and "columns left out" not in broad.stdout
    picked = runner.invoke(main, ["analyze", target, "--columns", "shortest,timestamps"])
    assert picked.exit_code == 0
    assert _rows(picked.stdout)[0].split() == ["layer", "shortest", "timestamps"]
    bad = runner.invoke(main, ["analyze", target, "--columns", "shortest,nope"])
    assert bad.exit_code == 2 and "unknown column(s) nope" in bad.stderr
    # channel columns without the channel analysis were dropped without a word
    unfilled = runner.invoke(main, ["analyze", target, "--columns", "shortest,segments,combos"])
    assert unfilled.exit_code == 2
    assert "segments, combos come from the channel analysis: add --channels" in unfilled.stderr
    filled = runner.invoke(
        main, ["analyze", target, "--columns", "shortest,segments,combos", "--channels"]
    )
    assert _rows(filled.stdout)[0].split() == ["layer", "shortest", "segments", "combos"]
    wide = runner.invoke(main, ["analyze", target, "--wide"])
    assert len(_rows(wide.stdout)) == 2 + 8


@pytest.mark.slow  # a 200-layer model, twice
def test_big_models_collapse_by_module_path() -> None:
    # ResNet with 99 blocks: stem.conv, 198 block convs in stages.0.blocks.K, fc
    with torch.device("meta"):
        model = gpa.models.build("resnet", blocks=99)
    report = gpa.analyze(model, input_shape=model.input_shape)
    assert len(report.layers) == 200 > COLLAPSE_ABOVE
    text = format_table(report, width=120)
    rows = _rows(text)
    assert rows[0].split() == ["layer", "layers", "shortest", "longest", "unreachable", "worst"]
    groups = {row.split()[0]: row.split() for row in rows[2:]}
    # names are stages.0.blocks.K.convJ.conv: depth 4 gives 101 groups (> 60), depth 3
    # stem.conv, stages.0.blocks and fc
    assert list(groups) == ["stem.conv", "stages.0.blocks", "fc"]
    # the blocks: 198 layers, shortest 2 (conv2) to 3 (conv1), longest 3..198 + ...
    blocks = report.layers
    conv = [r for n, r in blocks.items() if n.startswith("stages.0")]
    assert groups["stages.0.blocks"][1] == "198"
    assert (
        groups["stages.0.blocks"][2]
        == f"{min(r.shortest for r in conv)}–{max(r.shortest for r in conv)}"
    )
    assert groups["stages.0.blocks"][2] == "2–3"  # every block: conv2 2, conv1 3 (semantics §5)
    worst = max(conv, key=lambda r: r.shortest)
    assert groups["stages.0.blocks"][5] == worst.name and worst.name.endswith("conv1.conv")
    assert "200 layers in 3 groups of module path depth 3" in text
    every = format_table(report, width=120, depth=0)
    assert len(_rows(every)) == 2 + 200


def test_grouped_view_drops_columns_rather_than_cutting_names() -> None:
    """The grouped view at 80 columns (found by a new user on cspdarknet53): the worst
    layer's name is shown whole, less important columns are left out, and a note says so."""
    model = gpa.models.build("cspdarknet53")
    report = gpa.analyze(model, input_shape=model.input_shape)
    text = format_table(report, width=80, depth=4)
    rows = _rows(text)
    assert rows[0].split()[0] == "layer" and rows[0].split()[-1] == "worst"
    assert all(len(line) <= 80 for line in text.splitlines())
    # each group's worst cell, its folded lines joined: a whole name and its shortest path
    start = rows[0].index("worst")
    cells: list[str] = []
    for line in rows[2:]:
        if line[0] != " ":
            cells.append("")
        cells[-1] += line[start:].strip()
    for cell in cells:
        name, _, shortest = cell.partition(" (")
        assert name in report.layers and shortest == f"{report.layers[name].shortest})"
    assert "columns left out to fit 80 characters" in text.replace("\n    ", " ")


def test_inputs_that_are_no_tensors_are_shown_by_value() -> None:
    """Whisper's header read ``float32[1, 16, 32], ?[], int64[1, 16]`` for a None input
    (found by a new-user review): values are shown as they were given."""

    class Optional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, mask=None, flag=True, scale=1.0):
            return self.fc(x)

    report = gpa.analyze(Optional(), (torch.randn(2, 4), None, False, 2.5))
    assert str(report).splitlines()[1].startswith("inputs: float32[2, 4], None, False, 2.5   ")


@pytest.mark.parametrize("tracer", ["fx", "autograd"])
def test_tensors_inside_an_input_are_shown_by_dtype_and_shape(tracer: str) -> None:
    """A list of images (torchvision's detection models) was shown by the tensors' repr:
    their values, and on the autograd frontend ``device='meta'`` (found by an adversarial
    review); the report's inputs depend on shapes and dtypes alone (§1.4)."""

    class Listed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, xs):
            return self.fc(xs[0] + xs[1])

    report = gpa.analyze(Listed(), ([torch.randn(2, 4), torch.randn(2, 4)],), tracer=tracer)
    assert report.inputs == [{"value": "[float32[2, 4], float32[2, 4]]"}]
    assert str(report).splitlines()[1].startswith("inputs: [float32[2, 4], float32[2, 4]]   ")


class LongNames(nn.Module):
    """``count`` linear layers in a chain, each as deep as peft puts a LoRA matrix
    (``base_model.model.encoder.layer.K.attention.self.query.lora_A.default``)."""

    def __init__(self, count: int = 3) -> None:
        super().__init__()
        self.base_model = nn.Module()
        self.base_model.model = nn.Module()
        self.base_model.model.encoder = nn.ModuleList()
        for _ in range(count):
            query = nn.Module()
            query.lora_A = nn.ModuleDict({"default": nn.Linear(4, 4)})
            attention = nn.Module()
            attention.self = nn.Module()
            attention.self.query = query
            layer = nn.Module()
            layer.attention = attention
            self.base_model.model.encoder.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.base_model.model.encoder:
            x = layer.attention.self.query.lora_A["default"](x)
        return x


@pytest.mark.parametrize("width", [50, 80])
def test_names_longer_than_the_line_fold_and_the_numbers_stay(width: int) -> None:
    """By hand: the chain's layers are 3, 2 and 1 layers from the loss. Names of 62
    characters leave no room for a number at 50 or 80 columns: they fold after their
    dots (the lines after the first indented), every row keeps its shortest path, and
    joining a name's lines gives it back whole."""
    report = gpa.analyze(LongNames(), input_shape=(2, 4))
    text = format_table(report, width=width)
    assert all(len(line) <= width for line in text.splitlines())
    header, _, *lines = _rows(text)
    assert {"layer", "shortest", "longest"} <= set(header.split())
    names, numbers, name = [], [], ""
    for line in lines:
        cells = line.split()
        if not line.startswith("  "):
            if name:
                names.append(name)
            name, numbers = cells[0], [*numbers, int(cells[1])]
        else:
            name += cells[0]
    names.append(name)
    assert names == list(report.layers)
    assert all(len(n) == 62 for n in names)
    assert numbers == [3, 2, 1]


@settings(max_examples=300, deadline=None)
@given(
    name=st.lists(st.text("ab_0", max_size=12), min_size=1, max_size=8).map(".".join),
    width=st.integers(-3, 40),
)
def test_a_folded_name_gives_the_name_back(name: str, width: int) -> None:
    """Any name at any width (a narrow one too: one character a line): the lines after
    the first are indented by two, each holds at most ``width`` characters (the indent
    apart below 3), and the lines without their indents are the name."""
    lines = folded_name(name, width).split("\n")
    assert all(line.startswith("  ") for line in lines[1:])
    assert lines[0] + "".join(line[2:] for line in lines[1:]) == name
    assert all(len(line) <= max(width, 1) + (2 if i else 0) for i, line in enumerate(lines))
    if width >= 3:
        assert all(len(line) <= width for line in lines)


def test_grouped_names_longer_than_the_line_fold_and_the_numbers_stay() -> None:
    """By hand: layer K of the 12-layer chain is 12 - K layers from the loss, each the
    worst (only) layer of its group at depth 5. Group and worst names together leave no
    room at 80 columns: both fold, and every group keeps its shortest path."""
    report = gpa.analyze(LongNames(12), input_shape=(2, 4))
    text = format_table(report, width=80, depth=5)
    assert all(len(line) <= 80 for line in text.splitlines())
    header, _, *lines = _rows(text)
    assert header.split()[:2] == ["layer", "shortest"]
    numbers = [int(line.split()[1]) for line in lines if not line.startswith("  ")]
    assert numbers == list(range(12, 0, -1))


def _flat_numbers(text: str) -> dict[str, tuple[str, ...]]:
    """Each layer's cells after its name, its folded name's lines joined."""
    header, _, *lines = _rows(text)
    cells: dict[str, tuple[str, ...]] = {}
    name = ""
    for line in lines:
        if line.startswith("  "):  # a folded name's next line
            cells[name + line.split()[0]] = cells.pop(name)
            name += line.split()[0]
        else:
            name, *rest = line.split(maxsplit=len(header.split()) - 1)
            cells[name] = tuple(rest)
    return cells


@pytest.mark.parametrize("columns", [None, ["shortest", "longest", "timestamps"]])
def test_timestamps_are_left_out_rather_than_cut(report: gpa.Report, columns: list | None) -> None:
    """At 40 columns even the names folded leave no room for the timestamps beside the
    path lengths: the column was cropped (header ``timestam``, a conv's rounds ``2, 4, 6,``
    without the rest) with no word. Now it is left out and the note says so. By hand
    (residual chain of six convs into the classifier): conv K is 2 layers from the loss by
    the stream and 8 - K through the convs after it; the classifier 1."""
    text = format_table(report, width=40, columns=columns)
    assert all(len(line) <= 40 for line in text.splitlines())
    assert _rows(text)[0].split() == ["layer", "shortest", "longest"]
    note = " ".join(text[text.index("columns left out") :].split())
    assert note.startswith("columns left out to fit 40 characters: ") and "timestamps" in note
    expected = {f"features.denseblock1.denselayer{k}.conv1": ("2", str(8 - k)) for k in range(1, 7)}
    assert _flat_numbers(text) == {**expected, "classifier": ("1", "1")}


def test_columns_asked_for_and_left_out_are_noted(report: gpa.Report) -> None:
    """``--columns ...,sources`` at a width that cannot hold sources dropped them without a
    word (only the default columns were noted)."""
    text = format_table(report, width=60, columns=["shortest", "sources"])
    assert _rows(text)[0].split() == ["layer", "shortest"]
    assert "columns left out to fit 60 characters: sources (--wide shows all)" in " ".join(
        text.split()
    )


def test_channel_columns_of_a_layer_level_report_are_refused(report: gpa.Report) -> None:
    """The CLI refused ``--columns segments`` without ``--channels``; the function dropped
    them without a word."""
    with pytest.raises(ValueError, match="segments come from the channel analysis"):
        format_table(report, columns=["shortest", "segments"])


def test_summary_names_longer_than_the_line_fold_at_their_dots() -> None:
    """A name in the summary (an unreachable layer) longer than the line was cut by the
    terminal mid-word; it folds after its dots as in the table. By hand: lora_B is never
    called, so it is the one unreachable layer."""
    model = LongNames(2)
    query = model.base_model.model.encoder[1].attention.self.query
    query.lora_B = nn.ModuleDict({"default": nn.Linear(4, 4)})
    name = "base_model.model.encoder.1.attention.self.query.lora_B.default"
    text = format_table(gpa.analyze(model, input_shape=(2, 4)), width=50)
    assert all(len(line) <= 50 for line in text.splitlines())
    lines = text.splitlines()
    start = lines.index("unreachable layers:") + 1
    folded = [line.strip() for line in lines[start : start + 2]]
    assert "".join(folded) == name and folded[0].endswith(".")


def test_a_table_too_wide_for_the_line_is_not_cut(report: gpa.Report) -> None:
    """Below the width of names folded to 8 characters and the two path lengths, the
    terminal cropped the table: at 24 columns the header read ``lo`` and every longest
    path was gone, at 20 the column was (a review). The table is now printed whole, its
    lines longer than the width, and a note says so. By hand as above."""
    text = format_table(report, width=20)
    assert _rows(text)[0].split() == ["layer", "shortest", "longest"]
    expected = {f"features.denseblock1.denselayer{k}.conv1": ("2", str(8 - k)) for k in range(1, 7)}
    assert _flat_numbers(text) == {**expected, "classifier": ("1", "1")}
    assert "than the width rather than cut" in " ".join(text.split())


def test_a_grouped_table_too_wide_for_the_line_keeps_its_worst_layers(
    report: gpa.Report,
) -> None:
    """The grouped view at 26 columns cut its worst cells (``fc (1)`` became ``fc (``).
    By hand: every conv is 2 from the loss, the first the worst of its group; the
    classifier 1."""
    text = format_table(report, width=26, depth=2)
    header, _, *lines = _rows(text)
    assert header.split() == ["layer", "shortest", "worst"]
    at = header.index("worst")
    worst = "".join(line[at:].strip() for line in lines).replace(" ", "")
    assert worst == "features.denseblock1.denselayer1.conv1(2)classifier(1)"


def test_columns_with_a_grouped_view_are_refused(report: gpa.Report) -> None:
    """``--depth 2 --columns ...`` ignored the columns without a word."""
    with pytest.raises(ValueError, match="per-layer table"):
        format_table(report, depth=2, columns=["shortest"])
    result = CliRunner().invoke(
        main, ["analyze", "gpa.models:resnet", "--depth", "2", "--columns", "shortest"]
    )
    assert result.exit_code == 2 and "per-layer table" in result.stderr


@pytest.mark.parametrize("fmt", ["json", "csv", "html", "dot"])
@pytest.mark.parametrize("flags", [["--depth", "1"], ["--wide"], ["--columns", "shortest"]])
def test_options_of_the_text_table_are_refused_with_another_format(
    fmt: str, flags: list[str]
) -> None:
    """Found by a new user: ``--depth``, ``--columns`` and ``--wide`` were taken with
    ``--format json`` (csv, html, graphs) and did nothing: the output was byte-identical."""
    result = CliRunner().invoke(main, ["analyze", "gpa.models:resnet", *flags, "--format", fmt])
    assert result.exit_code == 2
    assert f"{flags[0]} shapes the text table; --format {fmt} holds every" in result.stderr


def test_a_table_rich_would_squeeze_drops_a_column_instead() -> None:
    """At 90 columns the CSP zoo model's ``sources, timestamps, paths`` measured 90
    characters, but rich's layout needed 91 and cropped the last column (header
    ``path``, 25 shown as ``2``) without a word (a review's width sweep). The table shown
    holds every cell whole, as the report has it, and the note names what was left out."""
    report = gpa.analyze(gpa.models.build("csp"), input_shape=(1, 3, 64, 64))
    text = format_table(report, width=90, columns=["sources", "timestamps", "paths"])
    assert all(len(line) <= 90 for line in text.splitlines())
    header = _rows(text)[0].split()
    assert header[0] == "layer" and header[-1] == "paths" and "sources" not in header
    shown = {name: cells[-1].split()[-1] for name, cells in _flat_numbers(text).items()}
    assert shown == {n: str(r.num_paths) for n, r in report.layers.items()}
    assert "columns left out to fit 90 characters: sources" in " ".join(text.split())
