"""Gradient l1 regularization (Alizadeh et al., ICLR 2020; docs/references.md section 3).

Quantization noise is a bounded perturbation ``|Delta| <= delta / 2`` of the weights,
so to first order ``L(w + Delta) - L(w) <= (delta / 2) ||grad_w L||_1``. Training on

    L_total(params) = L(params) + lam * sum_l ||d L / d w_l||_1

(``l`` over the selected leaves) makes one set of weights robust to post-training
quantization at several bit-widths. The penalty is computed by double backprop:
differentiating ``L_total`` calls ``jax.grad`` of a function that itself calls
``jax.grad``, which costs about two to three plain backward passes.

    loss = gradient_l1(task_loss, lam=0.05, start_step=2000)
    (total, info), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, step)
    # info = {"loss": task loss, "grad_l1": sum_l ||grad_l||_1, "lam": lam at step}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..codebook import resolve_paths
from ..paths import named_leaves, replace_leaves
from ..validation import check_lam

Array = jax.Array
Schedule = Callable[[Any], Any]


def _check_scalar_loss(loss_fn: Callable, params: Any, batch: Any, has_aux: bool) -> None:
    """Raise unless ``loss_fn(params, batch)`` returns a float scalar (shapes only, no compute)."""
    out = jax.eval_shape(loss_fn, params, batch)
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("loss_fn with has_aux=True must return a pair (loss, aux)")
        out = out[0]
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            "loss_fn must return a floating-point scalar (reduce the per-example losses, e.g. "
            f".mean()), got shape {shape} and dtype {dtype}"
        )


def grad_l1_penalty(
    loss_fn: Callable[[Any, Any], Any],
    params: Any,
    batch: Any,
    paths: Sequence[str] | None = None,
    *,
    has_aux: bool = False,
) -> tuple[Array, Array, Any]:
    """The task loss and ``sum_l ||d loss / d w_l||_1`` over the leaves ``paths``.

    Both outputs are differentiable in ``params`` (double backprop) and jit-able.

    Args:
      loss_fn: ``(params, batch) -> scalar`` (or ``-> (scalar, aux)`` with ``has_aux``).
      params: any pytree of arrays.
      batch: passed through to ``loss_fn``.
      paths: leaves whose gradient is penalised; default ``codebook.select(params)``
        (conv and dense kernels).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``(loss, penalty, aux)``: float scalars (the penalty in float32 or wider) and ``aux``
      (``None`` without ``has_aux``).

    Raises:
      ValueError: ``loss_fn`` does not return a float scalar (checked with
        ``jax.eval_shape`` before any compute), ``paths`` is empty or names missing
        leaves, or the default selection is empty.
    """
    _check_scalar_loss(loss_fn, params, batch, has_aux)
    paths = resolve_paths(params, paths)
    leaves = named_leaves(params)

    def on_selected(selected: dict[str, Array]):
        out = loss_fn(replace_leaves(params, selected), batch)
        return out if has_aux else (out, None)

    (loss, aux), grads = jax.value_and_grad(on_selected, has_aux=True)(
        {p: leaves[p] for p in paths}
    )
    penalty = sum(
        jnp.sum(jnp.abs(g), dtype=jnp.promote_types(g.dtype, jnp.float32)) for g in grads.values()
    )
    return loss, penalty, aux


def gradient_l1(
    loss_fn: Callable[[Any, Any], Any],
    lam: float | Schedule,
    *,
    paths: Sequence[str] | None = None,
    start_step: int = 0,
    has_aux: bool = False,
) -> Callable[..., tuple[Array, dict[str, Any]]]:
    """Wrap ``loss_fn`` into ``loss + lam * sum_l ||d loss / d w_l||_1``.

    Args:
      loss_fn: ``(params, batch) -> scalar`` (or ``-> (scalar, aux)`` with ``has_aux``).
      lam: weight >= 0, a float or a schedule ``step -> float`` (e.g. an optax schedule).
      paths: leaves whose gradient is penalised; default ``codebook.select(params)``.
      start_step: the penalty applies from this step on (e.g. only for the last part
        of training): its weight is 0 before (``jnp.where``, jit-able with a traced
        ``step``). The double backprop still runs in those steps; to make them cost a
        plain step, jit the plain loss separately and switch to this one at
        ``start_step`` in the Python loop. (A ``lax.cond`` that skips it was 15x
        slower per step on CPU: XLA optimises convolutions inside conditionals poorly.)
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``wrapped(params, batch, step=None) -> (total, info)`` with ``info = {"loss",
      "grad_l1", "lam"}`` (plus ``"aux"`` with ``has_aux``); ``lam`` is the weight
      applied at ``step`` (0 before ``start_step``), ``grad_l1`` the unweighted penalty.
      Use ``jax.value_and_grad(wrapped, has_aux=True)``. ``step`` is required when
      ``lam`` is a schedule or ``start_step > 0``.

    Raises:
      ValueError: ``lam < 0``, ``start_step < 0``; at call time, a non-scalar loss,
        an empty selection, or a missing ``step``.
    """
    check_lam(lam)
    if isinstance(start_step, bool) or not isinstance(start_step, int | np.integer):
        raise TypeError(f"start_step must be an int, got {type(start_step).__name__}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    needs_step = callable(lam) or start_step > 0

    def wrapped(params: Any, batch: Any, step: Any = None) -> tuple[Array, dict[str, Any]]:
        if step is None and needs_step:
            raise ValueError("step is required when lam is a schedule or start_step > 0")
        loss, penalty, aux = grad_l1_penalty(loss_fn, params, batch, paths, has_aux=has_aux)
        weight = jnp.asarray(lam(step) if callable(lam) else lam, penalty.dtype)
        if start_step > 0:
            weight = jnp.where(jnp.asarray(step) >= start_step, weight, 0.0)
        total = loss + (weight * penalty).astype(loss.dtype)
        info = {"loss": loss, "grad_l1": penalty, "lam": weight}
        if has_aux:
            info["aux"] = aux
        return total, info

    return wrapped
