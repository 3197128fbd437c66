"""Linear centred kernel alignment (CKA, Kornblith et al. 2019) and Spearman's rank correlation.

For two feature matrices ``X`` (n × p) and ``Y`` (n × q) over the same n samples, with
``K = X Xᵀ``, ``L = Y Yᵀ`` and the centring matrix ``H = I - 11ᵀ/n``:

    CKA(X, Y) = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)

which equals ‖Ŷᵀ X̂‖²_F / (‖X̂ᵀ X̂‖_F ‖Ŷᵀ Ŷ‖_F) for the column-centred X̂, Ŷ. It lies in
[0, 1], is 1 for Y = X·c (any scale) and invariant to orthogonal transforms of either
side. It is undefined (NaN here) when either side is constant over the samples.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(16, 3))
    >>> round(float(linear_cka(x, 2 * x)), 6)
    1.0
    >>> round(float(spearman([1, 2, 3, 4], [10, 20, 40, 30])), 3)
    0.8
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["centred_gram", "chance_cka", "cka_matrix", "linear_cka", "spearman"]


def centred_gram(x: np.ndarray) -> np.ndarray:
    """``H X Xᵀ H`` for features ``x`` of shape (n, p) (float64, shape (n, n))."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x = x - x.mean(axis=0, keepdims=True)
    return x @ x.T


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of features ``x`` (n × p) and ``y`` (n × q); NaN when either is constant.

    Raises:
        ValueError: ``x`` and ``y`` have different numbers of samples (rows).
    """
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same samples on both sides, got {len(x)} and {len(y)}")
    return float(cka_matrix([x, y])[0, 1])


def cka_matrix(features: Sequence[np.ndarray]) -> np.ndarray:
    """Linear CKA between every pair of feature matrices (each n × p_i, the same n).

    Returns:
        A symmetric (k, k) float64 array; NaN in the rows and columns of constant features,
        1 on the diagonal elsewhere.
    """
    k = len(features)
    if k == 0:
        return np.zeros((0, 0))
    grams = np.stack([centred_gram(f).ravel() for f in features])  # (k, n²)
    inner = grams @ grams.T
    out = _aligned(inner, np.sqrt(np.diag(inner)))
    diagonal = np.diag(out).copy()  # a layer with itself: 1 by definition, not by rounding
    np.fill_diagonal(out, np.where(np.isfinite(diagonal), 1.0, np.nan))
    return out


def chance_cka(features: Sequence[np.ndarray], seed: int = 0, rounds: int = 4) -> float | None:
    """The CKA that unrelated features reach over these samples: the median over pairs
    ``i < j`` of the linear CKA of ``features[i]`` and ``features[j]`` with its samples
    (rows) shuffled, averaged over ``rounds`` shuffles drawn from ``seed``.

    Shuffling one side keeps each side's own spread and breaks only what ties sample ``s``
    of one to sample ``s`` of the other: a permutation baseline. With few samples for the
    features (n ≲ p) linear CKA is biased toward 1 — ``HKH`` of n samples spans at most
    n − 1 directions — so CKA near this level tells nothing about the pair. None without a
    pair whose CKA is defined.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> few = [rng.normal(size=(4, 64)) for _ in range(3)]
        >>> many = [rng.normal(size=(400, 64)) for _ in range(3)]
        >>> chance_cka(few) > 0.8, chance_cka(many) < 0.3
        (True, True)
    """
    k = len(features)
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    centred = np.stack([centred_gram(f) for f in features])  # (k, n, n)
    n = centred.shape[1]
    grams = centred.reshape(k, -1)
    norms = np.sqrt(np.einsum("ij,ij->i", grams, grams))  # (a shuffle keeps them)
    total = np.zeros((k, k))
    for _ in range(rounds):
        order = rng.permutation(n)  # (centring commutes with reordering the samples)
        total += _aligned(grams @ centred[:, order][:, :, order].reshape(k, -1).T, norms)
    shuffled = total / rounds
    values = ((shuffled + shuffled.T) / 2)[np.triu_indices(k, 1)]
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _aligned(inner: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """``inner[i, j] / (norms[i] norms[j])``: the inner products (k, k) of centred Gram
    matrices over their Frobenius norms (k,), clipped to [0, 1]; NaN where a norm is 0."""
    scale = np.outer(norms, norms)
    tiny = norms.max() ** 2 * 1e-24 if norms.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(scale > tiny, inner / np.where(scale > 0, scale, 1.0), np.nan)
    return np.clip(out, 0.0, 1.0)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two samples (ties: mean ranks); None when either side
    is constant or has fewer than two values.

    Raises:
        ValueError: the samples have different lengths.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs samples of equal length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return None if denom == 0 else float((rx * ry).sum() / denom)
