"""Bad input, at scale: broken files and random or broken models, through the CLI and the library.

Every case must end in a clear user error (``GpaError``; CLI exit code 2 with an
``error:`` message and no traceback) or in a correct report, within a time limit:
never a traceback (exit code 1 is a bug in gpa) and never a hang. Correct reports of
random layer chains are checked against the chain rule derived by hand (docs/semantics.md
§5: in a chain of N layers the i-th has shortest = longest = N - i + 1, one path).
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gpa
from gpa.cli import main
from gpa.errors import GpaError

# Random and broken inputs by the hundred, and real processes: the property-style tier.
pytestmark = pytest.mark.slow

SECONDS = 60  # per case; a case that takes longer is a hang
TRACERS = ("fx", "autograd", "auto")


@contextlib.contextmanager
def time_limit(seconds: int = SECONDS) -> Iterator[None]:
    def hang(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: gpa hangs")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(*args: str):
    with time_limit():
        return CliRunner().invoke(main, ["analyze", *args], catch_exceptions=False)


def assert_clear_error(result) -> None:
    """Exit code 2, ``error: <message>`` on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and len(result.stderr.strip()) > len("error: ")
    assert "Traceback (most recent call last)" not in result.stderr
    assert result.stdout == ""


def library(model: nn.Module, **options) -> gpa.Report | GpaError:
    """The report, or the GpaError raised; any other exception fails the test."""
    with time_limit():
        try:
            return gpa.analyze(model, **options)
        except GpaError as exc:
            assert str(exc).strip(), "an error without a message"
            return exc


