"""Complex-valued and low- or high-precision weights (issue 13, kind 2).

Gradient flows into every floating *or complex* parameter, whatever its precision, so a
model's records do not depend on its dtype. The spectral convolution of a Fourier neural
operator (rfft2 -> einsum with a complex weight -> irfft2) is a functional layer on its
complex weight; models converted with ``.half()``, ``.bfloat16()`` or ``.double()`` give
the records of their float32 version, from example inputs or from input shapes (zeros of
the model's dtype). Expected values are derived by hand in the comments; the conventions
and helpers are in tests/semantics.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpa
from gpa.errors import TraceError
from tests.frontends.every_tracer import EVERY_TRACER, layer_records
from tests.semantics import LOSS, check_reachability_with_autograd, expect, expect_unreachable

IMG = (1, 3, 8, 8)


class Spectral(nn.Module):
    """A Fourier layer: keep the lowest ``modes`` frequencies and mix their channels with a
    complex weight (``einsum``); irfft2's ``s`` pads the spectrum back with zeros."""

    def __init__(self, channels: int, modes: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.modes = modes
        self.weight = nn.Parameter(torch.randn(channels, channels, modes, modes, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.fft.rfft2(x)[:, :, : self.modes, : self.modes]
        mixed = torch.einsum("bixy,ioxy->boxy", low, self.weight)
        return torch.fft.irfft2(mixed, s=x.shape[-2:])


class InPlace(Spectral):
    """The same layer as FNO code usually writes it: the mixed modes are written into a
    zero spectrum (fx cannot trace it; export functionalises the write)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        spectrum = torch.fft.rfft2(x)
        out = torch.zeros(n, c, h, w // 2 + 1, dtype=spectrum.dtype, device=x.device)
        out[:, :, : self.modes, : self.modes] = torch.einsum(
            "bixy,ioxy->boxy", spectrum[:, :, : self.modes, : self.modes], self.weight
        )
        return torch.fft.irfft2(out, s=(h, w))


class FNO(nn.Module):
    """lift -> relu(spectral(x) + w(x)) -> proj, a Fourier neural operator block."""

    def __init__(self, layer: type[Spectral] = Spectral, dtype: torch.dtype = torch.cfloat):
        super().__init__()
        self.lift = nn.Conv2d(3, 4, 1)
        self.spectral = layer(4, 3, dtype)
        self.w = nn.Conv2d(4, 4, 1)
        self.proj = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lift(x)
        return self.proj(torch.relu(self.spectral(x) + self.w(x)))


def expect_fno(report, spectral: str) -> None:
    # The einsum on the complex weight is a functional layer, reported under the module
    # owning the weight. proj feeds the loss: 1. spectral and w feed proj through the add
    # and relu: 2 each. lift feeds both: two paths of length 3.
    assert [(n, r.type) for n, r in report.layers.items()] == [
        ("lift", "Conv2d"),
        ("spectral", spectral),
        ("w", "Conv2d"),
        ("proj", "Conv2d"),
    ]
    expect(report, "proj", {1: 1}, (LOSS,))
    expect(report, "spectral", {2: 1}, ("proj",))
    expect(report, "w", {2: 1}, ("proj",))
    expect(report, "lift", {3: 2}, ("spectral", "w"))


COMPLEX = pytest.mark.parametrize(
    "dtype", [torch.complex64, torch.complex128], ids=["complex64", "complex128"]
)


def fno(layer: type[Spectral], dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    """The model and an input of the matching real precision."""
    model = FNO(layer, dtype)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    for conv in (model.lift, model.w, model.proj):  # model.to(real) would drop imaginary parts
        conv.to(real)
    return model, torch.randn(IMG, dtype=real)


@EVERY_TRACER
@COMPLEX
@pytest.mark.parametrize("layer", [Spectral, InPlace], ids=["functional", "in-place"])
def test_spectral_convolution_is_a_layer(
    layer: type[Spectral], dtype: torch.dtype, tracer: str
) -> None:
    model, x = fno(layer, dtype)
    if layer is InPlace and tracer == "fx":  # torch.zeros of traced sizes: fx cannot trace it
        with pytest.raises(TraceError):
            gpa.analyze(model, x, tracer=tracer)
        return
    report = gpa.analyze(model, x, tracer=tracer)
    expect_fno(report, layer.__name__)
    assert tracer != "auto" or report.tracer == ("fx" if layer is Spectral else "export")
    check_reachability_with_autograd(report, model, x)


class ComplexNet(nn.Module):
    """Complex linear layers on a complex input, then a real head on the magnitudes."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 4, dtype=torch.cfloat)
        self.l2 = nn.Linear(4, 4, dtype=torch.cfloat)
        self.head = nn.Linear(4, 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.l2(self.l1(z)).abs())


@EVERY_TRACER
def test_complex_layers_on_a_complex_input(tracer: str) -> None:
    model, z = ComplexNet(), torch.randn(2, 4, dtype=torch.cfloat)
    report = gpa.analyze(model, z, tracer=tracer)
    # a chain l1 -> l2 -> head: 3, 2, 1
    expect(report, "head", {1: 1}, (LOSS,))
    expect(report, "l2", {2: 1}, ("head",))
    expect(report, "l1", {3: 1}, ("l2",))
    check_reachability_with_autograd(report, model, z)


@EVERY_TRACER
def test_a_complex_model_given_a_shape_gets_complex_inputs(tracer: str) -> None:
    """Found by a new user: given a shape, a model whose first layer is complex got float32
    zeros, which its real forward refuses ("Float and ComplexFloat"), and the analysis
    went on. Inputs by shape take the dtype of the first floating or complex parameter:
    complex64 here, and the records of the complex input above (3, 2, 1)."""
    report = gpa.analyze(ComplexNet(), input_shape=(2, 4), tracer=tracer)
    assert report.inputs[0]["dtype"] == "complex64"
    expect(report, "l1", {3: 1}, ("l2",))
    ComplexNet()(torch.zeros(2, 4, dtype=torch.complex64))  # (the model takes them)


class Chain(nn.Module):
    """stem -> conv -> relu -> conv -> pooling -> fc, with a residual around the convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.b(torch.relu(self.a(x)))
        return self.fc(x.mean((2, 3)))


PRECISIONS = [torch.float16, torch.bfloat16, torch.float64]


@EVERY_TRACER
@pytest.mark.parametrize("dtype", PRECISIONS, ids=str)
@pytest.mark.parametrize("given", ["example", "shape"])
def test_records_do_not_depend_on_precision(dtype: torch.dtype, given: str, tracer: str) -> None:
    reference = gpa.analyze(Chain(), input_shape=IMG, tracer="fx")
    # b feeds fc: 2; a feeds b: 3; stem feeds fc (identity) and a: 2 and 4.
    expect(reference, "stem", {2: 1, 4: 1}, ("a", "fc"))
    model = Chain().to(dtype)
    example = torch.zeros(IMG, dtype=dtype)
    # inputs given by shape are zeros of the model's dtype
    inputs = {"input_shape": IMG} if given == "shape" else {"example_inputs": example}
    report = gpa.analyze(model, tracer=tracer, **inputs)
    assert layer_records(report) == layer_records(reference)
    assert report.inputs[0]["dtype"] == str(dtype).removeprefix("torch.")


class AutocastBlock(nn.Module):
    """Layers run under ``torch.autocast`` (bfloat16 on the CPU; ``off``: autocast switched
    off for the block, as EfficientViT's attention does). ``chunked`` iterates a chunk's
    results (fx counts them, §1.1); ``frozen`` runs ``b`` under ``no_grad`` inside the
    autocast block, which export's ``wrap_with_autocast`` regions do not keep: export runs
    with autocast doing nothing (it changes precision, never a path)."""

    def __init__(self, chunked: bool, frozen: bool = False, off: bool = False) -> None:
        super().__init__()
        self.chunked, self.frozen, self.off = chunked, frozen, off
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cast = {"enabled": False} if self.off else {"dtype": torch.bfloat16}
        with torch.autocast("cpu", **cast):
            h = self.a(x)
            if self.chunked:
                return self.head(torch.cat([self.b(p) for p in h.chunk(2, 0)], 0))
            if self.frozen:
                with torch.no_grad():
                    z = self.b(x)
                h = h + z
            else:
                h = self.b(h)
        return self.head(h.float())


@EVERY_TRACER
@pytest.mark.parametrize("kind", ["plain", "chunked", "frozen", "frozen-off"])
def test_layers_under_autocast(tracer: str, kind: str) -> None:
    """By hand: a -> b -> head, one path each (b's two calls under ``chunked`` are one
    record of calls 2: each gives one path to head); ``frozen``: a -> head (2), b under
    no_grad unreachable. Export lost a and b inside the region (found by a new-user
    review), then read b as carrying gradient under ``frozen`` (found by an adversarial
    review of the first fix), then refused every autocast region, so EfficientViT's
    channels had no frontend (found by a review of model families)."""
    frozen = kind.startswith("frozen")
    model = AutocastBlock(kind == "chunked", frozen, off=kind.endswith("off"))
    x = torch.randn(2, 4)
    report = gpa.analyze(model, (x,), tracer=tracer)
    expect(report, "head", {1: 1}, (LOSS,))
    if frozen:
        expect(report, "a", {2: 1}, ("head",))
        expect_unreachable(report, "b")
    else:
        calls = 2 if kind == "chunked" else 1
        expect(report, "b", {2: calls}, ("head",), calls=calls)
        expect(report, "a", {3: calls}, ("b",))
    check_reachability_with_autograd(report, model, x)


@pytest.mark.slow
def test_an_export_region_gpa_does_not_read_is_refused() -> None:
    """``torch.cond`` holds each branch's layers in a submodule of export's graph, which
    gpa does not read: export refuses rather than lose them."""

    class Cond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cond(x.sum() > 0, self.a, self.b, (x,))

    with pytest.raises(TraceError, match="calls cond on a part of the model"):
        gpa.analyze(Cond(), (torch.randn(2, 4),), tracer="export")
