"""DKM core: differentiable k-means of one array (Cho et al., ICLR 2022; docs/references.md 5).

For a layer's weights ``w`` (``N`` values) and centroids ``c`` (``K``), one DKM
iteration is

    a_ik = softmax_k(-(w_i - c_k)^2 / tau),      c_k <- sum_i a_ik w_i / sum_i a_ik,

run ``iters`` times with gradients through the loop; the forward pass then uses
``W~ = A c`` (``A`` of the last iteration, ``c`` after it). Training puts the
task loss on ``model.apply(W~, x)``; afterwards :func:`dkm_snap` assigns every
weight to its nearest centroid (at most ``K`` distinct values).

Memory and accuracy. The reference implementation (:func:`dkm_layer_reference`) builds
the ``N x K`` matrix ``A``, and reverse-mode autodiff keeps several of them per
iteration: 8M weights at K = 256 need tens of GB. Its float32 sums over all ``N``
weights also lose accuracy on large layers (on AlexNet's 16.8M-weight fc2 at K = 2, a
relative error of 5e-3 in the loss of ``W~`` and 6e-3 in its gradient against float64:
``benchmarks/results/dkm_memory_alexnet_fc2.json``). :func:`dkm_layer` computes the same
formulas on blocks of ``block_size`` weights (``lax.map`` over the blocks): every sum
over the weights is summed within a block, then over the blocks, which keeps float32
within about 1e-6 of float64. Its backward pass is written by hand
(``jax.custom_vjp``). Up to ``KEEP_ELEMENTS`` (weight, centroid) pairs it keeps each
iteration's ``A`` from the forward pass; above, it recomputes each block's ``A`` from
the weights and the iteration's centroids instead of storing it, so peak memory is
``O(N + block_size * K)`` per layer, at the price of computing ``A`` once more per
iteration. Binning the weights into a fixed-size histogram would be cheaper still,
but it is exact only for weights that share a bin, so it is not used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..validation import check_float_array, check_k, check_positive

Array = jax.Array
# Default block: about this many (weight, centroid) pairs per block (2 MB of float32).
_BLOCK_ELEMENTS = 1 << 19
# Up to this many (weight, centroid) pairs (256 MB per N x K float32 array; AlexNet's
# 16.8M-weight fc2 at K <= 4) the forward pass keeps each iteration's A for the backward
# pass instead of recomputing it: iters N x K arrays of memory for about 1.2x less time.
KEEP_ELEMENTS = 1 << 26


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


def dkm_layer(
    w: Array,
    centroids: Array,
    tau: float | Array,
    iters: int = 3,
    *,
    block_size: int | None = None,
) -> tuple[Array, Array]:
    """Soft-clustered weights ``W~ = A c`` of one array (memory: see the module docstring).

    Args:
      w: weights, any shape (``N`` values), floating dtype.
      centroids: starting centroids, shape ``(K,)``, ``K >= 2`` (no gradient flows into them).
      tau: temperature > 0 in squared-weight units (a float or a traced scalar).
      iters: DKM iterations (>= 1), differentiated through.
      block_size: weights per block; smaller saves memory. Default ``2**19 // K``
        (2 MB of ``A`` per block in float32).

    Returns:
      ``(w_soft, new_centroids)``: ``w_soft`` has the shape and dtype of ``w`` and is
      differentiable in ``w`` and ``tau``; ``new_centroids`` ``(K,)`` float32 (or wider),
      gradient stopped, for warm-starting the next step.

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
    cd = jnp.promote_types(w.dtype, jnp.float32)
    block = _block_size(block_size, c.shape[0])
    c = jax.lax.stop_gradient(c.astype(cd))
    keep = w.size * c.shape[0] <= KEEP_ELEMENTS
    w_soft, c = _dkm_blocked(w.astype(cd).ravel(), c, jnp.asarray(tau, cd), iters, block, keep)
    return w_soft.reshape(w.shape).astype(w.dtype), jax.lax.stop_gradient(c)


