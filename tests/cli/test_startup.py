"""The CLI starts without the heavy libraries (issue 14): `gpa --help`, `gpa --version`,
`gpa zoo`, `gpa <command> --help` and argument errors import neither torch, networkx nor
matplotlib. Each case runs in a fresh interpreter, which then lists what was imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses

HEAVY = ("torch", "networkx", "matplotlib")

RUN = """
import json, sys
from gpa.cli import main
try:
    main(sys.argv[1:], standalone_mode=True)
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
"""


def _run(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN % (HEAVY,), *args], capture_output=True, text=True, check=False
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["zoo"], 0),
        (["zoo", "--format", "json"], 0),
        (["analyze", "--help"], 0),
        (["check", "--help"], 0),
        (["analyze"], 2),  # missing TARGET
        (["analyze", "x.py", "--tracer", "nope"], 2),  # a bad option value
        (["nope"], 2),  # an unknown command
    ],
)
def test_no_heavy_import(args: list[str], code: int) -> None:
    result = _run(*args)
    assert result == {"code": code, "heavy": []}


def test_zoo_lists_every_registered_model() -> None:
    """The list `gpa zoo` reads from its manifest is the registry's (names in order)."""
    import gpa.models

    done = subprocess.run(
        [sys.executable, "-m", "gpa", "zoo", "--format", "json"], capture_output=True, text=True
    )
    assert [e["name"] for e in json.loads(done.stdout)] == list(gpa.models.names())


def test_the_submodules_the_docs_use_need_only_import_gpa() -> None:
    """Found by a new user: after ``import gpa`` (as the README writes it),
    ``gpa.plot.timestamps(report)`` raised AttributeError; ``import gpa`` still imports no
    heavy library until one is used."""
    code = (
        "import json, sys, gpa\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "names = [f.__name__ for f in (gpa.plot.timestamps, gpa.models.build,\n"
        "         gpa.testing.assert_gradient_paths, gpa.compare.compare)]\n"
        "print(json.dumps({'heavy': heavy, 'names': names, 'listed': 'plot' in dir(gpa)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "heavy": [],
        "names": ["timestamps", "build", "assert_gradient_paths", "compare"],
        "listed": True,
    }
