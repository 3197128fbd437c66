"""The HTML report in a real browser: headless Chromium loads the file from disk.

Chromium is driven from the command line, no extra dependency: ``--screenshot`` for a
picture of the page and ``--dump-dom`` for the DOM after the page's script has run. The
page honours a URL fragment (``#sort=shortest-desc&filter=conv1&layer=stem.conv``) by
clicking the header, typing in the filter box and clicking the row, as a user would; the
dumped row order and visibility are compared with the order computed here from the report.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

import gpa
from gpa.render.html import report_page
from gpa.render.text import shown_file
from tests.render.test_html import parse_page, zoo_report

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no `chromium` on PATH (Debian: apt-get install chromium; .ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
def report() -> gpa.Report:
    return zoo_report()


@pytest.fixture(scope="module")
def page(report: gpa.Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(report_page(report), encoding="utf-8")
    return path


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a throw-away profile; its standard output."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dump_dom(page: Path, tmp_path: Path, fragment: str) -> str:
    return chromium(tmp_path, "--dump-dom", f"{page.as_uri()}#{fragment}")


def expected_order(report: gpa.Report, column: str, desc: bool) -> list[str]:
    """The sort the page promises, computed in Python: values ascending or descending, ties
    and missing values (unreachable layers) in forward order, missing values last."""
    value = {
        "layer": lambda r: r.name,
        "type": lambda r: r.type,
        "calls": lambda r: r.calls,
        "shortest": lambda r: r.shortest,
        "longest": lambda r: r.longest,
        "timestamps": lambda r: len(r.timestamps),
        "paths": lambda r: r.num_paths,
        "params": lambda r: r.params,
        "flops": lambda r: r.flops,
    }[column]
    records = list(report.layers.values())
    present = [r for r in records if value(r) is not None]
    present.sort(key=value, reverse=desc)  # stable: ties stay in forward order
    return [r.name for r in present] + [r.name for r in records if value(r) is None]


def test_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 0.05
    colours = {tuple(c) for c in (pixels[::4, ::4].reshape(-1, 3) * 255).astype(int).tolist()}
    assert len(colours) > 20  # text, table rules, the highlighted header, the figure


@pytest.mark.parametrize(
    "sort",
    ["shortest-desc", "shortest-asc", "longest-desc", "layer-desc", "paths-desc", "flops-asc"],
)
def test_page_script_sorts_the_table(
    report: gpa.Report, page: Path, tmp_path: Path, sort: str
) -> None:
    column, _, direction = sort.rpartition("-")
    dom = dump_dom(page, tmp_path, f"sort={sort}")
    assert 'data-gpa-ready="1"' in dom  # the script ran
    rows = parse_page(dom).layers
    assert [r["data-layer"] for r in rows] == expected_order(report, column, direction == "desc")
    assert all("hidden" not in r for r in rows)
    header = re.search(rf'<th data-col="{column}"[^>]*>', dom)
    assert header is not None
    assert f'aria-sort="{"descending" if direction == "desc" else "ascending"}"' in header[0]
    assert len(re.findall(r"<th [^>]*aria-sort=", dom)) == 1


def test_page_script_filters_by_layer_name(report: gpa.Report, page: Path, tmp_path: Path) -> None:
    dom = dump_dom(page, tmp_path, "filter=conv1")
    rows = parse_page(dom).layers
    assert [r["data-layer"] for r in rows] == list(report.layers)  # unsorted: forward order
    shown = [r["data-layer"] for r in rows if "hidden" not in r]
    expected = [n for n in report.layers if "conv1" in n.lower()]
    assert shown == expected and len(expected) == 2
    assert f"{len(expected)} of {len(report.layers)} layers" in dom


def test_clicked_row_shows_its_paths_after_sort_and_filter(
    report: gpa.Report, page: Path, tmp_path: Path
) -> None:
    name = "stem.conv"
    dom = dump_dom(page, tmp_path, f"sort=longest-desc&filter=CONV&layer={quote(name)}")
    rows = parse_page(dom).layers
    order = expected_order(report, "longest", True)
    assert [r["data-layer"] for r in rows] == order
    assert [r["data-layer"] for r in rows if "hidden" not in r] == [n for n in order if "conv" in n]
    # the witness row follows the clicked row and lists both paths with their source lines
    detail = re.search(
        rf'<tr class="gpa-layer gpa-open"[^>]*data-layer="{re.escape(name)}"[^>]*>.*?</tr>'
        r'<tr class="gpa-detail">(.*?)</tr>',
        dom,
        re.S,
    )
    assert detail is not None
    paths = re.findall(r'<div class="gpa-path">(.*?)</ol></div>', detail[1], re.S)
    record = report.layers[name]
    for shown, steps in zip(paths, (record.shortest_path(), record.longest_path()), strict=True):
        items = re.findall(r'<li>(.*?) \((\w+)\) <span class="gpa-site">(.*?)</span></li>', shown)
        assert items == [
            (s.layer, s.type, f"{shown_file(s.site[0])}:{s.site[1]}" if s.site else "")
            for s in steps
        ]
    assert len(paths) == 2
