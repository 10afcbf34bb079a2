"""Penalties that sum over all K representatives for every weight: O(N K) time.

- ``softmin``: ``-tau log(sum_k exp(-(w - c_k)^2 / tau))`` (our reading of RE; the
  ``1/K`` inside the log of the textbook form would only add the constant
  ``tau log K``, a floor that made a converged run look stalled above 0);
- ``product``: ``(prod_k (w - c_k)^2)^(1/K)`` (alternative RM);
- ``wells_mean``: ``1 - mean_k exp(-(w - c_k)^2 / (2 sigma^2))`` (``wells(mode="mean")``).

Every pass scans over k with carries the size of ``w`` (or of a block of it, for the
totals), never K x N. Each kind is one function on compute-dtype arrays,
``terms(wc, rc, param) -> (value, h)``: the element-wise penalty and ``h(d)``, the
derivative in ``w`` of the pair term at ``d = w - c_k`` (so ``dw = sum_k h`` and
``dc_k = -sum_i h``). The element-wise penalty's backward pass recomputes them (no
N-sized residual); the total's forward pass computes the gradients itself, since
its cotangent is a scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from ..validation import check_choice, check_float_array, check_positive
from .common import as_blocks, check_reps, compute_dtype
from .registry import Regularizer, register

Array = jax.Array


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
    # No "+ tau log K": the value is 0 (not tau log K) on a level; the gradient, from
    # lse alone, is the same either way.
    return -tau * lse, lambda d: 2 * d * jnp.exp(-(d * d) / tau - lse)


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


_TERMS = {"softmin": _softmin_terms, "product": _product_terms, "wells_mean": _wells_mean_terms}
KINDS = tuple(_TERMS)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def all_reps_elementwise(w: Array, reps: Array, kind: str, param: float | None) -> Array:
    """Element-wise penalty ``kind`` (one of ``KINDS``), shape of ``w``; unchecked inputs."""
    cd = compute_dtype(w.dtype)
    value = _TERMS[kind](w.astype(cd), reps.astype(cd), param)[0]
    return value.astype(w.dtype)


def _elementwise_fwd(w, reps, kind, param):
    return all_reps_elementwise(w, reps, kind, param), (w, reps)


def _elementwise_bwd(kind, param, res, g):
    w, reps = res
    cd = compute_dtype(w.dtype)
    wc, rc, gc = w.astype(cd), reps.astype(cd), g.astype(cd)
    h = _TERMS[kind](wc, rc, param)[1]  # recomputed: no N-sized residual
    dw, dc = _backward_over_reps(lambda d: gc * h(d), wc, rc)
    return dw.astype(w.dtype), dc.astype(reps.dtype)


all_reps_elementwise.defvjp(_elementwise_fwd, _elementwise_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _total(w, reps, kind, param):
    """``sum(all_reps_elementwise(w, ...))`` (compute dtype), block by block along axis 0,
    so the scan carries are O(block) rather than O(N) (and stay in cache)."""
    cd = compute_dtype(w.dtype)
    rc = reps.astype(cd)
    blocks = as_blocks(w.astype(cd))
    return jnp.sum(jax.lax.map(lambda b: jnp.sum(_TERMS[kind](b, rc, param)[0]), blocks))


def _total_fwd(w, reps, kind, param):
    # The cotangent of a total is a scalar g, so the gradients are g times those of
    # the total: computed here, in the same blocks as the value, they cost one more
    # scan over k instead of the backward pass repeating the value's scans.
    cd = compute_dtype(w.dtype)
    rc = reps.astype(cd)

    def block(b):
        value, h = _TERMS[kind](b, rc, param)
        return (jnp.sum(value), *_backward_over_reps(h, b, rc))

    values, dw, dc = jax.lax.map(block, as_blocks(w.astype(cd)))
    dtypes = (jnp.zeros(0, w.dtype), jnp.zeros(0, reps.dtype))  # residuals must be arrays
    return jnp.sum(values), (dw.reshape(w.shape), jnp.sum(dc, axis=0), dtypes)


def _total_bwd(kind, param, res, g):
    dw, dc, (w_dtype, reps_dtype) = res
    return (g * dw).astype(w_dtype.dtype), (g * dc).astype(reps_dtype.dtype)


_total.defvjp(_total_fwd, _total_bwd)


def all_reps_total(w: Array, reps: Array, kind: str, param: float | None = None) -> Array:
    """``sum_i penalty(w_i)`` for ``kind`` in "softmin" (``param`` = tau), "product",
    "wells_mean" (``param`` = sigma), as a scalar (float32 or wider).

    Equal to summing :func:`softmin` / :func:`product` / ``wells`` (mode
    "mean") but computed block by block: O(block) temporaries instead of O(N)
    scan carries. Differentiated, its forward pass also computes the gradients
    (one scan over the K representatives fewer than recomputing them in the
    backward pass) and keeps the weight gradient, shape of ``w``, until then.
    O(N K) time. ``penalty`` uses it for these regularizers.
    """
    w = check_float_array(w, "w")
    reps = check_reps(reps)
    check_choice("kind", kind, KINDS)
    if kind == "product":
        param = None
    else:
        check_positive(param, "tau" if kind == "softmin" else "sigma")
        param = float(param)
    return _total(w, reps, kind, param)


def softmin(w: Array, reps: Array, tau: float) -> Array:
    """``-tau log(sum_k exp(-(w - reps_k)^2 / tau))``: a smooth nearest distance.

    Args:
      w: weights, any shape, floating dtype.
      reps: representatives, shape ``(K,)``.
      tau: temperature > 0 (squared-weight units); as ``tau -> 0`` this tends to
        ``nearest``. On a representative it is ``-tau log(1 + sum_j exp(-(c - c_j)^2 /
        tau))`` over the other representatives ``c_j``: 0 up to their overlap
        (``~1e-7 tau`` at the default ``tau = (spacing / 4)^2``; slightly negative).
        The textbook form with ``1/K`` inside the log is this plus ``tau log K``,
        with the same gradients.

    Returns:
      Shape and dtype of ``w``. O(N K) time, O(N) memory.
    """
    w = check_float_array(w, "w")
    reps = check_reps(reps)
    check_positive(tau, "tau")
    return all_reps_elementwise(w, reps, "softmin", float(tau))


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
    w = check_float_array(w, "w")
    reps = check_reps(reps)
    return all_reps_elementwise(w, reps, "product", None)


register(
    Regularizer(
        name="softmin",
        elementwise=lambda w, reps, spec: softmin(w, reps, spec.tau),
        total=lambda w, reps, spec: all_reps_total(w, reps, "softmin", spec.tau).astype(
            jnp.float32
        ),
        dynamic=True,
        cost="O(N K)",
        default_lam=1.0,
        params=("tau",),
    )
)
register(
    Regularizer(
        name="product",
        elementwise=lambda w, reps, spec: product(w, reps),
        total=lambda w, reps, spec: all_reps_total(w, reps, "product").astype(jnp.float32),
        dynamic=True,
        cost="O(N K)",
        default_lam=0.1,
    )
)
