"""The recipe's options for the regularized phase (all off by default; docs/recipe.md).

More levels for the edge layers (``edge_layers_k``), the hybrid's STE part at the end of
the phase (``ste_last``), and softmin's tau / wells' sigma annealed over the phase
(``anneal``). :func:`recipe_step` builds the phase's step from the one train step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..codebook import QuantSpec, check_tree, select
from ..penalty import reduced
from ..qat import ste
from .config import ANNEALED, Config
from .steps import LossFn, StepFn, make_train_step, task_loss


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def edge_paths(paths: Any) -> list[str]:
    """The first and last of ``paths`` in natural order (digits compared as numbers:
    ``conv2 < conv10``), i.e. the first conv and last dense kernel of the zoo's models."""
    ordered = sorted(paths, key=_natural_key)
    return list(dict.fromkeys([ordered[0], ordered[-1]]))


def edge_overrides(cfg: Config, params: Any) -> dict[str, dict[str, int]] | None:
    """``make_specs`` overrides giving the edge layers ``cfg.edge_layers_k`` levels (None:
    no option). Keys are whole paths: they match only themselves."""
    if cfg.edge_layers_k is None:
        return None
    paths = select(params, cfg.include, cfg.exclude)
    return {p: {"k": cfg.edge_layers_k} for p in edge_paths(paths)}


def ste_switch(cfg: Config, total: int) -> int | None:
    """First STE step of a hybrid phase of ``total`` steps (None: ``ste_last`` is 0)."""
    if not cfg.ste_last:
        return None
    return max(total - max(int(round(cfg.ste_last * total)), 1), 0)


def annealed_penalty(
    train_params: Mapping[str, Any],
    specs: Mapping[str, QuantSpec],
    step: Any,
    multiplier: Callable[[Any], Any],
) -> jax.Array:
    """``penalty(train_params, specs, step)`` with softmin's tau and wells' sigma times
    ``multiplier(step)`` (a traced scalar is fine); other layers as in ``penalty``.

    The spec's tau / sigma stay static floats: the scale is moved onto the inputs,
    ``softmin_{m tau}(w, c) = m softmin_tau(w / sqrt m, c / sqrt m)`` and
    ``wells_{m sigma}(w, c) = wells_sigma(w / m, c / m)`` (the regularizers' custom VJPs
    are used as they are). Returns a float32 scalar.
    """
    leaves = check_tree(train_params, specs)
    reps = train_params["reps"]
    m = jnp.asarray(multiplier(step), jnp.float32)
    total = jnp.zeros((), jnp.float32)
    for path, spec in specs.items():
        w, c = leaves[path], reps.get(path)
        field = ANNEALED.get(spec.regularizer)
        if field is None:
            value = reduced(w, spec, c)
        else:
            inv = jax.lax.rsqrt(m) if field == "tau" else 1.0 / m
            scaled = reduced((w * inv).astype(w.dtype), spec, (c * inv).astype(c.dtype))
            value = m * scaled if field == "tau" else scaled
        total = total + jnp.asarray(spec.lam_at(step), jnp.float32) * value
    return total


def recipe_loss(model: Any, specs: Mapping[str, QuantSpec], *, switch: int | None) -> LossFn:
    """The hybrid's task loss: of the latent net, then of the STE forward net from step
    ``switch`` on (``ste.quantize(..., active=step >= switch)``; None: never)."""

    def loss(tree: Any, model_state: dict[str, Any], batch: Any, rng: Any, step: Any) -> Any:
        params = tree["model"]
        if switch is not None:
            params = ste.quantize(tree, specs, active=step >= switch)
        return task_loss(model, params, model_state, batch, rng)

    return loss


def recipe_step(
    model: Any,
    tx: Any,
    specs: Mapping[str, QuantSpec],
    *,
    switch: int | None = None,
    anneal: Callable[[Any], Any] | None = None,
) -> StepFn:
    """The regularized phase's jitted step with the recipe's hybrid STE part (from step
    ``switch``) and tau / sigma annealing (``anneal``: a multiplier schedule, through
    :func:`annealed_penalty`); the one train step of ``steps`` underneath."""
    loss = model if switch is None else recipe_loss(model, specs, switch=switch)
    penalty_fn = None
    if anneal is not None:

        def penalty_fn(params: Any, step: Any) -> jax.Array:
            return annealed_penalty(params, specs, step, anneal)

    return make_train_step(loss, tx, specs, penalty_fn=penalty_fn)
