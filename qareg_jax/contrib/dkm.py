"""DKM training glue: centroids per layer, the soft-weight transform, the final snap.

The per-layer numeric core (formulas, blocked memory) is in :mod:`.dkm_core`.

Centroids are warm-started: DKM starts each training step from the previous
step's final centroids. They are non-trainable state (``dkm_layer`` stops their
gradient) carried next to the weights, e.g. ``train_params["dkm"] = dkm_init(...)``::

    def loss_fn(tp, batch):
        soft, centroids = dkm_transform(tp["model"], tp["dkm"], tau=tau, iters=3)
        return task_loss(soft, batch), centroids

    (loss, centroids), grads = jax.value_and_grad(loss_fn, has_aux=True)(tp, batch)
    updates, opt_state = tx.update(grads, opt_state, tp)
    tp = optax.apply_updates(tp, updates)
    tp = {**tp, "dkm": centroids}       # overwrite: the optimizer never moves them

(their gradient is zero; overwriting them also discards any weight decay). Or keep
them in a separate argument of the step. After training::

    snapped, codebooks = dkm_snap(tp["model"], tp["dkm"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..codebook import INITS, init_representatives, resolve_paths
from ..nearest_level import assign
from ..paths import leaves_naming, named_leaves, replace_leaves
from ..validation import check_choice, check_float_array, check_k
from .dkm_core import Array, check_centroids, dkm_layer, dkm_layer_reference

__all__ = ["dkm_init", "dkm_layer", "dkm_layer_reference", "dkm_snap", "dkm_transform"]


def dkm_init(
    params: Any,
    paths: Sequence[str] | None = None,
    k: int | Mapping[str, int] = 16,
    init: str = "kmeans",
) -> dict[str, Array]:
    """Starting centroids ``{path: (K,)}`` (sorted, the leaf's dtype) for :func:`dkm_transform`.

    Args:
      params: the model's parameter pytree.
      paths: clustered leaves; default ``codebook.select(params)`` (conv and dense kernels).
      k: number of clusters (>= 2), one for every layer or a ``{path: k}`` dict covering
        every path (other keys are ignored); :func:`dkm_transform` and :func:`dkm_snap`
        take centroids of different K per layer.
      init: "kmeans" (exact 1-D k-means of the weights), "quantile" or "grid" (K points
        on ``[min, max]``), as in ``codebook.init_representatives``. Host-side, one-off.

    Raises:
      TypeError: ``k`` (or a value of it) not an int, ``init`` not a str.
      ValueError: ``k < 2``, a path missing from a ``k`` dict, unknown ``init``, empty or
        unknown ``paths``.
    """
    if not isinstance(k, Mapping):
        k = check_k(k)
    check_choice("init", init, INITS)
    paths = resolve_paths(params, paths)
    if isinstance(k, Mapping):
        absent = [p for p in paths if p not in k]
        if absent:
            raise ValueError(f"k has no entry for paths {absent}")
        ks = {p: check_k(k[p], f"k of {p!r}") for p in paths}
    else:
        ks = dict.fromkeys(paths, k)
    leaves = named_leaves(params)
    out = {}
    for path in paths:
        leaf = check_float_array(leaves[path], path)
        host = np.asarray(jax.device_get(leaf), np.float64)
        c = init_representatives(host, ks[path], init, float(host.min()), float(host.max()))
        out[path] = jnp.asarray(c, leaf.dtype)
    return out


def _per_layer(value: Any, path: str, name: str) -> Any:
    if isinstance(value, Mapping):
        if path not in value:
            raise ValueError(f"{name} has no entry for {path!r}")
        return value[path]
    return value


def _centroid_leaves(params: Any, centroids: Mapping[str, Array]) -> dict[str, Any]:
    """The named leaves of ``params``, after checking ``centroids`` is non-empty and names them."""
    if not centroids:
        raise ValueError("centroids is empty: build them with dkm_init(params, paths, k)")
    return leaves_naming(params, centroids, "centroids")


def dkm_transform(
    params: Any,
    centroids: Mapping[str, Array],
    tau: float | Array | Mapping[str, float | Array],
    iters: int = 3,
    *,
    block_size: int | None = None,
) -> tuple[Any, dict[str, Array]]:
    """``params`` with every leaf named in ``centroids`` replaced by its DKM weights ``A c``.

    Args:
      params: the model's parameter pytree.
      centroids: ``{path: (K,)}``, the warm start (e.g. :func:`dkm_init`, then the
        previous step's output); the keys select the leaves.
      tau: temperature > 0 (squared-weight units), one for all layers or ``{path: tau}``.
      iters: DKM iterations per call (>= 1).
      block_size: see :func:`dkm_layer`.

    Returns:
      ``(soft_params, new_centroids)``: use ``soft_params`` in the forward pass
      (``model.apply(soft_params, x)``); carry ``new_centroids`` (gradient stopped) to
      the next step. Jit-able; differentiable in ``params``.
    """
    leaves = _centroid_leaves(params, centroids)
    soft, new = {}, {}
    for path, c in centroids.items():
        soft[path], new[path] = dkm_layer(
            leaves[path], c, _per_layer(tau, path, "tau"), iters, block_size=block_size
        )
        new[path] = new[path].astype(jnp.asarray(c).dtype)
    return replace_leaves(params, soft), new


def dkm_snap(
    params: Any, centroids: Mapping[str, Array]
) -> tuple[Any, dict[str, tuple[Array, Array]]]:
    """Hard assignment: every weight named in ``centroids`` becomes its nearest centroid.

    :func:`qareg_jax.nearest_level.assign` (as :func:`qareg_jax.snap.assign`): O(N log K) per
    leaf, no ``N x K`` array; exact ties go to the lower centroid, equal centroids to
    the first; jit-able.

    Returns:
      ``(snapped_params, {path: (codebook (K,) sorted, assignments int32 leaf.shape)})``;
      a snapped leaf is ``codebook[assignments]`` in the leaf's dtype: at most ``K``
      distinct values.
    """
    leaves = _centroid_leaves(params, centroids)
    snapped, books = {}, {}
    for path, c in centroids.items():
        w = check_float_array(leaves[path], path)
        c = check_centroids(c)
        cs = jnp.sort(c.astype(jnp.promote_types(w.dtype, jnp.float32)))
        idx = assign(w, cs, index_dtype=jnp.int32)
        snapped[path] = cs[idx].astype(w.dtype)
        books[path] = (cs, idx)
    return replace_leaves(params, snapped), books
