"""Tests of the Jupyter rendering of a report (``Report._repr_html_``).

The model is the README's ResNet: a stem conv, three basic blocks with identity shortcuts,
pooling and a linear. By hand (docs/semantics.md §5): 8 layers, max_shortest 3 (conv1 of
each block), min_shortest 1 (the linear), longest 8 (the stem: 2 + 2·3), mean
(2 + 3·(3 + 2) + 1) / 8 = 2.25.
"""

from __future__ import annotations

import re

import torch
from torch import nn

import gpa
from gpa.render.html import report_html


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
        re.findall(r"<t[hd]>(.*?)</t[hd]>", row)
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)
    ]


def test_repr_html_summary_on_top_then_one_row_per_layer() -> None:
    report = resnet_report()
    html = report._repr_html_()
    assert html == report_html(report)
    summary_at, layers_at = html.index("gpa-summary"), html.index("gpa-layers")
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
    assert "<b>" not in html and "<script>" not in html
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
    summary = dict(rows(html[: html.index("gpa-layers")]))
    assert summary["unreachable"] == "b"
    body = rows(html[html.index("gpa-layers") :])[1:]
    b = body[1]
    assert b[0] == "b" and b[3] == "-" and b[4] == "-"
