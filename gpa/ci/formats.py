"""Renderings of a :class:`gpa.ci.check.CheckRun`: text, JSON, JUnit XML, GitHub
annotations and SARIF 2.1.0.

All are pure functions of the run, without timestamps or durations, so the same run
gives byte-identical output every time (JUnit's ``time`` attributes are ``0``). Text shows
failures and errors only (as ruff does) unless ``verbose``; GitHub annotations and SARIF
results point at a line: the source line calling an offending layer where the frontend
knew it, else the configuration line setting the rule, else the model's table. Every
format carries each model's notes (:attr:`~gpa.ci.check.ModelCheck.notes`): a rule that
holds on a model the frontend saw only in part must not pass silently.

Example:
    >>> from gpa.ci.check import CheckRun, ModelCheck
    >>> print(format_text(CheckRun([ModelCheck("m", "m.py", error="no model")])), end="")
    ERROR m: no model
    1 model, 0 rules: 0 passed, 0 failed, 1 error
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from gpa.ci.check import CheckRun, ModelCheck
from gpa.ci.config import Location
from gpa.ci.rules import RuleResult, Violation

__all__ = [
    "FORMATS",
    "format_github",
    "format_json",
    "format_junit",
    "format_run",
    "format_sarif",
    "format_text",
]

#: The values of ``gpa check --format``.
FORMATS = ("text", "json", "junit", "github", "sarif")

_STYLES = {"PASS": "green", "FAIL": "red", "ERROR": "red", "NOTE": "yellow"}


def _status(word: str, color: bool) -> str:
    return click.style(word, fg=_STYLES[word], bold=True) if color else word


def format_text(run: CheckRun, *, color: bool = False, verbose: bool = False) -> str:
    """A line per failed rule (``FAIL``) and model in error (``ERROR``) — with ``verbose``
    also per rule that holds (``PASS``) — and per note of an analysed model (``NOTE``), then
    a summary line.

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
        if not model.results and verbose:
            lines.append(f"{_status('PASS', color)} {model.name}: analysed (no rules configured)")
        for result in model.results:
            if result.passed and not verbose:
                continue
            status = _status("PASS" if result.passed else "FAIL", color)
            lines.append(f"{status} {model.name}: {result.message}")
            lines.extend(f"    improved: {text}" for text in result.improvements)
        lines.extend(f"{_status('NOTE', color)} {model.name}: {note}" for note in model.notes)
    lines.append(run.summary())
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Finding:
    """A failure, an error or an improvement, with the line it belongs to (if known)."""

    level: str  # "error" or "note"
    model: str
    rule: str
    message: str
    location: Location | None


def _findings(run: CheckRun) -> Iterator[_Finding]:
    """Every failure, error and improvement of ``run``. A rule broken by named layers
    (``max-shortest``, ``max-longest``, ``no-unreachable``, ``layers[PATTERN]…``) gives one
    finding per offending layer that has a source line (the model's line calling it) and
    one more, at the configuration line setting the rule (the model's line in
    ``pyproject.toml`` for per-model rules), naming the layers that have none; any other
    failed rule gives one finding there."""
    for model in run.models:
        if model.error is not None:
            at = model.location() or model.target_location()
            yield _Finding("error", model.name, "analysis", model.error, at)
            continue
        for result in model.results:
            if not result.passed:
                yield from _rule_findings(model, result)
            for text in result.improvements:
                at = model.location(result.rule)
                yield _Finding("note", model.name, result.rule, f"improved: {text}", at)


def _rule_findings(model: ModelCheck, result: RuleResult) -> Iterator[_Finding]:
    """The findings of one failed rule (see :func:`_findings`)."""
    rule = result.rule if result.limit is None else f"{result.rule} {result.limit}"
    unplaced: list[Violation] = []
    for v in result.violations:
        at = model.layer_location(v.layer) if v.layer else None
        if at is None:
            unplaced.append(v)
        else:
            yield _Finding("error", model.name, result.rule, f"{rule}: {_value(v)}", at)
    if len(unplaced) == len(result.violations):  # none placed: the rule's own line
        text = result.message
    elif unplaced:
        # the network's own values (a baseline's max_shortest) belong to no layer's line
        parts = [str(v.value) for v in unplaced if v.layer is None]
        layers = [_value(v) for v in unplaced if v.layer is not None]
        if layers:
            parts.append(f"also {', '.join(layers)} (called from no line of the checkout)")
        text = f"{rule}: {'; '.join(parts)}"
    else:
        return
    # (a rule given on the command line has no line of its own: the model's file, where
    # the checkout holds it, since code scanning takes no result without a location)
    at = model.location(result.rule) or model.target_location()
    yield _Finding("error", model.name, result.rule, text, at)


