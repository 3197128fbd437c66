"""Errors that blame the right thing (issue 13, kind 7).

(a) A ``forward`` that raises is the model's error: "Net raised ValueError: …" with the
    model's own frame, under every tracer and ``auto`` (which does not hide it behind the
    fallbacks), never a tracing limitation with advice about control flow.
(b) ``--channels`` under ``auto`` on a model neither channel frontend can read says which
    frontends were tried and why each failed, inputs given or not.
(c) A model returning None (or nothing gradient can flow back from) is an error: exit 2
    from ``gpa analyze``, an ERROR (never a PASS) in ``gpa check``, a GpaError in
    ``gpa.analyze`` and ``gpa.testing``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result
from torch import nn

import gpa
from gpa.cli import main
from gpa.errors import GpaError, ModelError, NoGradientError, ShapeError, TraceError
from gpa.target import load_target
from gpa.testing import assert_gradient_paths

ALL = ("fx", "export", "autograd", "auto")
DATA = Path(__file__).resolve().parents[1] / "data"


def line_of(function, text: str) -> int:
    """The line number of the first line of ``function``'s source containing ``text``."""
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


# ======================================================================================
# (a) the model raises


class Raises(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.a = nn.Linear(4, width)

    def forward(self, x):
        if self.width % 2 == 0:  # a plain int: every tracer gets here
            raise ValueError("width must be odd")
        return self.a(x)


RAISE_LINE = line_of(Raises.forward, "raise ValueError")


def expect_model_error(error: pytest.ExceptionInfo, first: str, line: int, text: str) -> None:
    message = str(error.value)
    assert message.splitlines()[0] == first
    assert f'File "{__file__}", line {line}, in forward' in message
    assert text in message
    assert "control flow" not in message and "cannot trace" not in message


@pytest.mark.parametrize("tracer", ALL)
def test_a_forward_that_raises_is_the_models_error(tracer) -> None:
    with pytest.raises(ModelError) as error:
        gpa.analyze(Raises(), input_shape=(1, 4), tracer=tracer)
    expect_model_error(
        error, "Raises raised ValueError: width must be odd", RAISE_LINE, 'raise ValueError("'
    )


class ParsesBadly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        json.loads("{not json")  # raises inside Python's standard library
        return self.a(x)


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
def test_an_error_raised_in_the_standard_library_points_at_the_models_line(tracer) -> None:
    """The model's line that called into the standard library, not json's own line (which
    was shown as the model's code): Python's standard library is not the model."""
    with pytest.raises(ModelError) as error:
        gpa.analyze(ParsesBadly(), input_shape=(1, 4), tracer=tracer)
    first = (
        "ParsesBadly raised JSONDecodeError: Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)"
    )
    line = line_of(ParsesBadly.forward, "json.loads")
    expect_model_error(error, first, line, 'json.loads("{not json")')
    assert "decoder.py" not in str(error.value)


class _Config:
    """A configuration object raising AttributeError for a key it lacks, in its lookup."""

    def __getattr__(self, key: str):
        raise AttributeError(f"'_Config' object has no attribute '{key}'")


class AsksItsConfig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) * self.config.scale


@pytest.mark.parametrize("tracer", ALL)
def test_a_key_missing_from_a_configuration_points_at_the_line_that_asked(tracer) -> None:
    """Found by a new user (T5 given labels without ``decoder_start_token_id``): the line
    shown was the configuration's ``__getattribute__``, not the model's line asking for
    the key."""
    with pytest.raises(GpaError) as error:
        gpa.analyze(AsksItsConfig(), input_shape=(1, 4), tracer=tracer)
    line = line_of(AsksItsConfig.forward, "self.config.scale")
    assert f'File "{__file__}", line {line}, in forward' in str(error.value)
    assert "in __getattr__" not in str(error.value)


