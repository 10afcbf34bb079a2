"""Straight-through-estimator (STE) quantization-aware training with trainable levels.

The baseline that tfmot weight clustering and most QAT code implement. The
trainable tree is the library's ``{"model": params, "reps": {path: (K,)}}``
(``codebook.attach``); :func:`quantize` gives the model parameters of the
forward pass, in which every selected weight is its nearest level
``reps[path][assign(w, reps[path])]`` (bitwise what ``snap.snap`` gives). Backward:

* weights, straight through: ``dL/dw = dL/dq`` (as if ``q = w``); the latent
  full-precision weights keep training and may change level;
* levels: ``dL/dc_k = sum of dL/dq_i over the weights i assigned to level k``,
  a scatter-add (no ``N x K`` array; each layer keeps its ``N`` indices, one byte
  each for ``K <= 256``, for the backward pass).

A training step::

    tp, specs = ste.init(params, None, k=16)          # k-means levels, host-side

    def loss_fn(tp, batch):
        return task_loss(ste.quantize(tp, specs), batch)

    grads = jax.grad(loss_fn)(tp, batch)              # "model" and "reps" entries
    updates, opt_state = tx.update(grads, opt_state, tp)
    tp = optax.apply_updates(tp, updates)
    if step % n == 0:
        tp = ste.recluster(tp, specs)                 # optional, outside jit

Hybrid (a regularizer for most of the phase, STE at the end): both read the same
tree and the same ``reps`` entries, so one tree and one optimizer state serve
both phases. With ``switch`` the first STE step and ``lam`` a schedule dropping
to 0 there (or kept, to go on pulling the latent weights to their levels)::

    active = step >= switch                           # traced is fine: one compiled step
    loss = task_loss(ste.quantize(tp, specs, active=active), batch) + penalty(tp, specs, step)

With ``active`` false the forward pass uses the latent weights unchanged and the
levels get no task gradient (only the penalty's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import regularizers as R
from ..codebook import (
    QuantSpec,
    assign_levels,
    attach,
    level_sums,
    resolve_paths,
    take_levels,
    to_groups,
)
from ..finetune import leaves_and_levels
from ..paths import replace_leaves

Array = jax.Array

__all__ = ["init", "quantize", "quantize_leaf", "recluster", "tree_levels"]


# ------------------------------------------------------------------------- one leaf


def _quantize_fwd_impl(w: Array, levels: Array) -> tuple[Array, Array]:
    """``(q, idx)``: ``q = levels[idx]`` in ``w``'s dtype, ``idx`` the nearest-level indices
    (grouped ``(G, K)`` levels: each weight's own group's)."""
    idx = assign_levels(w, levels)  # smallest unsigned dtype: uint8 for K <= 256
    return take_levels(levels.astype(w.dtype), idx), idx


def _level_grad(g: Array, idx: Array, levels: Array) -> Array:
    """``(K,)`` (or ``(G, K)``) per-level sums of ``g`` over the weights assigned to each level."""
    cd = jnp.promote_types(g.dtype, jnp.float32)  # bf16 sums of many terms drift
    # N-d indices, no ravel: a kernel sharded over a mesh is not gathered onto one device.
    total = level_sums(g.astype(cd), idx, levels.shape)
    return total.astype(levels.dtype)


@jax.custom_vjp
def _ste(w: Array, levels: Array) -> Array:
    return _quantize_fwd_impl(w, levels)[0]


def _ste_fwd(w: Array, levels: Array) -> tuple[Array, tuple[Array, Array]]:
    q, idx = _quantize_fwd_impl(w, levels)
    return q, (idx, levels)


def _ste_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    idx, levels = res
    return g, _level_grad(g, idx, levels)


_ste.defvjp(_ste_fwd, _ste_bwd)


@jax.custom_vjp
def _ste_switch(w: Array, levels: Array, active: Array) -> Array:
    return _switch_fwd(w, levels, active)[0]


def _switch_fwd(w: Array, levels: Array, active: Array) -> tuple[Array, tuple[Any, ...]]:
    # lax.cond, not where: the inactive phase skips the assignment and the gather.
    q, idx = jax.lax.cond(
        active,
        _quantize_fwd_impl,
        lambda w, c: (w, jnp.zeros(w.shape, jax.eval_shape(assign_levels, w, c).dtype)),
        w,
        levels,
    )
    return q, (idx, levels, active)


def _switch_bwd(res: tuple[Any, ...], g: Array) -> tuple[Array, Array, None]:
    idx, levels, active = res
    gc = jax.lax.cond(active, lambda: _level_grad(g, idx, levels), lambda: jnp.zeros_like(levels))
    return g, gc, None  # identity for w in both phases; no cotangent for the flag


_ste_switch.defvjp(_switch_fwd, _switch_bwd)


def _check_active(active: Any) -> bool | Array:
    """A Python/NumPy bool as is (static branch), else a scalar bool array (traced branch)."""
    if isinstance(active, bool | np.bool_):
        return bool(active)
    arr = active if isinstance(active, jax.Array) else jnp.asarray(active)
    if arr.shape != () or arr.dtype != jnp.bool_:
        raise TypeError(
            f"active must be a bool or a scalar bool array (e.g. step >= switch), got "
            f"dtype {arr.dtype} and shape {arr.shape}"
        )
    return arr


def quantize_leaf(w: Array, levels: Array, *, active: bool | Array = True) -> Array:
    """STE quantization of one array: forward ``levels[assign(w, levels)]``, straight-through back.

    Args:
      w: latent weights, any shape, floating dtype.
      levels: ``(K,)`` levels (K >= 2, any order, floating), or ``(G, K)``: one
        codebook per group of ``w.shape[-1] / G`` consecutive output channels (last
        axis); cast to ``w``'s dtype for the forward pass.
      active: a bool, or a traced scalar bool (then both branches are compiled and
        ``lax.cond`` picks one); when false the result is ``w`` and ``levels`` get
        a zero gradient.

    Returns:
      Shape and dtype of ``w``: each entry its nearest level (ties to the lower
      level). Gradients: ``w`` receives the upstream gradient unchanged; level
      ``k`` receives the sum of the upstream gradients of the entries assigned to
      it, in ``levels``' dtype (accumulated in at least float32). Among equal
      levels the first gets the entries (and their gradient). Jit-able,
      O(N log K), no ``N x K`` array.

    Raises:
      TypeError: ``w`` or ``levels`` is not floating point, or ``active`` is not a bool.
      ValueError: ``levels`` is not of shape ``(K,)`` or ``(G, K)`` with K >= 2 and G
        dividing ``w.shape[-1]``.
    """
    w = R.check_float(w, "w")
    levels = R.check_float(levels, "levels")
    grouped_ok = levels.ndim == 2 and w.ndim >= 1 and w.shape[-1] % levels.shape[0] == 0
    if not (levels.ndim == 1 or grouped_ok) or levels.shape[-1] < 2:
        raise ValueError(
            f"levels must have shape (K,), or (G, K) with G dividing the {w.shape[-1:]} output "
            f"channels of w, with K >= 2; got shape {levels.shape}"
        )
    active = _check_active(active)
    if active is True:
        return _ste(w, levels)
    if active is False:
        return w
    return _ste_switch(w, levels, active)


# ---------------------------------------------------------------------- whole tree


def _check_specs(specs: Any, what: str = "specs") -> None:
    if not isinstance(specs, Mapping):
        raise TypeError(f"{what} must be a mapping {{path: QuantSpec}}, got {type(specs).__name__}")
    if not specs:
        raise ValueError(f"{what} is empty: select at least one leaf (see codebook.make_specs)")
    for path, spec in specs.items():
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"{what}[{path!r}] must be a QuantSpec, got {type(spec).__name__}")


def tree_levels(
    train_params: Mapping[str, Any], specs: Mapping[str, QuantSpec]
) -> tuple[dict[str, Any], dict[str, Array]]:
    """Validate the tree; return the model's named leaves and each selected leaf's ``(K,)``
    levels (``(G, K)`` for a grouped spec).

    Levels are ``reps[path]`` when the tree has them (every dynamic spec, and a
    static one after ``snap``), else the static spec's fixed levels in the
    weight's dtype (then not trainable). The same rule as ``snap.snap``.

    Raises:
      ValueError: not a ``{"model", "reps"}`` dict, a spec names a leaf the model
        lacks, reps missing or not of shape ``(k,)``, reps without a spec.
      TypeError: a selected weight or its reps is not floating point, or their dtypes differ.
    """
    _check_specs(specs)
    if not isinstance(train_params, Mapping) or not {"model", "reps"} <= set(train_params):
        got = sorted(train_params) if isinstance(train_params, Mapping) else type(train_params)
        raise ValueError(
            'train_params must be a dict with keys "model" and "reps" (see ste.init or '
            f"codebook.attach), got {got}"
        )
    if not isinstance(train_params["reps"], Mapping):
        raise ValueError(
            f'train_params["reps"] must be a dict {{path: (K,)}}, got {type(train_params["reps"])}'
        )
    return leaves_and_levels(train_params, specs, need_reps=False)


def quantize(
    train_params: Mapping[str, Any],
    specs: Mapping[str, QuantSpec],
    *,
    active: bool | Array = True,
) -> Any:
    """The model parameters of the STE forward pass: selected weights on their nearest level.

    Args:
      train_params: ``{"model": params, "reps": {path: (K,)}}`` (:func:`init` or
        ``codebook.attach``; other top-level keys are ignored).
      specs: resolved specs (static Python data: close over them under ``jax.jit``).
      active: see :func:`quantize_leaf`; a traced ``step >= switch`` turns STE on
        mid-run without recompiling.

    Returns:
      A tree like ``train_params["model"]``: each selected leaf (shape ``S``)
      replaced by ``reps[path][assign(w, reps[path])]`` (shape ``S``, bitwise
      ``snap(train_params, specs)[0]["model"]``), other leaves as they are.
      ``jax.grad`` of a loss of it with respect to ``train_params`` gives the
      selected weights the upstream gradient (straight through) and each level
      the sum of the upstream gradients of its weights (static levels without
      reps get none).

    Raises:
      ValueError / TypeError: see :func:`tree_levels`.
    """
    leaves, levels = tree_levels(train_params, specs)
    quantized = {path: quantize_leaf(leaves[path], levels[path], active=active) for path in specs}
    return replace_leaves(train_params["model"], quantized)


# ------------------------------------------------------------------- host side


def init(
    params: Any,
    specs_or_paths: Mapping[str, QuantSpec] | Sequence[str] | None = None,
    k: int | None = None,
    **spec_kwargs: Any,
) -> tuple[dict[str, Any], dict[str, QuantSpec]]:
    """The trainable tree ``{"model": params, "reps": {path: (K,)}}`` with k-means levels.

    Each selected leaf's levels are the 1-D k-means codebook of its weights
    (``quantizers.kmeans_1d``, sorted, in the weight's dtype): ``codebook.attach``
    with ``init="kmeans"``. Host-side, one-off.

    Args:
      params: the model's parameter pytree (not modified).
      specs_or_paths: ``{path: QuantSpec}`` with dynamic regularizers (their
        ``init`` is set to "kmeans"; ``k`` comes from each spec), or a list of
        paths, or None for ``codebook.select(params)`` (conv and dense kernels).
      k: number of levels (>= 2); required with paths/None, not allowed with specs.
      **spec_kwargs: other ``QuantSpec`` fields for paths/None (default
        ``regularizer="nearest"``: only used by a hybrid's ``penalty``).

    Returns:
      ``(train_params, resolved_specs)`` as from ``codebook.attach``.

    Raises:
      ValueError: bad ``k``, ``k``/``spec_kwargs`` given with specs, a static
        spec, paths not in ``params``, NaN/inf weights. TypeError: a selected leaf
        is not floating point, ``init`` passed in ``spec_kwargs``.
    """
    if isinstance(specs_or_paths, Mapping):
        _check_specs(specs_or_paths, "specs_or_paths")
        if k is not None or spec_kwargs:
            raise ValueError(
                "k and QuantSpec fields cannot be given with specs: set them in the specs"
            )
        static = [p for p, s in specs_or_paths.items() if not s.dynamic]
        if static:
            raise ValueError(
                f"specs_or_paths has static regularizers (no trainable levels) for {static}: "
                'use a dynamic one (e.g. regularizer="nearest")'
            )
        specs = {p: dataclasses.replace(s, init="kmeans") for p, s in specs_or_paths.items()}
    else:
        if k is None:
            raise ValueError("k (the number of levels) is required when specs_or_paths is paths")
        if "init" in spec_kwargs:
            raise TypeError("init is always 'kmeans' here; do not pass it")
        paths = resolve_paths(params, specs_or_paths)
        spec = QuantSpec(k=R.check_k(k), **{"regularizer": "nearest", **spec_kwargs})
        if not spec.dynamic:
            raise ValueError(
                f"regularizer {spec.regularizer!r} is static (no trainable levels): use a "
                'dynamic one (e.g. "nearest")'
            )
        specs = dict.fromkeys(paths, dataclasses.replace(spec, init="kmeans"))
    return attach(params, specs)


def recluster(
    train_params: Mapping[str, Any],
    specs: Mapping[str, QuantSpec],
    *,
    warm_start: bool = False,
) -> dict[str, Any]:
    """New levels: 1-D k-means of each selected leaf's current latent weights. Host-side.

    Call it outside ``jax.jit`` every N steps (it reads the weights back to the
    host; ``quantizers.kmeans_1d`` is O(N log N) per layer). Leaves whose levels
    are static (a static spec without reps) keep them.

    Args:
      train_params: the ``{"model", "reps"}`` tree (weights unchanged by this call).
      specs: resolved specs; ``k`` levels per leaf.
      warm_start: run Lloyd once from the current levels (cheaper, keeps each
        level's cell close to its previous one) instead of kmeans_1d's best of
        several starts (a lower or equal k-means cost).

    Returns:
      A copy of ``train_params`` whose ``reps[path]`` are the sorted codebooks,
      in the reps' dtype and (multi-device arrays) sharding. Optimizer state is not
      touched: momentum of level j carries over to the new level j (sorted order);
      reset it if that is unwanted.

    Raises:
      ValueError / TypeError: see :func:`tree_levels`; a traced tree (called under jit);
      NaN or inf weights.
    """
    from ..quantizers import kmeans_1d, kmeans_1d_rows  # host-side

    if warm_start and any(s.group_size is not None for s in specs.values()):
        raise ValueError("recluster(warm_start=True) does not support group_size (grouped specs)")
    leaves, levels = tree_levels(train_params, specs)
    reps = train_params["reps"]
    new: dict[str, Any] = {}
    for path, spec in specs.items():
        if path not in reps:
            continue
        old = reps[path]
        if isinstance(leaves[path], jax.core.Tracer) or isinstance(old, jax.core.Tracer):
            raise TypeError("recluster runs on the host: call it outside jax.jit")
        w = np.asarray(jax.device_get(leaves[path]))
        start: Any = "auto"
        if warm_start:
            start = np.sort(np.asarray(jax.device_get(levels[path]), np.float64))
        try:
            if old.ndim == 2:  # grouped: one k-means per group, all groups at once
                rows = to_groups(w, old.shape[0])
                book = kmeans_1d_rows(rows, spec.k, pin_zero=spec.pin_zero)
            elif spec.pin_zero:  # k-means around the pinned zero (no warm start)
                book = kmeans_1d_rows(w.reshape(1, -1), spec.k, pin_zero=True)[0]
            else:
                book = kmeans_1d(w, spec.k, init=start).codebook
        except ValueError as e:
            raise ValueError(f'train_params["model"] {path!r}: {e}') from e
        c = np.sort(np.asarray(book, np.float64), axis=-1).astype(old.dtype)
        # Placed as before; a single-device leaf stays uncommitted: committing it would
        # change the jit cache key and recompile the train step after every recluster.
        multi = isinstance(old, jax.Array) and len(old.sharding.device_set) > 1
        new[path] = jax.device_put(c, old.sharding) if multi else jnp.asarray(c)
    return {**train_params, "reps": {**reps, **new}}
