"""Argument checks shared by every module, with one exception type per kind of mistake.

The rule, the same everywhere:

- ``TypeError``: the value has the wrong Python or array *type* (a str where an int
  is needed, a float for ``k``, an integer array where floats are needed, a
  non-callable non-number for a lambda). ``bool`` is not accepted as a number.
- ``ValueError``: the type is right but the value is outside the allowed set or
  range (``k = 1``, a negative lambda, ``lo >= hi``, an unknown name, a wrong shape).

JAX tracers pass the value checks unchecked (their values are unknown at trace time).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Assignments are stored as at most uint32 indices.
MAX_K = 2**32


def check_k(k: object, name: str = "k") -> int:
    """``k`` as an int in ``[2, MAX_K]`` (a number of levels).

    Raises:
      TypeError: ``k`` is not an integer (floats and bools included).
      ValueError: ``k < 2`` or ``k > 2**32``.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer >= 2 (the number of levels), got {type(k).__name__} {k!r}"
        )
    if int(k) < 2:
        raise ValueError(f"{name} must be an integer >= 2 (the number of levels), got {k!r}")
    if int(k) > MAX_K:
        raise ValueError(f"{name} must be <= 2**32 (uint32 indices), got {k!r}")
    return int(k)


def _number(value: object, name: str, what: str) -> np.ndarray:
    """``value`` as a float64 numpy array, or a ``TypeError`` if it is not numeric."""
    arr = np.asarray(value, object if isinstance(value, bool) else None)
    if arr.dtype == object or not (
        jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)
    ):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    return arr.astype(np.float64)


def check_positive(value: object, name: str) -> None:
    """Raise unless a concrete ``value`` is a finite number > 0 (a scalar)."""
    if isinstance(value, jax.core.Tracer):
        return
    v = _number(value, name, "a finite number > 0")
    if v.size != 1 or not np.isfinite(v) or float(v) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_interval(lo: object, hi: object) -> None:
    """Raise unless concrete ``lo``, ``hi`` are finite scalars with ``lo < hi``."""
    if isinstance(lo, jax.core.Tracer) or isinstance(hi, jax.core.Tracer):
        return
    what = "a finite number (interval bound lo, hi)"
    lo_, hi_ = _number(lo, "lo", what), _number(hi, "hi", what)
    if lo_.size != 1 or hi_.size != 1 or not (np.isfinite(lo_) and np.isfinite(hi_)):
        raise ValueError(f"interval bounds lo, hi must be finite scalars, got lo={lo!r}, hi={hi!r}")
    if float(lo_) >= float(hi_):
        raise ValueError(f"interval must satisfy lo < hi, got lo={float(lo_)}, hi={float(hi_)}")


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise unless ``value`` is one of the strings ``allowed``.

    Raises:
      TypeError: ``value`` is not a str.
      ValueError: ``"unknown {name} {value!r}; allowed: a, b, c"``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def check_float_array(x: object, name: str = "x") -> Any:
    """``x`` as a floating-point array (numpy and JAX arrays are returned as they are).

    Raises:
      TypeError: ``x`` is not an array of a floating dtype.
    """
    arr = x if isinstance(x, jax.Array | np.ndarray) else jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr


def check_levels(x: object, name: str = "levels") -> Any:
    """``x`` as a floating-point ``(K,)`` array with ``K >= 2``.

    Raises:
      TypeError: not a floating-point array. ValueError: not of shape ``(K,)``, ``K >= 2``.
    """
    arr = check_float_array(x, name)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"{name} must have shape (K,) with K >= 2, got shape {arr.shape}")
    return arr


def check_lam(lam: float | Callable[[Any], Any]) -> None:
    """Raise unless ``lam`` is a finite number >= 0 or a schedule ``step -> float`` (>= 0 at 0).

    Raises:
      TypeError: neither a number nor a callable.
      ValueError: negative, not finite, not a scalar, or a schedule negative at step 0.
    """
    if callable(lam):
        start = lam(0)
        if not isinstance(start, jax.core.Tracer) and float(start) < 0:
            raise ValueError(f"lam schedule must be >= 0, got {float(start)} at step 0")
        return
    if isinstance(lam, jax.core.Tracer):
        return
    value = _number(lam, "lam", "a finite number >= 0 or a schedule")
    if value.size != 1 or not np.isfinite(value) or float(value) < 0:
        raise ValueError(f"lam must be a finite number >= 0 or a schedule, got {lam!r}")
