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
import traceback

from gpa.frontends.frames import user_frame

__all__ = ["briefly", "raised_by_model", "model_raised"]

# The instructions of a raise or assert statement (a bare ``raise`` re-raises).
_RAISING = frozenset({"RAISE_VARARGS", "RERAISE"})


def raised_by_model(exc: BaseException) -> traceback.FrameSummary | None:
    """The frame of the model's code whose ``raise`` (or ``assert``) statement raised
    ``exc``, or None when something else raised it (torch, gpa, a tracing proxy, or a
    built-in the model called)."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = user_frame(exc)
    code = tb.tb_frame.f_code
    if frame is None or frame.filename != code.co_filename or frame.lineno != tb.tb_lineno:
        return None  # the innermost frame is not the model's
    at = {i.offset: i.opname for i in dis.get_instructions(code)}.get(tb.tb_lasti)
    return frame if at in _RAISING else None


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


def model_raised(
    name: str, exc: BaseException, *, where: str | None = None, during: str | None = None
) -> str:
    """The message of a :class:`~gpa.errors.ModelError`: what ``name`` raised, in which
    module (``where``) and while what ran it (``during``), and the model's frame."""
    detail = next((line for line in str(exc).splitlines() if line.strip()), "").strip()
    inside = f" in module '{where}'" if where else ""
    lines = [f"{name} raised {type(exc).__name__}{inside}" + (f": {detail}" if detail else "")]
    frame = user_frame(exc)
    if frame is not None:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    if during:
        lines.append(during)
    return "\n".join(lines)
