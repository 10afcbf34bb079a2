"""Magnitude pruning as an optax transform, to combine with any regularizer.

``prune(paths, sparsity)`` zeroes the smallest-magnitude weights of each selected leaf
of the ``{"model", "reps"}`` tree (``codebook.attach``) after every update, at a target
sparsity that can ramp with the step (``cubic_sparsity``: Zhu & Gupta's
``s_f (1 - (1 - t)^3)``; a float prunes one-shot from the first update). Masks only
grow: a pruned weight stays exactly 0.0. Chain it after the optimizer::

    tx = optax.chain(optax.adam(1e-3), prune(specs, cubic_sparsity(0.75, 0, 2000)))

With ``QuantSpec(pin_zero=True)`` the pruned weights sit on the pinned zero level, so
the penalty leaves them alone, snapping keeps them at 0.0 and ``quantized_finetune``
(which moves weights with their level) keeps them there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .paths import named_leaves, replace_leaves

Array = jax.Array
Sparsity = float | Callable[[Any], Any]

__all__ = ["PruneState", "cubic_sparsity", "magnitude_mask", "prune", "sparsity_of"]


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the fraction of weights zeroed), got {value}")
    return float(value)


def cubic_sparsity(
    target: float, begin_step: int, end_step: int, power: int = 3
) -> Callable[[Any], Array]:
    """The gradual pruning schedule ``s(t) = target (1 - (1 - p)^power)``,
    ``p = clip((t - begin_step) / (end_step - begin_step), 0, 1)`` (Zhu & Gupta 2017):
    0 before ``begin_step``, fast at first, ``target`` from ``end_step`` on;
    ``end_step == begin_step`` is one-shot at that step. Jit-able in ``t``.

    Raises:
      ValueError / TypeError: ``target`` not in [0, 1), steps negative or
        ``end_step < begin_step``, ``power`` not a positive integer.
    """
    target = _check_fraction(target, "target")
    for name, v in (("begin_step", begin_step), ("end_step", end_step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if end_step < begin_step:
        raise ValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step})")
    if isinstance(power, bool) or not isinstance(power, (int, np.integer)) or power < 1:
        raise ValueError(f"power must be an integer >= 1, got {power!r}")

    def schedule(step: Any) -> Array:
        t = jnp.asarray(step, jnp.float32)
        if end_step == begin_step:
            return jnp.where(t >= begin_step, target, 0.0).astype(jnp.float32)
        p = jnp.clip((t - begin_step) / (end_step - begin_step), 0.0, 1.0)
        return (target * (1.0 - (1.0 - p) ** power)).astype(jnp.float32)

    return schedule


def magnitude_mask(w: Array, sparsity: Any) -> Array:
    """Boolean keep-mask (shape of ``w``): False on the ``floor(sparsity * N)`` weights of
    smallest ``|w|`` (ties broken by position), True elsewhere. ``sparsity`` may be traced.

    The threshold is found by bisection on the float32 bit patterns of ``|w|`` (their
    order is the values' order): 32 counting passes, O(N) each, instead of a sort (XLA's
    CPU sort of an 8M-weight layer took 17 s).
    """
    flat = jnp.abs(w).ravel().astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(flat, jnp.int32)
    drop = jnp.floor(jnp.asarray(sparsity, jnp.float32) * flat.size).astype(jnp.int32)

    def halve(_: Any, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds  # the threshold t (smallest with count(bits <= t) >= drop) is in [lo, hi]
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid, dtype=jnp.int32) >= drop
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    top = jnp.int32(0x7F800000)  # +inf: every finite |w| is below it
    t, _ = jax.lax.fori_loop(0, 32, halve, (jnp.int32(0), top))
    below, tied = bits < t, bits == t
    extra = drop - jnp.sum(below, dtype=jnp.int32)  # how many of the ties go, first ones first
    pruned = below | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= extra))
    return (~pruned).reshape(w.shape)


def sparsity_of(w: Any) -> float:
    """The fraction of exact zeros in ``w`` (host-side, for logs and tests)."""
    arr = np.asarray(jax.device_get(w))
    return float(np.mean(arr == 0)) if arr.size else 0.0


class PruneState(NamedTuple):
    """State of :func:`prune`: ``count`` (int32 updates so far) and ``masks``
    ({path: bool keep-mask, shape of the leaf})."""

    count: Array
    masks: dict[str, Array]


def _schedules(paths: list[str], sparsity: Sparsity | Mapping[str, Sparsity]) -> dict[str, Any]:
    if isinstance(sparsity, Mapping):
        unknown = sorted(set(sparsity) - set(paths))
        missing = sorted(set(paths) - set(sparsity))
        if unknown or missing:
            raise ValueError(
                f"sparsity dict must have one entry per pruned path; unknown {unknown}, "
                f"missing {missing}"
            )
        return {p: _one_schedule(sparsity[p], f"sparsity[{p!r}]") for p in paths}
    one = _one_schedule(sparsity, "sparsity")
    return dict.fromkeys(paths, one)


def _one_schedule(value: Any, name: str) -> Any:
    if callable(value):
        _check_fraction(float(value(0)), f"{name}(0)")
        return value
    return _check_fraction(value, name)


def prune(
    paths: Iterable[str] | Mapping[str, Any],
    sparsity: Sparsity | Mapping[str, Sparsity],
    *,
    update_every: int = 100,
) -> optax.GradientTransformation:
    """Magnitude pruning of ``paths`` (model leaves; a specs dict gives its keys).

    Args:
      paths: leaves of ``params["model"]`` to prune, as '/'-joined paths.
      sparsity: the fraction of each leaf's weights set to 0, a float (one-shot at the
        first update) or a schedule ``step -> fraction`` (:func:`cubic_sparsity`), or
        a dict ``{path: either}``.
      update_every: the masks are recomputed at updates ``0, update_every, ...`` from
        the magnitudes after the update (and only grow); in between they hold.

    Returns:
      A transform over the ``{"model", "reps"}`` tree whose updates leave every pruned
      weight at exactly 0.0 (``params + updates``); other leaves pass through. Its
      ``update`` needs ``params``.

    Raises:
      ValueError / TypeError: bad ``sparsity`` or ``update_every`` (at construction);
        a path missing from ``params["model"]`` (at ``init``).
    """
    paths = list(paths)
    if not paths:
        raise ValueError("paths is empty: name at least one leaf to prune")
    if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
        raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
    schedules = _schedules(paths, sparsity)

    def init_fn(params: Any) -> PruneState:
        leaves = _model_leaves(params, paths)
        masks = {p: jnp.ones(jnp.shape(leaves[p]), jnp.bool_) for p in paths}
        return PruneState(jnp.zeros((), jnp.int32), masks)

    def update_fn(updates: Any, state: PruneState, params: Any = None) -> tuple[Any, PruneState]:
        if params is None:
            raise ValueError("prune needs params: call update(updates, state, params)")
        leaves = _model_leaves(params, paths)
        moves = named_leaves(updates["model"])
        refresh = state.count % update_every == 0
        masks, new_moves = {}, {}
        for p in paths:
            w, u, old = leaves[p], moves[p], state.masks[p]
            s = schedules[p]
            target = s(state.count) if callable(s) else s
            # cond, not where: the threshold search runs on refresh steps only.
            mask = jax.lax.cond(
                refresh,
                lambda old, w, u, t: old & magnitude_mask(jnp.where(old, w + u, 0), t),
                lambda old, w, u, t: old,
                old, w, u, jnp.asarray(target, jnp.float32),
            )  # fmt: skip
            masks[p] = mask
            new_moves[p] = jnp.where(mask, u, -w)  # w + (-w) is exactly 0.0
        out = dict(updates)
        out["model"] = replace_leaves(updates["model"], new_moves)
        return out, PruneState(optax.safe_int32_increment(state.count), masks)

    return optax.GradientTransformation(init_fn, update_fn)


def _model_leaves(params: Any, paths: list[str]) -> dict[str, Any]:
    if not isinstance(params, Mapping) or "model" not in params:
        raise ValueError('prune works on the {"model", "reps"} tree of codebook.attach')
    leaves = named_leaves(params["model"])
    missing = [p for p in paths if p not in leaves]
    if missing:
        raise ValueError(f"paths not in params['model']: {missing}")
    for p in paths:
        chex.assert_type(leaves[p], float)
    return leaves
