"""Exceptions the model raises itself, told apart from a frontend's limits.

A ``forward`` that raises (a ``raise`` or ``assert`` statement of the model's code, or an
operation failing when the model is run) is the model's error, not a tracing limitation:
:class:`~gpa.errors.ModelError` says "``Net`` raised ValueError: …" with the model's own
frame, and gives no advice about control flow. :func:`raised_by_model` tells whether an
exception a tracer met was raised by a statement of the model's code (the innermost frame
of its traceback is the model's, stopped at a ``raise``); :func:`model_raised` words the
error.

Example (model code compiled from a file, as a model's module is):
    >>> source = '''
    ... def forward(x):
    ...     if x < 0:
    ...         raise ValueError("x must be positive")
    ... '''
    >>> namespace = {}
    >>> exec(compile(source, "model.py", "exec"), namespace)
    >>> try:
    ...     namespace["forward"](-1)
    ... except ValueError as exc:
    ...     error = exc
    >>> raised_by_model(error).lineno
    4
    >>> print(model_raised("Net", error))  # and the line itself, when its file is on disk
    Net raised ValueError: x must be positive
      File "model.py", line 4, in forward
"""

from __future__ import annotations

import dis
import linecache
import re
import traceback
import types

import torch

from gpa.frontends.frames import Site, user_frame

__all__ = [
    "CHECKS",
    "INPUT_TOO_SMALL",
    "NOTHING_RESAMPLED",
    "ONE_POSITION",
    "ONE_VALUE_PER_CHANNEL",
    "PADDING_TOO_WIDE",
    "briefly",
    "input_too_small",
    "model_raised",
    "raised_by_model",
]

# The instructions of a raise or assert statement (a bare ``raise`` re-raises).
_RAISING = frozenset({"RAISE_VARARGS", "RERAISE"})

#: torch's helpers a model's code checks what it is given with (timm's patch embeddings:
#: ``torch._assert(H == self.img_size[0], …)``): what they raise is the model's own check.
CHECKS = frozenset(
    check
    for name in ("_assert", "_check", "_check_with", "_check_index", "_check_value")
    + ("_check_type", "_check_not_implemented", "_check_is_size")
    if (check := getattr(torch, name, None)) is not None
)
_CHECK_CODES = frozenset(check.__code__ for check in CHECKS if hasattr(check, "__code__"))


def raised_by_model(exc: BaseException) -> traceback.FrameSummary | None:
    """The frame of the model's code whose ``raise`` (or ``assert``) statement raised
    ``exc``, or whose call of one of torch's check helpers (:data:`CHECKS`) did; None when
    something else raised it (torch, gpa, a tracing proxy, or a built-in the model
    called)."""
    frame = user_frame(exc)
    if frame is None:
        return None
    tbs = []
    tb = exc.__traceback__
    while tb is not None:
        tbs.append(tb)
        tb = tb.tb_next
    at = max(
        i
        for i, tb in enumerate(tbs)
        if tb.tb_frame.f_code.co_filename == frame.filename and tb.tb_lineno == frame.lineno
    )
    if at < len(tbs) - 1:  # the model's code called what raised: one of torch's checks?
        checks = [tb.tb_frame for tb in tbs[at + 1 :] if tb.tb_frame.f_code in _CHECK_CODES]
        called = tbs[at + 1].tb_frame.f_code in _CHECK_CODES
        return frame if called and _failed(checks[-1]) else None
    code, offset = tbs[at].tb_frame.f_code, tbs[at].tb_lasti
    instruction = {i.offset: i.opname for i in dis.get_instructions(code)}.get(offset)
    return frame if instruction in _RAISING else None


def _failed(check: types.FrameType) -> bool:
    """Whether the frame of one of torch's checks raised because its condition is false
    (a bool, or a tensor holding data), not because of what it was given: a tracer's
    proxy or a meta tensor in place of the condition is no answer of the model's."""
    condition = check.f_locals.get("cond", check.f_locals.get("condition"))
    if type(condition) is torch.Tensor:  # (not a subclass: fake tensors hold no data)
        return not condition.is_meta
    return type(condition) is bool


def briefly(exc: BaseException) -> str:
    """``exc`` as its type and the first sentence of its message: torch's messages about
    the meta device run on to paragraphs of advice about other tools.

    Example:
        >>> briefly(NotImplementedError("aten::nonzero: no meta kernel. See the docs."))
        'NotImplementedError: aten::nonzero: no meta kernel'
    """
    line = next((line for line in str(exc).splitlines() if line.strip()), "").strip()
    sentence = line.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__


