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
import traceback

import torch

__all__ = ["user_frame"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_GPA_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback in the user's code (not torch, not gpa)."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [
        f
        for f in frames
        if not f.filename.startswith((_TORCH_DIR, _GPA_DIR)) and not f.filename.startswith("<")
    ]
    return user[-1] if user else None
