"""Path witnesses (issue 15 §2): `gpa explain TARGET LAYER`, `LayerRecord.shortest_path()`
and `.longest_path()`.

Hand derivation on examples/tiny_resnet.py (stem, three basic blocks x + conv2(conv1(x)),
global pooling, fc): blocks.0.conv1's shortest path leaves its block through conv2 and
rides the residual stream to fc (3 layers); its longest path crosses both convolutions of
every later block (1 + 1 + 2 + 2 + 1 = 7). The layer attaining max_shortest (3) first, in
forward order, is blocks.0.conv1 (the stem's shortest is 2: stem -> fc along the stream).
The source lines are those of the example: conv1 at line 19, conv2 at line 20, fc at 31.
Random graphs are checked against brute-force enumeration in tests/core/test_properties.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch
from click.testing import CliRunner

import gpa
from gpa.api import analyze_target
from gpa.cli import main
from gpa.errors import GpaError
from gpa.options import AnalysisOptions
from gpa.render.explain import explanation, format_explanation

TARGET = "examples/tiny_resnet.py"
SHORTEST = [("blocks.0.conv1", 19), ("blocks.0.conv2", 20), ("fc", 31)]
LONGEST = [
    ("blocks.0.conv1", 19),
    ("blocks.0.conv2", 20),
    ("blocks.1.conv1", 19),
    ("blocks.1.conv2", 20),
    ("blocks.2.conv1", 19),
    ("blocks.2.conv2", 20),
    ("fc", 31),
]


def _steps(path) -> list[tuple[str, int]]:
    return [(s.layer, s.site[1]) for s in path]


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_witnesses_by_hand_with_source_lines(tracer: str) -> None:
    report = analyze_target(TARGET, {}, AnalysisOptions(tracer=tracer))
    record = report.layers["blocks.0.conv1"]
    assert _steps(record.shortest_path()) == SHORTEST
    assert _steps(record.longest_path()) == LONGEST
    assert all(s.site[0].endswith("examples/tiny_resnet.py") for s in record.longest_path())
    assert [s.type for s in record.shortest_path()] == ["Conv2d", "Conv2d", "Linear"]
    assert record.site[1] == 19
    # the last layer's only path is itself
    assert _steps(report.layers["fc"].longest_path()) == [("fc", 31)]


def test_text_output() -> None:
    result = CliRunner().invoke(main, ["explain", TARGET, "blocks.0.conv1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "layer: blocks.0.conv1 (Conv2d)"
    assert "shortest gradient path (3 layers):" in lines
    start = lines.index("shortest gradient path (3 layers):") + 1
    assert [line.split()[0] for line in lines[start : start + 4]] == [
        "blocks.0.conv1",
        "blocks.0.conv2",
        "fc",
        "<loss>",
    ]
    assert lines[start].split()[-1] == "examples/tiny_resnet.py:19"
    assert "longest gradient path (7 layers):" in lines
    assert lines[-1] == "network max_shortest 3: first attained by blocks.0.conv1"


def test_json_output() -> None:
    result = CliRunner().invoke(main, ["explain", TARGET, "blocks.1.conv2", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # blocks.1.conv2: -> fc along the stream (2); longest through block 2 (1 + 2 + 1 = 4)
    assert (data["shortest"], data["longest"]) == (2, 4)
    assert [s["layer"] for s in data["shortest_path"]] == ["blocks.1.conv2", "fc"]
    assert [s["layer"] for s in data["longest_path"]] == [
        "blocks.1.conv2",
        "blocks.2.conv1",
        "blocks.2.conv2",
        "fc",
    ]
    assert data["shortest_path"][0]["site"] == {"file": "examples/tiny_resnet.py", "line": 20}
    assert data["max_shortest"] == {"value": 3, "layer": "blocks.0.conv1"}


class SharedBlock(torch.nn.Module):
    """``stem``, then ``h = h + block(h)`` three times with one ``block``, then ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        h = self.stem(x)
        for _ in range(3):
            h = h + self.block(h)
        return self.head(h)


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_shared_layers_steps_say_which_call_they_take(tracer: str) -> None:
    """Noticed by a session: a path through a layer called three times listed it three
    times alike. By hand: stem's longest path goes through every call of block in forward
    order, stem -> block 1 -> block 2 -> block 3 -> head (5); its shortest goes around them
    (stem -> head). Each step says which call it is, of how many."""
    report = gpa.analyze(SharedBlock(), torch.randn(2, 4), tracer=tracer)
    longest = report.layers["stem"].longest_path()
    assert [(s.layer, s.call) for s in longest] == [
        ("stem", 1),
        ("block", 1),
        ("block", 2),
        ("block", 3),
        ("head", 1),
    ]
    data = explanation(report, "stem")
    assert [(s["call"], s["calls"]) for s in data["longest_path"]] == [
        (1, 1),
        (1, 3),
        (2, 3),
        (3, 3),
        (1, 1),
    ]
    rows = format_explanation(data).splitlines()
    assert [row.split("  ")[1] for row in rows if row.startswith("  block")] == [
        "block (call 1 of 3)",
        "block (call 2 of 3)",
        "block (call 3 of 3)",
    ]
    # every call of block has a path of 2 along the stream (block -> head); the witness
    # takes the first call that has one (§4)
    assert [(s.layer, s.call) for s in report.layers["block"].shortest_path()] == [
        ("block", 1),
        ("head", 1),
    ]


