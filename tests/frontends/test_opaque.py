"""Functions fx keeps whole (torch.fx.wrap) that read parameters: traced into by value,
else reported, and `auto` looks inside.

Hand derivation: head(attend(x, qkv.weight, qkv.bias)) where attend is F.linear, so qkv is a
layer feeding head: qkv has one path of length 2, head one of length 1.

fx traces into such a call once the flow pass has given its arguments values
(``gpa.frontends.fx.inline``: Swin's attention, which branches on shapes and assigns into
its mask). A function it does not trace so (``attend_scaled`` reads a global, whose value
when traced may not be forward's) stays one call: fx says what it misses, and `auto`
tries autograd before export (semantics §1.6): it runs the function as it is and costs a
fraction of export; export, the independent reading, must agree with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpa
from gpa import frontends
from gpa.errors import TraceError
from gpa.options import Tracer
from tests.frontends.every_tracer import EVERY_TRACER, auto_after_fx_refuses
from tests.semantics import check_reachability_with_autograd

QKV_HEAD = {"qkv": (2, 2, 1), "head": (1, 1, 1)}  # (shortest, longest, paths), by hand


def attend(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


SCALE = 1.0


def attend_scaled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # reads a global: traced after forward, it might find another value than forward's
    # call did, so fx keeps it whole
    return F.linear(x, weight, bias) * SCALE


torch.fx.wrap("attend")
torch.fx.wrap("attend_scaled")


def _attend(by_value: bool, *args: torch.Tensor | None) -> torch.Tensor:
    """``attend`` or ``attend_scaled``, called by its global name (which fx patches)."""
    return attend(*args) if by_value else attend_scaled(*args)


class Wrapped(nn.Module):
    def __init__(self, by_value: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.by_value = by_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_attend(self.by_value, x, self.qkv.weight, self.qkv.bias))


def _paths(report: gpa.Report) -> dict:
    return {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()}


def _records(report: gpa.Report) -> dict:
    return {n: (r.shortest, r.longest, r.timestamps, r.sources) for n, r in report.layers.items()}


@pytest.mark.parametrize("tracer", ["fx", "auto"])
def test_fx_traces_into_the_call_by_value(tracer) -> None:
    report = gpa.analyze(Wrapped(by_value=True), input_shape=(1, 4), tracer=tracer)
    assert report.tracer == "fx"
    assert _paths(report) == QKV_HEAD
    assert report.notes == []


class Shifted(nn.Module):
    """A wrapped function as Swin's attention is written: it branches on its input's
    shape, loops over windows assigning into a mask it makes, and calls another wrapped
    function reading parameters (traced into too)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 4)
        self.proj = nn.Linear(4, 4)
        self.table = nn.Parameter(torch.zeros(3, 4))
        self.register_buffer("index", torch.tensor([0, 2, 1, 0, 2, 1]))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = positional(self.table, self.index)
        return self.head(shifted(x, self.qkv.weight, self.proj.weight, bias))


