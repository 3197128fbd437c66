"""The columns of gpa's text tables, by name, in display order.

The renderers (:mod:`gpa.render.text`, :mod:`gpa.measure.render`) lay them out; the CLI's
help lists them for ``--columns`` — which is why they live here, importing nothing: ``gpa
--help`` imports neither torch nor rich.

Example:
    >>> LAYER_COLUMNS[:3], MEASURED_COLUMNS[:3]
    (('type', 'calls', 'shortest'), ('type', 'shortest', 'longest'))
"""

from __future__ import annotations

__all__ = ["LAYER_COLUMNS", "MEASURED_COLUMNS"]

#: The per-layer table of ``gpa analyze`` (:func:`gpa.render.text.format_table`).
LAYER_COLUMNS: tuple[str, ...] = (
    "type",
    "calls",
    "shortest",
    "longest",
    "timestamps",
    "paths",
    "params",
    "flops",
    "sources",
    "segments",
    "combos",
)

#: The table of ``gpa measure`` after the layer's name (its CSV header's names,
#: :func:`gpa.measure.render.format_table`).
MEASURED_COLUMNS: tuple[str, ...] = (
    "type",
    "shortest",
    "longest",
    "combination",
    "weight_grad_norm",
    "weight_grad_norm_std",
    "output_grad_norm",
    "relative_norm",
    "frozen",
    "most_similar",
    "most_similar_cka",
)
