"""Element-wise quantization-aware penalties.

Every function maps a weight array ``w`` (any shape, float32 / bfloat16 /
float16 / float64) to an array of the same shape and dtype holding the
per-weight penalty; callers choose the reduction (``penalty.py`` takes the mean
per layer by default). All are pure, jit-able and differentiable.

Static (fixed minima on the layer interval ``[lo, hi]``, ``x = (w - lo) / (hi - lo)``):

- ``sine``:   ``sin^2(pi (K-1) x)``, minima at ``x = j / (K-1)`` (grid with both ends);
- ``cosine``: ``cos^2(pi K x)``, minima at ``x = (2j + 1) / (2K)`` (the K bin centres).

Outside ``[lo, hi]`` both continue with a quadratic wall of the same curvature
as the periodic part at the boundary (value and slope continuous), so weights
cannot escape into other periods. ``lo`` / ``hi`` are constants: no gradient
flows into them.

Dynamic (representatives ``reps`` of shape ``(K,)`` are differentiable too):

- ``nearest``: ``min_k (w - c_k)^2`` (our reading of RM);
- ``product``: ``(prod_k (w - c_k)^2)^(1/K)`` (alternative RM);
- ``softmin``: ``-tau log((1/K) sum_k exp(-(w - c_k)^2 / tau))`` (our reading of RE);
- ``wells``:   ``1 - max_k exp(-(w - c_k)^2 / (2 sigma^2))`` (``mode="max"``) or
  ``1 - mean_k ...`` (``mode="mean"``) (alternative RE).

Performance: nothing here materialises an ``N x K`` array. Each penalty has a
``jax.custom_vjp`` whose residuals are only its inputs, so the backward pass
recomputes from ``w`` instead of storing per-weight intermediates (autodiff
would keep several ``N``-sized residuals per layer, or ``N x K`` for the sums
over representatives). ``nearest`` (and ``wells(mode="max")``) find the nearest
representative with a compare chain (K <= 32) or a bucket-table lookup over the
sorted midpoints (O(N), exact binary search as fallback); ``softmin``, ``product`` and
``wells(mode="mean")`` need every representative by definition: they scan over
``K`` with ``O(N K)`` time; :func:`all_reps_total` (their sum, what ``penalty``
uses) does it block by block, with O(block) temporaries.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .nearest import nearest_index, nearest_value, with_nearest  # noqa: F401 (re-export)

Array = jax.Array

# Up to this K, nearest's backward (element-wise path) sums per representative with
# one variadic reduction, above it with a scatter-add.
_VARIADIC_MAX_K = 2
# Up to this K, nearest_total's per-representative sums come from threshold sums
# (_threshold_stats; CPU time on a 4096 x 4096 kernel at K = 3 / 4 / 8: 20 / 25 /
# 67 ms, blocked scatter-add 80 / 60 / 50 ms).
_THRESHOLD_MAX_K = 4
# Block length of the blocked penalties (bounds their temporaries).
_BLOCK = 1 << 20
# Partial sums per representative in the scatter-add path of _cluster_sums.
_LANES = 64
# Row length of the first level of the variadic reduction (see _partial_axes).
_ROW = 512
# A float32 sin(pi t) on |t| <= 1/2: Taylor series to degree 11 (|error| < 6e-8),
# cheaper than the general-purpose sin since the range reduction is exact here.
_SIN_COEFFS = tuple(
    (-1) ** n * math.pi ** (2 * n + 1) / math.factorial(2 * n + 1) for n in range(6)
)
_COS_COEFFS = tuple((-1) ** n * math.pi ** (2 * n) / math.factorial(2 * n) for n in range(7))


# --------------------------------------------------------------------------- checks


def check_k(k: object, name: str = "k") -> int:
    """``k`` as an int >= 2, else a ``ValueError`` naming the argument."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 2:
        raise ValueError(f"{name} must be an integer >= 2 (the number of levels), got {k!r}")
    return int(k)


