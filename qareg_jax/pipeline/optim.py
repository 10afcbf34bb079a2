"""Optimizer recipes of the pipeline's phases, the lambda schedules and the tau/sigma anneal."""

from __future__ import annotations

from typing import Any

import jax
import optax

from ..validation import check_choice, check_positive
from .config import LAM_SCHEDULES, Config


def optimizer(
    name: str, lr: optax.ScalarOrSchedule, weight_decay: float = 0.0, mask: Any = None
) -> optax.GradientTransformation:
    """Adam(W) or SGD (momentum 0.9, nesterov); decoupled weight decay on ``mask``."""
    if name == "adam":
        return optax.adamw(lr, weight_decay=weight_decay, mask=mask)
    tx = optax.sgd(lr, momentum=0.9, nesterov=True)
    if weight_decay:  # for SGD, L2 on the gradient is the decoupled decay
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=mask), tx)
    return tx


def kernels_mask(tree: dict[str, Any]) -> dict[str, Any]:
    """Weight-decay mask of a ``{"model", "reps"}`` tree: the model's kernels only."""
    return {
        "model": jax.tree_util.tree_map_with_path(
            lambda kp, _: str(getattr(kp[-1], "key", "")) == "kernel", tree["model"]
        ),
        "reps": jax.tree.map(lambda _: False, tree["reps"]),
    }


def make_optimizer(
    config: Config,
    lr: float,
    total_steps: int,
    *,
    freeze_reps: bool = False,
    reps_lr: float | None = None,
    name: str | None = None,
) -> optax.GradientTransformation:
    """The optimizer of a pretraining / regularized phase over a ``{"model", "reps"}`` tree.

    ``name`` (default ``config.optimizer``) with a cosine-decayed ``lr`` and
    ``config.weight_decay`` on the model's kernels only; with ``freeze_reps`` the
    representatives get zero updates (``optax.partition`` + ``set_to_zero``); else with
    ``reps_lr`` they get their own copy of the optimizer at a cosine-decayed ``reps_lr``
    (the weights' updates are unchanged: every transform here is per leaf).
    ``reps_lr=None``: one optimizer, the same tree of updates as before the option existed.
    """
    schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    name = name or config.optimizer
    tx = optimizer(name, schedule, config.weight_decay, kernels_mask)
    if not freeze_reps and reps_lr is None:
        return tx
    # The frozen label keeps its old name: the optimizer state (and checkpoints) as before.
    label = "frozen" if freeze_reps else "reps"
    if freeze_reps:
        reps_tx = optax.set_to_zero()
    else:
        reps_schedule = optax.cosine_decay_schedule(reps_lr, max(total_steps, 1))
        reps_tx = optimizer(name, reps_schedule, config.weight_decay, kernels_mask)

    def labels(tree: Any) -> Any:
        return {
            "model": jax.tree.map(lambda _: "train", tree["model"]),
            "reps": jax.tree.map(lambda _: label, tree["reps"]),
        }

    return optax.partition({"train": tx, label: reps_tx}, labels)


def lam_schedule(
    lam: float,
    warmup: float,
    total_steps: int,
    *,
    kind: str = "ramp",
    exp_start: float = 1e-3,
    until: int | None = None,
) -> float | optax.Schedule:
    """Lambda over the regularized phase of ``total_steps`` steps.

    ``kind="ramp"``: linear from 0 over ``warmup * total_steps`` steps, then ``lam``
    (constant when that is 0 steps). ``kind="exp"``: geometric growth from
    ``lam * exp_start`` at step 0 to ``lam`` at step ``total_steps - 1`` (a constant
    factor per step), then ``lam``; ``warmup`` is not used. ``until``: lambda is 0 from
    that step on (the hybrid's STE part); None: never.
    """
    check_choice("lam_schedule", kind, LAM_SCHEDULES)
    if lam == 0:
        return lam
    if kind == "exp":
        if exp_start == 1:
            base: float | optax.Schedule = lam
        else:
            span = max(total_steps - 1, 1)
            # end_value caps the growth at lam (an upper bound when the rate is > 1).
            base = optax.exponential_decay(lam * exp_start, span, 1.0 / exp_start, end_value=lam)
    else:
        ramp = int(round(warmup * total_steps))
        base = lam if ramp == 0 else optax.linear_schedule(0.0, lam, ramp)
    if until is None:
        return base
    as_schedule = base if callable(base) else optax.constant_schedule(base)
    return optax.join_schedules([as_schedule, optax.constant_schedule(0.0)], [until])


def anneal_schedule(factor: float, total_steps: int) -> optax.Schedule:
    """Multiplier of tau (softmin) / sigma (wells) at a step: 1 at step 0, shrinking
    geometrically to ``1 / factor`` at step ``total_steps - 1``, then held there."""
    check_positive(factor, "anneal")
    if factor == 1:
        return optax.constant_schedule(1.0)
    span = max(total_steps - 1, 1)
    # end_value bounds the decay (factor > 1) or the growth (factor < 1) at 1 / factor.
    return optax.exponential_decay(1.0, span, 1.0 / factor, end_value=1.0 / factor)