def test_unknown_layer_is_exit_2_with_suggestions() -> None:
    result = CliRunner().invoke(main, ["explain", TARGET, "blocks.0.conv"])
    assert result.exit_code == 2
    assert "no layer named 'blocks.0.conv'" in result.stderr
    assert "blocks.0.conv1" in result.stderr
    # a block's name: its layers (Ultralytics' Conv blocks hold their layer as .conv)
    block = CliRunner().invoke(main, ["explain", TARGET, "blocks.1"])
    assert block.exit_code == 2
    assert "(did you mean blocks.1.conv1, blocks.1.conv2?)" in block.stderr
    # a layer's own name, without its blocks' (a new user's ``q_proj``): those so named
    own = CliRunner().invoke(main, ["explain", TARGET, "conv2"])
    assert own.exit_code == 2
    assert "(did you mean blocks.0.conv2, blocks.1.conv2, blocks.2.conv2?)" in own.stderr


def _two_linears(tmp_path, first: str, second: str, body: str) -> None:
    """Write ``net.py``: a model of two linear layers whose forward is ``body``."""
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        self.{first}, self.{second} = nn.Linear(2, 2), nn.Linear(2, 2)\n"
        "    def forward(self, x):\n"
        f"        {body}\n"
        "model = Net()\n"
        "input_shape = (1, 2)\n"
    )


def test_unreachable_layer_has_no_paths(tmp_path) -> None:
    _two_linears(tmp_path, "a", "b", "self.b(x)\n        return self.a(x)")
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "net.py"), "b"])
    assert result.exit_code == 0, result.output
    assert "no gradient reaches this layer" in result.output
    assert gpa.analyze_target(str(tmp_path / "net.py")).layers["b"].shortest_path() == ()


def test_a_layer_forward_never_calls_is_said_so(tmp_path) -> None:
    """A layer used in one mode only (Ultralytics' DFL in eval mode) said just "no gradient
    reaches this layer" in the other (found by a new-user review)."""
    _two_linears(
        tmp_path, "a", "decode", "return self.a(x) if self.training else self.decode(self.a(x))"
    )
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "net.py"), "decode"])
    assert result.exit_code == 0, result.output
    assert "forward never calls this layer (calls 0)" in result.output
    evaluated = CliRunner().invoke(main, ["explain", str(tmp_path / "net.py"), "decode", "--eval"])
    assert "shortest gradient path (1 layer):" in evaluated.output


def test_a_record_without_its_graph_says_so() -> None:
    """Records rebuilt from stored numbers (no gradient graph) cannot give witnesses."""
    record = analyze_target(TARGET, {}, AnalysisOptions()).layers["fc"]
    with pytest.raises(GpaError, match="holds no gradient graph"):
        dataclasses.replace(record, route=None).shortest_path()


