"""The user's own frame in a traceback, for error messages that point at the model's code.

Example (model code compiled from a file, as a model's module is):
    >>> source = '''
    ... def forward():
    ...     raise ValueError("bad")
    ... '''
    >>> namespace = {}
    >>> exec(compile(source, "model.py", "exec"), namespace)
    >>> try:
    ...     namespace["forward"]()
    ... except ValueError as exc:
    ...     frame = user_frame(exc)
    >>> frame.name, frame.filename, frame.lineno
    ('forward', 'model.py', 3)
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import traceback

import torch

from gpa.names import PACKAGE_DIRS

__all__ = ["Site", "caller_site", "stack_trace_site", "user_frame"]

# with a trailing separator: torchvision's and torchaudio's files are not torch's
_TORCH_DIR = os.path.join(os.path.dirname(torch.__file__), "")
_GPA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")
# Python's standard library: torch calls it too (torch.export binds the inputs with
# inspect), and a model calls it as it calls a built-in. Packages installed there are not it.
_STDLIB_DIRS = tuple({os.path.join(sysconfig.get_paths()[k], "") for k in ("stdlib", "platstdlib")})


def _in_stdlib(filename: str) -> bool:
    return filename.startswith(_STDLIB_DIRS) and not any(p in filename for p in PACKAGE_DIRS)


def user_frame(exc: BaseException, *, asked: bool = False) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback in the user's code (not torch, not gpa,
    not Python's standard library). ``asked``: past the frames of an attribute lookup
    (``__getattr__``, ``__getattribute__``: a configuration object's, raising
    AttributeError for a key it lacks) to the line that asked, where there is one."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if _is_model_file(f.filename)]
    while asked and len(user) > 1 and user[-1].name in _LOOKUPS:
        user.pop()
    return user[-1] if user else None


_LOOKUPS = frozenset({"__getattr__", "__getattribute__"})


#: A place in the user's source: (file name, line number).
Site = tuple[str, int]

# gpa's own model code (the zoo) is model code; the rest of gpa is the analyser.
_MODELS_DIR = os.path.join(_GPA_DIR, "models", "")


def _is_model_file(filename: str) -> bool:
    """Code a model is written in: anything but torch, gpa's analyser, Python's standard
    library and generated code."""
    if filename.startswith(_MODELS_DIR):
        return True
    return not filename.startswith((_TORCH_DIR, _GPA_DIR, "<")) and not _in_stdlib(filename)


def caller_site() -> Site | None:
    """Where the model's code called into torch, for a frontend's hook or tracer callback:
    past the caller's own frames (gpa) and torch's, the first frame, if it is model code
    (None otherwise, and where none is below the frontend's call: torch's ``Sequential``
    calling a layer of a model that is one). Walks frame objects only, reading no source
    (cheap enough for every traced operation).

    Example:
        >>> caller_site() is None  # called from here: no model code in between
        True
    """
    frame = sys._getframe(1)
    passed = _PASSED
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename == _ENTRY:  # past the model's call: torch's code called this one
            return None
        over = passed.get(filename)
        if over is None:
            over = passed[filename] = _passed_over(filename)
        if not over:
            break
        frame = frame.f_back
    if frame is None:
        return None
    filename = frame.f_code.co_filename
    model = _MODEL_FILES.get(filename)
    if model is None:
        model = _MODEL_FILES[filename] = _is_model_file(filename)
    return (filename, frame.f_lineno) if model else None


# file name -> whether caller_site passes over it: the same few files, frame after frame
_PASSED: dict[str, bool] = {}
# file name -> whether it is model code (:func:`_is_model_file`), for the same reason
_MODEL_FILES: dict[str, bool] = {}
# where every frontend is called from (gpa.frontends.gradient_graph): a frame above it
# is the caller's of the analysis (a script, the CLI), not the model's
_ENTRY = os.path.join(_GPA_DIR, "frontends", "__init__.py")


def _passed_over(filename: str) -> bool:
    """torch's code, or gpa's own but for its model zoo (gpa's tracer and torch.fx's call
    each other: a module call passes through both)."""
    if filename.startswith(_GPA_DIR):
        return not filename.startswith(_MODELS_DIR)
    return filename.startswith(_TORCH_DIR)


_FRAME_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def stack_trace_site(stack_trace: str | None) -> Site | None:
    """The innermost frame of model code in a stack trace as fx and torch.export record
    it in ``node.meta["stack_trace"]`` (``File "…", line N, in …`` lines, outermost first).

    Example:
        >>> stack_trace_site('  File "net.py", line 12, in forward\\n    y = self.conv(x)\\n')
        ('net.py', 12)
    """
    if not stack_trace:
        return None
    found = [
        (name, int(line)) for name, line in _FRAME_LINE.findall(stack_trace) if _is_model_file(name)
    ]
    return found[-1] if found else None