def dkm_layer_reference(
    w: Array, centroids: Array, tau: float | Array, iters: int = 3
) -> tuple[Array, Array]:
    """:func:`dkm_layer` computed the straightforward way, with the full ``N x K`` matrix.

    O(N K) memory per iteration, more under autodiff, and float32 sums over all ``N``
    weights (inaccurate on large layers, see the module docstring); a reference for tests
    and benchmarks.
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


# The blocked computation. Every ``(n,)`` vector of the layer is cut the same way into
# ``(blocks (nb, B), rest (r,))`` by ``_split``; ``_map`` applies a function to every block
# (``lax.map``) and to the rest.


def _map(fn: Any, parts: Sequence[tuple[Array, Array]]) -> list[Any]:
    """``fn(*pieces)`` of every block and of the rest of the split vectors ``parts``,
    each output with a leading block axis."""
    blocks, rest = tuple(p[0] for p in parts), tuple(p[1] for p in parts)
    outs = []
    if blocks[0].shape[0]:
        outs.append(jax.lax.map(lambda b: fn(*b), blocks))
    if rest[0].shape[0]:
        outs.append(jax.tree.map(lambda x: x[None], fn(*rest)))
    return outs


def _total(outs: list[Any]) -> Any:
    """Sum of per-block outputs (sums within blocks, then over the blocks)."""
    return jax.tree.map(lambda *xs: sum(jnp.sum(x, axis=0) for x in xs), *outs)


def _join(outs: list[Array]) -> Array:
    """The per-block ``(B,)`` outputs put back into one ``(n,)`` vector."""
    return jnp.concatenate([o.reshape(-1) for o in outs])


def _sums(w: Array, c: Array, tau: Array, keep: bool) -> tuple[tuple[Array, Array], Any]:
    """``((sum_i a_ik, sum_i a_ik w_i), A if keep else None)`` of one block."""
    a = _soft_assign(w, c, tau)
    return (jnp.sum(a, axis=0), jnp.sum(a * w[:, None], axis=0)), (a if keep else None)


def _as_part(outs: list[Array], w: tuple[Array, Array]) -> tuple[Array, Array]:
    """Per-block ``(B, K)`` outputs as a split part ``(blocks (nb, B, K), rest (r, K))``."""
    (blocks, rest), k, dtype = w, outs[0].shape[-1], outs[0].dtype
    full = outs[0] if blocks.shape[0] else jnp.zeros((0, blocks.shape[1], k), dtype)
    return full, outs[-1][0] if rest.shape[0] else jnp.zeros((0, k), dtype)


def _forward(w: Array, c: Array, tau: Array, iters: int, block: int, keep: bool):
    """``(w_soft, [c_0 .. c_iters], [sum_i a_ik per iteration], [A per iteration or None])``."""
    parts = [_split(w, block)]
    cs, s0s, kept = [c], [], []
    for _ in range(iters):
        outs = _map(lambda x: _sums(x, cs[-1], tau, keep), parts)
        (s0, s1), a = _total([o[0] for o in outs]), [o[1] for o in outs]
        cs.append(_update(cs[-1], s0, s1))
        s0s.append(s0)
        kept.append(_as_part(a, parts[0]) if keep else None)
    ca, cv = cs[-2], cs[-1]
    if keep:  # W~ = A c with the last iteration's A
        w_soft = _join(_map(lambda a: jnp.sum(a * cv, axis=1), kept[-1:]))
    else:
        w_soft = _join(_map(lambda x: jnp.sum(_soft_assign(x, ca, tau) * cv, axis=1), parts))
    return w_soft, cs, s0s, kept


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _dkm_blocked(w: Array, c: Array, tau: Array, iters: int, block: int, keep: bool):
    w_soft, cs, _, _ = _forward(w, c, tau, iters, block, keep=False)
    return w_soft, cs[-1]


def _dkm_blocked_fwd(w, c, tau, iters, block, keep):
    w_soft, cs, s0s, kept = _forward(w, c, tau, iters, block, keep)
    return (w_soft, cs[-1]), (w, tau, cs, s0s, kept)


def _block_grads(c, v, gs0, gs1, tau, w, a=None, g=None):
    """One iteration's backward pass on one block: ``(dL/dw (B,), dL/dc (K,), dL/dtau)``;
    ``a``: the block's ``A`` if kept (else recomputed).

    ``dL/dA = gs0 + w gs1 (+ g v on the last iteration, whose ``A`` gives ``W~ = A v``)``,
    then through the softmax of ``z = -(w - c)^2 / tau``."""
    a = _soft_assign(w, c, tau) if a is None else a
    da = gs0 + w[:, None] * gs1 + (0.0 if g is None else g[:, None] * v)
    dz = a * (da - jnp.sum(a * da, axis=1, keepdims=True))
    dzd = dz * (w[:, None] - c)
    dw = jnp.sum(a * gs1 - (2.0 / tau) * dzd, axis=1)
    return dw, (2.0 / tau) * jnp.sum(dzd, axis=0), jnp.sum(dzd * (w[:, None] - c)) / tau**2


def _task_first(grads: Any) -> Any:
    """``grads`` taking the block of the task's gradient first (as ``_map`` passes it)."""
    return lambda g, w, *a: grads(w, *a, g=g)


def _dkm_blocked_bwd(iters, block, keep, res, cotangents):
    w, tau, cs, s0s, kept = res
    g = cotangents[0]  # the returned centroids have their gradient stopped
    w_part, g_part = _split(w, block), _split(g, block)
    last = [w_part, kept[-1]] if keep else [w_part]
    # dL/dc_iters = sum_i g_i a_ik, with A of the last iteration (W~ = A c_iters).
    a_of = (lambda x, a: a) if keep else (lambda x: _soft_assign(x, cs[-2], tau))
    dv = _total(_map(lambda gx, *xa: jnp.sum(gx[:, None] * a_of(*xa), 0), [g_part, *last]))
    dw, dtau = jnp.zeros_like(w), jnp.zeros_like(tau)
    for t in reversed(range(iters)):
        c, v, live = cs[t], cs[t + 1], s0s[t] > 0
        s0 = jnp.where(live, s0s[t], 1.0)
        gs1, gs0 = jnp.where(live, dv / s0, 0.0), jnp.where(live, -dv * v / s0, 0.0)
        grads = functools.partial(_block_grads, c, v, gs0, gs1, tau)
        parts = [w_part] + ([kept[t]] if keep else [])
        if t == iters - 1:  # the task's gradient g enters through W~ = A v
            outs = _map(_task_first(grads), [g_part, *parts])
        else:
            outs = _map(grads, parts)
        dw = dw + _join([o[0] for o in outs])
        dc, dt = _total([o[1:] for o in outs])
        dv = jnp.where(live, 0.0, dv) + dc  # a dead centroid is passed through unchanged
        dtau = dtau + dt
    return dw, jnp.zeros_like(cs[0]), dtau


_dkm_blocked.defvjp(_dkm_blocked_fwd, _dkm_blocked_bwd)
