"""Penalties of the distance to the nearest representative: O(N log K), no ``N x K`` array.

- ``nearest``: ``min_k (w - c_k)^2`` (our reading of RM), and :func:`nearest_total`,
  its sum; :func:`nearest_total_of` also sums ``1 - exp(-well d^2)`` (wells "max");
  :func:`grouped_nearest_total`, the sums per group of a grouped codebook.

Each penalty has a ``jax.custom_vjp`` whose residuals are only its inputs (or
K-sized sums), so the backward pass recomputes from ``w`` instead of storing
per-weight intermediates. The nearest representative comes from
``qareg_jax.nearest_level.with_nearest`` (compare chain for K <= 32, bucket table above).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ..nearest_level import nearest_value, with_nearest
from ..validation import check_float_array
from .common import (
    BLOCK,
    as_blocks,
    check_reps,
    cluster_sums,
    compute_dtype,
    partial_axes,
    sorted_reps,
    to_groups,
    unsort,
)
from .registry import Regularizer, register

Array = jax.Array

# Up to this K, nearest's backward (element-wise path) sums per representative with
# one variadic reduction, above it with a scatter-add.
_VARIADIC_MAX_K = 2
# Rows of a grouped kernel added per scan step of grouped_nearest_total (at most).
_GROUP_ROWS = 8
# Up to this K (the compare chain of with_nearest, whose levels may be arrays),
# grouped_nearest_total uses threshold sums; above it, nearest_total vmapped over
# groups (at K = 16 and 32 the threshold sums took 2.7-3.3x / 4.9x the per-tensor
# time, the vmap 7.0x / 5.5x, with 3x the memory).
_GROUPED_THRESHOLD_MAX_K = 32
# Up to this K, nearest_total's per-representative sums come from threshold sums
# (_threshold_stats; CPU time on a 4096 x 4096 kernel at K = 3 / 4 / 8: 20 / 25 /
# 67 ms, blocked scatter-add 80 / 60 / 50 ms).
_THRESHOLD_MAX_K = 4


@jax.custom_vjp
def nearest_sq(w: Array, reps: Array) -> Array:
    """:func:`nearest` without argument checks (inputs already validated)."""
    cd = compute_dtype(w.dtype)
    _, cs, mid = sorted_reps(reps, cd)
    d = w.astype(cd) - nearest_value(w.astype(cd), cs, mid)
    return (d * d).astype(w.dtype)


def _nearest_fwd(w, reps):
    return nearest_sq(w, reps), (w, reps)


def _nearest_bwd(res, g):
    w, reps = res
    cd = compute_dtype(w.dtype)
    order, cs, mid = sorted_reps(reps, cd)
    wc = w.astype(cd)
    k = cs.shape[0]

    # The compare chain gives the level with the index (no gather cs[idx] for K <= 32).
    idx, near = with_nearest(lambda idx, near: (idx, near), wc, cs, mid)
    gd = 2 * g.astype(cd) * (wc - near)
    sums = cluster_sums(gd, idx, k, k <= _VARIADIC_MAX_K)
    return gd.astype(w.dtype), unsort(-sums, order).astype(reps.dtype)


nearest_sq.defvjp(_nearest_fwd, _nearest_bwd)


def _of_distance(d: Array, well: float | None) -> tuple[Array, Array]:
    """``(f(d), f'(d))`` for ``f = d^2`` (``well`` None) or ``f = 1 - exp(-well d^2)``."""
    if well is None:
        return d * d, 2 * d
    e = jnp.exp(-well * d * d)
    return 1 - e, 2 * well * d * e


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def nearest_total_of(w: Array, reps: Array, well: float | None) -> Array:
    """``sum_i f(w_i - nearest rep)`` (see ``_of_distance``), unchecked inputs, a scalar."""
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
        partial_axes(wc.shape),
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
    cd = compute_dtype(w.dtype)
    order, cs, mid = sorted_reps(reps, cd)
    k = cs.shape[0]
    wc = w.astype(cd)
    if well is None and k <= _THRESHOLD_MAX_K:
        total, sums = _threshold_stats(wc, cs, mid)
        return total, (w, reps, unsort(sums, order))

    def stats(wb, idx, near):
        value, slope = _of_distance(wb - near, well)
        return jnp.sum(value), cluster_sums(slope, idx, k, False)

    def block_stats(wb):
        return with_nearest(lambda idx, near: stats(wb, idx, near), wb, cs, mid)

    # The scatter-add needs its operands and indices in memory (as do the table
    # lookup's gathers): go block by block, so temporaries are O(block). Block sizes
    # by the compiled step peak (x plain) of AlexNet / VGG16 for nearest K = 16, wells
    # K = 2, nearest K = 256: quarter blocks everywhere 1.01, 1.17, 1.12 / 1.09, 1.24,
    # 1.23; full blocks everywhere 1.05, 1.20, - / 1.02, 1.15, -; quarter blocks for
    # dense kernels and full ones for conv kernels 1.03, 1.19, 1.11 / 1.02, 1.15, 1.17.
    blocks = as_blocks(wc, BLOCK // 4 if wc.ndim <= 2 else BLOCK)
    if blocks.shape[0] == 1:
        total, sums = block_stats(wc)
    else:
        totals, block_sums = jax.lax.map(block_stats, blocks)
        total, sums = jnp.sum(totals), jnp.sum(block_sums, axis=0)
    return total, (w, reps, unsort(sums, order))


def _nearest_total_bwd(well, res, g):
    w, reps, sums = res
    cd = compute_dtype(w.dtype)
    _, cs, mid = sorted_reps(reps, cd)
    wc = w.astype(cd)
    # dw is formed inside with_nearest's branches: no other N-sized array leaves them.
    dw = with_nearest(
        lambda _, near: (g * _of_distance(wc - near, well)[1]).astype(w.dtype), wc, cs, mid
    )
    return dw, (-g * sums).astype(reps.dtype)


nearest_total_of.defvjp(_nearest_total_fwd, _nearest_total_bwd)


def nearest_total(w: Array, reps: Array) -> Array:
    """``sum_i min_k (w_i - reps_k)^2`` as a scalar (float32 or wider).

    Equal to ``nearest(w, reps).sum()`` but cheaper to differentiate: the
    forward pass also collects each representative's sum of residuals, so the
    backward pass is one element-wise pass. ``penalty`` uses it for "nearest".
    """
    w = check_float_array(w, "w")
    reps = check_reps(reps)
    return nearest_total_of(w, reps, None)


def _grouped_levels(reps: Array, width: int, cd: jnp.dtype) -> tuple[Array, Array, Array]:
    """``(order, cs, mid)`` of ``(G, K)`` reps as :func:`sorted_reps` gives them per row,
    with ``cs`` (K, G * width) and ``mid`` (K - 1, G * width): each group's levels
    repeated over its ``width`` channels, to broadcast against the rows of an
    ``(R, channels)`` view of the kernel."""
    order = jnp.argsort(reps, axis=1)
    cs = jnp.take_along_axis(reps, order, axis=1).astype(cd)
    mid = (cs[:, 1:] + cs[:, :-1]) / 2
    return order, jnp.repeat(cs.T, width, axis=1), jnp.repeat(mid.T, width, axis=1)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _grouped_threshold_total(w2: Array, reps: Array, width: int) -> Array:
    """Per-group ``sum_i min_k (w_i - c_gk)^2``, (G,), of ``w2`` (R, channels), reps (G, K),
    ``width`` = channels per group."""
    return _grouped_fwd(w2, reps, width)[0]


def _grouped_fwd(w2, reps, width):
    # The per-tensor threshold sums (_threshold_stats), per group. XLA CPU runs a
    # reduction over the rows of several operands (one per column) as a slow strided
    # loop, and vmap over (G, N / G) rows needs the kernel transposed, both ways:
    # 3.5-4x the per-tensor time at 4096 groups (benchmarks/grouped_penalty.py).
    # Adding blocks of rows into (B, channels) accumulators in a scan keeps every
    # pass element-wise over contiguous rows, in the kernel's own layout.
    cd = compute_dtype(w2.dtype)
    order, cs, mid = _grouped_levels(reps, width, cd)
    rows, channels = w2.shape
    groups, k = reps.shape
    b = max(d for d in range(1, _GROUP_ROWS + 1) if rows % d == 0)

    def add_block(acc, wb):
        wc = wb.astype(cd)
        d = wc - nearest_value(wc, cs, mid)
        ops = [d * d, wc]
        for j in range(k - 1):
            above = wc > mid[j]
            ops += [jnp.where(above, wc, 0), above.astype(jnp.int32)]
        return tuple(a + o for a, o in zip(acc, ops, strict=True)), None

    # Operands 3, 5, ... are counts (int32: exact).
    zeros = tuple(
        jnp.zeros((b, channels), jnp.int32 if i > 1 and i % 2 else cd) for i in range(2 * k)
    )
    acc, _ = jax.lax.scan(add_block, zeros, w2.reshape(rows // b, b, channels))
    tot = [jnp.sum(a.reshape(b, groups, width), axis=(0, 2)) for a in acc]
    zero_f, zero_i = jnp.zeros(groups, cd), jnp.zeros(groups, jnp.int32)
    above_sum = jnp.stack([tot[1], *tot[2::2], zero_f], axis=1)
    above_n = jnp.stack([jnp.full(groups, rows * width, jnp.int32), *tot[3::2], zero_i], axis=1)
    n = (above_n[:, :-1] - above_n[:, 1:]).astype(cd)
    sums = 2 * ((above_sum[:, :-1] - above_sum[:, 1:]) - n * cs[:, ::width].T)
    return tot[0], (w2, reps, jnp.take_along_axis(sums, jnp.argsort(order, axis=1), axis=1))


def _grouped_bwd(width, res, g):
    w2, reps, sums = res
    cd = compute_dtype(w2.dtype)
    _, cs, mid = _grouped_levels(reps, width, cd)
    wc, gc = w2.astype(cd), jnp.repeat(g.astype(cd), width)
    dw = with_nearest(lambda _, near: (gc * 2 * (wc - near)).astype(w2.dtype), wc, cs, mid)
    return dw, (-g[:, None] * sums).astype(reps.dtype)


_grouped_threshold_total.defvjp(_grouped_fwd, _grouped_bwd)


def grouped_nearest_total(w: Array, reps: Array) -> Array:
    """Per-group :func:`nearest_total` of a grouped codebook, shape (G,).

    Args:
      w: weights, shape ``(..., C)``, floating dtype; group g holds output channels
        ``g C / G .. (g + 1) C / G - 1`` of the last axis.
      reps: ``(G, K)`` representatives, row g those of group g (any order); G must
        divide C.

    Returns:
      ``[sum over group g of min_k (w_i - reps[g, k])^2]_g`` (float32 or wider).
      Up to K = 32 computed in the kernel's own layout (threshold sums accumulated
      over row blocks, no transpose: 2K - 2 compares per weight, where the per-tensor
      form switches to scatter-adds above K = 4); above, :func:`nearest_total`
      vmapped over the ``(G, N / G)`` rows. No ``N x K`` array either way. At 4096
      groups on a (1024, 4096) kernel: 0.8x / 3.3x the per-tensor time at K = 4 / 16
      (vmapped: 7.0x at K = 16; benchmarks/README.md, "Grouped nearest penalty").
    """
    w = check_float_array(w, "w")
    reps = check_float_array(reps, "reps")
    if reps.ndim != 2 or reps.shape[1] < 2 or not w.ndim or w.shape[-1] % reps.shape[0]:
        raise ValueError(
            f"reps must have shape (G, K) with K >= 2 and G dividing the last axis of w "
            f"{w.shape}, got {reps.shape}"
        )
    groups, k = reps.shape
    if k > _GROUPED_THRESHOLD_MAX_K:
        return jax.vmap(lambda r, c: nearest_total_of(r, c, None))(to_groups(w, groups), reps)
    return _grouped_threshold_total(w.reshape(-1, w.shape[-1]), reps, w.shape[-1] // groups)


def nearest(w: Array, reps: Array) -> Array:
    """``min_k (w - reps_k)^2``: squared distance to the nearest representative.

    Args:
      w: weights, any shape, floating dtype.
      reps: representatives, shape ``(K,)``, any order (sorted internally).

    Returns:
      Shape and dtype of ``w``. Gradients flow to ``w`` and to the nearest
      representative of each weight (the sum over the weights it owns).
    """
    w = check_float_array(w, "w")
    reps = check_reps(reps)
    return nearest_sq(w, reps)


register(
    Regularizer(
        name="nearest",
        elementwise=lambda w, reps, spec: nearest(w, reps),
        total=lambda w, reps, spec: nearest_total(w, reps).astype(jnp.float32),
        grouped_total=lambda w, reps, spec: grouped_nearest_total(w, reps).astype(jnp.float32),
        dynamic=True,
        cost="O(N log K)",
        default_lam=1.0,
    )
)
