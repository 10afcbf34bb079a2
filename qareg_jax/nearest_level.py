"""The nearest quantization level of every weight: one search for penalties and snapping.

- :func:`boundaries`: exact decision thresholds between neighbouring sorted levels
  (numpy or JAX, in the input's dtype);
- :func:`nearest_index` / :func:`with_nearest`: the index (and value) of the
  nearest sorted level, O(N log K) and no ``N x K`` array: a compare chain for
  K <= 32, above that a bucket-table lookup with an exact binary search as fallback;
- :func:`assign`: the nearest level's index into levels in any order (snapping);
- :func:`index_dtype` / :func:`check_index_dtype`: the dtype of stored assignments.

Thresholds ``t`` (K - 1,) between sorted levels ``cs`` decide ``w > t[j]`` iff ``w``
belongs to ``cs[j + 1]`` rather than ``cs[j]``; ties (``w == t[j]``) go to the lower level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .validation import check_float_array, check_k, check_levels

Array = jax.Array

# Above this K the compare chain (K - 1 fused selects per weight) loses to a
# table lookup (a few gathers per weight).
CHAIN_MAX_K = 32
# Above CHAIN_MAX_K the nearest index is looked up in a table of _BUCKETS buckets
# per threshold, then refined by up to _REFINE comparisons.
_BUCKETS = 16
_REFINE = 2


def boundaries(cs: Any) -> Any:
    """Exact thresholds ``t`` (K-1,) of sorted levels ``cs`` (K,), in ``cs``'s dtype.

    ``w > t[j]`` iff ``w`` is nearer ``cs[j+1]`` than ``cs[j]``; exact ties go to the
    lower level. The float midpoint ``fl(a + b) / 2`` can be off by half an ulp;
    TwoSum gives the exact error ``e = (a + b) - fl(a + b)``, and for ``e < 0`` the
    true midpoint lies just below the float one, which then already belongs to the
    upper level. A numpy ``cs`` gives a numpy result (for the host quantizers).
    """
    xp = np if isinstance(cs, np.ndarray) else jnp
    a, b = cs[:-1], cs[1:]
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    mid = s / 2
    return xp.where(e < 0, xp.nextafter(mid, xp.full_like(mid, -xp.inf)), mid)


def nearest_index(w: Array, cs: Array, bounds: Array) -> Array:
    """Index into sorted ``cs`` (K,) of each weight's level, shape of ``w``, int32.

    ``bounds`` (K-1,) are the thresholds between neighbouring ``cs`` (:func:`boundaries`,
    or plain midpoints); ``w`` equal to a threshold goes to the lower level.
    Jit-able, O(N log K), no ``N x K`` array.
    """
    return with_nearest(lambda idx, near: idx, w, cs, bounds, need_value=False)


def nearest_value(w: Array, cs: Array, bounds: Array) -> Array:
    """``cs[nearest_index(w, cs, bounds)]``, shape of ``w``, dtype of ``cs``."""
    return with_nearest(lambda idx, near: near, w, cs, bounds)


def with_nearest(
    fn: Callable[[Array, Array | None], Any],
    w: Array,
    cs: Array,
    bounds: Array,
    need_value: bool = True,
) -> Any:
    """``fn(idx, near)`` with the nearest sorted level's index (int32) and value.

    Up to CHAIN_MAX_K a compare chain (selects against scalars vectorise; gathers
    do not). Above it, XLA CPU gathers cost ~10x an element-wise op: the index is
    looked up in a uniform bucket table (1 gather) and refined (_REFINE gathers)
    instead of a log2(K)-gather binary search, whenever no bucket holds more
    thresholds than the refinement steps over; else the exact binary search runs.
    ``fn`` runs inside the branches, so the N-sized index need not be materialised.
    ``near`` is None when ``need_value`` is False on the compare-chain path.
    """
    k = cs.shape[0]
    if k <= CHAIN_MAX_K:
        idx = jnp.zeros(w.shape, jnp.int32)
        near = jnp.full(w.shape, cs[0], cs.dtype) if need_value else None
        for j in range(k - 1):
            above = w > bounds[j]
            idx = idx + above.astype(jnp.int32)
            if need_value:
                near = jnp.where(above, cs[j + 1], near)
        return fn(idx, near)
    table, fits = _bucket_table(bounds)
    return jax.lax.cond(
        fits,
        lambda: (lambda i: fn(i, cs[i]))(_bucket_search(w, bounds, table)),
        lambda: (lambda i: fn(i, cs[i]))(_binary_search(w, bounds)),
    )


def _bucket_of(x: Array, bounds: Array) -> Array:
    """A monotone non-decreasing bucket number in ``[0, m]``, ``m = _BUCKETS * (K - 1)``."""
    m = _BUCKETS * bounds.shape[0]
    span = bounds[-1] - bounds[0]
    scale = m / jnp.where(span > 0, span, 1)
    scale = jnp.where((span > 0) & jnp.isfinite(scale), scale, 0)
    return jnp.clip(jnp.floor((x - bounds[0]) * scale), 0, m).astype(jnp.int32)


def _bucket_table(bounds: Array) -> tuple[Array, Array]:
    """``table[b]``: the number of thresholds in buckets ``< b`` (shape ``(m + 2,)``), and
    whether every bucket holds at most ``_REFINE`` thresholds.

    Since the bucket map is monotone, a ``w`` in bucket ``b`` has every threshold of
    a lower bucket below it and every threshold of a higher bucket above it: its
    index lies in ``[table[b], table[b + 1]]``.
    """
    m = _BUCKETS * bounds.shape[0]
    table = jnp.searchsorted(_bucket_of(bounds, bounds), jnp.arange(m + 2), side="left")
    return table.astype(jnp.int32), jnp.max(jnp.diff(table)) <= _REFINE


def _bucket_search(w: Array, bounds: Array, table: Array) -> Array:
    padded = jnp.concatenate([bounds, jnp.full((_REFINE,), jnp.inf, bounds.dtype)])
    idx = table[_bucket_of(w, bounds)]
    for _ in range(_REFINE):
        idx = idx + (w > padded[idx]).astype(jnp.int32)
    return idx


def _binary_search(w: Array, bounds: Array) -> Array:
    # Unrolled and branchless, so it fuses into one pass (jnp.searchsorted's
    # default loops over the array log K times and was ~6x slower here).
    k = bounds.shape[0] + 1
    size = 1 << (k - 1).bit_length()
    table = jnp.concatenate([bounds, jnp.full((size - (k - 1),), jnp.inf, bounds.dtype)])
    idx = jnp.zeros(w.shape, jnp.int32)
    step = size // 2
    while step >= 1:
        idx = jnp.where(table[idx + step - 1] < w, idx + step, idx)
        step //= 2
    return idx


def index_dtype(k: int) -> np.dtype:
    """Smallest unsigned integer dtype holding ``k - 1``: uint8/uint16/uint32."""
    return _smallest_unsigned(check_k(k))


def _smallest_unsigned(k: int) -> np.dtype:
    if k <= 2**8:
        return np.dtype(np.uint8)
    if k <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def check_index_dtype(k: int, index_dtype: Any, *, unsigned: bool = False) -> np.dtype:
    """``index_dtype`` checked to hold ``k - 1``; the smallest unsigned dtype if None.

    Raises:
      TypeError: not an integer dtype (not an unsigned one with ``unsigned``).
      ValueError: it cannot hold ``k - 1``.
    """
    if index_dtype is None:
        return _smallest_unsigned(check_k(k))
    kind = "an unsigned integer" if unsigned else "an integer"
    try:
        dtype = np.dtype(index_dtype)
    except TypeError:
        raise TypeError(f"index_dtype must be {kind} dtype, got {index_dtype!r}") from None
    if not np.issubdtype(dtype, np.unsignedinteger if unsigned else np.integer):
        raise TypeError(f"index_dtype must be {kind} dtype, got {dtype}")
    if np.iinfo(dtype).max < k - 1:
        raise ValueError(
            f"K={k} does not fit the index dtype {dtype}: it cannot hold index {k - 1} "
            f"(K <= {np.iinfo(dtype).max + 1})"
        )
    return dtype


def assign(w: Array, levels: Array, *, index_dtype: Any = None) -> Array:
    """Index of the nearest level of each weight.

    Args:
      w: weights, any shape, floating dtype.
      levels: ``(K,)`` levels in any order (duplicates allowed).
      index_dtype: integer dtype of the result; default the smallest unsigned
        dtype holding ``K - 1`` (uint8 for K <= 256).

    Returns:
      Shape of ``w``: indices into ``levels`` as given (not sorted). Ties go to
      the lower level, among equal levels to the first one. Jit-able, O(N log K),
      no ``N x K`` array.
    """
    w = check_float_array(w, "w")
    levels = check_levels(levels, "levels")
    k = levels.shape[0]
    dtype = check_index_dtype(k, index_dtype)
    cd = jnp.promote_types(jnp.promote_types(w.dtype, levels.dtype), jnp.float32)
    order = jnp.argsort(levels)  # stable: equal levels keep their order
    cs = levels[order].astype(cd)
    first = order[jnp.searchsorted(cs, cs, side="left")]  # first of each run of equal levels
    idx = nearest_index(w.astype(cd), cs, boundaries(cs))
    return first[idx].astype(dtype)
