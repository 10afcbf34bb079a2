"""Gaussian wells: ``1 - max_k`` (or ``mean_k``) ``exp(-(w - c_k)^2 / (2 sigma^2))``.

Our alternative reading of RE. ``mode="max"`` is zero exactly at every
representative and costs O(N log K) (via the nearest one, ``nearest_sq``);
``mode="mean"`` lets every well attract and costs O(N K) (``all_reps``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..validation import check_choice, check_float_array, check_positive
from .all_reps import all_reps_elementwise, all_reps_total
from .common import check_reps, compute_dtype
from .nearest_sq import nearest_sq, nearest_total_of
from .registry import Regularizer, register

Array = jax.Array
MODES = ("max", "mean")


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
    w = check_float_array(w, "w")
    reps = check_reps(reps)
    check_positive(sigma, "sigma")
    check_choice("mode", mode, MODES)
    if mode == "max":
        cd = compute_dtype(w.dtype)
        d2 = nearest_sq(w, reps).astype(cd)
        return (1.0 - jnp.exp(-d2 / (2 * float(sigma) ** 2))).astype(w.dtype)
    return all_reps_elementwise(w, reps, "wells_mean", float(sigma))


def wells_total(w: Array, reps: Array, sigma: float) -> Array:
    """``sum_i wells(w_i, reps, sigma, mode="max")`` as a scalar, one pass like nearest_total."""
    w = check_float_array(w, "w")
    reps = check_reps(reps)
    check_positive(sigma, "sigma")
    return nearest_total_of(w, reps, 1.0 / (2.0 * float(sigma) ** 2))


def _total(w: Array, reps: Array, spec: Any) -> Array:
    if spec.wells_mode == "max":
        return wells_total(w, reps, spec.sigma).astype(jnp.float32)
    return all_reps_total(w, reps, "wells_mean", spec.sigma).astype(jnp.float32)


register(
    Regularizer(
        name="wells",
        elementwise=lambda w, reps, spec: wells(w, reps, spec.sigma, spec.wells_mode),
        total=_total,
        dynamic=True,
        cost=lambda spec: "O(N log K)" if spec.wells_mode == "max" else "O(N K)",
        default_lam=1.0,
        params=("sigma", "wells_mode"),
    )
)