# ----------------------------------------------------------------- broken files

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)
"""

BROKEN_FILES = {
    "syntax_error": "def broken(:\n    pass\n",
    "indentation_error": "class Net(nn.Module):\ndef forward(self, x):\n  return x\n",
    "missing_import": "import gpa_no_such_package_xyz\nmodel = nn.Linear(2, 2)\n",
    "raises_at_import": "raise RuntimeError('boom at import')\n",
    "no_model": "x = 1\n",
    "model_is_int": "model = 42\n",
    "factory_returns_none": "def build_model():\n    return None\n",
    "factory_needs_argument": "def build_model(depth):\n    return nn.Linear(depth, 2)\n",
    "factory_raises": "def build_model():\n    raise ValueError('bad config')\n",
    "init_raises": "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        raise RuntimeError('init failed')\nmodel = Net\n",
    "forward_raises": NET
    + "    def forward(self, x):\n        raise ValueError('forward failed')\n"
    "model = Net()\ninput_shape = (1, 4)\n",
    "forward_raises_without_inputs": NET + "    def forward(self, x):\n"
    "        raise ValueError('forward failed')\nmodel = Net()\n",
    "no_forward": "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.a = nn.Linear(4, 4)\nmodel = Net()\ninput_shape = (1, 4)\n",
    "empty_module": "model = nn.Module()\ninput_shape = (1, 4)\n",
    "empty_sequential": "model = nn.Sequential()\ninput_shape = (1, 4)\n",
    "no_layers": "model = nn.Sequential(nn.ReLU(), nn.Tanh())\ninput_shape = (1, 4)\n",
    "mismatched_shapes": "model = nn.Sequential(nn.Linear(4, 8), nn.Linear(5, 2))\n"
    "input_shape = (1, 4)\n",
    "wrong_input_rank": "model = nn.Conv2d(3, 4, 3)\ninput_shape = (3, 8)\n",
    "too_few_inputs": NET + "    def forward(self, x, y):\n        return self.a(x) + y\n"
    "model = Net()\ninput_shape = (1, 4)\n",
    "returns_none": NET + "    def forward(self, x):\n        self.a(x)\n"
    "model = Net()\ninput_shape = (1, 4)\n",
    "returns_int": NET + "    def forward(self, x):\n        return 3\nmodel = Net()\n"
    "input_shape = (1, 4)\n",
    "returns_string_and_tensor": NET + "    def forward(self, x):\n"
    "        return 'label', self.b(self.a(x))\nmodel = Net()\ninput_shape = (1, 4)\n",
    "returns_integer_tensor": NET + "    def forward(self, x):\n"
    "        return self.b(self.a(x)).argmax(-1)\nmodel = Net()\ninput_shape = (1, 4)\n",
    "recursion": NET + "    def forward(self, x):\n        return self(x)\nmodel = Net()\n"
    "input_shape = (1, 4)\n",
    "module_cycle": NET + "    def forward(self, x):\n        return self.b(self.a(x))\n"
    "model = Net()\nmodel.a.loop = model  # a module that contains its own parent\n"
    "input_shape = (1, 4)\n",
    "input_shape_not_a_shape": "model = nn.Linear(4, 2)\ninput_shape = 'four'\n",
    "input_shape_negative": "model = nn.Linear(4, 2)\ninput_shape = (1, -4)\n",
    "example_inputs_wrong_type": "model = nn.Linear(4, 2)\nexample_inputs = {'x': 1}\n",
    "example_inputs_raises": "model = nn.Linear(4, 2)\ndef example_inputs():\n"
    "    raise RuntimeError('no data')\n",
    "lazy_module": "model = nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2))\n"
    "input_shape = (1, 3)\n",
    "data_dependent": NET + "    def forward(self, x):\n        if x.sum() > 0:\n"
    "            return self.a(x)\n        return self.b(x)\nmodel = Net()\n"
    "input_shape = (1, 4)\n",
    "non_tensor_argument": NET + "    def forward(self, x, scale: float = 2.0):\n"
    "        return self.b(self.a(x) * scale)\nmodel = Net()\ninput_shape = (1, 4)\n",
}


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_broken_file(case: str, tracer: str, tmp_path: Path) -> None:
    target = tmp_path / f"{case}.py"
    target.write_text(HEADER + BROKEN_FILES[case])
    result = cli(str(target), "--tracer", tracer, "--format", "json")
    if result.exit_code == 0:
        import json

        report = json.loads(result.stdout)
        assert report["layers"], "a report without layers"
        for layer in report["layers"]:  # a consistent record
            if layer["num_paths"]:
                assert layer["shortest"] == min(layer["timestamps"])
                assert layer["longest"] == max(layer["timestamps"])
                assert sum(layer["path_histogram"].values()) == layer["num_paths"]
    else:
        assert_clear_error(result)


EXPECTED_OUTCOME = {
    # case -> what must happen with every tracer ("error") or a hand-derived report
    "syntax_error": "error",
    "missing_import": "error",
    "factory_raises": "error",
    "forward_raises": "error",
    "mismatched_shapes": "error",
    "empty_module": "error",
    "no_layers": "error",
    "recursion": "error",
    "lazy_module": "error",
    "module_cycle": "error",  # a module holding its parent: torch itself recurses forever
}


@pytest.mark.parametrize("case", sorted(EXPECTED_OUTCOME))
def test_broken_file_is_an_error_with_every_tracer(case: str, tmp_path: Path) -> None:
    target = tmp_path / f"{case}.py"
    target.write_text(HEADER + BROKEN_FILES[case])
    for tracer in TRACERS:
        assert_clear_error(cli(str(target), "--tracer", tracer))


@pytest.mark.parametrize("tracer", TRACERS)
def test_extra_outputs_and_arguments_still_analysed(tracer: str, tmp_path: Path) -> None:
    # a -> b -> loss: b has 1, a has 2, whatever else the model takes or returns
    for case in ("returns_string_and_tensor", "non_tensor_argument"):
        target = tmp_path / f"{case}.py"
        target.write_text(HEADER + BROKEN_FILES[case])
        result = cli(str(target), "--tracer", tracer, "--format", "csv")
        assert result.exit_code == 0, result.stderr
        rows = [line.split(",")[:5] for line in result.stdout.splitlines()[1:]]
        assert rows == [["a", "Linear", "1", "2", "2"], ["b", "Linear", "1", "1", "1"]]


def test_real_process_exit_codes(tmp_path: Path) -> None:
    """The same as the in-process runs, in a real process: exit 2, no traceback, no hang."""
    for case in ("syntax_error", "forward_raises", "recursion"):
        target = tmp_path / f"{case}.py"
        target.write_text(HEADER + BROKEN_FILES[case])
        done = subprocess.run(
            [sys.executable, "-m", "gpa", "analyze", str(target), "--tracer", "auto"],
            capture_output=True,
            text=True,
            timeout=SECONDS * 2,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ")
        assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- random models


def random_chain(rng: random.Random) -> tuple[nn.Module, tuple[int, ...], list[str], bool]:
    """A random chain of linear/conv layers with activations and norms between them.

    Widths are sometimes mismatched on purpose. Returns the model, its input shape,
    the names of its layers in order, and whether the widths fit.
    """
    width = rng.randint(1, 6)
    conv = rng.random() < 0.5
    shape = (rng.randint(1, 3), width, 5, 5) if conv else (rng.randint(1, 3), width)
    layers, names, fits = [], [], True
    for _ in range(rng.randint(0, 6)):
        kind = rng.choice(["layer", "layer", "act", "norm", "dropout"])
        if kind == "layer":
            out = rng.randint(1, 6)
            given = width if rng.random() < 0.85 else width + rng.randint(1, 3)
            fits &= given == width
            layer = nn.Conv2d(given, out, 3, padding=1) if conv else nn.Linear(given, out)
            names.append(str(len(layers)))
            layers.append(layer)
            width = out
        elif kind == "act":
            layers.append(rng.choice([nn.ReLU(), nn.GELU(), nn.Tanh(), nn.SiLU()]))
        elif kind == "norm":
            layers.append(nn.BatchNorm2d(width) if conv else nn.LayerNorm(width))
        else:
            layers.append(nn.Dropout(0.1))
    return nn.Sequential(*layers), shape, names, fits


@pytest.mark.parametrize("seed", range(40))
def test_random_chain(seed: int) -> None:
    rng = random.Random(seed)
    model, shape, names, fits = random_chain(rng)
    for tracer in TRACERS:
        outcome = library(model, input_shape=shape, tracer=tracer)
        if not names or not fits:
            assert isinstance(outcome, GpaError), (tracer, outcome)
            continue
        assert not isinstance(outcome, GpaError), (tracer, outcome)
        n = len(names)
        got = [(r.name, r.shortest, r.longest, r.num_paths) for r in outcome.layers.values()]
        assert got == [(name, n - i, n - i, 1) for i, name in enumerate(names)]


class Broken(nn.Module):
    """Small models broken in one way each."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        if self.how == "nan_shape":
            return self.b(self.a(x).view(-1, 3))
        if self.how == "reuse_cycle":  # the same module many times: a chain, not a cycle
            for _ in range(3):
                x = self.a(x)
            return self.b(x)
        if self.how == "none_in_tuple":
            return (None, self.b(self.a(x)), [None])
        if self.how == "empty_tuple":
            return ()
        if self.how == "only_detached":
            return self.b(self.a(x)).detach()
        if self.how == "dict_of_junk":
            return {"x": "y", "n": 1}
        raise AssertionError(self.how)


