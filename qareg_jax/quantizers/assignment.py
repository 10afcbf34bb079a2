"""Host-side nearest-level assignment to a sorted codebook, and the inertia of a result.

No N x K array: with sorted levels, the nearest level is decided by the k - 1
thresholds between neighbours, found by k - 1 comparisons (k <= 64) or a search.
A weight exactly half-way between two levels goes to the lower one, as in
:func:`qareg_jax.snap.assign`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..nearest_level import boundaries
from .common import PIECE, host_float, index_dtype

_CHUNK = 1 << 20  # elements per thread task / XLA call in assign_nearest
_COMPARE_MAX_K = 64  # up to this k, assign_nearest sums k - 1 comparisons (no search)
# Above it, assign_nearest uses the jitted XLA search (one compile per k, ~0.3 s) from
# this much work, n * ceil(log2 k); below it, threaded searchsorted is cheaper.
_FAST_WORK = 1 << 26


def assign_nearest(w: Any, codebook: Any) -> np.ndarray:
    """Index of the nearest level of a sorted ``codebook`` (k,) for every entry of ``w``.

    Exact, with the rule of :func:`qareg_jax.snap.assign`: a weight exactly half-way
    between two levels goes to the lower one (among equal levels, to the first).
    Up to k = 64 a sum of k - 1 comparisons, else a search of the k - 1 midpoints:
    O(N min(K, log K)) time, O(N) memory. Returns ``w.shape``, ``index_dtype(k)``.
    """
    arr = host_float(w)
    cb = np.asarray(codebook, np.float64)
    if cb.ndim != 1 or cb.size < 2:
        raise ValueError(f"codebook must have shape (k,) with k >= 2, got {cb.shape}")
    if np.any(np.diff(cb) < 0):
        raise ValueError("codebook must be sorted ascending")
    return assign_checked(arr, cb)


def round_down_sum(a: np.ndarray, b: Any, dtype: np.dtype) -> np.ndarray:
    """Largest ``dtype`` value <= the exact sum ``a + b`` of float64 values, elementwise.

    For ``x`` of that dtype, ``x > result`` iff ``x > a + b`` exactly. Only when the
    float64 sum is itself a ``dtype`` value can its rounding hide which side of it the
    exact sum lies; TwoSum's error term then decides.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        s = a + b
        t = s.astype(dtype)
        down = t > s
        on = t == s
        if on.any():
            bb = s - a
            err = (a - (s - bb)) + (b - bb)
            down |= on & (err < 0)
    return np.where(down, np.nextafter(t, dtype.type(-np.inf)), t)


def _thresholds(cb: np.ndarray, dtype: Any) -> np.ndarray:
    """(k-1,) thresholds in ``dtype`` of a sorted float64 ``cb``: x is nearer ``cb[j+1]``
    than ``cb[j]`` iff ``x > t[j]`` (exact; ties go to the lower level).

    :func:`qareg_jax.nearest_level.boundaries` in float64, rounded down to ``dtype``: for
    ``x`` of that dtype, ``x > floor(t)`` iff ``x > t``.
    """
    t = boundaries(cb)
    dtype = np.dtype(dtype)
    return t if dtype == np.float64 else round_down_sum(t, 0.0, dtype)