class RaisesAlways(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        raise ValueError("this model is not finished")


@pytest.mark.parametrize("tracer", ["fx", "auto"])
def test_raising_without_inputs(tracer) -> None:
    # only fx runs without inputs; auto reports what it met, not "no frontend can read"
    with pytest.raises(ModelError) as error:
        gpa.analyze(RaisesAlways(), tracer=tracer)
    line = line_of(RaisesAlways.forward, "raise ValueError")
    expect_model_error(
        error, "RaisesAlways raised ValueError: this model is not finished", line, "raise"
    )
    assert "torch.fx traced forward symbolically" in str(error.value)


class Checks(nn.Module):
    """An assert on a shape: under fx without inputs a tracing limit, else the model's error."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        assert x.shape[-1] == 5, "expected 5 features"
        return self.a(x)


@pytest.mark.parametrize("tracer", ["export", "autograd", "auto"])
def test_a_failed_assert_is_the_models_error(tracer) -> None:
    with pytest.raises(ModelError) as error:
        gpa.analyze(Checks(), input_shape=(1, 4), tracer=tracer)
    line = line_of(Checks.forward, "assert x.shape")
    expect_model_error(
        error, "Checks raised AssertionError: expected 5 features", line, "assert x.shape"
    )


class GuardedBlock(nn.Module):
    """Checks its input with torch's helpers (timm's patch embeddings: ``torch._assert``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        if self.how == "assert":
            torch._assert(x.shape[-1] == 5, f"expected 5 features, got {x.shape[-1]}")
        else:
            torch._check(x.shape[-1] == 5, lambda: f"expected 5 features, got {x.shape[-1]}")
        return self.a(x)


class Guarded(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.block = GuardedBlock(how)

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("how", ["assert", "check"])
@pytest.mark.parametrize("tracer", ALL)
def test_a_check_with_torchs_helpers_is_the_models_error(tracer: str, how: str) -> None:
    """``torch._assert(H == 224, f"... {H} ...")`` failing on the inputs: fx said "it
    received inputs of shapes False" and showed the message it formatted while tracing
    ("got Proxy(getitem)"); export called it a limit of export's. Every frontend now says
    the model raised it, with the value and the model's line (fx: the value its pass gave
    the proxy's node). ``torch._check`` on an fx proxy raises inside torch (its condition
    must be a bool): that is fx's limit, and auto moves on."""
    line = line_of(GuardedBlock.forward, f"torch._{how}(")
    kind = "AssertionError" if how == "assert" else "RuntimeError"
    if tracer == "fx" and how == "check":
        with pytest.raises(TraceError, match="^torch.fx cannot trace Guarded: TypeError"):
            gpa.analyze(Guarded(how), input_shape=(1, 4), tracer=tracer)
        return
    with pytest.raises((ModelError, ShapeError)) as error:
        gpa.analyze(Guarded(how), input_shape=(1, 4), tracer=tracer)
    message = str(error.value)
    inside = "" if tracer == "export" else " in module 'block'"  # (export's stack: forward's)
    assert message.splitlines()[0] == (f"Guarded raised {kind}{inside}: expected 5 features, got 4")
    assert f'File "{__file__}", line {line}' in message
    assert f"torch._{how}(x.shape[-1] == 5" in message
    assert "Proxy(" not in message and "cannot" not in message


class ChecksTheDevice(nn.Module):
    """A check that holds on the inputs, and fails on the meta device alone."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x)
        torch._assert(y.device.type == "cpu", f"expected a CPU tensor, got {y.device.type}")
        return self.b(y)


@pytest.mark.parametrize("tracer", ["fx", "auto"])
def test_a_check_failing_on_the_meta_device_alone_is_not_the_models_error(tracer: str) -> None:
    """Found by a review: fx's gradient-flow pass works out values on the meta device, so
    a check of where a tensor lives fails there alone, and fx blamed the model ("raised
    AssertionError: expected a CPU tensor"). It is fx's limit: auto moves on to export.
    By hand: a -> b -> loss, a at 2, b at 1."""
    if tracer == "fx":
        with pytest.raises(TraceError, match="asks where a tensor lives"):
            gpa.analyze(ChecksTheDevice(), input_shape=(1, 4), tracer=tracer)
        return
    report = gpa.analyze(ChecksTheDevice(), input_shape=(1, 4), tracer=tracer)
    assert report.tracer == "export"
    assert {n: r.timestamps for n, r in report.layers.items()} == {"a": (2,), "b": (1,)}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Linear(4, 4)

    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("batch size 1 only")
        return self.conv(x)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("tracer", ["autograd", "auto"])
def test_a_raise_in_a_submodule_names_it(tracer) -> None:
    with pytest.raises(ModelError) as error:
        gpa.analyze(Outer(), input_shape=(2, 4), tracer=tracer)
    # auto: fx, export and autograd all met it; the autograd run says where it ran
    assert str(error.value).splitlines()[0] == (
        "Outer raised RuntimeError in module 'block': batch size 1 only"
    )
    assert f"line {line_of(Block.forward, 'raise RuntimeError')}, in forward" in str(error.value)


class TensorsOnly(nn.Module):
    """Raises when its layer gives no tensor: only under fx, whose proxy of the layer's
    output is none (a proxy of an input answers with the input's class)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if not isinstance(h, torch.Tensor):
            raise TypeError("expected a tensor")
        return h


def test_raising_only_under_fx_falls_back() -> None:
    with pytest.raises(ModelError, match="if it raises only under fx, --tracer export"):
        gpa.analyze(TensorsOnly(), input_shape=(1, 4), tracer="fx")
    report = gpa.analyze(TensorsOnly(), input_shape=(1, 4))
    assert report.tracer == "export"
    assert report.layers["a"].shortest == 1  # a feeds the loss directly
    assert report.notes[0] == (
        "tracer auto used export: fx: TensorsOnly raised TypeError: expected a tensor"
    )


# ======================================================================================
# (b) --channels under auto


UNTRACEABLE = str(DATA / "untraceable.py")  # Gate: a branch on tensor values


def gate() -> nn.Module:
    """A model neither fx nor export (the channel frontends) can read."""
    return load_target(UNTRACEABLE).model


def test_channels_say_which_frontends_were_tried_with_inputs() -> None:
    with pytest.raises(TraceError) as error:
        gpa.analyze(gate(), input_shape=(1, 4), channels=True)
    message = str(error.value)
    lines = message.splitlines()
    assert lines[0] == "no frontend that gives channel segments (fx, export) can read Gate:"
    assert lines[1].startswith("  fx: torch.fx cannot trace Gate: TraceError: symbolically")
    assert lines[2].startswith("  export: torch.export cannot export Gate:")
    assert lines[3] == "Drop --channels to let the autograd tracer analyse it at layer level."
    assert "needs example inputs" not in message and "autograd:" not in message
    # without --channels, auto goes on to the autograd tracer
    assert gpa.analyze(gate(), input_shape=(1, 4)).tracer == "autograd"


def test_channels_say_which_frontends_were_tried_without_inputs() -> None:
    with pytest.raises(TraceError) as error:
        gpa.analyze(gate(), channels=True)
    lines = str(error.value).splitlines()
    assert lines[0] == "no frontend that gives channel segments (fx, export) can read Gate:"
    assert lines[2] == "  export: needs example inputs"
    assert lines[3] == (
        "Give example inputs (--input-shape or example_inputs) for export/autograd; drop "
        "--channels to let the autograd tracer analyse it at layer level."
    )


def test_channels_on_a_raising_model_is_the_models_error() -> None:
    with pytest.raises(ModelError, match="^Raises raised ValueError: width must be odd"):
        gpa.analyze(Raises(), input_shape=(1, 4), channels=True)


# ======================================================================================
# (c) nothing to analyse


class ReturnsNone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.fc(x)


class ReturnsNothingUseful(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.fc(x)
        return ()


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).detach()


class Argmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        logits = self.fc(x)
        return logits.argmax(-1), logits


@pytest.mark.parametrize("tracer", ALL)
@pytest.mark.parametrize(
    ("model", "returned"), [(ReturnsNone, "None"), (ReturnsNothingUseful, "an empty tuple")]
)
def test_returning_no_tensor_is_an_error(tracer, model, returned) -> None:
    with pytest.raises(GpaError) as error:
        gpa.analyze(model(), input_shape=(1, 4), tracer=tracer)
    assert str(error.value) == (
        "the model returns no tensor, so no gradient flows back into it: nothing to analyse "
        f"(it returned {returned})"
    )


@pytest.mark.parametrize("tracer", ["fx", "auto"])
def test_returning_none_without_inputs(tracer) -> None:
    with pytest.raises(GpaError, match=r"returns no tensor.*\(it returned None\)"):
        gpa.analyze(ReturnsNone(), tracer=tracer)


@pytest.mark.parametrize("tracer", ALL)
def test_no_output_carrying_gradient_is_an_error(tracer) -> None:
    with pytest.raises(NoGradientError, match="^Detached returns no tensor that gradient can"):
        gpa.analyze(Detached(), input_shape=(1, 4), tracer=tracer)
    # the integer output selected alone: an error naming the selection
    with pytest.raises(NoGradientError, match=r"the selected outputs of Argmax \(0\) carry no"):
        gpa.analyze(Argmax(), input_shape=(1, 4), tracer=tracer, outputs=0)
    # the logits: fx 1
    report = gpa.analyze(Argmax(), input_shape=(1, 4), tracer=tracer, outputs=1)
    assert report.layers["fc"].shortest == 1


class ReturnsOddities(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return {"y": self.fc(x), "n": 3, "none": None, "extra": [], "s": "a", "t": (None,)}


@pytest.mark.parametrize("tracer", ALL)
@pytest.mark.parametrize(
    ("key", "held"),
    [("n", "an int"), ("none", None), ("extra", "an empty list"), ("s", "a str"), ("t", None)],
)
def test_selecting_an_output_holding_no_tensor_says_so(tracer, key, held) -> None:
    """Named outputs that are there but hold nothing gradient could flow through: the
    error says so, not that they are missing. Export's returned structure holds None in
    place of numbers and strings, so only fx and autograd say which they were."""
    with pytest.raises(GpaError) as error:
        gpa.analyze(ReturnsOddities(), input_shape=(1, 4), tracer=tracer, outputs=[key])
    message = str(error.value)
    assert message.startswith(f"output '{key}' holds no tensor")
    assert message.endswith(": nothing of it can feed the loss")
    if held is not None and tracer in ("fx", "autograd", "auto"):
        assert f"(it is {held})" in message
    with pytest.raises(
        GpaError,
        match=r"outputs \(--outputs\): 'zz' is not among the model's outputs; available: 'y'",
    ):
        gpa.analyze(ReturnsOddities(), input_shape=(1, 4), tracer=tracer, outputs=["zz"])


def test_gpa_testing_raises_too() -> None:
    with pytest.raises(GpaError, match="returns no tensor"):
        assert_gradient_paths(ReturnsNone(), max_shortest=3, input_shape=(1, 4))
    with pytest.raises(NoGradientError):
        assert_gradient_paths(Detached(), max_shortest=3, input_shape=(1, 4))


# ======================================================================================
# The command line: exit 2, no traceback; gpa check: ERROR, never PASS


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def analyze_fails(*args: str) -> str:
    result = run("analyze", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize("tracer", ALL)
def test_cli_model_raises(tracer) -> None:
    message = analyze_fails(f"{__name__}:Raises", "--input-shape", "1,4", "--tracer", tracer)
    assert message.startswith("error: Raises raised ValueError: width must be odd\n")
    frame = f'File "{__file__}", line {RAISE_LINE}, in forward\n    raise ValueError("width'
    assert frame in message
    assert "control flow" not in message


def test_cli_channels_under_auto() -> None:
    message = analyze_fails(UNTRACEABLE, "--channels", "--input-shape", "1,4")
    # (torch.export prints the graph it gave up on to stderr before gpa's message)
    assert "error: no frontend that gives channel segments (fx, export) can read Gate:\n" in (
        message
    )
    assert "needs example inputs" not in message


@pytest.mark.parametrize("tracer", ALL)
def test_cli_model_returning_none(tracer) -> None:
    message = analyze_fails(f"{__name__}:ReturnsNone", "--input-shape", "1,4", "--tracer", tracer)
    assert "returns no tensor" in message and "(it returned None)" in message
    detached = analyze_fails(f"{__name__}:Detached", "--input-shape", "1,4")
    assert "returns no tensor that gradient" in detached


@pytest.mark.parametrize("model", ["ReturnsNone", "Detached", "Raises"])
@pytest.mark.parametrize("rules", [("--allow-empty",), ("--max-shortest", "3")])
def test_cli_check_reports_an_error_never_a_pass(model, rules) -> None:
    target = f"{__name__}:{model}"
    result = run("check", target, "--input-shape", "1,4", *rules)
    assert result.exit_code == 2, result.output
    assert result.stdout.startswith(f"ERROR {target}: ")
    assert "PASS" not in result.stdout
    assert result.stdout.splitlines()[-1].endswith("1 error")


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", "examples/tiny_resnet.py", "-o", "missing-dir/report.json"],
        ["explain", "examples/tiny_resnet.py", "fc", "-o", "missing-dir/x.txt"],
        ["plot", "examples/tiny_resnet.py", "-o", "missing-dir/x.png"],
        ["check", "examples/tiny_resnet.py", "--max-shortest", "3", "-o", "missing-dir/c.txt"],
    ],
)
def test_output_into_a_missing_directory_fails_first(args, monkeypatch) -> None:
    """Exit 2 before any analysis (issue 15 §6): the target is never loaded, so even a
    target that does not exist gives the same error."""
    from click.testing import CliRunner

    from gpa.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "missing-dir does not exist" in result.output
    missing = [a if a != "examples/tiny_resnet.py" else "no/such/file.py" for a in args]
    assert "missing-dir does not exist" in CliRunner().invoke(main, missing).output


class ReadByNone(nn.Module):
    """fx cannot take ``len`` of a proxy, export a branch on the data; the autograd frontend
    runs it and refuses its random layer drop in train mode with what to do."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        if len(x) and x.sum() > 0:
            x = x * 2
        if self.training and torch.rand(()) < 0.5:
            return self.b(x)
        return self.b(self.a(x))


def test_when_no_frontend_reads_a_model_gpa_s_own_reasons_come_first() -> None:
    """Found by a review (Whisper with layerdrop): the one reason saying what to do (eval
    mode) came last, after torch's errors."""
    with pytest.raises(gpa.errors.TraceError) as error:
        gpa.analyze(ReadByNone(), input_shape=(2, 4))
    lines = str(error.value).splitlines()
    assert lines[0] == "no frontend can read ReadByNone:"
    assert lines[1].startswith("  autograd: ReadByNone's forward branches on random numbers")
    assert "analyse it in eval mode" in lines[1]
    assert [line.split(":")[0] for line in lines[2:4]] == ["  fx", "  export"]
    assert gpa.analyze(ReadByNone(), input_shape=(2, 4), train=False).tracer == "autograd"


# Inputs too small for a window of the model, each of torch's wordings (by hand: a 5×5
# kernel on a 4×4 map, a 2×7×7 pool on 2×2×2, a 7×7 pool on the 4×4 left by a 3×3 kernel,
# a pool of 5 on the 3 left of 5 by a kernel of 3, 7×7 blocks unfolded from 4×4).
TOO_SMALL = {
    "kernel": (nn.Sequential(nn.Conv2d(3, 4, 5)), (1, 3, 4, 4)),
    "pool3d": (nn.Sequential(nn.Conv3d(3, 4, 1), nn.AvgPool3d((2, 7, 7))), (1, 3, 2, 2, 2)),
    "pool2d": (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(7)), (1, 3, 6, 6)),
    "pool1d": (nn.Sequential(nn.Conv1d(3, 4, 3), nn.MaxPool1d(5)), (1, 3, 5)),
    "unfold": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.Unfold(7)), (1, 3, 4, 4)),
    # a padding as wide as the map (pix2pix's reflection pads), a resampling to nothing
    # (found by a review: export called them its limits, autograd the model's error)
    "reflection pad": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReflectionPad2d(2)), (1, 3, 2, 2)),
    "circular pad": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.CircularPad2d(3)), (1, 3, 2, 2)),
    "upsample": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.Upsample(scale_factor=0.4)), (1, 3, 2, 2)),
}


