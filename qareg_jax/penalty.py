"""The per-layer regularization sum over a trainable tree, and its per-layer stats.

``penalty(train_params, specs, step)`` is ``sum_l lambda_l(step) * R_l`` with
``R_l`` the mean (or sum) of the element-wise penalty of layer ``l``. Specs are
static Python data: close over them (``jax.jit(lambda tp: penalty(tp, specs))``).

A grouped spec (``QuantSpec.group_size``) applies the per-tensor form to each group
with its own ``(K,)`` reps (or its own ``lo``/``hi``), ``jax.vmap``-ped over the
``(G, N / G)`` rows of :func:`codebook.to_groups`: the same O(N) memory and no
Python loop over groups. A registered ``grouped_total`` form (``nearest``) replaces
the vmap: the rows are a transpose of the kernel, which costs more than the penalty
itself at one codebook per channel. ``R_l`` is then the sum over groups divided by
N (mean) or not (sum), as for one codebook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .codebook import (
    QuantSpec,
    check_tree,
    from_groups,
    group_bounds,
    lam_guard,
    levels,
    num_groups,
    to_groups,
    unit_norm,
)
from .regularizers import nearest, registry
from .regularizers.common import compute_dtype


def per_group(
    fn: Callable[[jax.Array, QuantSpec, jax.Array | None], jax.Array],
    w: jax.Array,
    spec: QuantSpec,
    reps: jax.Array | None = None,
) -> jax.Array:
    """``fn(w_g, spec_g, reps_g)`` for every group g of a grouped ``spec``, vmapped: shape
    ``(G, ...)``. ``w_g`` is row g of ``to_groups(w, G)`` (N / G,), ``reps_g`` row g of
    ``reps`` (G, K) (None for static specs), ``spec_g`` the per-tensor spec of the group
    (its own ``lo``/``hi`` for static specs, traced)."""
    groups = num_groups(spec, w.shape)
    rows = to_groups(w, groups)
    flat = dataclasses.replace(spec, group_size=None, lo=None, hi=None)
    if registry.get(spec.regularizer).dynamic:
        return jax.vmap(lambda r, c: fn(r, flat, c))(rows, reps)
    cd = compute_dtype(w.dtype)
    lo, hi = (jnp.asarray(b, cd) for b in group_bounds(spec, groups))
    return jax.vmap(lambda r, a, b: fn(r, dataclasses.replace(flat, lo=a, hi=b), None))(
        rows, lo, hi
    )


def elementwise(w: jax.Array, spec: QuantSpec, reps: jax.Array | None = None) -> jax.Array:
    """The element-wise penalty of one leaf under a resolved ``spec`` (shape of ``w``).

    ``reps`` (K,) (grouped spec: (G, K)) are the leaf's representatives, required by
    dynamic regularizers.
    """
    entry = registry.get(spec.regularizer)
    if entry.dynamic and reps is None:
        raise ValueError(f"regularizer {spec.regularizer!r} needs representatives")
    if spec.group_size is not None:
        rows = per_group(lambda r, sg, c: entry.elementwise(r, c, sg), w, spec, reps)
        return from_groups(rows, w.shape)
    return entry.elementwise(w, reps, spec)


def _total(w: jax.Array, spec: QuantSpec, reps: jax.Array | None) -> jax.Array:
    """The per-tensor sum of the element-wise penalty (float32 scalar)."""
    entry = registry.get(spec.regularizer)
    if entry.total is not None and (reps is not None or not entry.dynamic):
        return entry.total(w, reps, spec).astype(jnp.float32)
    return jnp.sum(elementwise(w, spec, reps), dtype=jnp.float32)


def reduced(w: jax.Array, spec: QuantSpec, reps: jax.Array | None = None) -> jax.Array:
    """``R_l``: the layer's penalty reduced by ``spec.reduction``, a float32 scalar.

    Uses the entry's ``total`` form when it has one (cheaper to differentiate),
    else sums the element-wise penalty in float32; a grouped spec sums the groups'
    totals. Divided by ``spec.norm`` when ``spec.normalize`` is set (for "unit" without a
    norm, a spec that was not attached: by ``unit_norm`` of the current levels).
    """
    if spec.group_size is not None:
        entry = registry.get(spec.regularizer)
        if entry.dynamic and reps is None:
            raise ValueError(f"regularizer {spec.regularizer!r} needs representatives")
        if entry.grouped_total is not None:  # in the kernel's layout, no transpose
            total = jnp.sum(entry.grouped_total(w, reps, spec))
        else:
            total = jnp.sum(per_group(_total, w, spec, reps))
    else:
        total = _total(w, spec, reps)
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
    return {
        path: reduced(leaves[path], spec, _reps(train_params, spec, path))
        for path, spec in specs.items()
    }


def _reps(train_params: Mapping[str, Any], spec: QuantSpec, path: str) -> jax.Array | None:
    """The leaf's reps as the penalty sees them (a pinned zero level: 0.0, no gradient)."""
    if not spec.dynamic:
        return None
    return levels(train_params, spec, path)


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
        c = jax.lax.stop_gradient(levels(train_params, spec, path).astype(jnp.float32))
        if c.ndim == 2:  # grouped: each weight against its own group's levels
            d = jnp.sqrt(jax.vmap(nearest)(to_groups(w.astype(jnp.float32), c.shape[0]), c))
        else:
            d = jnp.sqrt(nearest(w.astype(jnp.float32), c))
        out[path] = {
            "penalty": reduced(w, spec, _reps(train_params, spec, path)),
            "lambda": jnp.asarray(spec.lam_at(step), jnp.float32) + lam_guard(spec.lam_at(step))
            if callable(spec.lam)
            else jnp.asarray(spec.lam_at(step), jnp.float32),
            "distance": jnp.mean(d),
        }
    return out
