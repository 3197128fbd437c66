"""The layer-level gradient graph handed on to other tools: DOT, GraphML, node-link JSON.

The graph is :attr:`Report.graph <gpa.core.report.Report.graph>`: one node per layer and
``<loss>``, an edge from each layer to each of its gradient sources (the forward
direction; gradient flows against it). Every per-layer metric of ``docs/semantics.md`` §4
is a node attribute: ``type``, ``calls``, ``shortest``, ``longest``, ``timestamps``,
``num_paths``, ``params``, ``flops`` (plus ``segments`` and ``gradient_combinations`` with
channels); ``<loss>`` has ``type`` "loss". Unreachable layers have no ``shortest`` /
``longest`` attribute. ``timestamps`` is a list in node-link JSON and text in DOT and
GraphML (``"2, 4, 6"``: they hold no lists); GraphML declares ``num_paths`` a ``long``
(64 bits) unless a count overflows it (deep YOLO models: 10^27 paths), then ``string``
for every node. The graph's own attributes are ``name`` (the model), ``tracer`` and
``notes`` (a list in node-link JSON, one note per line in DOT and GraphML). The DOT text is written here (no Graphviz needed to produce it,
``dot -Tsvg`` renders it); GraphML and node-link JSON come from networkx.

Example:
    >>> import gpa, torch.nn as nn
    >>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
    >>> print(to_dot(report).splitlines()[4])
      "0" [label="0\\nLinear\\nshortest 2, longest 2", type="Linear", calls=1, shortest=2, longest=2, timestamps="2", num_paths=1, params=20, flops=32];
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import networkx as nx

from gpa.core.graph import LOSS

__all__ = ["FORMATS", "export_graph", "to_dot", "to_graphml", "to_node_link"]

#: The graph formats of ``gpa analyze --format``.
FORMATS = ("dot", "graphml", "node-link")


def _attributes(report: Any, lists: bool = False) -> nx.DiGraph:
    """The report's graph with plain attribute values: numbers, and ``timestamps`` as a
    list where ``lists`` (node-link JSON), else as text (``"2, 4, 6"``: GraphML and DOT
    have no lists); unset values left out."""
    # the frontend and its notes travel with the numbers they bear on (§7)
    notes = [_CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", note) for note in report.notes]
    g = nx.DiGraph(name=report.model, tracer=report.tracer or "", notes=notes)
    for r in report.layers.values():
        values = {
            "type": r.type,
            "calls": r.calls,
            "shortest": r.shortest,
            "longest": r.longest,
            "timestamps": list(r.timestamps) if lists else ", ".join(map(str, r.timestamps)),
            "num_paths": r.num_paths,
            "params": r.params,
            "flops": r.flops,
            "segments": None if r.segments is None else len(r.segments),
            "gradient_combinations": r.gradient_combinations,
        }
        g.add_node(r.name, **{k: v for k, v in values.items() if v is not None})
    g.add_node(LOSS, type="loss")
    for r in report.layers.values():
        g.add_edges_from((r.name, source) for source in r.deliveries)
    return g


# characters XML cannot hold (a terminal colour code in a model's own error message):
# written as \xNN
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# the largest value of GraphML's ``long`` (a Java long: 64 bits, signed)
_LONG = 2**63 - 1


def _lines(notes: list[str]) -> str:
    return "\n".join(notes)


def _quote(text: Any) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(report: Any) -> str:
    """The graph as Graphviz DOT text, layers labelled with their shortest and longest paths."""
    g = _attributes(report)
    notes = _quote(_lines(g.graph["notes"])).replace("\n", "\\n")  # as labels' lines
    lines = [
        f"digraph {_quote(report.model)} {{",
        "  rankdir=LR;",
        f"  tracer={_quote(g.graph['tracer'])};",
        f"  notes={notes};",
    ]
    for name, attrs in g.nodes(data=True):
        if name == LOSS:
            lines.append(f'  {_quote(LOSS)} [label="<loss>", type="loss", shape=doublecircle];')
            continue
        paths = (
            f"shortest {attrs['shortest']}, longest {attrs['longest']}"
            if "shortest" in attrs
            else "unreachable"
        )
        label = _quote(f"{name}\n{attrs['type']}\n{paths}").replace("\n", "\\n")
        rest = ", ".join(
            f"{k}={v}" if isinstance(v, int) else f"{k}={_quote(v)}" for k, v in attrs.items()
        )
        lines.append(f"  {_quote(name)} [label={label}, {rest}];")
    lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in g.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_graphml(report: Any) -> str:
    """The graph as GraphML (networkx's writer)."""
    g = _attributes(report)
    g.graph["notes"] = _lines(g.graph["notes"])  # GraphML holds no lists
    counts = nx.get_node_attributes(g, "num_paths")
    if any(count > _LONG for count in counts.values()):  # (one type per key: all as text)
        nx.set_node_attributes(g, {name: str(count) for name, count in counts.items()}, "num_paths")
    buffer = io.BytesIO()
    nx.write_graphml(g, buffer)
    return buffer.getvalue().decode("utf-8")


def to_node_link(report: Any) -> str:
    """The graph as networkx's node-link JSON (``networkx.node_link_graph`` reads it back)."""
    data = nx.node_link_data(_attributes(report, lists=True), edges="links")
    return json.dumps(data, indent=2) + "\n"


def export_graph(report: Any, fmt: str) -> str:
    """The graph in one of :data:`FORMATS`.

    Raises:
        ValueError: an unknown format.
    """
    writers = {"dot": to_dot, "graphml": to_graphml, "node-link": to_node_link}
    if fmt not in writers:
        raise ValueError(f"unknown graph format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return writers[fmt](report)
