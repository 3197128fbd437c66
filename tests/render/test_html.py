"""Tests of the HTML rendering of a report (``Report._repr_html_``, ``--format html``).

The model is the README's ResNet: a stem conv, three basic blocks with identity shortcuts,
pooling and a linear. By hand (docs/semantics.md §5): 8 layers, max_shortest 3 (conv1 of
each block), min_shortest 1 (the linear), longest 8 (the stem: 2 + 2·3), mean
(2 + 3·(3 + 2) + 1) / 8 = 2.25.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import torch
from torch import nn

import gpa
import gpa.models
from gpa.render.html import COLUMNS, report_html, report_page
from gpa.render.text import shown_file


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


def resnet_report(name: str = "tiny") -> gpa.Report:
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        Block(16),
        Block(16),
        Block(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return gpa.analyze(net, input_shape=(1, 3, 32, 32), name=name)


def rows(table: str) -> list[list[str]]:
    return [
        re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)
    ]


def test_repr_html_summary_on_top_then_one_row_per_layer() -> None:
    report = resnet_report()
    html = report._repr_html_()
    assert html == report_html(report, figures=False)
    assert "<svg" not in html  # Jupyter: no figures, same renderer
    summary_at, layers_at = html.index("class='gpa-summary'"), html.index("class='gpa-layers'")
    assert summary_at < layers_at
    summary = dict(rows(html[summary_at:layers_at]))
    assert summary["model"] == "tiny"
    assert summary["inputs"] == "float32[1, 3, 32, 32]"
    assert summary["layers"] == "8"
    assert summary["max_shortest"] == "3"
    assert summary["min_shortest"] == "1"
    assert summary["mean_shortest"] == "2.25"
    assert summary["longest"] == "8"
    assert summary["unreachable"] == "none"
    table = rows(html[layers_at:])
    header, body = table[0], table[1:]
    assert header[:7] == ["layer", "type", "calls", "shortest", "longest", "timestamps", "paths"]
    assert [r[0] for r in body] == [
        "0",
        "1.conv1",
        "1.conv2",
        "2.conv1",
        "2.conv2",
        "3.conv1",
        "3.conv2",
        "6",
    ]
    stem = dict(zip(header, body[0], strict=True))
    assert (stem["shortest"], stem["longest"], stem["timestamps"], stem["paths"]) == (
        "2",
        "8",
        "2, 4, 6, 8",
        "8",
    )
    fc = dict(zip(header, body[-1], strict=True))
    assert fc["sources"] == "&lt;loss&gt;"  # escaped


def test_repr_html_escapes_names_and_notes() -> None:
    report = resnet_report(name="<b>net & co</b>")
    report.notes.append("a <script>note</script>")
    html = report._repr_html_()
    assert "<b>" not in html and "<script>note" not in html
    assert html.count("<script") == 2  # the witnesses JSON and the page's own script
    assert "&lt;b&gt;net &amp; co&lt;/b&gt;" in html
    assert "<li>a &lt;script&gt;note&lt;/script&gt;</li>" in html


def test_repr_html_unreachable_layer_listed() -> None:
    class Dead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x).detach()

    html = gpa.analyze(Dead(), input_shape=(1, 4))._repr_html_()
    summary = dict(rows(html[: html.index("class='gpa-layers'")]))
    assert summary["unreachable"] == "b"
    body = rows(html[html.index("class='gpa-layers'") :])[1:]
    b = body[1]
    assert b[0] == "b" and b[3] == "-" and b[4] == "-"


class _Page(HTMLParser):
    """The layer rows (attributes, in document order) and the witnesses JSON of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.layers: list[dict[str, str | None]] = []
        self.witnesses: str | None = None
        self._in_witnesses = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "gpa-layer" in (a.get("class") or "").split():
            self.layers.append(a)
        self._in_witnesses = tag == "script" and a.get("class") == "gpa-witnesses"

    def handle_data(self, data: str) -> None:
        if self._in_witnesses:
            self.witnesses = (self.witnesses or "") + data

    def handle_endtag(self, tag: str) -> None:
        self._in_witnesses = False


def parse_page(html: str) -> _Page:
    """Parse a rendered (or browser-dumped) report."""
    page = _Page()
    page.feed(html)
    return page


def zoo_report() -> gpa.Report:
    """The zoo's 2-block ResNet (also the browser tests' model)."""
    m = gpa.models.build("resnet", blocks=2)
    return gpa.analyze(m, input_shape=m.input_shape)