class Helped(torch.nn.Module):
    """Layers called from a helper method, and an attention (torch's code calls inside
    it): the lines that make the calls are ``self.proj[i](x)`` and ``self.attn(...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
        self.attn = torch.nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        a, b = self.helper(x)
        return self.attn(a, b, b)[0]

    def helper(self, x):
        return [self.proj[i](x) for i in range(2)]


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_layer_called_from_a_helper_is_placed_at_its_call(tracer: str) -> None:
    """Found by a review of the YOLO line: export placed Detect's layers, called from
    ``forward_head``, at the line of ``forward`` calling the helper (its stack traces keep
    only ``forward`` frames), and RT-DETR's attentions nowhere; so did ``gpa explain`` and
    the CI annotations."""
    report = gpa.analyze(Helped(), input_shape=(1, 3, 4), tracer=tracer)
    lines, first = inspect.getsourcelines(Helped)
    proj, attn = (
        first + next(i for i, text in enumerate(lines) if text.strip().startswith(start))
        for start in ("return [self.proj[i](x)", "return self.attn(a, b, b)")
    )
    file = inspect.getsourcefile(Helped)
    assert {n: r.site for n, r in report.layers.items()} == {
        "proj.0": (file, proj),
        "proj.1": (file, proj),
        "attn": (file, attn),
    }


class ConvBnAct(torch.nn.Module):
    """A wrapper holding one layer (as Ultralytics' ``Conv``, timm's ``ConvNormAct``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn, self.act = torch.nn.BatchNorm2d(3), torch.nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Standardised(torch.nn.Module):
    """A functional layer in its own ``forward`` (weight standardisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 3, 3, 3))

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return torch.nn.functional.conv2d(x, w, padding=1)


class Reparam(torch.nn.Module):
    """A wrapper of a wrapper: still one layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ConvBnAct()

    def forward(self, x):
        return self.inner(x)


class Twice(torch.nn.Module):
    """One layer called twice per call: its two lines tell the calls apart."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.conv(y)


class Pair(torch.nn.Module):
    """Two layers: a block, not a wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = ConvBnAct(), torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.b(self.a(x))


class Wrapped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.ws, self.rep = ConvBnAct(), Standardised(), Reparam()
        self.twice, self.pair = Twice(), Pair()

    def forward(self, x):
        x = self.stem(x)
        x = self.ws(x)
        x = self.rep(x)
        x = self.twice(x)
        return self.pair(x)


def _line(cls: type, start: str) -> tuple[str, int]:
    """The file and number of the line of ``cls``'s source beginning with ``start``."""
    lines, first = inspect.getsourcelines(cls)
    return inspect.getsourcefile(cls), first + next(
        i for i, text in enumerate(lines) if text.strip().startswith(start)
    )


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_layer_a_module_only_wraps_is_placed_where_the_wrapper_is_called(tracer: str) -> None:
    """Found on Ultralytics YOLO: every step of ``gpa explain`` (and every ``gpa check``
    annotation) sat at the line of ``Conv.forward`` calling its convolution, the same for
    all of YOLO's convolutions. A module holding no other layer is looked through, as often
    as such modules nest (stem, rep); a functional layer in its own ``forward`` is placed
    where it is called (ws); a block holding two layers stays the place (pair.a, pair.b);
    a layer called twice keeps its two lines (twice.conv). Lines by hand from the source."""
    report = gpa.analyze(Wrapped(), input_shape=(1, 3, 8, 8), tracer=tracer)
    called = {
        name: _line(Wrapped, f"x = self.{name}(x)") for name in ("stem", "ws", "rep", "twice")
    }
    pair = _line(Pair, "return self.b(self.a(x))")
    assert {n: r.site for n, r in report.layers.items()} == {
        "stem.conv": called["stem"],
        "ws": called["ws"],
        "rep.inner.conv": called["rep"],
        "twice.conv": _line(Twice, "y = self.conv(x)"),
        "pair.a.conv": pair,
        "pair.b": pair,
    }
    steps = [(s.layer, s.site) for s in report.layers["ws"].longest_path()]
    assert steps == [
        ("ws", called["ws"]),
        ("rep.inner.conv", called["rep"]),
        ("twice.conv", _line(Twice, "y = self.conv(x)")),
        ("twice.conv", _line(Twice, "return self.conv(y)")),
        ("pair.a.conv", pair),
        ("pair.b", pair),
    ]


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_wrapper_torchs_container_calls_keeps_its_own_line(tracer: str) -> None:
    """Found by a review of the change above: in a model that is an ``nn.Sequential`` of
    wrappers, torch's ``Sequential.forward`` calls them, so the line found past it was
    the analysing script's (under the CLI, click's) or none (export): no line of the
    model calls the wrapper, and its layer stays at the wrapper's line."""
    model = torch.nn.Sequential(ConvBnAct(), ConvBnAct())
    report = gpa.analyze(model, input_shape=(1, 3, 8, 8), tracer=tracer)
    inner = _line(ConvBnAct, "return self.act(self.bn(")
    assert {n: r.site for n, r in report.layers.items()} == {"0.conv": inner, "1.conv": inner}


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_layer_only_torch_calls_has_no_line(tracer: str) -> None:
    """Found by the same review: a layer of a model that is an ``nn.Sequential`` is called
    by torch's code alone; fx and autograd placed it at the analysing script's line (under
    the CLI, click's), export at none. No line of the model calls it: none, everywhere."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    report = gpa.analyze(model, input_shape=(1, 2), tracer=tracer)
    assert {n: r.site for n, r in report.layers.items()} == {"0": None, "2": None}


@pytest.mark.parametrize("tracer", ["fx", "export", "autograd"])
def test_a_wrapper_analysed_alone_keeps_its_own_line(tracer: str) -> None:
    """The model itself is never looked through: its caller is not the model's code."""
    report = gpa.analyze(ConvBnAct(), input_shape=(1, 3, 8, 8), tracer=tracer)
    assert report.layers["conv"].site == _line(ConvBnAct, "return self.act(self.bn(")


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_rounds_no_channel_takes_are_said_with_channels(tracer: str) -> None:
    """Found by new users: with channels, explain printed stem -> head as stem's shortest
    path, a route no channel of stem takes (after a shuffle the slice drops that half).
    By hand (tests/channels/test_segments.py::ShuffledAway): the whole tensor at 2 and 3,
    its channels at 3 alone; the explanation says so, and without channels says nothing."""
    from gpa.render.explain import explanation, format_explanation
    from tests.channels.test_segments import ShuffledAway

    model, x = ShuffledAway(), torch.randn(2, 3, 6, 6)
    data = explanation(gpa.analyze(model, (x,), channels=True, tracer=tracer), "stem")
    assert [s["layer"] for s in data["shortest_path"]] == ["stem", "head"]
    assert (data["channels"]["timestamps"], data["channels"]["whole_tensor_only"]) == ([3], [2])
    assert "with channels: no channel of stem is reached at 2" in format_explanation(data)
    plain = explanation(gpa.analyze(model, (x,), tracer=tracer), "stem")
    assert "channels" not in plain and "with channels" not in format_explanation(plain)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_the_layers_channel_segments_are_shown_with_channels(tracer: str) -> None:
    """Found by a new user on YOLO: ``gpa explain --channels`` printed what it printed
    without channels. It now lists the layer's segments. By hand (PRN's masked residual,
    tests/channels/test_segments.py::test_prn_block_halves_get_different_timestamps): b1's
    channels 0..2 reach fc (2) and a2 (4); channels 2..4 reach a2 alone (4)."""
    from tests.channels.test_segments import Residual2

    report = gpa.analyze(
        Residual2(masked=True), input_shape=(1, 3, 4, 4), channels=True, tracer=tracer
    )
    data = explanation(report, "b1")
    shown = [
        (
            s["channels"],
            s["shortest"],
            s["longest"],
            s["timestamps"],
            [x["from"] for x in s["sources"]],
        )
        for s in data["channels"]["segments"]
    ]
    assert shown == [([0, 2], 2, 4, [2, 4], ["a2", "fc"]), ([2, 4], 4, 4, [4], ["a2"])]
    lines = format_explanation(data).splitlines()
    start = lines.index("channel segments (2): channels, path lengths, timestamps, sources")
    assert [line.split() for line in lines[start + 1 : start + 3]] == [
        ["[0,", "2)", "2–4", "2,", "4", "a2", "[0,", "2),", "fc", "[0,", "2)"],
        ["[2,", "4)", "4–4", "4", "a2", "[2,", "4)"],
    ]
    result = CliRunner().invoke(main, ["explain", TARGET, "fc", "--channels", "-q"])
    assert result.exit_code == 0, result.output
    assert "channel segments (1)" in result.output  # (the CLI shows them too)


def test_a_line_in_an_installed_package_is_shown_from_the_package(tmp_path, monkeypatch) -> None:
    """Found on Ultralytics YOLO: each step showed the whole path of the virtualenv's
    site-packages; a line of an installed package is shown from the package's directory
    (as the user finds it), one of the working directory relative to it."""
    from gpa.render.explain import explanation

    package = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pairpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from torch import nn\n\n\nclass Pair(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)\n\n"
        "    def forward(self, x):\n        return self.b(self.a(x))\n"
    )
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.chdir(tmp_path)
    from pairpkg import Pair

    data = explanation(gpa.analyze(Pair(), input_shape=(1, 2)), "a")
    assert [s["site"] for s in data["shortest_path"]] == [
        {"file": "pairpkg/__init__.py", "line": 10},
        {"file": "pairpkg/__init__.py", "line": 10},
    ]


class Branching(torch.nn.Module):
    """``b(a(x))`` behind a branch on a value (fx cannot trace it; auto moves on)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(h if bool(h.sum() > -1e9) else -h)


def test_the_explanation_says_what_the_analysis_noted() -> None:
    """Found by a surface audit: explain's text and JSON held no notes and no tracer, so
    "tracer auto used …" (and the inputs chosen, frozen layers …) vanished there, where
    analyze, check, compare and measure keep them. Both are the report's."""
    report = gpa.analyze(Branching(), torch.randn(2, 4))
    assert report.tracer != "fx" and report.notes  # (the premise: auto moved on)
    data = explanation(report, "a")
    assert (data["tracer"], data["notes"]) == (report.tracer, list(report.notes))
    text = format_explanation(data)
    assert "\nnotes:\n  - tracer auto used" in text