@pytest.mark.parametrize("tracer", ALL)
@pytest.mark.parametrize("kind", TOO_SMALL)
def test_an_input_too_small_for_the_model_is_said_so_by_every_frontend(
    kind: str, tracer: str
) -> None:
    """Each frontend quoted torch ("Output size is too small", "smaller than kernel size")
    without saying that the input was too small and what to give (found by a numbers
    survey on torchvision's S3D)."""
    model, shape = TOO_SMALL[kind]
    with pytest.raises(RuntimeError):
        model(torch.zeros(shape))  # torch itself refuses the model on such an input
    with pytest.raises(ShapeError) as raised:
        gpa.analyze(model, input_shape=shape, tracer=tracer)
    assert "The input is too small for the model" in str(raised.value)
    assert "Give a larger input (--input-shape / input_shape=)" in str(raised.value)


@pytest.mark.parametrize("tracer", ALL)
def test_a_resampling_asked_for_a_negative_size_is_no_input_too_small(tracer: str) -> None:
    """torch's refusal of a resampling to no element also fires for a negative size the
    call itself asks (a review of the hint: ``scale_factor=-1``): no larger input helps,
    so nothing says to give one."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Upsample(scale_factor=-1.0))
    with pytest.raises(RuntimeError, match="should be greater than 0"):
        model(torch.zeros(1, 3, 8, 8))  # torch refuses it at any size
    with pytest.raises(GpaError) as raised:
        gpa.analyze(model, input_shape=(1, 3, 8, 8), tracer=tracer)
    assert "too small" not in str(raised.value)


class _FunctionalBatchNorm(nn.Module):
    """``F.batch_norm`` in the model's own code (timm's ``BatchNormAct2d`` calls it so)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        h = F.batch_norm(self.a(x), n.running_mean, n.running_var, n.weight, n.bias, True)
        return self.b(h)


