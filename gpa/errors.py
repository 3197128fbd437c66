"""Exceptions gpa raises for problems in the user's model or input.

Every error a user can cause derives from :class:`GpaError`; the CLI prints its
message and exits with code 2. Any other exception is a bug in gpa (exit 1).
"""

from __future__ import annotations


class GpaError(Exception):
    """A problem with the user's model, target or inputs (CLI exit code 2)."""


class TargetError(GpaError):
    """The target (file, import spec, factory) could not be loaded."""


class TraceError(GpaError):
    """torch.fx could not trace the model."""


class ShapeError(GpaError):
    """The example inputs do not fit the model (shape propagation failed)."""


class NoLayersError(GpaError):
    """The model contains no layer, so there is nothing to analyse."""


class ModelError(GpaError):
    """The model's own code raised an exception while gpa ran or traced it."""


class NoGradientError(GpaError):
    """No selected output carries gradient back into the model: nothing to analyse."""
