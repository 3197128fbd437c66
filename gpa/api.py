"""``gpa.analyze`` and ``gpa.analyze_target``: the library's two entry points.

Both build an :class:`~gpa.options.AnalysisOptions` and hand it to the one pipeline,
:func:`gpa.pipeline.analyze_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gpa.core.report import Report
from gpa.errors import GpaError
from gpa.frontends.inputs import bind_inputs, declared_inputs, forward_parameters
from gpa.options import AnalysisOptions, Tracer, option_names
from gpa.pipeline import analyze_model
from gpa.target import load_target

__all__ = ["analyze", "analyze_target"]


def analyze(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> Report:
    """Compute the gradient paths of every layer of ``model`` (``docs/semantics.md``).

    Args:
        model: any ``nn.Module`` (it may live on the meta device).
        example_inputs: a tensor or a tuple of forward's positional arguments, or a
            dict of them by name (a Hugging Face ``BatchEncoding``: the arguments left
            out before the last one named take their defaults; an argument forward takes
            only by keyword cannot be given); only their shapes and dtypes are used (the
            autograd tracer runs the model on them, on the meta device when it can).
            Given neither these nor ``input_shape``, the inputs the model declares are
            used, as every command uses them: its ``input_shape`` attribute (every
            :mod:`gpa.models` entry's), else PyTorch Lightning's ``example_input_array``.
        name: display name of the model in the report.
        progress: called with the name of each phase as it starts (the CLI shows
            them on a terminal).
        **options: the analysis options, the fields of :class:`~gpa.options.AnalysisOptions`
            (the table "Options" of ``docs/semantics.md``):

            - ``input_shape``: instead of ``example_inputs``, one shape or a list of
              shapes (zeros of float32, or int64 for inputs read by an embedding);
            - ``outputs``: the returned values that feed the loss, by index, key or field
              name (dotted for nested ones, e.g. ``"1.logits"``, ``"policy.logits"``);
              default: all;
            - ``layer_types``: module classes (or class names) counted as layers (default
              :data:`gpa.frontends.modules.DEFAULT_LAYER_TYPES`);
            - ``leaf_modules``: module classes, class names or qualified submodule names
              not to trace into;
            - ``train``: analyse in train mode (default True) or eval mode;
            - ``tracer``: ``"auto"`` (default: fx, else export, else the autograd
              frontend, with a note), ``"fx"``, ``"export"`` (``torch.export``'s graph;
              needs inputs) or ``"autograd"`` (one forward pass, then the autograd graph;
              needs inputs);
            - ``channels``: also analyse channel segments (§8): each layer's output
              channels cut into ranges with their own gradient record, and the
              network's number of distinct gradient combinations (needs inputs and the fx or
              export frontend);
            - ``count_convention``: ``"torch"`` (all parameters) or ``"darknet"``
              (conv/linear weights only, the paper's Table 2).

    Returns:
        A :class:`~gpa.core.report.Report`: one record per layer in forward order
        (lengths are numbers of layers, §4), the network summary and notes.

    Raises:
        GpaError: an unknown option or a bad option value, or a model gpa cannot
            analyse; in particular TraceError (fx cannot trace it and no other frontend
            may or can be used), ModelError (its forward raised), ShapeError (the inputs
            do not fit it), NoLayersError (it has no layer), NoGradientError (no selected
            output carries gradient back into it).

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10))
        >>> report = analyze(net, input_shape=(1, 3, 8, 8))
        >>> [(r.name, r.shortest) for r in report.layers.values()]
        [('0', 2), ('3', 1)]
    """
    _refuse_forward_arguments(model, options)
    declared = None
    if example_inputs is None and options.get("input_shape") is None:
        declared = declared_inputs(model, strict=False)
        example_inputs = declared.example_inputs
        options = {**options, "input_shape": declared.shapes} if declared.shapes else options
    chosen = AnalysisOptions.of(example_inputs=bind_inputs(model, example_inputs), **options)
    if declared is None or declared.origin is None:
        return analyze_model(model, chosen, name=name, progress=progress)
    try:
        return analyze_model(model, chosen, name=name, progress=progress)
    except GpaError as exc:  # (the model's own inputs may be the cause: say so)
        return _without_declared_inputs(model, chosen, exc, declared.origin, name, progress)


def _without_declared_inputs(
    model: nn.Module,
    options: AnalysisOptions,
    exc: GpaError,
    origin: str,
    name: str | None,
    progress: Callable[[str], None] | None,
) -> Report:
    """The analysis of ``model`` on the inputs it declares (``origin``) raised ``exc``: an
    attribute of that name may mean something else to it (an image's size). Where the
    tracer needs no inputs, the analysis without them, as without the declaration, with a
    note; else ``exc``, saying where its inputs came from."""
    said = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    exc.args = (
        f"{said}\n(the inputs the model declares: {origin}; example_inputs or "
        "input_shape gives others)",
    )
    if options.tracer not in (Tracer.AUTO, Tracer.FX):
        raise exc
    try:
        report = analyze_model(
            model,
            options.replace(example_inputs=None, input_shape=None),
            name=name,
            progress=progress,
        )
    except GpaError:
        raise exc from None
    first = said.partition("\n")[0]
    report.notes.insert(
        0,
        f"the inputs the model declares ({origin}) do not fit it ({first}): analysed "
        "without inputs (example_inputs or input_shape gives others)",
    )
    return report


def _refuse_forward_arguments(model: nn.Module, options: dict[str, Any]) -> None:
    """An argument of ``forward`` given as an option (``input_ids=ids``) is a GpaError
    saying where forward's arguments go, rather than "unknown option"."""
    known = option_names(settable=False)
    arguments = forward_parameters(model)
    for name in options:
        if name not in known and name in arguments:
            raise GpaError(
                f"{name!r} is an argument of {type(model).__name__}.forward, not an option: "
                "give forward's arguments as example_inputs, by position (a tuple) or by "
                f"name (a dict: gpa.analyze(model, {{{name!r}: ...}}))"
            )


def analyze_target(
    target: str,
    kwargs: dict[str, Any] | None = None,
    options: AnalysisOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """:func:`analyze` the model named by a TARGET string (see :mod:`gpa.target`).

    ``kwargs`` go to the target's factory (``-k``). The inputs the target defines
    (``example_inputs``, ``input_shape``, ``model.input_shape``) are used unless
    ``options`` gives inputs.

    Raises:
        TargetError: the target cannot be loaded; otherwise as :func:`analyze`.

    Example:
        >>> analyze_target("gpa.models:plainnet", {"depth": 2}).network.max_shortest
        4
    """
    options = options or AnalysisOptions()
    loaded = load_target(target, kwargs, train=options.train)
    chosen = not options.has_inputs and loaded.inputs_from is not None
    if not options.has_inputs:
        options = options.replace(
            example_inputs=loaded.example_inputs, input_shape=loaded.input_shape
        )
    try:
        report = analyze_model(loaded.model, options, name=loaded.name, progress=progress)
    except GpaError as exc:
        if chosen and exc.args and isinstance(exc.args[0], str):  # (they may be the cause)
            exc.args = (f"{exc.args[0]}\n(inputs chosen by gpa: {loaded.inputs_from})",)
        raise
    report.notes[:0] = loaded.notes
    if chosen:  # (the size decides some numbers: FLOPs, and tokens' or windows' count)
        report.notes.insert(
            0, f"inputs chosen by gpa: {loaded.inputs_from}; --input-shape gives others"
        )
    return report
