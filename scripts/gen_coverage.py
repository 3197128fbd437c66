"""Write docs/coverage.md: the zoo tier's models analysed by the three frontends.

Run in the zoo virtualenv (see .ci/zoo: torch 2.14.1, torchvision, timm, ultralytics,
transformers)::

    python scripts/gen_coverage.py            # writes docs/coverage.md
    python scripts/gen_coverage.py -o -       # prints it

Every entry of tests/zoo/catalog.py is loaded as its ``gpa analyze`` target and analysed
with ``tracer="auto"`` and with each of ``fx``, ``export`` and ``autograd``; the table
says which frontends can read each model (with the first line of the reason where one
cannot), whether all that can agree (identical per-layer records: names, types, calls,
shortest, longest, timestamps, num_paths, histogram, sources), which one ``auto`` used,
its network figures, the time each frontend took and, for the models built on the CPU,
whether a real forward and backward pass confirms the calls and reachability gpa
reports. Rows where frontends disagree, or where an analysis changed the model, carry
the reason.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "zoo"))
os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics' import probes the network otherwise

from catalog import (  # noqa: E402
    BACKWARD_CHECKED,
    ENTRIES,
    FRONTENDS,
    KNOWN_DIFFERENCES,
    KNOWN_FACT_ERRORS,
    KNOWN_FACT_REASONS,
    KNOWN_SIDE_EFFECTS,
    Entry,
    Outcome,
    build,
    first_line,
    independent_facts,
    real_pass,
    run,
)


def _inputs(outcome: Outcome) -> str:
    if "example_inputs" in outcome.inputs:
        parts = []
        for x in outcome.inputs["example_inputs"]:
            if x is None:
                parts.append("None")
            else:
                dtype = (
                    "" if x.dtype.is_floating_point else f" {str(x.dtype).removeprefix('torch.')}"
                )
                parts.append("×".join(map(str, x.shape)) + dtype)
        return ", ".join(parts)
    shape = outcome.inputs.get("input_shape")
    if not shape:
        return "–"
    shapes = [shape] if isinstance(shape[0], int) else shape
    return ", ".join("×".join(map(str, s)) for s in shapes)


def _backward(outcome: Outcome) -> tuple[str, list[str]]:
    """The real-pass column and its notes."""
    entry = outcome.entry
    if entry.target not in BACKWARD_CHECKED:
        return "–", []
    try:  # on a model built afresh: the analysed one may hold the analyses' side effects
        model = build(Entry(entry.target, entry.family, entry.kwargs, device="cpu"))[0].model
        facts = real_pass(model, outcome.inputs)
    except Exception as exc:  # recorded, not fatal here
        return "**failed**", [f"real pass: {first_line(exc)}"]
    cells, notes = [], []
    for tracer in outcome.read_by:
        found = independent_facts(model, outcome.reports[tracer], facts)
        expected = KNOWN_FACT_ERRORS.get((entry.target, tracer), set())
        if not found:
            cells.append(f"{tracer} ✓")
        else:
            cells.append(f"{tracer} **✗**")
            notes.append(f"real pass vs {tracer}: " + "; ".join(sorted(found)))
            if found != expected:
                notes.append("(not a known discrepancy)")
    if entry.target in KNOWN_FACT_REASONS:
        notes.append(KNOWN_FACT_REASONS[entry.target])
    return ", ".join(cells), notes


def _row(outcome: Outcome, reasons: dict[str, int]) -> tuple[str, str]:
    e = outcome.entry
    auto = outcome.auto
    notes = []
    cells_read = []
    for tracer in FRONTENDS:
        if outcome.reports.get(tracer) is not None:
            cells_read.append("yes")
        else:
            why = f"{tracer}: {outcome.errors.get(tracer, 'not run')}"
            number = reasons.setdefault(why, len(reasons) + 1)
            cells_read.append(f"no ({number})")
    if auto is None:
        notes.append(f"`auto` failed: {outcome.auto_error}")
    known = KNOWN_DIFFERENCES.get(e.target)
    if outcome.agree is False:
        if known is not None:
            notes.append(
                f"{known.reason} ({'known' if known.check(outcome.reports) else 'CHANGED'})"
            )
        else:
            bad = [f"{a}≠{b}" for (a, b), same in outcome.pairs.items() if not same]
            notes.append(f"frontends disagree ({', '.join(bad)}): not yet explained")
        for tracer in outcome.read_by:
            if tracer != outcome.auto_tracer:
                net = outcome.reports[tracer].network
                notes.append(
                    f"{tracer} alone: {len(outcome.reports[tracer].layers)} layers, "
                    f"max_shortest {net.max_shortest}, longest {net.longest}"
                )
    backward, backward_notes = _backward(outcome)
    notes += backward_notes
    if outcome.changed:
        known_changes, why = KNOWN_SIDE_EFFECTS.get(e.target, (set(), "not yet explained"))
        notes.append(
            f"the analyses changed the model ({', '.join(sorted(outcome.changed))}): {why}"
            + ("" if outcome.changed == known_changes else " (not as recorded)")
        )
    if e.device == "meta" and outcome.built_on != "meta":
        notes.append("built on the CPU (its constructor computes on tensors)")
    seconds = " / ".join(
        f"{outcome.seconds[t]:.1f}" if t in outcome.seconds else "–" for t in FRONTENDS
    )
    cells = [
        f"`{e.command}`",
        e.family,
        _inputs(outcome),
        *cells_read,
        {True: "yes", False: "**no**", None: "–"}[outcome.agree],
        outcome.auto_tracer or "**failed**",
        str(len(auto.layers)) if auto else "–",
        str(auto.network.max_shortest) if auto else "–",
        str(auto.network.longest) if auto else "–",
        backward,
        seconds,
    ]
    return "| " + " | ".join(cells) + " |", "; ".join(notes).replace("|", "\\|")


def _safe_run(entry: Entry) -> Outcome:
    try:
        return run(entry)
    except Exception as exc:  # a crash in gpa or in a constructor: recorded, not fatal here
        outcome = Outcome(entry)
        outcome.auto_error = f"crash: {first_line(exc)}"
        for tracer in FRONTENDS:
            outcome.reports[tracer] = None
            outcome.errors[tracer] = outcome.auto_error
        return outcome


def _versions() -> str:
    import importlib.metadata

    names = ("torch", "torchvision", "timm", "ultralytics", "transformers")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found) + f", Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "coverage.md"))
    parser.add_argument("-k", "--only", help="only entries whose target contains this text")
    args = parser.parse_args()

    entries = [e for e in ENTRIES if not args.only or args.only in e.target]
    start = time.perf_counter()
    rows: list[str] = []
    reasons: dict[str, int] = {}
    tally = {"auto": 0, "several": 0, "agree": 0, "read": dict.fromkeys(FRONTENDS, 0)}
    for entry in entries:
        outcome = _safe_run(entry)
        row, note = _row(outcome, reasons)
        rows.append(row + f" {note} |")
        print(row, note, file=sys.stderr, flush=True)
        tally["auto"] += outcome.auto is not None
        for tracer in outcome.read_by:
            tally["read"][tracer] += 1
        if outcome.agree is not None:
            tally["several"] += 1
            tally["agree"] += bool(outcome.agree)
        del outcome  # the next model should not pay for this one's memory
    total = time.perf_counter() - start

    n = len(entries)
    read = ", ".join(f"{t} {tally['read'][t]}" for t in FRONTENDS)
    text = "\n".join(
        [
            "# Coverage: third-party architectures",
            "",
            "Generated by `scripts/gen_coverage.py` (do not edit by hand); the same models are",
            "the zoo test tier (`tests/zoo`, run by `.ci/zoo`). Each row is a `gpa analyze`",
            "command (the *model* column): torchvision and timm models are built without",
            "weights on the meta device when their constructor allows it, Ultralytics models",
            "from the YAML files the package ships and Hugging Face `transformers` models",
            "from small configurations (both on the CPU, no weights downloaded), with the",
            "inputs the target gives them (torchvision and timm: two images where the model",
            "has batch norm, which refuses one value per channel in train mode; one otherwise).",
            "",
            'Each model is analysed by `tracer="auto"` and by each of the three frontends',
            "(docs/semantics.md §1.6). *fx*, *export*, *autograd*: whether that frontend can",
            "read the model (the numbered reasons below say why not). *agree*: every pair of",
            "frontends that read it gives identical per-layer records (names, types, calls,",
            "shortest, longest, timestamps, num_paths, histogram, sources). *auto*: the",
            "frontend `auto` used; *layers*, *max_shortest*, *longest*: its analysis.",
            "*real pass*: for models built on the CPU, one real forward and backward pass",
            "checks each frontend's report — every layer module is reported with as many",
            "calls as forward hooks count, and a layer is reachable exactly when its own",
            "parameters receive a non-zero gradient. *time*: seconds per frontend.",
            "",
            f"{_versions()}; {n} models in {total:.0f} s.",
            "",
            f"- analysed by `auto`: **{tally['auto']} / {n}**; read by {read}",
            f"- read by more than one frontend: {tally['several']}; all of them agree on "
            f"**{tally['agree']} / {tally['several']}**",
            "",
            "| model | family | input | fx | export | autograd | agree | auto | layers "
            "| max_shortest | longest | real pass | time fx / export / autograd (s) | notes |",
            "|---|---|---|---|---|---|---|---|---:|---:|---:|---|---:|---|",
            *rows,
            "",
            "## Why a frontend could not read a model",
            "",
            "The first line of each frontend's error, numbered as in the table.",
            "",
            *[f"{number}. {why}" for why, number in reasons.items()],
            "",
        ]
    )
    if args.output == "-":
        print(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
