"""Pictures of a :class:`~gpa.measure.measurement.Measurement` (``gpa.plot.draw`` kinds
``gradnorm`` and ``duplication``).

Each function draws on a new :class:`matplotlib.figure.Figure` (no pyplot) and returns it.
Artists carry ids: ``bar:LAYER`` (gradient-norm bars), ``shortest`` (the structural
shortest-path line), ``heatmap`` (the CKA image).

Example:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import torch, torch.nn as nn
    >>> from gpa.measure import measure
    >>> m = measure(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), torch.zeros(1, 2),
    ...             steps=1, batch_size=4)
    >>> sorted(p.get_gid() for p in gradnorm(m).axes[0].patches)
    ['bar:0', 'bar:1']
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

__all__ = ["duplication", "gradnorm"]


def _font(n: int) -> float:
    return max(4.0, min(9.0, 400 / max(n, 1)))


def gradnorm(m: Any) -> Figure:
    """Per layer (forward order): the weight-gradient norm relative to the network median
    (bars, log scale; frozen layers empty), and the structural shortest gradient path
    (line, right axis)."""
    names = list(m.layers)
    n = len(names)
    fig = Figure(figsize=(max(6.0, min(0.25 * n + 2, 24.0)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    for i, name in enumerate(names):
        rel = m.layers[name].relative_norm
        bar = ax.bar(i, rel if rel else 0.0, color="tab:blue", alpha=0.8)
        bar.patches[0].set_gid(f"bar:{name}")
    ax.set_yscale("log")
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_ylabel("‖∂L/∂W‖ / network median")
    ax.set_xticks(x, names, rotation=90, fontsize=_font(n))
    ax.set_title(
        f"{m.model}: measured gradient norm beside the shortest gradient path", fontsize=10
    )
    if m.report is not None:
        right = ax.twinx()
        short = [m.report.layers[k].shortest if k in m.report.layers else None for k in names]
        ys = [np.nan if s is None else s for s in short]
        (line,) = right.plot(x, ys, color="tab:red", marker="o", ms=3, lw=1)
        line.set_gid("shortest")
        right.set_ylabel("shortest gradient path (layers)", color="tab:red")
    return fig


def duplication(m: Any) -> Figure:
    """Heat map of the linear CKA between layers' received gradients, in forward order
    (grey: undefined), the chance level (``duplication["chance"]``) marked on the colour
    bar."""
    names = list(m.layers)
    n = len(names)
    size = max(4.0, min(0.22 * n + 2.5, 14.0))
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.add_subplot()
    data = np.ma.masked_invalid(np.asarray(m.similarity, dtype=float))
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
    image.set_gid("heatmap")
    ax.set_xticks(range(n), names, rotation=90, fontsize=_font(n))
    ax.set_yticks(range(n), names, fontsize=_font(n))
    figures = m.duplication
    ax.set_title(
        f"{m.model}: CKA of received gradients (mean {figures['mean']}, chance "
        f"{figures['chance']})",
        fontsize=10,
    )
    bar = fig.colorbar(image, ax=ax, label="linear CKA")
    if figures["chance"] is not None:  # what unrelated gradients reach (semantics §11)
        bar.ax.axhline(figures["chance"], color="white", linewidth=1.5, gid="chance")
    return fig
