"""R2 range regularization (Kundu et al., arXiv 2303.08253; docs/references.md section 4).

Penalties that shrink a layer's weight range during full-precision training, so
that post-training quantizers spend their levels on the bulk of the weights
instead of on outliers. Per array (pure, jit-able, differentiable, float32 scalar):

- ``linf(w)``: ``max_i |w_i|`` (the gradient reaches only the largest weights);
- ``margin(w, m)``: ``mean_i relu(|w_i| - m) + m^2`` with a learnable margin ``m``
  (our reading): weights outside ``[-m, m]`` are pulled in while ``m^2`` shrinks the margin;
- ``soft_min_max(w, alpha)``: ``s_max - s_min + exp(-alpha)``, ``s_max = sum_i w_i
  softmax(alpha w)_i``, ``s_min = sum_i w_i softmax(-alpha w)_i``, with a learnable
  temperature ``alpha`` (our reading): a smooth ``max - min``; ``exp(-alpha)`` keeps
  ``alpha`` from collapsing to 0, where ``s_max - s_min`` vanishes for any weights.
  ``alpha`` is in inverse weight units: ``alpha * std(w)`` of a few makes ``s_max`` sit
  in the upper tail of the layer.

The learnable parameters live in the trainable tree next to the model, updated by
the same optax step::

    paths = codebook.select(params)
    train_params = {"model": params, "range": init_range_params(params, paths, "margin")}
    loss = task_loss(train_params["model"]) + range_penalty(train_params, paths, "margin", 1e-2)

``train_params["range"]`` is ``{path: {"margin": m}}`` or ``{path: {"alpha": a}}``
(scalars in the weight's dtype); ``linf`` has no parameters (``{}``). The tree may
also hold "reps" (``codebook.check_tree`` allows extra top-level keys).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..codebook import resolve_paths
from ..paths import named_leaves
from ..validation import check_choice, check_float_array, check_lam, check_positive

Array = jax.Array
Schedule = Callable[[Any], Any]
KINDS = ("linf", "margin", "soft_min_max")
_PARAM_NAME = {"margin": "margin", "soft_min_max": "alpha"}
DEFAULT_ALPHA_SCALE = 3.0


def _f32(w: Array) -> Array:
    return check_float_array(w, "w").astype(jnp.promote_types(w.dtype, jnp.float32)).ravel()


def linf(w: Array) -> Array:
    """``max_i |w_i|`` of ``w`` (any shape), a float32 (or wider) scalar."""
    return jnp.max(jnp.abs(_f32(w)))


def margin(w: Array, m: Array | float) -> Array:
    """``mean_i relu(|w_i| - m) + m^2``: weights beyond the margin ``m`` are penalised.

    Args:
      w: weights, any shape, floating dtype.
      m: the layer's margin, a scalar (learnable: the gradient is ``2 m`` minus the
        fraction of weights with ``|w| > m``).

    Returns:
      A float32 (or wider) scalar.
    """
    wf = _f32(w)
    m = jnp.asarray(m, wf.dtype)
    if m.ndim != 0:
        raise ValueError(f"m must be a scalar, got shape {m.shape}")
    return jnp.mean(jax.nn.relu(jnp.abs(wf) - m)) + m * m


def soft_min_max(w: Array, alpha: Array | float) -> Array:
    """``s_max(w) - s_min(w) + exp(-alpha)``: a smooth weight range.

    Args:
      w: weights, any shape, floating dtype.
      alpha: temperature > 0, a scalar in inverse weight units (learnable).
        ``s_max = sum_i w_i softmax(alpha w)_i`` tends to ``max w`` as ``alpha`` grows
        and to ``mean w`` as it shrinks; ``s_min`` likewise with ``-alpha``.

    Returns:
      A float32 (or wider) scalar. O(N) time and memory.
    """
    wf = _f32(w)
    alpha = jnp.asarray(alpha, wf.dtype)
    if alpha.ndim != 0:
        raise ValueError(f"alpha must be a scalar, got shape {alpha.shape}")
    s_max = jnp.sum(wf * jax.nn.softmax(alpha * wf))
    s_min = jnp.sum(wf * jax.nn.softmax(-alpha * wf))
    return s_max - s_min + jnp.exp(-alpha)


def init_range_params(
    params: Any,
    paths: Sequence[str] | None = None,
    kind: str = "margin",
    *,
    alpha: float | None = None,
    alpha_scale: float = DEFAULT_ALPHA_SCALE,
) -> dict[str, dict[str, Array]]:
    """The learnable parameters of range regularizer ``kind``, for ``train_params["range"]``.

    Args:
      params: the model's parameter pytree.
      paths: regularized leaves; default ``codebook.select(params)``.
      kind: "linf" (no parameters: returns ``{}``), "margin" (``m = max |w|``, so the
        penalty starts at ``max|w|^2`` and first shrinks the margin) or "soft_min_max".
      alpha: the starting temperature of every layer (> 0). Default: per layer
        ``alpha_scale / std(w)``, which puts ``s_max`` about ``alpha_scale`` standard
        deviations above the mean (the upper tail of a bell-shaped layer).
      alpha_scale: see ``alpha`` (> 0).

    Returns:
      ``{path: {"margin": m}}`` or ``{path: {"alpha": a}}``, scalars in the leaf's dtype.

    Raises:
      ValueError: unknown ``kind``, ``alpha`` or ``alpha_scale`` <= 0, empty or unknown
        ``paths``, a constant leaf (no default ``alpha``).
    """
    check_choice("kind", kind, KINDS)
    if alpha is not None:
        check_positive(alpha, "alpha")
    check_positive(alpha_scale, "alpha_scale")
    paths = resolve_paths(params, paths)
    if kind == "linf":
        return {}
    leaves = named_leaves(params)
    out: dict[str, dict[str, Array]] = {}
    for path in paths:
        leaf = check_float_array(leaves[path], path)
        host = np.asarray(jax.device_get(leaf), np.float64)
        if kind == "margin":
            value = float(np.max(np.abs(host)))
        elif alpha is not None:
            value = float(alpha)
        else:
            std = float(np.std(host))
            if not std > 0:
                raise ValueError(f"leaf {path!r} is constant: give alpha explicitly")
            value = alpha_scale / std
        out[path] = {_PARAM_NAME[kind]: jnp.asarray(value, leaf.dtype)}
    return out


def layer_range_penalties(
    train_params: Mapping[str, Any], paths: Sequence[str] | None = None, kind: str = "margin"
) -> dict[str, Array]:
    """``{path: R_l}``: each layer's range penalty before lambda (scalars)."""
    check_choice("kind", kind, KINDS)
    if not isinstance(train_params, Mapping) or "model" not in train_params:
        raise ValueError('train_params must be a dict with a "model" key')
    model = train_params["model"]
    paths = resolve_paths(model, paths)
    leaves = named_leaves(model)
    if kind == "linf":
        return {p: linf(leaves[p]) for p in paths}
    name = _PARAM_NAME[kind]
    learned = train_params.get("range", {})
    missing = [p for p in paths if name not in learned.get(p, {})]
    if missing:
        raise ValueError(
            f'train_params["range"] has no {name!r} for {missing}; build it with '
            f"init_range_params(params, paths, {kind!r})"
        )
    fn = margin if kind == "margin" else soft_min_max
    return {p: fn(leaves[p], learned[p][name]) for p in paths}


def range_penalty(
    train_params: Mapping[str, Any],
    paths: Sequence[str] | None = None,
    kind: str = "margin",
    lam: float | Schedule = 1.0,
    step: Any = None,
) -> Array:
    """``lam(step) * sum_l R_l`` over the layers ``paths``: a float32 scalar.

    Args:
      train_params: ``{"model": params, "range": init_range_params(...), ...}``
        ("range" is not needed for "linf").
      paths: regularized leaves; default ``codebook.select(train_params["model"])``.
      kind: "linf", "margin" or "soft_min_max".
      lam: weight >= 0, a float or a schedule ``step -> float``.
      step: required when ``lam`` is a schedule.

    Differentiable in the weights and in the learnable margins / temperatures; jit-able.

    Raises:
      ValueError: ``lam < 0``, unknown ``kind``, missing learnable parameters, empty or
        unknown ``paths``, a schedule without ``step``.
    """
    check_lam(lam)
    if callable(lam) and step is None:
        raise ValueError("step is required when lam is a schedule")
    per_layer = layer_range_penalties(train_params, paths, kind)
    total = sum(v.astype(jnp.float32) for v in per_layer.values())
    return jnp.asarray(lam(step) if callable(lam) else lam, jnp.float32) * total
