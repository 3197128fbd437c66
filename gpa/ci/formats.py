"""Renderings of a :class:`gpa.ci.check.CheckRun`: text, JSON, JUnit XML, GitHub annotations.

All are pure functions of the run, without timestamps or durations, so the same run
gives byte-identical output every time (JUnit's ``time`` attributes are ``0``).

Example:
    >>> from gpa.ci.check import CheckRun, ModelCheck
    >>> print(format_text(CheckRun([ModelCheck("m", "m.py", error="no model")])), end="")
    ERROR m: no model
    1 model, 0 rules: 0 passed, 0 failed, 1 error
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import click

from gpa.ci.check import CheckRun

__all__ = ["FORMATS", "format_github", "format_json", "format_junit", "format_run", "format_text"]

#: The values of ``gpa check --format``.
FORMATS = ("text", "json", "junit", "github")

_STYLES = {"PASS": "green", "FAIL": "red", "ERROR": "red"}


def _status(word: str, color: bool) -> str:
    return click.style(word, fg=_STYLES[word], bold=True) if color else word


def format_text(run: CheckRun, *, color: bool = False) -> str:
    """One line per rule (``PASS``/``FAIL``/``ERROR``, model, message), then a summary line.

    A failed rule's line names every offending layer; a baseline line is followed by
    one indented line per improvement.
    """
    lines = []
    for model in run.models:
        if model.error is not None:
            first, *rest = model.error.splitlines() or [""]
            lines.append(f"{_status('ERROR', color)} {model.name}: {first}")
            lines.extend(f"    {line}" for line in rest)
            continue
        if not model.results:
            lines.append(f"{_status('PASS', color)} {model.name}: analysed (no rules configured)")
        for result in model.results:
            status = _status("PASS" if result.passed else "FAIL", color)
            lines.append(f"{status} {model.name}: {result.message}")
            lines.extend(f"    improved: {text}" for text in result.improvements)
    lines.append(run.summary())
    return "\n".join(lines) + "\n"


def format_json(run: CheckRun) -> str:
    """The run as JSON (sorted keys, indented, final newline)."""
    return json.dumps(run.to_dict(), indent=2, sort_keys=True) + "\n"


def format_junit(run: CheckRun) -> str:
    """JUnit XML: a ``testsuite`` per model, a ``testcase`` per rule.

    A failed rule is a ``failure`` whose ``message`` is the rule's line and whose text
    lists the offending layers; a model in error is one ``testcase`` named ``analyse``
    with an ``error``. Baseline improvements go to the test case's ``system-out``.
    """
    root = ET.Element("testsuites", name="gpa check")
    root.set("tests", str(run.rules + run.errors))
    root.set("failures", str(run.failures))
    root.set("errors", str(run.errors))
    root.set("time", "0")
    for model in run.models:
        suite = ET.SubElement(root, "testsuite", name=model.name)
        failed = sum(not r.passed for r in model.results)
        errors = int(model.error is not None)
        suite.set("tests", str(len(model.results) + errors))
        suite.set("failures", str(failed))
        suite.set("errors", str(errors))
        suite.set("skipped", "0")
        suite.set("time", "0")
        classname = model.name
        if model.error is not None:
            case = ET.SubElement(suite, "testcase", classname=classname, name="analyse", time="0")
            first = (model.error.splitlines() or [""])[0]
            error = ET.SubElement(case, "error", message=first, type="error")
            error.text = model.error
        for result in model.results:
            case = ET.SubElement(suite, "testcase", classname=classname, name=result.rule)
            case.set("time", "0")
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=result.message, type=result.rule)
                failure.text = "\n".join(
                    f"{v.layer}: {'unreachable' if v.value is None else v.value}"
                    for v in result.violations
                    if v.layer is not None
                )
            if result.improvements:
                out = ET.SubElement(case, "system-out")
                out.text = "\n".join(f"improved: {t}" for t in result.improvements)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(run: CheckRun) -> str:
    """GitHub Actions workflow commands: an ``::error`` per failed rule or model in error,
    a ``::notice`` per baseline improvement, then the summary line (plain text).

    Example line: ``::error title=gpa check resnet max-shortest::max-shortest 2: …``.
    """
    lines = []
    for model in run.models:
        if model.error is not None:
            title = _escape_property(f"gpa check {model.name}")
            lines.append(f"::error title={title}::{_escape_data(model.error)}")
            continue
        for result in model.results:
            title = _escape_property(f"gpa check {model.name} {result.rule}")
            if not result.passed:
                lines.append(f"::error title={title}::{_escape_data(result.message)}")
            for text in result.improvements:
                lines.append(f"::notice title={title}::{_escape_data('improved: ' + text)}")
    lines.append(f"gpa check: {run.summary()}")
    return "\n".join(lines) + "\n"


def format_run(run: CheckRun, fmt: str, *, color: bool = False) -> str:
    """Render ``run`` in one of :data:`FORMATS`."""
    if fmt == "json":
        return format_json(run)
    if fmt == "junit":
        return format_junit(run)
    if fmt == "github":
        return format_github(run)
    return format_text(run, color=color)
