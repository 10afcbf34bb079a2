"""The per-layer regularization sum over a trainable tree, and its per-layer stats.

``penalty(train_params, specs, step)`` is ``sum_l lambda_l(step) * R_l`` with
``R_l`` the mean (or sum) of the element-wise penalty of layer ``l``. Specs are
static Python data: close over them (``jax.jit(lambda tp: penalty(tp, specs))``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .codebook import QuantSpec, check_tree, lam_guard, levels, unit_norm
from .regularizers import nearest, registry


def elementwise(w: jax.Array, spec: QuantSpec, reps: jax.Array | None = None) -> jax.Array:
    """The element-wise penalty of one leaf under a resolved ``spec`` (shape of ``w``).

    ``reps`` (K,) are the leaf's representatives, required by dynamic regularizers.
    """
    entry = registry.get(spec.regularizer)
    if entry.dynamic and reps is None:
        raise ValueError(f"regularizer {spec.regularizer!r} needs representatives")
    return entry.elementwise(w, reps, spec)


def reduced(w: jax.Array, spec: QuantSpec, reps: jax.Array | None = None) -> jax.Array:
    """``R_l``: the layer's penalty reduced by ``spec.reduction``, a float32 scalar.

    Uses the entry's ``total`` form when it has one (cheaper to differentiate),
    else sums the element-wise penalty in float32. Divided by ``spec.norm`` when
    ``spec.normalize`` is set (for "unit" without a norm, a spec that was not attached:
    by ``unit_norm`` of the current levels).
    """
    entry = registry.get(spec.regularizer)
    if entry.total is not None and (reps is not None or not entry.dynamic):
        total = entry.total(w, reps, spec).astype(jnp.float32)
    else:
        total = jnp.sum(elementwise(w, spec, reps), dtype=jnp.float32)
    value = total / w.size if spec.reduction == "mean" else total
    if spec.normalize is None:
        return value
    if spec.norm is not None:
        return value / jnp.float32(spec.norm)
    if spec.normalize != "unit":
        raise ValueError(
            f"spec has normalize={spec.normalize!r} but no norm; resolve it with attach()"
        )
    return value / unit_norm(spec, reps)


def layer_penalties(
    train_params: Mapping[str, Any], specs: Mapping[str, QuantSpec]
) -> dict[str, jax.Array]:
    """``{path: R_l}``: each layer's reduced penalty, before lambda (float32 scalars)."""
    leaves = check_tree(train_params, specs)
    reps = train_params["reps"]
    return {path: reduced(leaves[path], spec, reps.get(path)) for path, spec in specs.items()}


def penalty(
    train_params: Mapping[str, Any], specs: Mapping[str, QuantSpec], step: Any = None
) -> jax.Array:
    """``sum_l lambda_l(step) * R_l`` as a float32 scalar; differentiable in weights and reps.

    ``step`` is required when any lambda is a schedule.
    """
    per_layer = layer_penalties(train_params, specs)
    total = jnp.zeros((), jnp.float32)
    for path, value in per_layer.items():
        total = total + jnp.asarray(specs[path].lam_at(step), jnp.float32) * value
    guards = [lam_guard(s.lam_at(step)) for s in specs.values() if callable(s.lam)]
    if guards and isinstance(step, jax.core.Tracer):  # concrete steps were checked already
        total = total + jax.lax.stop_gradient(sum(guards))
    return total


def penalty_stats(
    train_params: Mapping[str, Any], specs: Mapping[str, QuantSpec], step: Any = None
) -> dict[str, dict[str, jax.Array]]:
    """Per-layer logging values: ``{path: {"penalty", "lambda", "distance"}}``.

    ``penalty`` is ``R_l`` (before lambda); ``distance`` is the mean absolute
    distance of the layer's weights to their nearest quantization level (its
    representatives, or the static minima), the quantity snapping will cost.
    Jit-able; call it every N steps, not necessarily every step.
    """
    leaves = check_tree(train_params, specs)
    out = {}
    for path, spec in specs.items():
        w = leaves[path]
        c = levels(train_params, spec, path).astype(jnp.float32)
        d = jnp.sqrt(nearest(w.astype(jnp.float32), jax.lax.stop_gradient(c)))
        out[path] = {
            "penalty": reduced(w, spec, train_params["reps"].get(path)),
            "lambda": jnp.asarray(spec.lam_at(step), jnp.float32) + lam_guard(spec.lam_at(step))
            if callable(spec.lam)
            else jnp.asarray(spec.lam_at(step), jnp.float32),
            "distance": jnp.mean(d),
        }
    return out