def check_positive(value: object, name: str) -> None:
    """Raise if a concrete hyper-parameter is not a finite number > 0."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        v = np.asarray(np.nan)
    if v.size != 1 or not np.isfinite(v) or float(v) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_interval(lo: object, hi: object) -> None:
    """Raise if a concrete interval is not finite with ``lo < hi``."""
    if isinstance(lo, jax.core.Tracer) or isinstance(hi, jax.core.Tracer):
        return
    lo_, hi_ = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo_.size != 1 or hi_.size != 1 or not (np.isfinite(lo_) and np.isfinite(hi_)):
        raise ValueError(f"interval bounds lo, hi must be finite scalars, got lo={lo!r}, hi={hi!r}")
    if float(lo_) >= float(hi_):
        raise ValueError(f"interval must satisfy lo < hi, got lo={float(lo_)}, hi={float(hi_)}")


def check_float(w: object, name: str = "w") -> Array:
    """``w`` as a floating-point array, else a ``TypeError`` naming the argument."""
    arr = w if isinstance(w, jax.Array | np.ndarray) else jnp.asarray(w)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr


def _check_reps(reps: object) -> Array:
    reps = check_float(reps, "reps")
    if reps.ndim != 1 or reps.shape[0] < 2:
        raise ValueError(f"reps must have shape (K,) with K >= 2, got shape {reps.shape}")
    return reps


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Low-precision inputs are computed in float32 and cast back."""
    return jnp.promote_types(dtype, jnp.float32)


# ------------------------------------------------------------------------ static


