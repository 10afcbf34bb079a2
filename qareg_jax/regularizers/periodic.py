"""Static periodic penalties on the layer interval ``[lo, hi]``, ``x = (w - lo) / (hi - lo)``.

- ``sine``:   ``sin^2(pi (K-1) x)``, minima at ``x = j / (K-1)`` (grid with both ends);
- ``cosine``: ``cos^2(pi K x)``, minima at ``x = (2j + 1) / (2K)`` (the K bin centres).

Outside ``[lo, hi]`` both continue with a quadratic wall of the same curvature
as the periodic part at the boundary (value and slope continuous), so weights
cannot escape into other periods. ``lo`` / ``hi`` are constants: no gradient
flows into them. O(N); the backward pass recomputes from ``w`` (no residuals).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..validation import check_float_array, check_interval, check_k
from .common import compute_dtype
from .registry import Regularizer, register

Array = jax.Array

# A float32 sin(pi t) on |t| <= 1/2: Taylor series to degree 11 (|error| < 6e-8),
# cheaper than the general-purpose sin since the range reduction is exact here.
_SIN_COEFFS = tuple(
    (-1) ** n * math.pi ** (2 * n + 1) / math.factorial(2 * n + 1) for n in range(6)
)
_COS_COEFFS = tuple((-1) ** n * math.pi ** (2 * n) / math.factorial(2 * n) for n in range(7))


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
    cd = compute_dtype(w.dtype)
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
    lo_a = jnp.asarray(lo, compute_dtype(w.dtype))
    hi_a = jnp.asarray(hi, compute_dtype(w.dtype))
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
    w = check_float_array(w, "w")
    k = check_k(k)
    check_interval(lo, hi)
    return _static(w, lo, hi, scale=float(k - 1), shift=0.0, edge=0.0)


def cosine(w: Array, k: int, lo: float | Array, hi: float | Array) -> Array:
    """``cos^2(pi k x)`` with ``x = (w - lo) / (hi - lo)``; quadratic wall outside.

    Minima at the ``k`` bin centres ``lo + (2j + 1)(hi - lo) / (2k)``, ``j = 0..k-1``.
    Shape and dtype of ``w``; see :func:`sine` for the arguments.
    """
    w = check_float_array(w, "w")
    k = check_k(k)
    check_interval(lo, hi)
    return _static(w, lo, hi, scale=float(k), shift=-0.5, edge=1.0)


def sine_levels(k: int, lo: float, hi: float) -> np.ndarray:
    """The ``k`` minima of :func:`sine`: ``lo + j (hi - lo) / (k - 1)``, shape (k,) float64."""
    j = np.arange(k, dtype=np.float64)
    return lo + j / (k - 1) * (hi - lo)


def cosine_levels(k: int, lo: float, hi: float) -> np.ndarray:
    """The ``k`` minima of :func:`cosine`: the bin centres, shape (k,) float64."""
    j = np.arange(k, dtype=np.float64)
    return lo + (2 * j + 1) / (2 * k) * (hi - lo)


def _sine_form(w: Array, reps: Any, spec: Any) -> Array:
    return sine(w, spec.k, spec.lo, spec.hi)


def _cosine_form(w: Array, reps: Any, spec: Any) -> Array:
    return cosine(w, spec.k, spec.lo, spec.hi)


register(
    Regularizer(
        name="sine",
        elementwise=_sine_form,
        dynamic=False,
        cost="O(N)",
        default_lam=0.1,
        levels=sine_levels,
    )
)
register(
    Regularizer(
        name="cosine",
        elementwise=_cosine_form,
        dynamic=False,
        cost="O(N)",
        default_lam=10.0,
        levels=cosine_levels,
    )
)