# torch's words where a window (pooling, convolution, unfold) is larger than what reaches it
_TOO_SMALL = (
    "Output size is too small",
    "smaller than kernel size",
    "Kernel size can't be greater than actual input size",
    "Invalid computed output size",
    "but its components must be at least one",  # unfold's sliding blocks
)
#: Said after such an error, by every frontend.
INPUT_TOO_SMALL = (
    "The input is too small for the model: a pooling or convolution window is larger than "
    "the feature map reaching it. Give a larger input (--input-shape / input_shape=)."
)
#: Said after torch refuses a reflection padding as wide as its input (or wider), or a
#: circular padding wider.
PADDING_TOO_WIDE = (
    "The input is too small for the model: a reflection padding as wide as the feature map "
    "reaching it, or a circular padding wider, reads past its other side. Give a larger "
    "input (--input-shape / input_shape=)."
)
#: Said after torch refuses a resampling that leaves no element (a scale below one).
NOTHING_RESAMPLED = (
    "The input is too small for the model: a resampling (interpolate, Upsample) scaling "
    "the feature map reaching it down leaves no element. Give a larger input "
    "(--input-shape / input_shape=)."
)
#: Said after torch refuses to normalise one value per channel (a batch norm computing
#: its input's statistics: in train mode; a group norm, in any mode), by every frontend.
ONE_VALUE_PER_CHANNEL = (
    "The input is too small for the model: a batch norm in train mode, or a group norm, "
    "needs more than one value per channel to normalise. Give a larger batch or input "
    "(--input-shape / input_shape=), or, for a batch norm keeping running statistics, "
    "analyse in eval mode (--eval / train=False)."
)
#: Said after torch refuses an instance norm one position per channel, by every frontend.
ONE_POSITION = (
    "The input is too small for the model: an instance norm computing its input's "
    "statistics needs more than one position per channel. Give a larger input "
    "(--input-shape / input_shape=), or, for an instance norm keeping running statistics, "
    "analyse in eval mode (--eval / train=False)."
)
# torch's words (its windows', paddings', resamplings' and norms' size checks) -> what to say
_HINTS = (
    *((words, INPUT_TOO_SMALL) for words in _TOO_SMALL),
    ("Padding size should be less than the corresponding input dimension", PADDING_TOO_WIDE),
    ("Padding value causes wrapping around more than once", PADDING_TOO_WIDE),
    ("Input and output sizes should be greater than 0", NOTHING_RESAMPLED),
    ("Expected more than 1 value per channel", ONE_VALUE_PER_CHANNEL),
    ("Expected more than 1 spatial element", ONE_POSITION),
)


def input_too_small(exc: BaseException) -> str | None:
    """What every frontend says where ``exc`` is torch refusing an input too small for an
    operation — a window larger than its input (:data:`INPUT_TOO_SMALL`), a padding as wide
    (:data:`PADDING_TOO_WIDE`), a resampling to nothing (:data:`NOTHING_RESAMPLED`), a norm
    given one value per channel (:data:`ONE_VALUE_PER_CHANNEL`, :data:`ONE_POSITION`) —
    else None.
    Such an error is a :class:`~gpa.errors.ShapeError` in every frontend: the model runs
    on a larger input.

    Example:
        >>> input_too_small(RuntimeError("Output size is too small"))[:34]
        'The input is too small for the mod'
        >>> refused = ValueError("Expected more than 1 value per channel when training")
        >>> input_too_small(refused) == ONE_VALUE_PER_CHANNEL
        True
    """
    text = str(exc)
    if _ASKED_FOR_NONE.search(text):  # (a size or scale of its own: no input helps)
        return None
    return next((hint for words, hint in _HINTS if words in text), None)


# torch's resampling refusal where the output size asked is negative (a negative
# scale_factor): what the call asks, not the input's size
_ASKED_FOR_NONE = re.compile(r"greater than 0, but got .*output[^-]*-\d")


def model_raised(
    name: str,
    exc: BaseException,
    *,
    where: str | None = None,
    during: str | None = None,
    site: Site | None = None,
    detail: str | None = None,
) -> str:
    """The message of a :class:`~gpa.errors.ModelError`: what ``name`` raised, in which
    module (``where``) and while what ran it (``during``), and the model's frame — or the
    line ``site`` (file, line number), where the exception was raised again outside the
    model's code (a traced operation run by gpa). ``detail``: the message in place of
    the exception's first line."""
    if detail is None:
        detail = next((line for line in str(exc).splitlines() if line.strip()), "").strip()
    inside = f" in module '{where}'" if where else ""
    lines = [f"{name} raised {type(exc).__name__}{inside}" + (f": {detail}" if detail else "")]
    frame = user_frame(exc, asked=True) if site is None else None
    if frame is not None:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    elif site is not None:
        lines.append(f'  File "{site[0]}", line {site[1]}')
        if source := linecache.getline(*site).strip():
            lines.append(f"    {source}")
    if too_small := input_too_small(exc):
        lines.append(too_small)
    elif during:
        lines.append(during)
    return "\n".join(lines)