# A norm given one value per channel to compute statistics of (model, input shape, train,
# the hint's words): torch refuses each (the test runs it).
ONE_VALUE = {
    "batch norm": (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), (1, 4), True, "batch"),
    "batch norm 2d": (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
        (1, 3, 3, 3),
        True,
        "batch",
    ),
    "F.batch_norm": (_FunctionalBatchNorm(), (1, 4), True, "batch"),
    "group norm": (nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(4, 4)), (1, 4), False, "group"),
    "instance norm": (
        nn.Sequential(nn.Conv1d(3, 4, 3), nn.InstanceNorm1d(4)),
        (1, 3, 3),
        False,
        "instance norm computing its input's statistics needs more than one position",
    ),
}


@pytest.mark.parametrize("tracer", ALL)
@pytest.mark.parametrize("kind", ONE_VALUE)
def test_a_norm_given_one_value_per_channel_is_an_input_too_small_in_every_frontend(
    kind: str, tracer: str
) -> None:
    """Found by a survey of recent architectures (timm's shvit_s1 at batch 1 in train
    mode): torch refuses a batch norm one value per channel in training, yet fx — and so
    ``auto`` — passed the norm module through without running it and gave a report of a
    model that cannot run; export called it a limit of its own (TraceError, and ``auto``
    moved on to autograd), autograd the model's error. Each now raises ShapeError and says
    what to give. The same holds for a group norm and an instance norm, in any mode."""
    model, shape, train, words = ONE_VALUE[kind]
    model.train(train)
    with pytest.raises(ValueError, match="Expected more than 1"):
        model(torch.zeros(shape))  # torch itself refuses the model on such an input
    with pytest.raises(ShapeError) as raised:
        gpa.analyze(model, input_shape=shape, tracer=tracer, train=train)
    said = " ".join(str(raised.value).split())
    assert "The input is too small for the model" in said
    assert words in said
    if words == "batch":
        assert "for a batch norm keeping running statistics, analyse in eval mode" in said