def _value(violation: Violation) -> str:
    value = "unreachable" if violation.value is None else violation.value
    return f"{violation.layer} ({value})"


def _notes(run: CheckRun) -> Iterator[_Finding]:
    """Every note of every analysed model, at the model's table (if configured)."""
    for model in run.models:
        for note in model.notes:
            yield _Finding("note", model.name, "analysis", note, model.location())


def format_json(run: CheckRun) -> str:
    """The run as JSON (sorted keys, indented, final newline)."""
    return json.dumps(run.to_dict(), indent=2, sort_keys=True) + "\n"


def format_junit(run: CheckRun) -> str:
    """JUnit XML: a ``testsuite`` per model, a ``testcase`` per rule.

    A failed rule is a ``failure`` whose ``message`` is the rule's line and whose text
    lists the offending layers; a model in error is one ``testcase`` named ``analyse``
    with an ``error``. Baseline improvements go to the test case's ``system-out``, a
    model's notes to its suite's.
    """
    root = ET.Element("testsuites", name="gpa check")
    # the totals of the suites below (a model in error runs none of its rules: its one
    # test case is the analysis)
    root.set("tests", str(sum(len(m.results) + (m.error is not None) for m in run.models)))
    root.set("failures", str(sum(not r.passed for m in run.models for r in m.results)))
    root.set("errors", str(sum(m.error is not None for m in run.models)))
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
        if model.notes:
            out = ET.SubElement(suite, "system-out")
            out.text = "\n".join(f"note: {note}" for note in model.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(run: CheckRun) -> str:
    """GitHub Actions workflow commands: an ``::error`` per offending layer (at the line
    calling it) or failed rule (at the configuration line setting it) or model in error, a
    ``::notice`` per baseline improvement and per note of a model (at the model's table, if
    configured), then the summary line (plain text).

    Example line: ``::error file=pyproject.toml,line=12,title=gpa check resnet
    max-shortest::max-shortest 2: …``.
    """
    lines = []
    for f in [*_findings(run), *_notes(run)]:
        command = "error" if f.level == "error" else "notice"
        at = f.location
        where = f"file={_escape_property(at.path)},line={at.line}," if at is not None else ""
        rule = "" if f.rule == "analysis" else f" {f.rule}"
        title = _escape_property(f"gpa check {f.model}{rule}")
        lines.append(f"::{command} {where}title={title}::{_escape_data(f.message)}")
    lines.append(f"gpa check: {run.summary()}")
    return "\n".join(lines) + "\n"


_RULE_TEXT = {
    "analysis": "The model could not be loaded, traced or analysed.",
    "max-shortest": "A layer's shortest gradient path is longer than the limit.",
    "max-longest": "A layer's longest gradient path is longer than the limit.",
    "no-unreachable": "A layer receives no gradient.",
    "max-mean-shortest": "The network's mean shortest gradient path is longer than the limit.",
    "layers": "A layer matching a pattern breaks its own limit, or the pattern matches none.",
    "baseline": "A regression against the baseline, or numbers read otherwise than it records.",
}


def format_sarif(run: CheckRun) -> str:
    """SARIF 2.1.0 (as ruff and semgrep write it) for GitHub code scanning and SARIF viewers:
    one result per offending layer or failed rule or model in error, at its line; the
    models' notes are the invocation's tool notifications (they point at no code); the
    invocation did not succeed when a model could not be analysed."""
    from gpa import __version__

    results = []
    for f in _findings(run):
        at = f.location
        result: dict = {
            "ruleId": f.rule.partition("[")[0],
            "level": f.level,
            "message": {"text": f"{f.model}: {f.message}"},
        }
        if at is not None:
            result["locations"] = [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": Path(at.path).as_posix()},
                        "region": {"startLine": at.line},
                    }
                }
            ]
        results.append(result)
    rules = [
        {"id": rule, "name": rule, "shortDescription": {"text": text}}
        for rule, text in _RULE_TEXT.items()
    ]
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "gpa",
                        "version": __version__,
                        "informationUri": "https://pypi.org/project/gpa/",
                        "rules": rules,
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": run.errors == 0,
                        "toolExecutionNotifications": [
                            {"level": "note", "message": {"text": f"{f.model}: {f.message}"}}
                            for f in _notes(run)
                        ],
                    }
                ],
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2) + "\n"


def format_run(run: CheckRun, fmt: str, *, color: bool = False, verbose: bool = False) -> str:
    """Render ``run`` in one of :data:`FORMATS`."""
    if fmt == "json":
        return format_json(run)
    if fmt == "junit":
        return format_junit(run)
    if fmt == "github":
        return format_github(run)
    if fmt == "sarif":
        return format_sarif(run)
    return format_text(run, color=color, verbose=verbose)
