"""HTML rendering of a :class:`gpa.Report`: ``gpa analyze --format html`` and Jupyter.

One renderer, two wrappers. :func:`report_html` gives a styled fragment: the network
summary, a layer table that sorts (click a column header) and filters (a text box on the
layer name), the timestamps and profile figures as inline SVG, the notes, and every
layer's shortest and longest gradient path (click a row), embedded as JSON and shown by a
small inline script. :func:`report_page` wraps it in a complete document, which is what
``--format html`` writes; ``Report._repr_html_`` is ``report_html(report, figures=False)``
(no matplotlib, light notebooks). Nothing is loaded from the network: styles, script,
data and figures are all inside the page.

Every name and note is HTML-escaped; the JSON inside ``<script>`` has ``<``, ``>`` and
``&`` escaped as ``\\u003c``…, so no name can close the script element. The page honours a
URL fragment, for links and tests: ``#sort=shortest-desc`` (a column, ``-asc`` or
``-desc``), ``filter=conv1`` (a substring of the layer name, any case) and ``layer=NAME``
(open that layer's paths), joined by ``&``.

(Not named ``html.py`` at the top level: that would shadow the standard library when
gpa/ is on the path.)

Example:
    >>> import gpa, torch.nn as nn
    >>> report = gpa.analyze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), input_shape=(1, 4))
    >>> html = report_html(report, figures=False)
    >>> html.count("<tr class='gpa-layer'"), "max_shortest" in html, "<svg" in html
    (2, True, False)
    >>> report_page(report).startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import io
import json
from html import escape
from typing import Any

from gpa.errors import GpaError
from gpa.render.explain import path_steps
from gpa.render.text import (
    format_count,
    format_inputs,
    format_si,
    format_sources,
    format_timestamps,
)

__all__ = ["COLUMNS", "html_page", "report_html", "report_page", "script_json"]

#: The layer table's columns, and whether each sorts as a number (``True``) or as text.
#: Numeric cells carry their exact value in ``data-sort`` (``timestamps``: how many).
COLUMNS: dict[str, bool] = {
    "layer": False,
    "type": False,
    "calls": True,
    "shortest": True,
    "longest": True,
    "timestamps": True,
    "paths": True,
    "params": True,
    "flops": True,
    "sources": False,
}

_STYLE = """
.gpa-report{font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:inherit}
.gpa-report table{border-collapse:collapse;margin:.4em 0 1em}
.gpa-report th,.gpa-report td{padding:3px 9px;text-align:left;vertical-align:top;
border-bottom:1px solid rgba(128,128,128,.28)}
.gpa-report .gpa-summary th{font-weight:600;color:#555}
.gpa-report td.gpa-num{text-align:right;font-variant-numeric:tabular-nums}
.gpa-report .gpa-layers thead th{cursor:pointer;user-select:none;white-space:nowrap;
background:rgba(128,128,128,.12)}
.gpa-report .gpa-layers thead th:hover{background:rgba(66,133,244,.18)}
.gpa-report .gpa-layers th[aria-sort=ascending]::after{content:" \\25B2";font-size:.8em}
.gpa-report .gpa-layers th[aria-sort=descending]::after{content:" \\25BC";font-size:.8em}
.gpa-report tr.gpa-layer{cursor:pointer}
.gpa-report tr.gpa-layer:hover{background:rgba(66,133,244,.08)}
.gpa-report tr.gpa-open{background:rgba(66,133,244,.16)}
.gpa-report tr.gpa-detail td{background:rgba(128,128,128,.07);padding:6px 14px}
.gpa-report .gpa-path{display:inline-block;vertical-align:top;margin-right:3em}
.gpa-report .gpa-path ol{margin:.2em 0;padding-left:2em}
.gpa-report .gpa-site{color:#777;font-family:ui-monospace,monospace;font-size:.92em}
.gpa-report .gpa-tools{margin:.3em 0}
.gpa-report .gpa-filter{font:inherit;padding:2px 6px;min-width:16em}
.gpa-report .gpa-count{color:#777;margin-left:1em}
.gpa-report .gpa-figures figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
.gpa-report .gpa-figures svg{max-width:100%;height:auto}
.gpa-report figcaption{font-weight:600;margin-bottom:.3em}
"""

# Sorting, filtering and path witnesses. It binds every report on the page not yet bound
# (Jupyter may run it outside the report's element, so it does not rely on currentScript).
_SCRIPT = """
(function () {
  function text(x) { return x.getAttribute("data-sort") !== null ? x.getAttribute("data-sort")
    : x.textContent; }
  function cmpText(a, b) { return a < b ? -1 : a > b ? 1 : 0; }
  function cmpNum(a, b) { return a.length - b.length || cmpText(a, b); }  /* digit strings */
  function bind(root) {
    root.setAttribute("data-gpa-ready", "1");
    var table = root.querySelector("table.gpa-layers"), body = table.tBodies[0];
    var heads = [].slice.call(table.tHead.rows[0].cells);
    var rows = [].slice.call(body.querySelectorAll("tr.gpa-layer"));
    var data = JSON.parse(root.querySelector("script.gpa-witnesses").textContent);
    var box = root.querySelector("input.gpa-filter"), count = root.querySelector(".gpa-count");
    var detail = null, sorted = {col: null, desc: false};
    function place() {
      if (!detail) return;
      detail.hidden = detail.owner.hidden;
      body.insertBefore(detail, detail.owner.nextSibling);
    }
    function sort(col, desc) {
      var i = heads.findIndex(function (h) { return h.getAttribute("data-col") === col; });
      if (i < 0) return;
      var cmp = heads[i].getAttribute("data-type") === "num" ? cmpNum : cmpText;
      rows.slice().sort(function (a, b) {
        var x = text(a.cells[i]), y = text(b.cells[i]), c = 0;
        if (x === "" || y === "") c = (x === "") - (y === "");  /* missing values last */
        else c = desc ? -cmp(x, y) : cmp(x, y);
        return c || a.getAttribute("data-index") - b.getAttribute("data-index");
      }).forEach(function (r) { body.appendChild(r); });
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      heads[i].setAttribute("aria-sort", desc ? "descending" : "ascending");
      sorted = {col: col, desc: desc};
      place();
    }
    function filter(q) {
      var shown = 0;
      q = q.toLowerCase();
      rows.forEach(function (r) {
        r.hidden = r.getAttribute("data-layer").toLowerCase().indexOf(q) < 0;
        shown += r.hidden ? 0 : 1;
      });
      count.textContent = shown + " of " + rows.length + " layers";
      place();
    }
    function path(title, steps) {
      var div = document.createElement("div"), h = document.createElement("div");
      div.className = "gpa-path";
      h.textContent = title + ": " + steps.length + " layer" + (steps.length === 1 ? "" : "s");
      div.appendChild(h);
      var ol = document.createElement("ol");
      steps.forEach(function (s) {
        var li = document.createElement("li"), site = document.createElement("span");
        var call = s.calls > 1 ? " (call " + s.call + " of " + s.calls + ")" : "";
        li.textContent = s.layer + call + " (" + s.type + ") ";
        site.className = "gpa-site";
        site.textContent = s.site ? s.site.file + ":" + s.site.line : "";
        li.appendChild(site);
        ol.appendChild(li);
      });
      div.appendChild(ol);
      return div;
    }
    function toggle(row) {
      var again = detail && detail.owner === row;
      if (detail) { detail.owner.classList.remove("gpa-open"); detail.remove(); detail = null; }
      if (again) return;
      var w = data[row.getAttribute("data-layer")], td;
      detail = document.createElement("tr");
      detail.className = "gpa-detail";
      detail.owner = row;
      td = detail.insertCell();
      td.colSpan = heads.length;
      if (w === null) td.textContent = "paths not stored (a report loaded from JSON)";
      else if (!w.shortest.length) td.textContent = "no gradient reaches this layer";
      else { td.appendChild(path("shortest", w.shortest)); td.appendChild(path("longest", w.longest)); }
      row.classList.add("gpa-open");
      place();
    }
    heads.forEach(function (h) {
      h.addEventListener("click", function () {
        var col = h.getAttribute("data-col");
        sort(col, sorted.col === col ? !sorted.desc : false);
      });
    });
    body.addEventListener("click", function (e) {
      var row = e.target.closest("tr.gpa-layer");
      if (row) toggle(row);
    });
    box.addEventListener("input", function () { filter(box.value); });
    /* #sort=COL-asc|desc&filter=TEXT&layer=NAME: the same clicks and typing a user makes */
    var hash = new URLSearchParams(location.hash.slice(1)), s = hash.get("sort") || "";
    var th = heads.filter(function (h) {
      return h.getAttribute("data-col") === s.replace(/-(asc|desc)$/, "");
    })[0];
    if (th) { th.click(); if (/-desc$/.test(s)) th.click(); }
    if (hash.get("filter") !== null) { box.value = hash.get("filter"); }
    filter(box.value);
    rows.forEach(function (r) { if (r.getAttribute("data-layer") === hash.get("layer")) r.click(); });
  }
  [].forEach.call(document.querySelectorAll(".gpa-report:not([data-gpa-ready])"), bind);
})();
"""


def script_json(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped.

    Example:
        >>> script_json({"a</script>": "&"})
        '{"a\\\\u003c/script\\\\u003e":"\\\\u0026"}'
        >>> import json; json.loads(script_json({"a</script>": "&"}))
        {'a</script>': '&'}
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _text(value: Any) -> str:
    return "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def _cell(value: Any, tag: str = "td") -> str:
    return f"<{tag}>{escape(_text(value))}</{tag}>"


def _summary(report: Any) -> str:
    net = report.network
    rows = [
        ("model", report.model),
        ("inputs", format_inputs(report.inputs)),
        ("layers", net.layers),
        ("max_shortest", net.max_shortest),
        ("min_shortest", net.min_shortest),
        ("mean_shortest", net.mean_shortest),
        ("longest", net.longest),
        ("unreachable", ", ".join(net.unreachable) or "none"),
    ]
    if getattr(net, "count_convention", None) is not None:
        rows += [("params", format_si(net.params)), ("flops", format_si(net.flops))]
    if getattr(net, "gradient_combinations", None) is not None:
        rows.append(("gradient_combinations", net.gradient_combinations))
    if getattr(report, "tracer", None):
        rows.append(("tracer", report.tracer))
    body = "".join(f"<tr>{_cell(k, 'th')}{_cell(v)}</tr>" for k, v in rows)
    return f"<table class='gpa-summary'>{body}</table>"


def _layer_row(index: int, r: Any) -> str:
    shown = (
        r.name,
        r.type,
        r.calls,
        r.shortest,
        r.longest,
        format_timestamps(r.timestamps),
        format_count(r.num_paths),
        format_si(r.params),
        format_si(r.flops),
        format_sources(r.sources),
    )
    exact = (None, None, r.calls, r.shortest, r.longest, len(r.timestamps), r.num_paths)
    exact += (r.params, r.flops, None)
    cells = []
    for (column, numeric), text, value in zip(COLUMNS.items(), shown, exact, strict=True):
        if numeric:
            key = "" if value is None else str(value)
            cells.append(f"<td class='gpa-num' data-sort='{key}'>{escape(_text(text))}</td>")
        elif column == "sources" and len(r.sources) > 3:
            full = escape(", ".join(r.sources))
            cells.append(f"<td title='{full}'>{escape(text)}</td>")
        else:
            cells.append(_cell(text))
    name = escape(r.name)
    return (
        f"<tr class='gpa-layer' data-index='{index}' data-layer='{name}'>"
        + "".join(cells)
        + "</tr>"
    )


def _witnesses(report: Any) -> dict[str, dict[str, Any] | None]:
    """Each layer's shortest and longest path (None when the report holds no graph)."""
    out: dict[str, dict[str, Any] | None] = {}
    for name, r in report.layers.items():
        try:
            out[name] = {
                "shortest": path_steps(report, r.shortest_path()),
                "longest": path_steps(report, r.longest_path()),
            }
        except GpaError:  # loaded from JSON: no gradient graph to walk
            out[name] = None
    return out


def _svg(figure: Any, salt: str) -> str:
    """A matplotlib figure as inline ``<svg>`` text (no XML prolog; stable ids)."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figures(report: Any) -> str:
    from gpa.render import plot

    parts = []
    for kind, caption in (
        ("timestamps", "Gradient timestamps"),
        ("profile", "Shortest and longest path along depth"),
    ):
        try:
            body = _svg(getattr(plot, kind)(report), f"gpa-{kind}")
        except GpaError as exc:
            body = f"<p>{escape(str(exc))}</p>"
        parts.append(
            f"<figure class='gpa-figure-{kind}'><figcaption>{caption}</figcaption>{body}</figure>"
        )
    return f"<div class='gpa-figures'>{''.join(parts)}</div>"


def report_html(report: Any, *, figures: bool = True) -> str:
    """The report as a styled HTML fragment (the body of :func:`report_page`).

    Summary table, filter box, sortable layer table (one ``tr.gpa-layer`` per layer,
    ``data-layer`` holding its name), the figures when ``figures`` (inline SVG; needs
    matplotlib), the notes, the path witnesses as JSON
    (``<script type="application/json" class="gpa-witnesses">``) and the script.

    Args:
        report: a :class:`gpa.Report`.
        figures: draw the timestamps and profile figures (``False`` for Jupyter).

    Returns:
        HTML without an ``<html>`` wrapper, every name and note escaped.
    """
    head = "".join(
        f"<th data-col='{c}' data-type='{'num' if numeric else 'text'}'>{c}</th>"
        for c, numeric in COLUMNS.items()
    )
    rows = "".join(_layer_row(i, r) for i, r in enumerate(report.layers.values()))
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    n = len(report.layers)
    return (
        f"<div class='gpa-report'><style>{_STYLE}</style>"
        + _summary(report)
        + "<div class='gpa-tools'><input type='search' class='gpa-filter' "
        + "placeholder='filter layers by name' aria-label='filter layers by name'>"
        + f"<span class='gpa-count'>{n} of {n} layers</span> "
        + "<span class='gpa-count'>click a header to sort, a row for its paths</span></div>"
        + f"<table class='gpa-layers'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        + (_figures(report) if figures else "")
        + (f"<p>notes:</p><ul class='gpa-notes'>{notes}</ul>" if notes else "")
        + "<script type='application/json' class='gpa-witnesses'>"
        + script_json(_witnesses(report))
        + f"</script><script>{_SCRIPT}</script></div>"
    )


def report_page(report: Any, *, figures: bool = True) -> str:
    """The report as one self-contained HTML document (``gpa analyze --format html``).

    Args:
        report: a :class:`gpa.Report`.
        figures: include the figures (inline SVG).

    Returns:
        A complete page, needing no network: ``<!DOCTYPE html>`` … ``</html>``.
    """
    return html_page(
        f"gpa: {report.model}",
        f"Gradient paths of {report.model}",
        report_html(report, figures=figures),
    )


def html_page(title: str, heading: str, body: str) -> str:
    """``body`` (HTML) as a complete UTF-8 document titled ``title`` under the heading
    ``heading`` (both plain text, escaped here): what each command's ``--format html``
    writes.

    Example:
        >>> page = html_page("gpa: a<b", "Paths of a<b", "<p>x</p>")
        >>> page.startswith("<!DOCTYPE html>"), "<title>gpa: a&lt;b</title>" in page
        (True, True)
    """
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title>"
        "<style>body{margin:1.2em 2em;background:#fff;color:#222}"
        "h1{font:600 1.3em system-ui,sans-serif}</style></head><body>"
        f"<h1>{escape(heading)}</h1>{body}</body></html>\n"
    )