def test_page_is_self_contained_with_figures_rows_and_witnesses() -> None:
    report = zoo_report()
    page = report_page(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # nothing fetched: no external src/href, no <link>, no script file, no CSS import
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert "@import" not in page
    assert set(re.findall(r"url\(([^)]*)\)", page)) <= {
        u for u in re.findall(r"url\((#[\w-]+)\)", page)
    }  # only the SVGs' own clip paths
    # both figures, inline
    assert page.count("<svg") >= 2
    for kind in ("timestamps", "profile"):
        figure = page[page.index(f"gpa-figure-{kind}") :]
        assert figure.index("<svg") < figure.index("</figure>")
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page
    # one row per layer, in forward order, with exact sort keys
    parsed = parse_page(page)
    assert [r["data-layer"] for r in parsed.layers] == list(report.layers)
    assert [r["data-index"] for r in parsed.layers] == [str(i) for i in range(len(report.layers))]
    header = re.findall(r"<th data-col='(\w+)' data-type='(num|text)'>", page)
    assert header == [(c, "num" if n else "text") for c, n in COLUMNS.items()]
    stem = report.layers["stem.conv"]
    keys = re.findall(r"data-sort='(\d*)'", page[page.index("data-layer='stem.conv'") :])[:7]
    assert keys == [
        str(v)
        for v in (stem.calls, stem.shortest, stem.longest, len(stem.timestamps))
        + (stem.num_paths, stem.params, stem.flops)
    ]
    # the witnesses: exactly the report's shortest and longest paths
    assert parsed.witnesses is not None
    witnesses = json.loads(parsed.witnesses)
    assert list(witnesses) == list(report.layers)
    for name, record in report.layers.items():
        for kind, steps in (
            ("shortest", record.shortest_path()),
            ("longest", record.longest_path()),
        ):
            assert [(s["layer"], s["type"]) for s in witnesses[name][kind]] == [
                (s.layer, s.type) for s in steps
            ]
            sites = [
                s["site"] and (s["site"]["file"], s["site"]["line"]) for s in witnesses[name][kind]
            ]
            assert sites == [(shown_file(s.site[0]), s.site[1]) if s.site else None for s in steps]
    assert [s["layer"] for s in witnesses["stem.conv"]["shortest"]] == ["stem.conv", "fc"]
    assert len(witnesses["stem.conv"]["longest"]) == stem.longest == 6


def test_hostile_layer_name_escaped_in_rows_and_json() -> None:
    net = nn.Sequential()
    net.add_module("</script><b>&x", nn.Linear(4, 4))
    net.add_module("y", nn.Linear(4, 2))
    html = report_html(gpa.analyze(net, input_shape=(1, 4)), figures=False)
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "<b>" not in html
    assert "data-layer='&lt;/script&gt;&lt;b&gt;&amp;x'" in html
    parsed = parse_page(html)
    assert [r["data-layer"] for r in parsed.layers] == ["</script><b>&x", "y"]
    assert parsed.witnesses is not None and "</" not in parsed.witnesses
    witnesses = json.loads(parsed.witnesses)
    assert [s["layer"] for s in witnesses["</script><b>&x"]["shortest"]] == ["</script><b>&x", "y"]


def test_records_without_a_graph_have_null_witnesses() -> None:
    from dataclasses import replace

    report = resnet_report()
    report.layers["0"] = replace(report.layers["0"], route=None)  # as loaded from JSON
    witnesses = json.loads(parse_page(report_html(report, figures=False)).witnesses or "")
    assert witnesses["0"] is None
    assert [s["layer"] for s in witnesses["6"]["shortest"]] == ["6"]


def test_unreachable_layer_sorts_with_an_empty_key_and_empty_witnesses() -> None:
    class Dead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x).detach()

    html = report_html(gpa.analyze(Dead(), input_shape=(1, 4)), figures=False)
    row_b = html[html.index("data-layer='b'") :]
    assert re.findall(r"data-sort='(\d*)'", row_b)[:3] == ["1", "", ""]  # calls, shortest, longest
    witnesses = json.loads(parse_page(html).witnesses or "")
    assert witnesses["b"] == {"shortest": [], "longest": []}


def test_cli_format_html_writes_the_page(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gpa.cli import main

    out = tmp_path / "report.html"
    example = Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.py"
    result = CliRunner().invoke(
        main, ["analyze", str(example), "--format", "html", "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 2
    parsed = parse_page(page)
    assert [r["data-layer"] for r in parsed.layers][:2] == ["stem", "blocks.0.conv1"]
    assert len(parsed.layers) == 8 and parsed.witnesses is not None