def _poly(x2: Array, coeffs: tuple[float, ...]) -> Array:
    acc = jnp.full_like(x2, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = acc * x2 + c
    return acc


def _sin_cos_pi(t: Array) -> tuple[Array, Array]:
    """``(sin(pi t), cos(pi t))`` up to a common sign, after exact range reduction."""
    f = t - jnp.round(t)
    f2 = f * f
    return f * _poly(f2, _SIN_COEFFS), _poly(f2, _COS_COEFFS)


def _periodic_parts(w, lo, hi, scale, shift, edge):
    cd = _compute_dtype(w.dtype)
    lo = jnp.asarray(lo, cd)
    width = jnp.asarray(hi, cd) - lo
    x = (w.astype(cd) - lo) / width
    s, c = _sin_cos_pi(scale * x + shift)
    below, above = x < 0, x > 1
    out = jnp.where(below, x, jnp.where(above, x - 1, 0.0))  # signed distance outside
    k2 = (math.pi * scale) ** 2
    value = jnp.where(below | above, edge + k2 * out * out, s * s)
    # d/dx: inside 2 pi scale sin cos; outside 2 k2 * out.
    dvalue_dx = jnp.where(below | above, 2 * k2 * out, 2 * math.pi * scale * s * c)
    return value, dvalue_dx / width


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _periodic(w, lo, hi, scale, shift, edge):
    value, _ = _periodic_parts(w, lo, hi, scale, shift, edge)
    return value.astype(w.dtype)


def _periodic_fwd(w, lo, hi, scale, shift, edge):
    return _periodic(w, lo, hi, scale, shift, edge), (w, lo, hi)


def _periodic_bwd(scale, shift, edge, res, g):
    w, lo, hi = res
    _, dv = _periodic_parts(w, lo, hi, scale, shift, edge)
    dw = (g.astype(dv.dtype) * dv).astype(w.dtype)
    return dw, jnp.zeros_like(lo), jnp.zeros_like(hi)


_periodic.defvjp(_periodic_fwd, _periodic_bwd)


def _static(w, lo, hi, *, scale: float, shift: float, edge: float) -> Array:
    lo_a = jnp.asarray(lo, _compute_dtype(w.dtype))
    hi_a = jnp.asarray(hi, _compute_dtype(w.dtype))
    return _periodic(w, lo_a, hi_a, scale, shift, edge)


def sine(w: Array, k: int, lo: float | Array, hi: float | Array) -> Array:
    """``sin^2(pi (k-1) x)`` with ``x = (w - lo) / (hi - lo)``; quadratic wall outside.

    Args:
      w: weights, any shape, floating dtype.
      k: number of levels (>= 2); minima at ``lo + j (hi - lo) / (k - 1)``, ``j = 0..k-1``.
      lo, hi: the layer interval, ``lo < hi`` (constants, not differentiated).

    Returns:
      Per-weight penalty in ``[0, 1]`` inside the interval, shape and dtype of ``w``.
    """
    w = check_float(w)
    k = check_k(k)
    check_interval(lo, hi)
    return _static(w, lo, hi, scale=float(k - 1), shift=0.0, edge=0.0)


def cosine(w: Array, k: int, lo: float | Array, hi: float | Array) -> Array:
    """``cos^2(pi k x)`` with ``x = (w - lo) / (hi - lo)``; quadratic wall outside.

    Minima at the ``k`` bin centres ``lo + (2j + 1)(hi - lo) / (2k)``, ``j = 0..k-1``.
    Shape and dtype of ``w``; see :func:`sine` for the arguments.
    """
    w = check_float(w)
    k = check_k(k)
    check_interval(lo, hi)
    return _static(w, lo, hi, scale=float(k), shift=-0.5, edge=1.0)


def static_levels(kind: str, k: int, lo: float, hi: float) -> np.ndarray:
    """The ``k`` minima of the static penalty ``kind`` ("sine" or "cosine"), shape (k,)."""
    k = check_k(k)
    check_interval(lo, hi)
    j = np.arange(k, dtype=np.float64)
    if kind == "sine":
        x = j / (k - 1)
    elif kind == "cosine":
        x = (2 * j + 1) / (2 * k)
    else:
        raise ValueError(f"kind must be 'sine' or 'cosine', got {kind!r}")
    return lo + x * (hi - lo)


# ------------------------------------------------------------------ nearest rep


def _sorted_reps(reps: Array, cd) -> tuple[Array, Array, Array]:
    order = jnp.argsort(reps)
    cs = reps[order].astype(cd)
    return order, cs, (cs[1:] + cs[:-1]) / 2


def _partial_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shortest run of trailing axes holding >= _ROW elements (all axes if none does).

    Reducing over these first and summing the partials after keeps float32
    accumulation error at O(row) instead of O(N): XLA CPU runs a variadic reduction
    as one sequential loop (measured: 6.5e-4 relative error on a 4096 x 4096
    kernel, 6.5e-8 with the two-level sum).
    """
    n = 1
    for axis in range(len(shape) - 1, 0, -1):
        n *= shape[axis]
        if n >= _ROW:
            return tuple(range(axis, len(shape)))
    return tuple(range(len(shape)))


def _cluster_sums(values: Array, idx: Array, k: int, variadic: bool) -> Array:
    """``out[j] = sum(values[idx == j])`` without an ``N x K`` array, shape (k,).

    Works on the arrays' own shapes (no ravel), so a kernel sharded over a mesh
    axis is reduced in place rather than gathered onto every device.
    """
    if variadic:
        # One fused pass: a K-operand reduction whose masked inputs XLA fuses in
        # (each operand recomputes ``values``: only for cheap ones), over trailing
        # rows; the small partials are then summed by XLA's accurate tree reduction.
        ops = tuple(jnp.where(idx == j, values, 0) for j in range(k))
        zeros = tuple(jnp.zeros((), values.dtype) for _ in range(k))
        partials = jax.lax.reduce(
            ops,
            zeros,
            lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)),
            _partial_axes(values.shape),
        )
        return jnp.stack([jnp.sum(p) for p in partials])
    # Spread over _LANES partial sums per representative (by position along the
    # last axis): a scatter-add accumulates each target sequentially, and one float32
    # accumulator per representative drifted by 7e-4 relative over a 4096 x 4096
    # kernel at K = 2 (the partials are then summed by XLA's tree reduction).
    lanes = min(_LANES, values.shape[-1]) if values.ndim else 1
    lane = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1) % lanes
    sums = jnp.zeros(k * lanes, values.dtype).at[idx * lanes + lane].add(values)
    return sums.reshape(k, lanes).sum(axis=1)


def _leading_blocks(shape: tuple[int, ...], block: int = _BLOCK) -> int:
    """Number of equal blocks along axis 0 that bring a block to <= ``block`` elements.

    Splitting only axis 0 leaves the other axes (and their sharding) untouched;
    1 when the array is small or axis 0 has no fitting divisor.
    """
    n = math.prod(shape)
    if n <= block or not shape:
        return 1
    rows, want = shape[0], -(-n // block)
    for d in range(want, min(rows, 4 * want) + 1):
        if rows % d == 0:
            return d
    return rows if rows <= 4 * want else 1


def _as_blocks(x: Array, block: int = _BLOCK) -> Array:
    """``x`` viewed as ``(nb, ...)`` equal blocks of about ``block`` elements along axis 0.

    Axes before the last two (a conv kernel's spatial axes) are merged first, so a
    (3, 3, C, D) kernel splits into up to 9 blocks; the last two axes (where
    sharding rules split kernels) are never touched. ``reshape(x.shape)`` undoes it.
    """
    if x.ndim >= 3:
        x = x.reshape(math.prod(x.shape[:-2]), *x.shape[-2:])
    elif x.ndim == 0:
        x = x.reshape(1)
    nb = _leading_blocks(x.shape, block)
    return x.reshape(nb, x.shape[0] // nb, *x.shape[1:])


def _unsort(sorted_values: Array, order: Array) -> Array:
    return jnp.zeros_like(sorted_values).at[order].set(sorted_values)


@jax.custom_vjp
def _nearest_sq(w, reps):
    cd = _compute_dtype(w.dtype)
    _, cs, mid = _sorted_reps(reps, cd)
    d = w.astype(cd) - nearest_value(w.astype(cd), cs, mid)
    return (d * d).astype(w.dtype)


def _nearest_fwd(w, reps):
    return _nearest_sq(w, reps), (w, reps)


def _nearest_bwd(res, g):
    w, reps = res
    cd = _compute_dtype(w.dtype)
    order, cs, mid = _sorted_reps(reps, cd)
    wc = w.astype(cd)
    k = cs.shape[0]

    # The compare chain gives the level with the index (no gather cs[idx] for K <= 32).
    idx, near = with_nearest(lambda idx, near: (idx, near), wc, cs, mid)
    gd = 2 * g.astype(cd) * (wc - near)
    sums = _cluster_sums(gd, idx, k, k <= _VARIADIC_MAX_K)
    return gd.astype(w.dtype), _unsort(-sums, order).astype(reps.dtype)


_nearest_sq.defvjp(_nearest_fwd, _nearest_bwd)


def _of_distance(d: Array, well: float | None) -> tuple[Array, Array]:
    """``(f(d), f'(d))`` for ``f = d^2`` (``well`` None) or ``f = 1 - exp(-well d^2)``."""
    if well is None:
        return d * d, 2 * d
    e = jnp.exp(-well * d * d)
    return 1 - e, 2 * well * d * e


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _nearest_total(w, reps, well):
    return _nearest_total_fwd(w, reps, well)[0]


def _threshold_stats(wc: Array, cs: Array, mid: Array) -> tuple[Array, Array]:
    """``(sum_i d_i^2, [sum_{i in k} 2 d_i]_k)`` for ``f = d^2`` in one fused reduction.

    Instead of masking by cluster (each operand recomputing the index), it sums
    ``w`` and counts weights above each midpoint (2 (K - 1) cheap operands); a
    cluster's sum is the difference of neighbouring thresholds:
    ``sum_{i in k} (w_i - c_k) = (A_{k-1} - A_k) - (N_{k-1} - N_k) c_k``. Counts are
    int32 (exact); sums are two-level, so the differences are as accurate as a
    float32 total of ``w``.
    """
    d = wc - nearest_value(wc, cs, mid)
    ops = [d * d, wc]
    for j in range(cs.shape[0] - 1):
        above = wc > mid[j]
        ops += [jnp.where(above, wc, 0), above.astype(jnp.int32)]
    partials = jax.lax.reduce(
        tuple(ops),
        tuple(jnp.zeros((), o.dtype) for o in ops),
        lambda x, y: tuple(u + v for u, v in zip(x, y, strict=True)),
        _partial_axes(wc.shape),
    )
    tot = [jnp.sum(p) for p in partials]
    zero_f, zero_i = jnp.zeros((), wc.dtype), jnp.zeros((), jnp.int32)
    above_sum = jnp.stack([tot[1], *tot[2::2], zero_f])
    above_n = jnp.stack([jnp.asarray(wc.size, jnp.int32), *tot[3::2], zero_i])
    n = (above_n[:-1] - above_n[1:]).astype(wc.dtype)
    return tot[0], 2 * ((above_sum[:-1] - above_sum[1:]) - n * cs)


def _nearest_total_fwd(w, reps, well):
    # One pass gives the total of f(d) and each representative's sum of f'(d) that
    # the backward pass needs for the reps, so it only recomputes d for dw.
    cd = _compute_dtype(w.dtype)
    order, cs, mid = _sorted_reps(reps, cd)
    k = cs.shape[0]
    wc = w.astype(cd)
    if well is None and k <= _THRESHOLD_MAX_K:
        total, sums = _threshold_stats(wc, cs, mid)
        return total, (w, reps, _unsort(sums, order))

    def stats(wb, idx, near):
        value, slope = _of_distance(wb - near, well)
        return jnp.sum(value), _cluster_sums(slope, idx, k, False)

    def block_stats(wb):
        return with_nearest(lambda idx, near: stats(wb, idx, near), wb, cs, mid)

    # The scatter-add needs its operands and indices in memory (as do the table
    # lookup's gathers): go block by block, so temporaries are O(block). Block sizes
    # by the compiled step peak (x plain) of AlexNet / VGG16 for nearest K = 16, wells
    # K = 2, nearest K = 256: quarter blocks everywhere 1.01, 1.17, 1.12 / 1.09, 1.24,
    # 1.23; full blocks everywhere 1.05, 1.20, - / 1.02, 1.15, -; quarter blocks for
    # dense kernels and full ones for conv kernels 1.03, 1.19, 1.11 / 1.02, 1.15, 1.17.
    blocks = _as_blocks(wc, _BLOCK // 4 if wc.ndim <= 2 else _BLOCK)
    if blocks.shape[0] == 1:
        total, sums = block_stats(wc)
    else:
        totals, block_sums = jax.lax.map(block_stats, blocks)
        total, sums = jnp.sum(totals), jnp.sum(block_sums, axis=0)
    return total, (w, reps, _unsort(sums, order))


def _nearest_total_bwd(well, res, g):
    w, reps, sums = res
    cd = _compute_dtype(w.dtype)
    _, cs, mid = _sorted_reps(reps, cd)
    wc = w.astype(cd)
    # dw is formed inside _with_nearest's branches: no other N-sized array leaves them.
    dw = with_nearest(
        lambda _, near: (g * _of_distance(wc - near, well)[1]).astype(w.dtype), wc, cs, mid
    )
    return dw, (-g * sums).astype(reps.dtype)


_nearest_total.defvjp(_nearest_total_fwd, _nearest_total_bwd)


def nearest_total(w: Array, reps: Array) -> Array:
    """``sum_i min_k (w_i - reps_k)^2`` as a scalar (float32 or wider).

    Equal to ``nearest(w, reps).sum()`` but cheaper to differentiate: the
    forward pass also collects each representative's sum of residuals, so the
    backward pass is one element-wise pass. ``penalty`` uses it for "nearest".
    """
    w = check_float(w)
    reps = _check_reps(reps)
    return _nearest_total(w, reps, None)


def wells_total(w: Array, reps: Array, sigma: float) -> Array:
    """``sum_i wells(w_i, reps, sigma, mode="max")`` as a scalar, one pass like nearest_total."""
    w = check_float(w)
    reps = _check_reps(reps)
    check_positive(sigma, "sigma")
    return _nearest_total(w, reps, 1.0 / (2.0 * float(sigma) ** 2))


def nearest(w: Array, reps: Array) -> Array:
    """``min_k (w - reps_k)^2``: squared distance to the nearest representative.

    Args:
      w: weights, any shape, floating dtype.
      reps: representatives, shape ``(K,)``, any order (sorted internally).

    Returns:
      Shape and dtype of ``w``. Gradients flow to ``w`` and to the nearest
      representative of each weight (the sum over the weights it owns).
    """
    w = check_float(w)
    reps = _check_reps(reps)
    return _nearest_sq(w, reps)


# ------------------------------------------------- sums over all representatives
#
# softmin, product and wells(mean) are sums over the K representatives of a
# per-pair term; every pass scans over k with carries the size of ``w`` (or of a
# block of it, for the totals), never K x N. Each kind is one function on
# compute-dtype arrays, ``terms(wc, rc, param) -> (value, h)``: the element-wise
# penalty and ``h(d)``, the derivative in ``w`` of the pair term at ``d = w - c_k``
# (so ``dw = sum_k h`` and ``dc_k = -sum_i h``). The element-wise penalty's backward
# pass recomputes them (no N-sized residual); the total's forward pass computes the
# gradients itself, since its cotangent is a scalar.


def _scan_reps(fn: Callable[[Array, Array], Array], init: Array, reps: Array) -> Array:
    return jax.lax.scan(lambda acc, c: (fn(acc, c), None), init, reps)[0]


def _backward_over_reps(h: Callable[[Array], Array], wc: Array, reps_c: Array):
    """``dw = sum_k h(w - c_k)`` and ``dc_k = -sum_i h(w_i - c_k)`` in one scan, O(N) memory.

    (Unrolling over k with one variadic reduction was measured: no faster, and XLA
    then keeps all K terms alive, K x N floats.)
    """

    def body(dw, c):
        t = h(wc - c)
        return dw + t, -jnp.sum(t)

    return jax.lax.scan(body, jnp.zeros_like(wc), reps_c)


def _softmin_terms(wc, rc, tau):
    # log-sum-exp over k of z_k = -(w - c_k)^2 / tau in two passes: the nearest
    # squared distance d2 (so the largest z_k is -d2 / tau), then sum_k exp(z_k + d2 / tau),
    # each term <= 1 and the nearest one exactly 1. One exp per term and no select
    # next to it: an online log-sum-exp needs one, and XLA CPU then runs the exp
    # several times slower (benchmarks/xla_patterns.py).
    closest = lambda acc, c: jnp.minimum(acc, (wc - c) ** 2)  # noqa: E731
    d2 = _scan_reps(closest, jnp.full_like(wc, jnp.inf), rc)
    terms = lambda acc, c: acc + jnp.exp((d2 - (wc - c) ** 2) / tau)  # noqa: E731
    lse = jnp.log(_scan_reps(terms, jnp.zeros_like(wc), rc)) - d2 / tau
    # d value / d w = sum_k a_k 2 (w - c_k), a_k = softmax_k(-(w - c_k)^2 / tau).
    return -tau * (lse - math.log(rc.shape[0])), lambda d: 2 * d * jnp.exp(-(d * d) / tau - lse)


def _product_terms(wc, rc, _=None):
    # log(0) = -inf gives an exact 0 at every representative.
    logsum = _scan_reps(lambda acc, c: acc + jnp.log((wc - c) ** 2), jnp.zeros_like(wc), rc)
    value = jnp.exp(logsum / rc.shape[0])
    # d value / d w = value * (2/K) sum_k 1 / (w - c_k); zero (a subgradient) where value is 0.
    coef = value * (2.0 / rc.shape[0])
    return value, lambda d: jnp.where(d == 0, 0.0, coef / jnp.where(d == 0, 1.0, d))


def _wells_mean_terms(wc, rc, sigma):
    inv = 1.0 / (2 * sigma * sigma)
    k = rc.shape[0]
    total = _scan_reps(lambda acc, c: acc + jnp.exp(-((wc - c) ** 2) * inv), jnp.zeros_like(wc), rc)
    return 1.0 - total / k, lambda d: (2 * inv / k) * d * jnp.exp(-(d * d) * inv)


_ALL_REPS = {"softmin": _softmin_terms, "product": _product_terms, "wells_mean": _wells_mean_terms}


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _all_reps(w, reps, kind, param):
    """Element-wise penalty ``kind`` (shape of ``w``)."""
    cd = _compute_dtype(w.dtype)
    value = _ALL_REPS[kind](w.astype(cd), reps.astype(cd), param)[0]
    return value.astype(w.dtype)


def _all_reps_fwd(w, reps, kind, param):
    return _all_reps(w, reps, kind, param), (w, reps)


def _all_reps_bwd(kind, param, res, g):
    w, reps = res
    cd = _compute_dtype(w.dtype)
    wc, rc, gc = w.astype(cd), reps.astype(cd), g.astype(cd)
    h = _ALL_REPS[kind](wc, rc, param)[1]  # recomputed: no N-sized residual
    dw, dc = _backward_over_reps(lambda d: gc * h(d), wc, rc)
    return dw.astype(w.dtype), dc.astype(reps.dtype)


_all_reps.defvjp(_all_reps_fwd, _all_reps_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _all_reps_total(w, reps, kind, param):
    """``sum(_all_reps(w, ...))`` (compute dtype), block by block along axis 0, so the
    scan carries are O(block) rather than O(N) (and stay in cache)."""
    cd = _compute_dtype(w.dtype)
    rc = reps.astype(cd)
    blocks = _as_blocks(w.astype(cd))
    return jnp.sum(jax.lax.map(lambda b: jnp.sum(_ALL_REPS[kind](b, rc, param)[0]), blocks))


def _all_reps_total_fwd(w, reps, kind, param):
    # The cotangent of a total is a scalar g, so the gradients are g times those of
    # the total: computed here, in the same blocks as the value, they cost one more
    # scan over k instead of the backward pass repeating the value's scans.
    cd = _compute_dtype(w.dtype)
    rc = reps.astype(cd)

    def block(b):
        value, h = _ALL_REPS[kind](b, rc, param)
        return (jnp.sum(value), *_backward_over_reps(h, b, rc))

    values, dw, dc = jax.lax.map(block, _as_blocks(w.astype(cd)))
    dtypes = (jnp.zeros(0, w.dtype), jnp.zeros(0, reps.dtype))  # residuals must be arrays
    return jnp.sum(values), (dw.reshape(w.shape), jnp.sum(dc, axis=0), dtypes)


def _all_reps_total_bwd(kind, param, res, g):
    dw, dc, (w_dtype, reps_dtype) = res
    return (g * dw).astype(w_dtype.dtype), (g * dc).astype(reps_dtype.dtype)


_all_reps_total.defvjp(_all_reps_total_fwd, _all_reps_total_bwd)


def all_reps_total(w: Array, reps: Array, kind: str, param: float | None = None) -> Array:
    """``sum_i penalty(w_i)`` for ``kind`` in "softmin" (``param`` = tau), "product",
    "wells_mean" (``param`` = sigma), as a scalar (float32 or wider).

    Equal to summing :func:`softmin` / :func:`product` / :func:`wells` (mode
    "mean") but computed block by block: O(block) temporaries instead of O(N)
    scan carries. Differentiated, its forward pass also computes the gradients
    (one scan over the K representatives fewer than recomputing them in the
    backward pass) and keeps the weight gradient, shape of ``w``, until then.
    O(N K) time. ``penalty`` uses it for these regularizers.
    """
    w = check_float(w)
    reps = _check_reps(reps)
    if kind not in _ALL_REPS:
        raise ValueError(f"kind must be one of {sorted(_ALL_REPS)}, got {kind!r}")
    if kind == "product":
        param = None
    else:
        check_positive(param, "tau" if kind == "softmin" else "sigma")
        param = float(param)
    return _all_reps_total(w, reps, kind, param)


def softmin(w: Array, reps: Array, tau: float) -> Array:
    """``-tau log((1/K) sum_k exp(-(w - reps_k)^2 / tau))``: a smooth nearest distance.

    Args:
      w: weights, any shape, floating dtype.
      reps: representatives, shape ``(K,)``.
      tau: temperature > 0 (squared-weight units); as ``tau -> 0`` this tends to
        :func:`nearest`. Its minimum is ``0`` only in the limit; at a
        representative well separated from the others it is ``tau log K``
        minus a term that vanishes, so compare values, not zeros.

    Returns:
      Shape and dtype of ``w``. O(N K) time, O(N) memory.
    """
    w = check_float(w)
    reps = _check_reps(reps)
    check_positive(tau, "tau")
    return _all_reps(w, reps, "softmin", float(tau))


def product(w: Array, reps: Array) -> Array:
    """``(prod_k (w - reps_k)^2)^(1/K)``: the product penalty, scaled.

    The K-th root (a geometric mean of squared distances) keeps the zero set of
    ``prod_k (w - c_k)^2`` (exactly 0 at every representative) while staying in
    squared-weight units for every K; the raw product spans ~4^K orders of
    magnitude across the range and overflows float32 from K ~ 40. Near a
    representative it grows like ``|w - c|^(2/K)``: it pulls hardest on the
    weights that are already close (a kink like L1's at K = 2); the gradient at
    an exact hit is taken as 0. O(N K) time, O(N) memory. Shape and dtype of ``w``.
    """
    w = check_float(w)
    reps = _check_reps(reps)
    return _all_reps(w, reps, "product", None)


def wells(w: Array, reps: Array, sigma: float, mode: str = "max") -> Array:
    """Gaussian wells: ``1 - max_k exp(-(w - c_k)^2 / (2 sigma^2))`` (or ``mean_k``).

    Args:
      w: weights, any shape, floating dtype.
      reps: representatives, shape ``(K,)``.
      sigma: well width > 0 (weight units).
      mode: "max" (zero exactly at every representative; O(N log K) via the
        nearest one) or "mean" (all wells attract; O(N K)).

    Returns:
      Values in ``[0, 1]``, shape and dtype of ``w``.
    """
    w = check_float(w)
    reps = _check_reps(reps)
    check_positive(sigma, "sigma")
    if mode == "max":
        cd = _compute_dtype(w.dtype)
        d2 = _nearest_sq(w, reps).astype(cd)
        return (1.0 - jnp.exp(-d2 / (2 * float(sigma) ** 2))).astype(w.dtype)
    if mode == "mean":
        return _all_reps(w, reps, "wells_mean", float(sigma))
    raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}")


STATIC = ("sine", "cosine")
DYNAMIC = ("nearest", "softmin", "product", "wells")
REGULARIZERS = STATIC + DYNAMIC
