"""PWS: probabilistic weight sharing, unbiased stochastic rounding onto quantile levels."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import check_k, host_float, index_dtype, pad_codebook

PWS_SEED_MSG = "pws needs an explicit seed (keyword seed=<int>): it rounds at random"


def pws(w: Any, k: int, *, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilistic weight sharing: unbiased stochastic rounding onto quantile levels.

    Levels are the quantiles q_{j/(k-1)}, j = 0..k-1 (numpy "linear" quantiles, so
    the ends are min and max); a weight in [v, V] between consecutive levels becomes
    V with probability (w - v) / (V - v), else v, so E[codebook[a]] = w (w.r.t. the
    float32 levels). Tied quantiles (point masses in w) collapse to one level.
    ``seed`` (int) is required: the result is random.
    """
    k = check_k(k)
    if seed is None:
        raise ValueError(PWS_SEED_MSG)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    arr = host_float(w)
    flat = arr.ravel().astype(np.float64)
    levels = np.unique(np.quantile(flat, np.linspace(0.0, 1.0, k)).astype(np.float32))
    if levels.size == 1:
        return pad_codebook(levels, k), np.zeros(arr.shape, index_dtype(k))
    lv = levels.astype(np.float64)
    low = np.clip(np.searchsorted(lv, flat, side="right") - 1, 0, lv.size - 2)
    v, vv = lv[low], lv[low + 1]
    prob = np.clip((flat - v) / (vv - v), 0.0, 1.0)
    up = np.random.default_rng(seed).random(flat.size) < prob
    return pad_codebook(levels, k), (low + up).astype(index_dtype(k)).reshape(arr.shape)
