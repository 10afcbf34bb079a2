"""Snapping weights to their quantization levels.

After quantization-aware training, :func:`snap` replaces every selected weight by
its nearest level ("pre-tuning" accuracy); :mod:`qareg_jax.finetune` then trains
the levels with the weights kept on them. ``quantized_finetune`` and its helpers
are re-exported here.

Nearest level: exact for finite values (ties go to the lower level), decided
against the midpoints of neighbouring levels corrected by their exact rounding
error, so no ``N x K`` array is formed (O(N log K) per leaf).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import regularizers as R
from ._tree import replace_leaves
from .codebook import QuantSpec
from .quantizers import index_dtype as smallest_index_dtype

Array = jax.Array


def _index_dtype(k: int, index_dtype: Any) -> np.dtype:
    """``index_dtype`` checked to hold ``k - 1``; the smallest unsigned dtype if None."""
    if index_dtype is None:
        return smallest_index_dtype(k)
    dtype = np.dtype(index_dtype)
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"index_dtype must be an integer dtype, got {dtype}")
    if np.iinfo(dtype).max < k - 1:
        raise ValueError(f"index_dtype {dtype} cannot hold index {k - 1} of K={k} levels")
    return dtype


def _boundaries(cs: Array) -> Array:
    """Thresholds ``t`` (K-1,): ``w > t[j]`` iff ``w`` is nearer ``cs[j+1]`` than ``cs[j]``.

    ``cs`` is sorted. The float midpoint ``fl(a + b) / 2`` can be off by half an
    ulp; TwoSum gives the exact error ``e = (a + b) - fl(a + b)``, and for
    ``e < 0`` the true midpoint lies just below the float one, which then already
    belongs to the upper level. Exact ties (``e == 0``, ``w`` on the midpoint) go
    to the lower level.
    """
    a, b = cs[:-1], cs[1:]
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    mid = s / 2
    return jnp.where(e < 0, jnp.nextafter(mid, jnp.full_like(mid, -jnp.inf)), mid)


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
    w = R.check_float(w)
    levels = R.check_float(levels, "levels")
    if levels.ndim != 1 or levels.shape[0] < 2:
        raise ValueError(f"levels must have shape (K,) with K >= 2, got shape {levels.shape}")
    k = levels.shape[0]
    dtype = _index_dtype(k, index_dtype)
    cd = jnp.promote_types(jnp.promote_types(w.dtype, levels.dtype), jnp.float32)
    order = jnp.argsort(levels)  # stable: equal levels keep their order
    cs = levels[order].astype(cd)
    first = order[jnp.searchsorted(cs, cs, side="left")]  # first of each run of equal levels
    idx = R.nearest_index(w.astype(cd), cs, _boundaries(cs))
    return first[idx].astype(dtype)


def snap(
    train_params: Mapping[str, Any],
    specs: Mapping[str, QuantSpec],
    *,
    index_dtype: Any = None,
) -> tuple[dict[str, Any], dict[str, Array]]:
    """Map every selected weight to its nearest level.

    Args:
      train_params: ``{"model": params, "reps": {...}}`` (see ``codebook.attach``),
        or an already snapped tree (then the levels are its reps: snapping is idempotent).
      specs: resolved specs (static Python data: close over them under ``jax.jit``).
      index_dtype: dtype of the assignments; default the smallest unsigned one for each K.

    Returns:
      ``(snapped, assignments)``. ``snapped["model"]`` is ``params`` with each
      selected leaf replaced by ``reps[path][assignments[path]]`` (bitwise);
      ``snapped["reps"]`` holds ``(K,)`` representatives for every selected leaf in
      the weight's dtype: dynamic ones unchanged (user order kept), static ones
      their static levels (ascending). ``assignments[path]`` has the weight's shape.

    Raises:
      ValueError: the tree does not match the specs, or ``index_dtype`` cannot hold ``K - 1``.
      TypeError: reps and weight dtypes differ.
    """
    leaves, levels = leaves_and_levels(train_params, specs, need_reps=False)
    assignments = {
        path: assign(leaves[path], levels[path], index_dtype=index_dtype) for path in specs
    }
    model = replace_leaves(
        train_params["model"], {path: levels[path][a] for path, a in assignments.items()}
    )
    return {**train_params, "model": model, "reps": levels}, assignments


# At the end: finetune imports assign from this module.
from .finetune import (  # noqa: E402
    REP_GRADS,
    QuantizedFinetuneState,
    finetune_specs,
    leaves_and_levels,
    quantized_finetune,
)

__all__ = [
    "REP_GRADS",
    "QuantizedFinetuneState",
    "assign",
    "finetune_specs",
    "leaves_and_levels",
    "quantized_finetune",
    "snap",
]