def _count_below_kernel(
    x: jax.Array, mids: jax.Array, out_dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """(number of ``mids`` < x, any subnormal x) for float32 ``x``; ``mids`` sorted.

    An unrolled branchless binary search on ``mids`` padded with +inf to a power of
    two (a fused single pass, no branches). Not :func:`qareg_jax.nearest_level.nearest_index`:
    its bucket table, rebuilt per call, made k = 65536 ~5x slower here (k = 256 and
    1024 were 1.5-3x faster). XLA on CPU treats subnormals as zero, so the caller
    redoes flagged chunks.
    """
    m = mids.shape[0]
    size = 1 << m.bit_length()  # > m: at least one +inf, so idx <= m
    table = jnp.concatenate([mids, jnp.full((size - m,), jnp.inf, mids.dtype)])
    idx = jnp.zeros(x.shape, jnp.int32)
    step = size // 2
    while step >= 1:
        idx = jnp.where(table[idx + step - 1] < x, idx + step, idx)
        step //= 2
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
    subnormal = jnp.any((bits != 0) & (bits < jnp.uint32(0x00800000)))
    return idx.astype(out_dtype), subnormal


_count_below = jax.jit(_count_below_kernel, static_argnums=2)


def _compare(x: np.ndarray, mids: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = #{j: x[i] > mids[j]}`` in cache-sized pieces, one pass per threshold."""
    hit = np.empty(min(PIECE, x.size), bool)
    for s in range(0, x.size, PIECE):
        xs, o = x[s : s + PIECE], out[s : s + PIECE]
        h = hit[: xs.size]
        o.fill(0)
        for m in mids:
            np.greater(xs, m, out=h)
            o += h


def _use_xla(arr: np.ndarray, k: int, mids: np.ndarray) -> bool:
    """Whether the jitted search pays off (float32, k > 64, enough work) and is exact."""
    tiny = np.finfo(np.float32).tiny
    return (
        arr.dtype == np.float32
        and k > _COMPARE_MAX_K
        and arr.size * (k - 1).bit_length() >= _FAST_WORK
        and k <= 2**16
        and not np.any((mids != 0) & (np.abs(mids) < tiny))  # XLA flushes subnormals
    )


def assign_checked(arr: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """:func:`assign_nearest` for an already validated float32/float64 ``arr`` and a
    sorted float64 ``cb`` (k,); returns ``arr.shape``, ``index_dtype(k)``."""
    mids = _thresholds(cb, arr.dtype)  # arr's dtype: no converted copy of arr
    flat = arr.ravel()
    dtype = index_dtype(cb.size)
    out = np.empty(flat.size, dtype)
    fast = _use_xla(arr, cb.size, mids)

    def search(start: int, stop: int) -> None:
        out[start:stop] = np.searchsorted(mids, flat[start:stop], side="left")

    def run(start: int) -> None:
        stop = min(start + _CHUNK, flat.size)
        if cb.size <= _COMPARE_MAX_K:
            _compare(flat[start:stop], mids, out[start:stop])
            return
        if not fast:
            search(start, stop)
            return
        chunk = flat[start:stop]
        if chunk.size < _CHUNK and flat.size > _CHUNK:  # one compiled shape: pad the tail
            chunk = np.concatenate([chunk, np.zeros(_CHUNK - chunk.size, np.float32)])
        idx, subnormal = _count_below(chunk, mids, dtype)
        if bool(subnormal):  # exact comparisons for chunks holding subnormal weights
            search(start, stop)
        else:
            out[start:stop] = np.asarray(idx)[: stop - start]

    starts = range(0, flat.size, _CHUNK)
    if len(starts) > 1:
        # numpy and XLA release the GIL: threads use every core, and chunks bound
        # the temporaries.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
            list(ex.map(run, starts))
    else:
        run(0)
    if np.any(cb[1:] == cb[:-1]):  # equal levels: the first of each run
        out = np.searchsorted(cb, cb, side="left").astype(dtype)[out]
    return out.reshape(arr.shape)


def _square_sum(d: np.ndarray) -> float:
    """Sum of squares of a float64 array, in place (pairwise sum: no BLAS threads)."""
    d *= d
    return float(d.sum())


def inertia(w: Any, codebook: Any, assignments: Any) -> float:
    """Sum over entries of ``(w - codebook[assignments])**2``, in float64."""
    flat, idx = np.asarray(w).ravel(), np.asarray(assignments).ravel()
    cb = np.asarray(codebook, np.float64)
    total = 0.0
    for s in range(0, flat.size, PIECE):  # pieces: no N-sized float64 temporaries
        total += _square_sum(flat[s : s + PIECE].astype(np.float64) - cb[idx[s : s + PIECE]])
    return total


def sorted_inertia(x: np.ndarray, codebook: np.ndarray) -> float:
    """:func:`inertia` of sorted ``x`` under :func:`assign_nearest` to a float32 ``codebook``,
    summed over the segments of the sorted data (no assignments, no gather)."""
    cb = codebook.astype(np.float64)
    edges = np.searchsorted(x, _thresholds(cb, x.dtype), side="right")
    edges = np.concatenate([[0], edges, [x.size]])
    total = 0.0
    for j in range(cb.size):
        for s in range(edges[j], edges[j + 1], PIECE):
            d = x[s : min(s + PIECE, edges[j + 1])].astype(np.float64)
            d -= cb[j]
            total += _square_sum(d)
    return total