@pytest.mark.parametrize("tracer", ALL)
def test_a_batch_norm_in_eval_mode_reads_one_value_per_channel(tracer: str) -> None:
    """The other side of the refusal above: in eval mode a batch norm normalises by its
    running statistics, so torch runs it on one value per channel, and so does every
    frontend (the real model's backward reaches both linears: shortest paths 2 and 1)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    model(torch.zeros(1, 4)).sum().backward()  # torch runs it
    report = gpa.analyze(model, input_shape=(1, 4), tracer=tracer, train=False)
    assert {name: r.shortest for name, r in report.layers.items()} == {"0": 2, "2": 1}


@pytest.mark.parametrize(
    ("raised", "hint"),
    [
        ("urllib.error.URLError('no network')", "give -k weights_backbone=None"),
        ("ConnectionError('no network')", "give -k weights_backbone=None"),
        ("ValueError('bad width')", None),
    ],
)
def test_a_factory_fetching_weights_offline_says_how_to_build_without(
    tmp_path: Path, raised: str, hint: str | None
) -> None:
    """Found by a new user: ``torchvision.models.detection:ssdlite320_mobilenet_v3_large``
    fetches its backbone's weights by default, and without a network the build failed
    with the download's traceback alone. The error now says gpa needs no weights and
    which argument to give; another failure says nothing of weights."""
    (tmp_path / "fetching.py").write_text(
        "import urllib.error\n\n"
        "def build(weights=None, weights_backbone='DEFAULT'):\n"
        f"    raise {raised}\n"
    )
    result = CliRunner().invoke(main, ["analyze", str(tmp_path / "fetching.py:build")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: building the model failed")
    if hint is None:
        assert "fetched weights" not in result.stderr
    else:
        said = "It fetched weights from the network; gpa needs none: " + hint
        assert said in result.stderr
        assert "-k weights=None" not in result.stderr  # (its default fetches nothing)
