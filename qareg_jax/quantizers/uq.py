"""UQ: uniform quantization onto a grid ``delta * Z`` (sHAM's step search, or symmetric max-abs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import check_k, few_distinct, host_float, index_dtype, pad_codebook


def uq(w: Any, k: int, *, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Uniform quantization ``delta * round(w / delta)`` with at most k distinct levels.

    As in sHAM, delta is the smallest step giving <= k distinct rounded values; it
    is found by geometric bisection between the smallest gap of the distinct values
    (every value its own level: > k) and 2 max|w| (everything rounds to 0). The
    count is monotone in delta up to rounding jitter, so bisection finds a step at
    the boundary. Levels lie on the grid delta * Z: evenly spaced wherever the data
    is dense, with missing grid points only across empty grid cells (sparse tails).
    The codebook holds the used levels, padded; <= k distinct values: exact.

    ``symmetric=True``: the per-tensor symmetric max-abs grid of restricted-range
    signed b-bit integers (k = 2**b), a common PTQ convention (the gradient-l1
    paper quantizes symmetrically; its exact range convention was not available
    to us): ``n = (k - 1) // 2`` (7 at 4 bits),
    ``delta = max|w| / n``, levels ``delta * {-n, ..., n}`` (2n + 1 <= k; needs
    k >= 3). The codebook holds the whole grid, padded, so ``assignments - n`` is
    the signed integer code; <= k distinct values: exact, as for every method.
    """
    k = check_k(k)
    if symmetric and k < 3:
        raise ValueError(f"symmetric uq needs k >= 3 (levels -n..n), got {k}")
    arr = host_float(w)
    few = few_distinct(arr, k)
    if few is not None:
        return few
    if symmetric:
        n = (k - 1) // 2
        x = arr.astype(np.float64)
        delta = float(np.max(np.abs(x))) / n  # > 0: an all-zero w has one distinct value
        codes = np.clip(np.round(x / delta), -n, n)
        levels = (delta * np.arange(-n, n + 1, dtype=np.float64) + 0.0).astype(np.float32)
        return pad_codebook(levels, k), (codes + n).astype(index_dtype(k))
    xs = np.unique(arr.astype(np.float64))  # sorted distinct values, > k of them

    def count(delta: float) -> int:  # rounding is monotone: count changes on sorted xs
        q = np.round(xs / delta)
        return 1 + int(np.count_nonzero(q[1:] != q[:-1]))

    bad = float(np.min(np.diff(xs)))  # gaps >= delta keep all values apart: count > k
    good = 2.0 * max(abs(xs[0]), abs(xs[-1]))  # everything rounds to 0: one level
    while good > bad * (1.0 + 1e-12):
        mid = float(np.sqrt(bad * good))
        if count(mid) <= k:
            good = mid
        else:
            bad = mid
    rounded = np.round(xs / good)
    used = rounded[np.concatenate([[True], rounded[1:] != rounded[:-1]])]
    assignments = np.searchsorted(used, np.round(arr.astype(np.float64) / good))
    levels = (good * used + 0.0).astype(np.float32)  # + 0.0 turns -0.0 into 0.0
    return pad_codebook(levels, k), assignments.astype(index_dtype(k))
