"""The layer-level gradient graph handed on (issue 15 §4): DOT, GraphML and node-link JSON
read back with networkx carry every layer's metrics and the edges to its sources."""

from __future__ import annotations

import io
import json

import networkx as nx
import pytest
import torch
from click.testing import CliRunner

import gpa
import gpa.models
from gpa.cli import main
from gpa.render.graph import export_graph, to_dot, to_graphml, to_node_link

LOSS = "<loss>"


@pytest.fixture(scope="module")
def report() -> gpa.Report:
    model = gpa.models.build("prn", blocks=2)
    return gpa.analyze(model, input_shape=model.input_shape, name="gpa.models:prn")


def _check(g: nx.DiGraph, report: gpa.Report, cast=int) -> None:
    """Every layer with its metrics, ``<loss>``, and one edge per (layer, source)."""
    assert set(g.nodes) == {*report.layers, LOSS}
    for name, r in report.layers.items():
        attrs = g.nodes[name]
        assert attrs["type"] == r.type
        assert cast(attrs["calls"]) == r.calls
        assert cast(attrs["shortest"]) == r.shortest
        assert cast(attrs["longest"]) == r.longest
        assert cast(attrs["num_paths"]) == r.num_paths
        stamps = attrs["timestamps"]  # a list where the format holds lists (node-link)
        if not isinstance(stamps, list):
            stamps = [int(t) for t in str(stamps).split(", ")]
        assert stamps == list(r.timestamps)
        assert cast(attrs["params"]) == r.params
        assert set(g.successors(name)) == set(r.sources)
    assert g.nodes[LOSS]["type"] == "loss"
    assert g.number_of_edges() == sum(len(r.sources) for r in report.layers.values())


def test_graphml_round_trip(report: gpa.Report) -> None:
    _check(nx.read_graphml(io.BytesIO(to_graphml(report).encode())), report)


def test_node_link_round_trip(report: gpa.Report) -> None:
    data = json.loads(to_node_link(report))
    _check(nx.node_link_graph(data, edges="links"), report)
    # JSON holds lists: timestamps as --format json gives them (found by a new user: text)
    assert all(isinstance(n["timestamps"], list) for n in data["nodes"] if n["id"] != LOSS)


def test_graphml_declares_counts_beyond_64_bits_as_text() -> None:
    """Found by a new user on YOLOv9-E: 5.5 × 10^27 paths written under a ``long`` key,
    which GraphML readers other than networkx (64-bit longs) reject or wrap. By hand: a
    chain of 70 residual blocks, x + f(x) each, gives the first layer 2^70 paths."""
    from torch import nn

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(2, 2)
            self.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(70))

        def forward(self, x):
            x = self.first(x)
            for block in self.blocks:
                x = x + block(x)
            return x

    report = gpa.analyze(Chain(), input_shape=(1, 2))
    assert report.layers["first"].num_paths == 2**70
    text = to_graphml(report)
    assert 'attr.name="num_paths" attr.type="string"' in text
    g = nx.read_graphml(io.BytesIO(text.encode()))
    assert int(g.nodes["first"]["num_paths"]) == 2**70
    small = to_graphml(gpa.analyze(nn.Sequential(nn.Linear(2, 2)), input_shape=(1, 2)))
    assert 'attr.name="num_paths" attr.type="long"' in small


def test_dot_round_trip(report: gpa.Report) -> None:
    import pydot  # a test dependency: networkx reads DOT through it

    (parsed,) = pydot.graph_from_dot_data(to_dot(report))
    g = nx.DiGraph(nx.nx_pydot.from_pydot(parsed))
    for _, attrs in g.nodes(data=True):  # pydot keeps quoted strings quoted
        for key, value in attrs.items():
            attrs[key] = value.strip('"') if isinstance(value, str) else value
    _check(g, report)


def test_unreachable_layers_have_no_path_attributes() -> None:
    model = gpa.models.build("resnet_stopgrad", blocks=2)
    report = gpa.analyze(model, input_shape=model.input_shape)
    g = nx.read_graphml(io.BytesIO(to_graphml(report).encode()))
    for name, r in report.layers.items():
        assert ("shortest" in g.nodes[name]) == r.reachable


@pytest.mark.parametrize("fmt", ["dot", "graphml", "node-link"])
def test_cli_formats(tmp_path, report: gpa.Report, fmt: str) -> None:
    out = tmp_path / f"graph.{fmt}"
    result = CliRunner().invoke(
        main, ["analyze", "gpa.models:prn", "-k", "blocks=2", "--format", fmt, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text() == export_graph(report, fmt)


def test_every_format_carries_the_frontend_and_the_notes() -> None:
    """The graph formats dropped the report's notes (which frontend ran, layers it could
    not see, frozen weights): each now holds them as the graph's attributes. Three notes
    here: no example inputs (for the paths and for the FLOPs), the first layer frozen."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    report = gpa.analyze(model)
    assert len(report.notes) == 3 and "frozen" in report.notes[2]
    data = json.loads(to_node_link(report))
    assert (data["graph"]["tracer"], data["graph"]["notes"]) == ("fx", report.notes)
    g = nx.read_graphml(io.BytesIO(to_graphml(report).encode()))
    assert (g.graph["tracer"], g.graph["notes"].split("\n")) == ("fx", report.notes)
    import pydot

    (parsed,) = pydot.graph_from_dot_data(to_dot(report))
    assert parsed.get("tracer") == '"fx"'
    assert parsed.get("notes").strip('"').split("\\n") == report.notes


def test_a_note_holding_control_characters_is_written_as_valid_xml() -> None:
    """A model's own error message may carry a terminal colour code into a note: GraphML
    (XML) cannot hold the escape character, so it is written as ``\\x1b`` (before: a file
    no XML reader takes)."""
    report = gpa.analyze(torch.nn.Linear(4, 2), input_shape=(1, 4))
    report.notes.append("fx says: \x1b[31mcannot run on a proxy\x1b[0m")
    g = nx.read_graphml(io.BytesIO(to_graphml(report).encode()))
    assert g.graph["notes"] == "fx says: \\x1b[31mcannot run on a proxy\\x1b[0m"
    import pydot

    (parsed,) = pydot.graph_from_dot_data(to_dot(report))
    assert parsed.get("notes") == '"fx says: \\\\x1b[31mcannot run on a proxy\\\\x1b[0m"'
