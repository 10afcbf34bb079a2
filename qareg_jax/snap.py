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

from .codebook import QuantSpec, assign_levels, take_levels
from .finetune import (
    REP_GRADS,
    QuantizedFinetuneState,
    finetune_specs,
    leaves_and_levels,
    quantized_finetune,
)
from .nearest_level import assign
from .paths import replace_leaves
from .validation import check_finite_leaves

Array = jax.Array


def snap(
    train_params: Mapping[str, Any],
    specs: Mapping[str, QuantSpec],
    *,
    index_dtype: Any = None,
    check_finite: bool = True,
) -> tuple[dict[str, Any], dict[str, Array]]:
    """Map every selected weight to its nearest level.

    Args:
      train_params: ``{"model": params, "reps": {...}}`` (see ``codebook.attach``),
        or an already snapped tree (then the levels are its reps: snapping is idempotent).
      specs: resolved specs (static Python data: close over them under ``jax.jit``).
      index_dtype: dtype of the assignments; default the smallest unsigned one for each K.
      check_finite: refuse NaN/inf in the selected weights and their levels (a NaN
        weight would otherwise land on level 0 and come out finite). The check runs on
        concrete arrays only: under ``jax.jit`` the values are traced and it is
        skipped, so call ``check_snappable(train_params, specs)`` on the concrete
        tree before a jitted snap.

    Returns:
      ``(snapped, assignments)``. ``snapped["model"]`` is ``params`` with each
      selected leaf replaced by ``reps[path][assignments[path]]`` (bitwise);
      ``snapped["reps"]`` holds ``(K,)`` representatives for every selected leaf in
      the weight's dtype: dynamic ones unchanged (user order kept), static ones
      their static levels (ascending). ``assignments[path]`` has the weight's shape.
      A grouped spec (``group_size``): ``(G, K)`` representatives, each weight on
      the nearest level of its own group (``codebook.take_levels``), its index into
      that group's K levels.

    Raises:
      ValueError: the tree does not match the specs, ``index_dtype`` cannot hold
        ``K - 1``, or (``check_finite``) a selected weight or level is NaN/inf,
        naming the leaf.
      TypeError: reps and weight dtypes differ.
    """
    leaves, levels = leaves_and_levels(train_params, specs, need_reps=False)
    if check_finite:
        _check_finite(leaves, levels, specs)
    assignments = {
        path: assign_levels(leaves[path], levels[path], index_dtype=index_dtype) for path in specs
    }
    model = replace_leaves(
        train_params["model"],
        {path: take_levels(levels[path], a) for path, a in assignments.items()},
    )
    return {**train_params, "model": model, "reps": levels}, assignments


def _check_finite(
    leaves: Mapping[str, Any], levels: Mapping[str, Array], specs: Mapping[str, QuantSpec]
) -> None:
    check_finite_leaves({path: leaves[path] for path in specs}, "selected weight leaf")
    check_finite_leaves(levels, "levels (reps) of leaf")


def check_snappable(train_params: Mapping[str, Any], specs: Mapping[str, QuantSpec]) -> None:
    """What ``snap`` checks, eagerly: the tree matches the specs and every selected
    weight and level is finite. Call it on the concrete tree before a jitted ``snap``
    (whose values are traced, so its own finiteness check is skipped).

    Raises:
      ValueError: the tree does not match the specs, or a selected weight or level
        holds NaN/inf (naming the leaf).
      TypeError: reps and weight dtypes differ.
    """
    leaves, levels = leaves_and_levels(train_params, specs, need_reps=False)
    _check_finite(leaves, levels, specs)


__all__ = [
    "REP_GRADS",
    "QuantizedFinetuneState",
    "assign",
    "check_snappable",
    "finetune_specs",
    "leaves_and_levels",
    "quantized_finetune",
    "snap",
]
