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
import re
from collections.abc import Callable, Mapping, Sequence
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
    """Raise unless ``lam`` is a finite number >= 0 or a schedule ``step -> float``
    (finite and >= 0 at step 0; :func:`check_schedule` checks the other steps).

    Raises:
      TypeError: neither a number nor a callable.
      ValueError: negative, not finite, not a scalar, or a schedule negative or not
        finite at step 0.
    """
    if callable(lam):
        start = lam(0)
        if not isinstance(start, jax.core.Tracer) and not 0 <= float(start) < np.inf:
            raise ValueError(f"lam schedule must be >= 0 and finite, got {float(start)} at step 0")
        return
    if isinstance(lam, jax.core.Tracer):
        return
    value = _number(lam, "lam", "a finite number >= 0 or a schedule")
    if value.size != 1 or not np.isfinite(value) or float(value) < 0:
        raise ValueError(f"lam must be a finite number >= 0 or a schedule, got {lam!r}")


def check_schedule(lam: float | Callable[[Any], Any], steps: int, name: str = "lam") -> None:
    """Raise unless ``lam`` is finite and >= 0 at every step ``0 .. steps - 1``.

    ``QuantSpec`` only sees step 0; a schedule that turns NaN, infinite or negative
    later would make the penalty NaN (or reward spreading weights) mid-run, so call
    this once with the planned number of steps before training. The schedule is
    evaluated on ``jnp.arange(steps)`` in one call (optax schedules are vectorised),
    or step by step when that fails (Python control flow on the step).

    Raises:
      TypeError: ``lam`` is neither a number nor a callable, or ``steps`` is not an int.
      ValueError: ``steps < 1``, or ``"{name} is {value} at step {i}"`` for the first
        bad step.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"steps must be an int >= 1, got {type(steps).__name__} {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not callable(lam):
        check_lam(lam)
        return
    grid = jnp.arange(int(steps))
    try:
        values = np.asarray(lam(grid), np.float64)
    except (TypeError, ValueError):  # e.g. ``if step < n`` on an array
        values = np.empty(0)
    if values.shape != grid.shape:  # not vectorised: one call per step
        values = np.array([float(lam(i)) for i in range(int(steps))], np.float64)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name} is {values[i]} at step {i}; a lambda schedule must be finite and >= 0 "
            f"at every step 0..{steps - 1} ({bad.size} bad steps)"
        )


def check_patterns(value: object, name: str) -> tuple[re.Pattern[str], ...] | None:
    """``None``, one regex, or a list/tuple of regexes as compiled patterns (any may match).

    Raises:
      TypeError: not a str, list or tuple of str (or None).
      ValueError: an empty list, or a pattern that is not a valid regex.
    """
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) for p in items):
        raise TypeError(
            f"{name} must be a regex str or a list/tuple of regex str, "
            f"got {type(value).__name__} {value!r}"
        )
    if not items:
        raise ValueError(f"{name} is an empty list; pass None for no {name} pattern")
    try:
        return tuple(re.compile(p) for p in items)
    except re.error as err:
        raise ValueError(f"{name} holds an invalid regex: {err}") from None


def check_finite_leaves(leaves: Mapping[str, Any], what: str = "leaf") -> None:
    """Raise unless every concrete array in ``{path: array}`` is finite (NaN or inf refused).

    One reduction per leaf on its device (no host copy of the weights); JAX tracers
    are skipped (their values are unknown at trace time; check the concrete arrays
    before ``jax.jit``). ``chex.assert_tree_all_finite`` is not used: it raises
    ``AssertionError`` and does not name the leaf.

    Raises:
      ValueError: ``"{what} {path!r} holds N NaN/inf values"`` for the first bad leaf.
    """
    concrete = {
        path: x
        for path, x in leaves.items()
        if not isinstance(x, jax.core.Tracer) and jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    }
    if not concrete:
        return
    counts = jax.device_get(
        {path: jnp.sum(~jnp.isfinite(jnp.asarray(x))) for path, x in concrete.items()}
    )
    for path, count in counts.items():
        if int(count):
            raise ValueError(
                f"{what} {path!r} holds {int(count)} NaN/inf values (e.g. training diverged); "
                "refusing to quantize non-finite numbers"
            )


def check_group_size(value: object, name: str = "group_size") -> int:
    """``value`` as an int >= 1 (output channels per codebook of a grouped spec).

    Raises:
      TypeError: not an int (floats and bools included).
      ValueError: ``value < 1``.
    """
    what = f"{name} must be None or an int >= 1 (output channels per codebook; 1: one per channel)"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what}, got {type(value).__name__} {value!r}")
    if int(value) < 1:
        raise ValueError(f"{what}, got {value!r}")
    return int(value)


def check_k_fits(k: int, n: int, path: str) -> None:
    """Raise unless ``k`` levels fit leaf ``path`` of ``n`` weights (``k <= n``).

    Raises:
      ValueError: ``k > n``, naming the leaf (more levels than weights cannot all be used).
    """
    if k > n:
        raise ValueError(
            f"k={k} levels for leaf {path!r}, which has only {n} weights: k must be <= the "
            "number of weights (lower k for this leaf, or leave it out of the selection)"
        )
