"""DKM: differentiable k-means as a weight transform (Cho et al., ICLR 2022; PAPERS.md section 5).

For a layer's weights ``w`` (``N`` values) and centroids ``c`` (``K``), one DKM
iteration is

    a_ik = softmax_k(-(w_i - c_k)^2 / tau),      c_k <- sum_i a_ik w_i / sum_i a_ik,

run ``iters`` times with gradients through the loop; the forward pass then uses
``W~ = A c`` (``A`` of the last iteration, ``c`` after it). Training puts the
task loss on ``model.apply(W~, x)``; afterwards :func:`dkm_snap` assigns every
weight to its nearest centroid (at most ``K`` distinct values).

Memory. The reference implementation (:func:`dkm_layer_reference`) builds the
``N x K`` matrix ``A``, and reverse-mode autodiff keeps several of them per
iteration: 8M weights at K = 256 need tens of GB. :func:`dkm_layer` computes
the same formulas on blocks of ``block_size`` weights: ``sum_i a_ik`` and
``sum_i a_ik w_i`` are accumulated block by block (``lax.map`` over the blocks),
``W~`` is produced block by block, and every block computation is wrapped in
``jax.checkpoint`` so that the backward pass recomputes the block's ``A`` instead
of storing it. Peak memory is ``O(iters * N + block_size * K)`` per layer (the
backward pass keeps each iteration's block inputs, one ``N``-vector per iteration),
at the price of one extra forward computation of ``A`` in the backward pass. The
result is exact: the same arithmetic as the reference, only the order of the sums
over ``i`` differs (float rounding, ~1e-6 relative in float32). Binning the
weights into a fixed-size histogram would be cheaper still, but it is exact only
for weights that share a bin, so it is not used.

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

from ._tree import leaves_naming, named_leaves, replace_leaves
from .codebook import INITS, init_representatives, resolve_paths
from .regularizers import check_float, check_k, check_positive, nearest_index

Array = jax.Array
# Default block: about this many (weight, centroid) pairs per block (2 MB of float32).
_BLOCK_ELEMENTS = 1 << 19


def _check_iters(iters: object) -> int:
    if isinstance(iters, bool) or not isinstance(iters, int | np.integer) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    return int(iters)


def _check_centroids(c: object, name: str = "centroids") -> Array:
    c = check_float(c, name)
    if c.ndim != 1:
        raise ValueError(f"{name} must have shape (K,), got shape {c.shape}")
    check_k(c.shape[0], f"the number of {name} K")
    return c


def _block_size(block_size: int | None, k: int) -> int:
    if block_size is None:
        return max(1, _BLOCK_ELEMENTS // k)
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise ValueError(f"block_size must be an integer >= 1 or None, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1 or None, got {block_size!r}")
    return int(block_size)


def _soft_assign(w: Array, c: Array, tau: Array) -> Array:
    """``(n, K)`` soft assignments ``softmax_k(-(w_i - c_k)^2 / tau)`` for ``w`` (n,)."""
    return jax.nn.softmax(-jnp.square(w[:, None] - c[None, :]) / tau, axis=1)


def _update(c: Array, s0: Array, s1: Array) -> Array:
    """``c_k = s1_k / s0_k``; a centroid that no weight reaches (``s0_k == 0``) stays put."""
    live = s0 > 0
    return jnp.where(live, s1 / jnp.where(live, s0, 1.0), c)


def _split(wf: Array, block: int) -> tuple[Array, Array]:
    """``(full blocks (nb, block), remainder (r,))`` of the flat weights."""
    nb = wf.shape[0] // block
    return wf[: nb * block].reshape(nb, block), wf[nb * block :]


@jax.checkpoint
def _sums(w: Array, c: Array, tau: Array) -> tuple[Array, Array]:
    a = _soft_assign(w, c, tau)
    return jnp.sum(a, axis=0), jnp.sum(a * w[:, None], axis=0)


@jax.checkpoint
def _apply(w: Array, c_assign: Array, c_value: Array, tau: Array) -> Array:
    return jnp.sum(_soft_assign(w, c_assign, tau) * c_value[None, :], axis=1)


def _blocked_sums(blocks: Array, rest: Array, c: Array, tau: Array) -> tuple[Array, Array]:
    s0 = jnp.zeros_like(c)
    s1 = jnp.zeros_like(c)
    if blocks.shape[0]:
        b0, b1 = jax.lax.map(lambda b: _sums(b, c, tau), blocks)
        s0, s1 = s0 + jnp.sum(b0, axis=0), s1 + jnp.sum(b1, axis=0)
    if rest.shape[0]:
        r0, r1 = _sums(rest, c, tau)
        s0, s1 = s0 + r0, s1 + r1
    return s0, s1


def dkm_layer(
    w: Array,
    centroids: Array,
    tau: float | Array,
    iters: int = 3,
    *,
    block_size: int | None = None,
) -> tuple[Array, Array]:
    """Soft-clustered weights ``W~ = A c`` of one array, in ``O(iters N + block_size K)`` memory.

    Args:
      w: weights, any shape (``N`` values), floating dtype.
      centroids: starting centroids, shape ``(K,)``, ``K >= 2`` (no gradient flows into them).
      tau: temperature > 0 in squared-weight units (a float or a traced scalar).
      iters: DKM iterations (>= 1), differentiated through.
      block_size: weights per block (default ``2**19 // K``); smaller saves memory.

    Returns:
      ``(w_soft, new_centroids)``: ``w_soft`` has the shape and dtype of ``w`` and is
      differentiable in ``w``; ``new_centroids`` ``(K,)`` float32 (or wider), gradient
      stopped, for warm-starting the next step.

    Raises:
      ValueError: ``tau <= 0``, ``iters < 1``, ``K < 2``, bad ``block_size``, empty ``w``.
    """
    w = check_float(w)
    if w.size == 0:
        raise ValueError("w is empty")
    c = _check_centroids(centroids)
    check_positive(tau, "tau")
    iters = _check_iters(iters)
    cd = jnp.promote_types(w.dtype, jnp.float32)
    blocks, rest = _split(w.astype(cd).ravel(), _block_size(block_size, c.shape[0]))
    tau = jnp.asarray(tau, cd)
    c = jax.lax.stop_gradient(c.astype(cd))
    for _ in range(iters):
        c_assign = c
        c = _update(c, *_blocked_sums(blocks, rest, c, tau))
    parts = []
    if blocks.shape[0]:
        parts.append(jax.lax.map(lambda b: _apply(b, c_assign, c, tau), blocks).ravel())
    if rest.shape[0]:
        parts.append(_apply(rest, c_assign, c, tau))
    w_soft = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return w_soft.reshape(w.shape).astype(w.dtype), jax.lax.stop_gradient(c)


def dkm_layer_reference(
    w: Array, centroids: Array, tau: float | Array, iters: int = 3
) -> tuple[Array, Array]:
    """:func:`dkm_layer` computed the straightforward way, with the full ``N x K`` matrix.

    O(N K) memory per iteration, more under autodiff; a reference for tests and benchmarks.
    """
    w = check_float(w)
    c = _check_centroids(centroids)
    check_positive(tau, "tau")
    iters = _check_iters(iters)
    cd = jnp.promote_types(w.dtype, jnp.float32)
    wf = w.astype(cd).ravel()
    tau = jnp.asarray(tau, cd)
    c = jax.lax.stop_gradient(c.astype(cd))
    for _ in range(iters):
        a = _soft_assign(wf, c, tau)
        c = _update(c, jnp.sum(a, axis=0), jnp.dot(a.T, wf, precision="highest"))
    return jnp.dot(a, c, precision="highest").reshape(w.shape).astype(
        w.dtype
    ), jax.lax.stop_gradient(c)


def dkm_init(
    params: Any, paths: Sequence[str] | None = None, k: int = 16, init: str = "kmeans"
) -> dict[str, Array]:
    """Starting centroids ``{path: (K,)}`` (sorted, the leaf's dtype) for :func:`dkm_transform`.

    Args:
      params: the model's parameter pytree.
      paths: clustered leaves; default ``codebook.select(params)`` (conv and dense kernels).
      k: number of clusters (>= 2).
      init: "kmeans" (exact 1-D k-means of the weights), "quantile" or "grid" (K points
        on ``[min, max]``), as in ``codebook.init_representatives``. Host-side, one-off.

    Raises:
      ValueError: ``k < 2``, unknown ``init``, empty or unknown ``paths``.
    """
    k = check_k(k)
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
    paths = resolve_paths(params, paths)
    leaves = named_leaves(params)
    out = {}
    for path in paths:
        leaf = check_float(leaves[path], path)
        host = np.asarray(jax.device_get(leaf), np.float64)
        c = init_representatives(host, k, init, float(host.min()), float(host.max()))
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

    O(N log K) per leaf, no ``N x K`` array; ties go to the lower centroid; jit-able.

    Returns:
      ``(snapped_params, {path: (codebook (K,) sorted, assignments int32 leaf.shape)})``;
      a snapped leaf is ``codebook[assignments]`` in the leaf's dtype: at most ``K``
      distinct values.
    """
    leaves = _centroid_leaves(params, centroids)
    snapped, books = {}, {}
    for path, c in centroids.items():
        w = check_float(leaves[path], path)
        c = _check_centroids(c)
        cd = jnp.promote_types(w.dtype, jnp.float32)
        cs = jnp.sort(c.astype(cd))
        idx = nearest_index(w.astype(cd), cs, (cs[1:] + cs[:-1]) / 2)
        snapped[path] = cs[idx].astype(w.dtype)
        books[path] = (cs, idx)
    return replace_leaves(params, snapped), books
