"""Argument checks and codebook helpers shared by every quantizer (host-side numpy)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

# One k check and one index dtype for every module (re-exported by the package).
from ..nearest_level import index_dtype
from ..validation import MAX_K, check_k

__all__ = [
    "MAX_K",
    "PIECE",
    "check_k",
    "check_max_iter",
    "few_distinct",
    "host_float",
    "index_dtype",
    "pad_codebook",
]

PIECE = 1 << 16  # elements per cache-sized piece of an O(N) numpy pass


def check_max_iter(max_iter: Any) -> None:
    """``TypeError`` unless ``max_iter`` is an int, ``ValueError`` unless it is >= 1."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)):
        raise TypeError(f"max_iter must be a positive int, got {type(max_iter).__name__}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")


def host_float(w: Any, name: str = "w") -> np.ndarray:
    """``w`` as a host numpy array; float16/bfloat16 widened to float32 (exact).

    Raises ``TypeError`` for a non-float ``w``, ``ValueError`` if empty or not finite.
    """
    arr = np.asarray(w)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    # min/max propagate NaN and inf without allocating an N-sized bool mask.
    if not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def pad_codebook(levels: np.ndarray, k: int) -> np.ndarray:
    """``levels`` (sorted, <= k) as a float32 (k,) codebook, padded with its last level."""
    out = np.empty(k, np.float32)
    out[: levels.size] = levels
    out[levels.size :] = out[levels.size - 1]
    return out


def few_distinct(arr: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact (padded codebook (k,), assignments ``arr.shape``) when ``arr`` has <= k
    distinct values, else None."""
    flat = arr.ravel()
    uniq = np.unique(flat[: 2 * k + 1])
    if uniq.size > k:  # cheap early exit: a prefix already has too many values
        return None
    uniq = np.unique(flat)
    if uniq.size > k:
        return None
    idx = np.searchsorted(uniq, flat).astype(index_dtype(k)).reshape(arr.shape)
    return pad_codebook(uniq.astype(np.float32), k), idx