def positional(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return table[index]


def shifted(x, qkv_weight, proj_weight, bias):
    batch, length, width = x.shape
    if length % 3:  # pad to whole windows of 3
        x = F.pad(x, (0, 0, 0, 3 - length % 3))
    mask = x.new_zeros(x.shape[1], 1)
    for start in range(0, x.shape[1], 3):
        mask[start : start + 3] = start  # one value per window
    q = F.linear(x, qkv_weight) + bias[: x.shape[1]]
    attn = (q @ q.transpose(1, 2)).masked_fill(mask != mask.T, -100.0).softmax(-1)
    return F.linear(attn @ q, proj_weight)[:, :length]


torch.fx.wrap("positional")
torch.fx.wrap("shifted")


@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
def test_a_call_branching_on_shapes_and_assigning_into_a_mask_agrees_with_export(channels):
    model = Shifted()
    options = dict(input_shape=(2, 5, 4), channels=channels)
    fx_report = gpa.analyze(model, tracer="fx", **options)
    assert fx_report.notes == []
    # qkv -> (q twice, attention) -> proj -> head; the table adds to q: no layer
    assert _paths(fx_report) == {"qkv": (3, 3, 1), "proj": (2, 2, 1), "head": (1, 1, 1)}
    export = gpa.analyze(model, tracer="export", **options)
    assert fx_report.layers == export.layers


def split_heads(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two results, read one by one (fx's getitem nodes)."""
    y = F.linear(x, weight)
    return y[..., :2], y[..., 2:]


def gate(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight made without gradient, then used: a layer all the same (§2)."""
    with torch.no_grad():
        scaled = weight * 2
    return F.linear(x, scaled)


def zeroed_middle(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A copy of the bias with a slice zeroed in place (Swin V2's attention does so)."""
    bias = bias.clone()
    bias[1:3].zero_()
    return F.linear(x, weight, bias)


def zeroed_picked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``bias[index]`` with a tensor index is a copy: zeroing it leaves the bias as it is."""
    bias = bias.clone()
    bias[torch.tensor([1, 2])].zero_()
    return F.linear(x, weight, bias)


def checked(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Checks what it is given, as library functions do: on fx's proxies (no tensors) it
    would take the other branch."""
    if isinstance(x, torch.Tensor) and torch.is_tensor(weight):
        return F.linear(x, weight)
    return x


def windowed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A buffer made from numbers, filled window by window with a layer's output."""
    out = torch.zeros(x.shape[0], 4, dtype=x.dtype, device=x.device)
    for start in (0, 2):
        out[:, start : start + 2] = F.linear(x[:, start : start + 2], weight)
    return out


def _log_use(function) -> None:
    """Checks a type, of something else than the arguments (torchvision logs API use so)."""
    assert isinstance(function.__name__, str)


def logged(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    _log_use(logged)
    return F.linear(x, weight)


FLAG = {"on": True}


def flagged(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight) if FLAG["on"] else x


torch.fx.wrap("checked")
torch.fx.wrap("logged")
torch.fx.wrap("windowed")
torch.fx.wrap("flagged")
torch.fx.wrap("split_heads")
torch.fx.wrap("gate")
torch.fx.wrap("zeroed_middle")
torch.fx.wrap("zeroed_picked")


class Siblings(nn.Module):
    """Wrapped calls fx traces into by value, each in another setting."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.case == "two-results":
            left, right = split_heads(self.a(x), self.b.weight)
            return self.head(torch.cat([right, left], -1))
        if self.case == "under-no-grad":  # the call site without gradient: b's call unreached
            with torch.no_grad():
                skipped = attend(x, self.b.weight, None)
            return self.head(self.a(x) + skipped)
        if self.case == "no-grad-inside":
            return self.head(gate(self.a(x), self.b.weight))
        if self.case == "checks-types":
            return self.head(checked(self.a(x), self.b.weight))
        if self.case == "logs-its-use":
            return self.head(logged(self.a(x), self.b.weight))
        if self.case == "fills-a-buffer":  # b takes 2 features: b.weight is 4 x 4, sliced
            return self.head(windowed(self.a(x), self.b.weight[:2, :2]))
        if self.case == "global-flag":  # the caller turns the function off for its second call
            first = flagged(self.a(x), self.b.weight)
            FLAG["on"] = False
            try:
                second = flagged(self.a(x), self.b.weight)
            finally:
                FLAG["on"] = True
            return self.head(first + second)
        if self.case == "slice-zeroed":
            return self.head(zeroed_middle(self.a(x), self.b.weight, self.b.bias))
        if self.case == "copy-zeroed":
            return self.head(zeroed_picked(self.a(x), self.b.weight, self.b.bias))
        # "chained": the second call reads the first's result
        return self.head(attend(attend(x, self.a.weight, None), self.b.weight, self.b.bias))


#: The cases of Siblings whose calls fx traces into by value.
TRACED_CASES = (
    "two-results",
    "under-no-grad",
    "no-grad-inside",
    "chained",
    "slice-zeroed",
    "fills-a-buffer",
    "logs-its-use",
)


@pytest.mark.slow
@pytest.mark.parametrize("case", TRACED_CASES)
@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
def test_calls_traced_by_value_agree_with_autograd_and_export(case, channels) -> None:
    model = Siblings(case)
    fx_report = gpa.analyze(model, input_shape=(2, 4), tracer="fx", channels=channels)
    # traced into: nothing missed (a channel fallback is noted, and compared below)
    assert [n for n in fx_report.notes if not n.startswith("channel routing fell back")] == []
    for tracer in ("autograd", "export") if not channels else ("export",):
        other = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, channels=channels)
        assert _alike(fx_report) == _alike(other), tracer


def _alike(report: gpa.Report) -> dict:
    """Every layer's record and segments; of a channel fallback only that there is one
    (each frontend names the operation as it records it: fx's ``setitem_`` is export's
    ``copy`` and ``slice_scatter``)."""
    return {
        name: (
            _records(report)[name],
            r.calls,
            r.num_paths,
            bool(r.channel_fallbacks),
            [(g.start, g.stop, g.paths, g.sources, bool(g.fallback)) for g in r.segments or ()],
        )
        for name, r in report.layers.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["copy-zeroed", "global-flag", "checks-types"])
def test_calls_fx_does_not_trace_by_value_stay_whole(case) -> None:
    # a tensor index gives a copy, not a view: fx does not write it through (it would zero
    # the bias); a function reading global state would be traced with the state the caller
    # left, not the one each call found; one checking types would take another branch on
    # fx's proxies. fx keeps the call whole and says so; auto reads it with autograd
    model = Siblings(case)
    fx_report = gpa.analyze(model, input_shape=(2, 4), tracer="fx")
    name = {"copy-zeroed": "zeroed_picked", "global-flag": "flagged"}.get(case, "checked")
    assert any(f"'{name}'" in n for n in fx_report.notes)
    auto = gpa.analyze(model, input_shape=(2, 4))
    assert auto.tracer == "autograd"
    assert auto.layers == gpa.analyze(model, input_shape=(2, 4), tracer="export").layers


def test_fx_reports_the_opaque_call_instead_of_a_silent_answer() -> None:
    report = gpa.analyze(Wrapped(), input_shape=(1, 4), tracer="fx")
    assert any("'attend_scaled'" in n and "qkv" in n and "autograd" in n for n in report.notes)


def test_auto_tracer_looks_inside() -> None:
    report = gpa.analyze(Wrapped(), input_shape=(1, 4), tracer="auto")
    assert _paths(report) == QKV_HEAD
    # fx keeps the wrapped function opaque; autograd, tried next, reads inside it
    assert report.tracer == "autograd"
    assert "tracer auto used autograd: fx: cannot look into attend_scaled" in report.notes


def test_auto_moves_on_to_export_when_autograd_cannot_run(monkeypatch) -> None:
    def refuses(model, options):
        raise TraceError("cannot run it")

    monkeypatch.setitem(frontends.FRONTENDS, Tracer.AUTOGRAD, refuses)
    report = gpa.analyze(Wrapped(), input_shape=(1, 4), tracer="auto")
    assert report.tracer == "export"
    assert (
        "tracer auto used export: fx: cannot look into attend_scaled; autograd: cannot run it"
        in report.notes
    )
    assert _paths(report) == QKV_HEAD


def test_auto_with_channels_reads_inside_with_export() -> None:
    # autograd gives no channel segments (§8): export is the one left
    report = gpa.analyze(Wrapped(), input_shape=(1, 4), tracer="auto", channels=True)
    assert report.tracer == "export"
    assert "tracer auto used export: fx: cannot look into attend_scaled" in report.notes
    assert _paths(report) == QKV_HEAD


@pytest.mark.parametrize("by_value", [True, False])
def test_auto_without_inputs_keeps_fx_and_says_what_it_misses(by_value) -> None:
    # export and autograd need inputs, and fx traces by value only with them
    report = gpa.analyze(Wrapped(by_value), tracer="auto")
    assert report.tracer == "fx"
    name = "attend" if by_value else "attend_scaled"
    assert any(f"'{name}'" in n and "autograd" in n for n in report.notes)


class WrappedTwice(nn.Module):
    """Two blocks calling the same wrapped function (as every Swin block does); the second
    call reads the first block's result."""

    def __init__(self, by_value: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Wrapped(by_value) for _ in range(2))
        self.by_value = by_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks[0](x)
        hidden = F.pad(hidden, (0, 2))  # head of block 0 gives 2 features, qkv takes 4
        block = self.blocks[1]
        return block.head(_attend(self.by_value, hidden, block.qkv.weight, None))


@pytest.mark.parametrize("by_value", [True, False], ids=["by-value", "opaque"])
@pytest.mark.parametrize("model", [Wrapped, WrappedTwice], ids=["once", "twice"])
def test_auto_agrees_with_export(model, by_value) -> None:
    built = model(by_value)
    auto = gpa.analyze(built, input_shape=(1, 4), tracer="auto")
    export = gpa.analyze(built, input_shape=(1, 4), tracer="export")
    assert auto.tracer == ("fx" if by_value else "autograd")
    assert _records(auto) == _records(export)


def test_auto_note_names_each_opaque_function_once() -> None:
    report = gpa.analyze(WrappedTwice(), input_shape=(1, 4), tracer="auto")
    (note,) = [n for n in report.notes if n.startswith("tracer auto used autograd")]
    assert note.count("attend_scaled") == 1, note


def test_fx_names_each_function_once_with_every_module_it_reads() -> None:
    report = gpa.analyze(WrappedTwice(), input_shape=(1, 4), tracer="fx")
    (note,) = [n for n in report.notes if "'attend_scaled'" in n]
    assert "parameters of blocks.0.qkv, blocks.1.qkv:" in note
    assert note.endswith("--tracer auto or autograd to see them")


def test_fx_note_with_channels_points_at_export() -> None:
    # autograd gives no channel segments: export is the frontend that sees inside
    report = gpa.analyze(Wrapped(), input_shape=(1, 4), tracer="fx", channels=True)
    (note,) = [n for n in report.notes if "'attend_scaled'" in n]
    assert note.endswith("--tracer auto or export to see them")


def accumulate(buf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    buf.add_(y)  # a write fx's graph does not show
    return buf * 0 + 1


torch.fx.wrap("accumulate")


class Accumulator(nn.Module):
    def forward(self, buf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return accumulate(buf, y)


class WritesIntoItsArgument(nn.Module):
    """Hand derivation: buf = a(x); buf += b(x) inside the function; h reads buf after the
    write, the sum reads the function's result: a and b each reach the loss through h
    (length 2) and through the sum (length 1); h by one path of length 1."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.h = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.acc = Accumulator()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buf = self.a(x)
        z = accumulate(buf, self.b(x)) if self.how == "wrapped" else self.acc(buf, self.b(x))
        return self.h(buf) + z.sum()


@pytest.mark.parametrize("how", ["wrapped", "leaf"])
def test_a_write_into_an_argument_read_afterwards_is_refused_by_fx(how: str) -> None:
    leaves = {"leaf_modules": ["acc"]} if how == "leaf" else {}
    report = auto_after_fx_refuses(
        WritesIntoItsArgument(how),
        r"writes in place into an argument \(the value of 'a'\)",
        input_shape=(2, 4),
        **leaves,
    )
    assert {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()} == {
        "a": (1, 2, 2),
        "b": (1, 2, 2),
        "h": (1, 1, 1),
    }


class WritesIntoAnArgumentNotReadAgain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(accumulate(self.a(x), x))  # nothing reads a's output afterwards


def test_a_write_into_an_argument_not_read_again_is_kept_by_fx() -> None:
    model = WritesIntoAnArgumentNotReadAgain()
    fx_report = gpa.analyze(model, input_shape=(2, 4), tracer="fx")
    export = gpa.analyze(model, input_shape=(2, 4), tracer="export")
    assert _records(fx_report) == _records(export)


def clamped(mask: torch.Tensor) -> torch.Tensor:
    mask.clamp_(0, 1)  # a write bringing no gradient
    return mask


torch.fx.wrap("clamped")


class AddInto(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(self.lin(x))


class Writes(nn.Module):
    """The review's cases of writes inside calls fx records whole."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.h, self.g = nn.Linear(4, 2), nn.Linear(4, 2)
        self.seq = nn.Sequential(AddInto())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.case == "second-call":  # the first call's write is read by nobody
            u = accumulate(self.a(x), x)
            v = self.b(x)
            w = accumulate(v, self.c(x))  # looks like the first call: checked all the same
            return self.h(v) + self.g(w) + u.sum()
        if self.case == "container":  # a torch.nn container holding a user's module
            y = self.a(x)
            z = self.seq(y)  # adds its own layer's output into y
            return self.h(y) + self.g(z)
        if self.case == "view":  # a write into a view of y, y read afterwards
            y = self.a(x)
            w = accumulate(y[:, :4], self.c(x))
            return self.h(y) + self.g(w)
        if self.case == "metadata":  # read afterwards for its shape only
            y = self.a(x)
            w = accumulate(y, self.c(x))
            return self.g(w).view(y.size(0), -1) + self.h(w).reshape(y.shape[0], -1)
        if self.case == "no-gradient":  # the write carries no gradient
            y = self.a(x)
            mask = torch.ones_like(y).detach()
            kept = clamped(mask)
            return self.h(y * mask) + self.g(y * kept)
        y = self.a(x)  # "under-no-grad": autograd records no write
        with torch.no_grad():
            accumulate(y, self.c(x))
        return self.h(y)


@pytest.mark.parametrize("case", ["second-call", "container", "view"])
def test_writes_fx_cannot_follow_are_refused(case: str) -> None:
    leaves = {"leaf_modules": ["seq"]} if case == "container" else {}
    report = auto_after_fx_refuses(
        Writes(case), "writes in place into an argument", input_shape=(2, 4), **leaves
    )
    autograd = gpa.analyze(Writes(case), input_shape=(2, 4), tracer="autograd", **leaves)
    assert _records(report) == _records(autograd)


@pytest.mark.parametrize("case", ["metadata", "no-gradient", "under-no-grad"])
def test_writes_that_change_no_path_are_let_through(case: str) -> None:
    fx_report = gpa.analyze(Writes(case), input_shape=(2, 4), tracer="fx")
    autograd = gpa.analyze(Writes(case), input_shape=(2, 4), tracer="autograd")
    assert _records(fx_report) == _records(autograd)


def stash(x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    buf.copy_(x)  # writes x into the buffer it is given
    return x * 2


torch.fx.wrap("stash")


class StashesIntoABuffer(nn.Module):
    """By hand: the call writes a(x) into buf, read again afterwards by c; its result
    2 a(x) goes to b: a's sources are b and c. fx reads a buffer anew at each use (each
    use its own node), so the later read is another node than the one written."""

    def __init__(self, again: str) -> None:
        super().__init__()
        self.again = again
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("buf", torch.zeros(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.again == "by-attribute":
            y = stash(self.a(x), self.buf)
            return self.b(y) + self.c(self.buf)
        buf = self.buf  # one name, used twice
        y = stash(self.a(x), buf)
        return self.b(y) + self.c(buf)


@pytest.mark.parametrize("again", ["by-attribute", "by-name"])
def test_a_write_into_a_buffer_read_afterwards_is_refused_by_fx(again: str) -> None:
    report = auto_after_fx_refuses(
        StashesIntoABuffer(again),
        r"writes in place into an argument \(the value of 'buf",
        input_shape=(3, 4),
    )
    assert report.layers["a"].sources == ("b", "c")


def fitted(sizes: list[int], bound: list[int]) -> list[int]:
    """Writes into the list it is given, as torchvision's Swin3D fits its window."""
    for i, most in enumerate(bound):
        if sizes[i] > most:
            sizes[i] = most
    return sizes


def weighted_rows(x: torch.Tensor, weight: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Reads a parameter (traced into), and writes into the list it is given."""
    rows[0] = x.shape[0]
    return F.linear(x, weight).reshape(rows)


def keyed_rows(x: torch.Tensor, weight: torch.Tensor, sizes: dict) -> torch.Tensor:
    """The same with a dict written into."""
    sizes["rows"] = x.shape[0]
    return F.linear(x, weight).reshape(sizes["rows"], -1)


torch.fx.wrap("fitted")
torch.fx.wrap("weighted_rows")
torch.fx.wrap("keyed_rows")


class WritesIntoALiteral(nn.Module):
    """A list or dict written in ``forward`` (a literal: fx holds it as an immutable
    container, the code it generates makes a new one at each call) passed to a wrapped
    function that writes into it. By hand: a -> the linear on b's weight -> head, so a
    (3, 3, 1), b (2, 2, 1), head (1, 1, 1)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.window = [8, 4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = fitted(self.window.copy(), [x.shape[0], 16])  # [3, 4] for a (3, 4) input
        y = self.a(x).reshape(rows)
        if self.kind == "dict":
            return self.head(keyed_rows(y, self.b.weight, {"rows": -1}))
        return self.head(weighted_rows(y, self.b.weight, [-1, 4]))


@pytest.mark.parametrize("channels", [False, True], ids=["layers", "channels"])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_a_wrapped_function_may_write_into_a_literal_it_is_given(kind, channels) -> None:
    # fx ran it on its immutable containers and took the TypeError for the inputs' fault:
    # a ShapeError, which auto does not move on from (torchvision's swin3d_t failed so)
    model = WritesIntoALiteral(kind)
    report = gpa.analyze(model, input_shape=(3, 4), channels=channels)
    assert report.tracer == "fx" and report.notes == []
    by_hand = {"a": (3, 3, 1), "b": (2, 2, 1), "head": (1, 1, 1)}
    assert {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()} == by_hand
    other = gpa.analyze(model, input_shape=(3, 4), tracer="export", channels=channels)
    assert _alike(report) == _alike(other)


def test_only_what_is_written_into_the_graph_is_made_anew() -> None:
    # a node's value (a dict holding a tuple, a list) keeps its identity wherever it sits
    # in the arguments: a callee writing into it writes into the node's value; literals
    # (fx's immutable containers), also inside tuples and named tuples, become mutable
    from collections import namedtuple

    from torch.fx.immutable_collections import immutable_dict, immutable_list

    from gpa.frontends.fx.tracer import as_written

    made, listed = {"h": (1,), "y": 0}, [(1, 2)]
    assert as_written(immutable_dict({"cache": made}))["cache"] is made
    assert as_written((immutable_list([made, listed]),))[0][0] is made
    assert as_written((immutable_list([made, listed]),))[0][1] is listed
    assert as_written((made,))[0] is made
    pair = namedtuple("Pair", "a b")
    written = as_written((pair(immutable_list([1]), made),))[0]
    assert type(written) is pair and type(written.a) is list and written.b is made
    nested = as_written(((immutable_list([1]), immutable_dict({"k": 2})),))
    assert nested == (([1], {"k": 2}),)
    assert [type(v) for v in nested[0]] == [list, dict]
    unchanged = (made, (1, 2))
    assert as_written(unchanged) is unchanged


def holding(x: torch.Tensor) -> dict:
    """A dict of tensors, made by a function fx keeps whole (a cache)."""
    return {"h": (x,), "y": x.detach() * 0}


def listing(x: torch.Tensor) -> list:
    return [x.detach() * 0]


def filled(t: torch.Tensor, cache: dict) -> torch.Tensor:
    """Writes into the dict it is given, read afterwards by the caller."""
    cache["y"] = cache["h"][0] + t
    return t


def filled_inside(t: torch.Tensor, caches: list) -> torch.Tensor:
    caches[0]["y"] = caches[0]["h"][0] + t
    return t


torch.fx.wrap("holding")
torch.fx.wrap("listing")
torch.fx.wrap("filled")
torch.fx.wrap("filled_inside")


class WritesIntoAContainer(nn.Module):
    """A write into a dict (or list) a node holds, read afterwards. By hand: head reads
    a's output plus c's, so a (2, 2, 1), c (2, 2, 1), head (1, 1, 1)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.c, self.head = (nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "appended":  # a method call fx records on the list node
            held = listing(self.a(x))
            held.append(self.a(x) + self.c(x))
            return self.head(held[-1])
        cache = holding(self.a(x))
        if self.how == "keyword":
            filled(self.c(x), cache=cache)
        elif self.how == "positional":
            filled(self.c(x), cache)
        else:  # the dict inside a list written in forward
            filled_inside(self.c(x), [cache])
        return self.head(cache["y"])


@pytest.mark.parametrize("how", ["keyword", "positional", "in-a-list", "appended"])
def test_a_write_into_a_container_read_afterwards_is_refused_by_fx(how: str) -> None:
    # fx's graph shows no such write: its readers read the container as made (a and c
    # were unreachable, silently); export and autograd run the code
    model = WritesIntoAContainer(how)
    report = auto_after_fx_refuses(model, "writes into the (dict|list)", input_shape=(2, 4))
    by_hand = {"a": (2, 2, 1), "c": (2, 2, 1), "head": (1, 1, 1)}
    assert {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()} == by_hand


class HandsOn(nn.Module):
    """A head that returns what it is given beside what it computes (Ultralytics' Detect
    returns its input features under ``feats``); ``how`` says in what and what it gives
    on: the input itself, or (siblings fx reads) a view of it or a result computed from it."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.cv = nn.Linear(4, 4)

    def forward(self, xs: list[torch.Tensor]) -> Any:
        computed = [self.cv(x) for x in xs]
        if self.how == "dict":
            return {"out": computed, "feats": xs}
        if self.how == "tuple":
            return (*computed, *xs)
        if self.how == "list":
            return [computed[0], xs[1], computed[1], xs[0]]
        given = {"view": lambda x: x[:, :2], "computed": lambda x: x * 2}[self.how]
        return {"out": computed, "feats": [given(x) for x in xs]}


class HeadedNet(nn.Module):
    """Hand derivation: a and b each feed the head h (one call per input, so h has two
    calls), whose outputs all reach the loss. A tensor h hands on as it is skips h: a and b
    reach the loss by it in one step and through h in two (2 paths); handed on as a view
    or a result computed from it, it is part of h's call: a and b only through h."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b, self.h = nn.Linear(4, 4), nn.Linear(4, 4), HandsOn(how)

    def forward(self, x: torch.Tensor) -> Any:
        return self.h([self.a(x), self.b(x)])


@pytest.mark.parametrize(
    "leaf",
    [{"leaf_modules": [HandsOn]}, {"leaf_modules": ["h"]}, {"layer_types": [nn.Linear, HandsOn]}],
)
@pytest.mark.parametrize("how", ["dict", "tuple", "list"])
def test_a_leaf_handing_on_its_input_as_it_is_is_refused_by_fx(
    how: str, leaf: dict[str, Any]
) -> None:
    # fx shows the tensors as part of h's result, so a and b got (2, 2, 1): one layer too
    # many on the path through the handed-on tensor; export and autograd see the tensor
    model = HeadedNet(how)
    report = auto_after_fx_refuses(
        model, "returns 2 of its input tensors as they are", input_shape=(2, 4), **leaf
    )
    # a path is a sequence of layers: a's are (a) and (a, h); h's only (h)
    by_hand = {"a": (1, 2, 2), "b": (1, 2, 2), "h": (1, 1, 1)}
    got = {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()}
    assert got == by_hand
    for tracer in ("export", "autograd"):
        other = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, **leaf)
        assert {n: (r.shortest, r.longest, r.num_paths) for n, r in other.layers.items()} == by_hand


@EVERY_TRACER
@pytest.mark.parametrize("how", ["view", "computed"])
def test_a_leaf_handing_on_what_it_makes_of_its_input_is_one_call(how: str, tracer: str) -> None:
    # a view or a product of the input is made inside the call: through h, as any output
    model = HeadedNet(how)
    report = gpa.analyze(model, input_shape=(2, 4), tracer=tracer, leaf_modules=[HandsOn])
    got = {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()}
    assert got == {"a": (2, 2, 1), "b": (2, 2, 1), "h": (1, 1, 1)}
    check_reachability_with_autograd(report, model, torch.randn(2, 4))


class _Out:
    def __init__(self, y: torch.Tensor, feats: torch.Tensor) -> None:
        self.y, self.feats = y, feats


@dataclasses.dataclass
class _DataOut:
    y: torch.Tensor
    feats: torch.Tensor


class ReturnsAnObject(nn.Module):
    """A leaf returning its result in an object pytree does not know (``kind``)."""

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.kind, self.cv = kind, nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Any:
        return self.kind(self.cv(x), torch.relu(x))


class ReadsTheObject(nn.Module):
    """Hand derivation: a -> h -> loss (y), a -> (relu inside h) -> c -> loss (feats): a's
    paths (a, h) and (a, h, c) as h is one call: 2 and 3; h 1 and 2; c 1."""

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.a, self.h, self.c = nn.Linear(4, 4), ReturnsAnObject(kind), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.h(self.a(x))
        return out.y + self.c(out.feats)


@dataclasses.dataclass(slots=True)
class _SlotsOut:
    y: torch.Tensor
    feats: torch.Tensor


@pytest.mark.parametrize(
    "kind", [_Out, _DataOut, _SlotsOut], ids=["object", "dataclass", "slots-dataclass"]
)
def test_a_leaf_returning_an_object_pytree_does_not_know_is_refused_by_fx(kind: type) -> None:
    # fx saw no tensor in the object: a and h unreachable, in silence (found by an
    # adversarial review); export and autograd follow the attributes
    model = ReadsTheObject(kind)
    report = auto_after_fx_refuses(
        model, "holding tensors as attributes", input_shape=(2, 4), leaf_modules=[ReturnsAnObject]
    )
    by_hand = {"a": (2, 3, 2), "h": (1, 2, 2), "c": (1, 1, 1)}
    assert {n: (r.shortest, r.longest, r.num_paths) for n, r in report.layers.items()} == by_hand


class MixesItsOwn(nn.Module):
    """``F.linear(x, self.w) + x``: a functional layer on a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6))

    def forward(self, x):
        return F.linear(x, self.w) + x


class NormedOnly(nn.Module):
    """A norm alone: parameters, none of them mixing features."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        return self.norm(x)


class AroundBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.inp, self.blk, self.out = nn.Linear(3, 6), block, nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.blk(self.inp(x)))


@pytest.mark.parametrize("tracer", ["fx", "autograd", "auto"])
@pytest.mark.parametrize("kept", ["scripted", "leaf"])
def test_a_module_kept_whole_hiding_a_weight_of_its_own_is_noted(kept: str, tracer: str) -> None:
    """Found by a new user: a TorchScript module, or a declared leaf, whose only weight
    mixes features functionally (``F.linear(x, self.w)``) vanished from the report without
    a word — no record, and inp's second path (through blk's layer) gone — though a real
    backward trains ``blk.w``. gpa cannot see inside (§1.7, §2); a note now names the
    weight. By hand, as kept whole: inp -> out (2), one path. A module kept whole holding
    only a norm's parameters gets no such note."""
    block = torch.jit.script(MixesItsOwn()) if kept == "scripted" else MixesItsOwn()
    leaves = [MixesItsOwn] if kept == "leaf" else None
    report = gpa.analyze(AroundBlock(block), input_shape=(2, 3), tracer=tracer, leaf_modules=leaves)
    assert list(report.layers) == ["inp", "out"] and report.layers["inp"].num_paths == 1
    said = [n for n in report.notes if n.startswith("'blk' is kept whole")]
    assert len(said) == 1 and "(blk.w)" in said[0]
    assert ("TorchScript" in said[0]) == (kept == "scripted")
    normed = torch.jit.script(NormedOnly()) if kept == "scripted" else NormedOnly()
    plain = gpa.analyze(
        AroundBlock(normed),
        input_shape=(2, 3),
        tracer=tracer,
        leaf_modules=[NormedOnly] if kept == "leaf" else None,
    )
    assert not any("is kept whole" in n for n in plain.notes)