@pytest.mark.parametrize("tracer", TRACERS)
def test_broken_models_in_library(tracer: str) -> None:
    shape = (2, 4)
    assert isinstance(library(Broken("nan_shape"), input_shape=shape, tracer=tracer), GpaError)
    # a, a, a, b: a's three calls have paths of length 2, 3, 4 to the loss (merged).
    reused = library(Broken("reuse_cycle"), input_shape=shape, tracer=tracer)
    a = reused.layers["a"]
    assert (a.calls, a.shortest, a.longest, a.num_paths) == (3, 2, 4, 3)
    kept = library(Broken("none_in_tuple"), input_shape=shape, tracer=tracer)
    assert [(r.name, r.shortest) for r in kept.layers.values()] == [("a", 2), ("b", 1)]
    for how in ("empty_tuple", "only_detached", "dict_of_junk"):
        # nothing carries gradient to the loss: a valid report, every layer unreachable
        outcome = library(Broken(how), input_shape=shape, tracer=tracer)
        if isinstance(outcome, GpaError):
            continue
        assert all(r.num_paths == 0 for r in outcome.layers.values()), how


def test_random_inputs_to_the_library() -> None:
    """Arguments of the right kind with wrong values: a GpaError or a report, nothing else."""
    rng = random.Random(7)
    junk = {
        "input_shape": [
            (),
            (0,),
            (1, 0),
            (1, -2),
            (1, 5),
            (2, 4, 4),
            [(1, 4), (1, 4)],
            [(1, 4), ()],
        ],
        "example_inputs": [
            torch.zeros(1, 5),
            torch.zeros(1, 4, dtype=torch.long),
            (torch.zeros(1, 4), torch.zeros(1, 4)),
            (),
        ],
        "outputs": [[0], [1], ["logits"], ["0.x"], []],
        "leaf_modules": [["0"], ["nope"], [nn.Linear], [nn.ReLU, "1"]],
    }
    for _ in range(60):
        key = rng.choice(sorted(junk))
        options = {"tracer": rng.choice(TRACERS), key: rng.choice(junk[key])}
        if key in ("outputs", "leaf_modules"):
            options["input_shape"] = (1, 4)
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        outcome = library(model, **options)
        if not isinstance(outcome, GpaError):
            assert list(outcome.layers) == ["0", "2"] or options.get("leaf_modules"), options
