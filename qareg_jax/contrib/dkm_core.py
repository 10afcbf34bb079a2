"""DKM core: differentiable k-means of one array (Cho et al., ICLR 2022; docs/references.md 5).

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
the same formulas on blocks of ``block_size`` weights when the layer is large
(``N K > 2**26`` by default; below that the whole layer at once is about 2x faster and
its few ``N x K`` arrays fit in memory): ``sum_i a_ik`` and
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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..validation import check_float_array, check_k, check_positive

Array = jax.Array
# Default block: about this many (weight, centroid) pairs per block (2 MB of float32).
_BLOCK_ELEMENTS = 1 << 19
# Default: no blocks up to this many (weight, centroid) pairs (256 MB per N x K float32
# array; AlexNet's 16.8M-weight fc2 at K <= 4), where blocking and its recomputation in the
# backward pass cost about 2x the time on a CPU.
DIRECT_ELEMENTS = 1 << 26


def _check_iters(iters: object) -> int:
    if isinstance(iters, bool) or not isinstance(iters, int | np.integer):
        raise TypeError(f"iters must be an integer >= 1, got {type(iters).__name__} {iters!r}")
    if iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    return int(iters)


def check_centroids(c: object, name: str = "centroids") -> Array:
    """``c`` as a float ``(K,)`` array, ``K >= 2`` (``TypeError`` / ``ValueError`` otherwise)."""
    c = check_float_array(c, name)
    if c.ndim != 1:
        raise ValueError(f"{name} must have shape (K,), got shape {c.shape}")
    check_k(c.shape[0], f"the number of {name} K")
    return c


def _block_size(block_size: int | None, k: int) -> int:
    if block_size is None:
        return max(1, _BLOCK_ELEMENTS // k)
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise TypeError(
            f"block_size must be an integer >= 1 or None, got {type(block_size).__name__}"
        )
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
      block_size: weights per block; smaller saves memory. Default: the whole layer at
        once when ``N K <= DIRECT_ELEMENTS`` (the arithmetic of
        :func:`dkm_layer_reference`), else ``2**19 // K``.

    Returns:
      ``(w_soft, new_centroids)``: ``w_soft`` has the shape and dtype of ``w`` and is
      differentiable in ``w``; ``new_centroids`` ``(K,)`` float32 (or wider), gradient
      stopped, for warm-starting the next step.

    Raises:
      TypeError: non-float ``w`` or ``centroids``, non-int ``iters`` or ``block_size``.
      ValueError: ``tau <= 0``, ``iters < 1``, ``K < 2``, ``block_size < 1``, empty ``w``.
    """
    w = check_float_array(w, "w")
    if w.size == 0:
        raise ValueError("w is empty")
    c = check_centroids(centroids)
    check_positive(tau, "tau")
    iters = _check_iters(iters)
    if block_size is None and w.size * c.shape[0] <= DIRECT_ELEMENTS:
        return _direct(w, c, tau, iters)
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
    w = check_float_array(w, "w")
    c = check_centroids(centroids)
    check_positive(tau, "tau")
    return _direct(w, c, tau, _check_iters(iters))


def _direct(w: Array, c: Array, tau: float | Array, iters: int) -> tuple[Array, Array]:
    """The DKM iterations on the whole layer (the full ``N x K`` matrix), checked inputs."""
    cd = jnp.promote_types(w.dtype, jnp.float32)
    wf = w.astype(cd).ravel()
    tau = jnp.asarray(tau, cd)
    c = jax.lax.stop_gradient(c.astype(cd))
    for _ in range(iters):
        a = _soft_assign(wf, c, tau)
        c = _update(c, jnp.sum(a, axis=0), jnp.dot(a.T, wf, precision="highest"))
    w_soft = jnp.dot(a, c, precision="highest").reshape(w.shape).astype(w.dtype)
    return w_soft, jax.lax.stop_gradient(c)
