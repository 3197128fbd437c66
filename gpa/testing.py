"""Assertions for a project's own test suite.

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> report = assert_gradient_paths(net, input_shape=(1, 4), max_shortest=2, no_unreachable=True)
    >>> assert_gradient_paths(net, input_shape=(1, 4), max_shortest=1)
    Traceback (most recent call last):
        ...
    AssertionError: Sequential breaks 1 gradient-path rule:
      max-shortest 1: 1 layer exceeds it: 0 (2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gpa.api import analyze
from gpa.ci.config import parse_rules
from gpa.ci.rules import evaluate
from gpa.core.report import Report
from gpa.errors import GpaError

__all__ = ["assert_gradient_paths"]


def assert_gradient_paths(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[Any] | None = None,
    *,
    max_shortest: int | None = None,
    max_longest: int | None = None,
    no_unreachable: bool = False,
    max_mean_shortest: float | None = None,
    layers: Mapping[str, Mapping[str, int | bool]] | None = None,
    **options: Any,
) -> Report:
    """Analyse ``model`` and raise ``AssertionError`` listing every rule it breaks.

    The rules are those of ``gpa check`` (see :class:`gpa.ci.rules.Rules`); ``layers`` maps
    a glob pattern of layer names to ``{"max_shortest": n, "max_longest": m}`` and/or
    ``{"allow_unreachable": True}`` (``no_unreachable`` spares them). Every other
    keyword is an option of :func:`gpa.analyze` (``input_shape``, ``outputs``,
    ``layer_types``, ``leaf_modules``, ``train``, ``tracer``, ``channels``,
    ``count_convention``, ``name``). Errors in the model itself (it cannot be traced, the
    inputs do not fit) propagate as :class:`gpa.errors.GpaError`.

    Raises:
        AssertionError: the model breaks a rule, each broken rule on a line.
        GpaError: a rule's value is of the wrong kind, or no rule is given (the call would
            assert nothing, as ``gpa check`` refuses an empty gate).

    Returns:
        The report, for further assertions.
    """
    __tracebackhide__ = True  # pytest shows the user's assertion, not this function's lines
    given = {
        "max_shortest": max_shortest,
        "max_longest": max_longest,
        "no_unreachable": no_unreachable,
        "max_mean_shortest": max_mean_shortest,
        "layers": dict(layers) if layers else None,
    }
    # checked as [tool.gpa] and gpa check's flags check them (a limit of 0, a misspelt key)
    rules = parse_rules({k: v for k, v in given.items() if v is not None}, "assert_gradient_paths")
    if rules.is_empty:  # as gpa check refuses an empty gate: a test asserting nothing passes
        raise GpaError(
            "assert_gradient_paths: no rule given, so it would assert nothing; give "
            "max_shortest=, max_longest=, no_unreachable=True, max_mean_shortest= or a "
            "layers= limit (gpa.analyze analyses without asserting)"
        )
    report = analyze(model, example_inputs, **options)
    failed = [r for r in evaluate(report, rules) if not r.passed]
    if failed:
        word = "rule" if len(failed) == 1 else "rules"
        lines = [f"{report.model} breaks {len(failed)} gradient-path {word}:"]
        lines += [f"  {r.message}" for r in failed]
        raise AssertionError("\n".join(lines))
    return report
