"""Optimizer recipes of the pipeline's phases and the lambda ramp."""

from __future__ import annotations

from typing import Any

import jax
import optax

from .config import Config


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
    config: Config, lr: float, total_steps: int, *, freeze_reps: bool = False
) -> optax.GradientTransformation:
    """The optimizer of a pretraining / regularized phase over a ``{"model", "reps"}`` tree.

    ``config.optimizer`` with a cosine-decayed ``lr`` and ``config.weight_decay`` on the
    model's kernels only; with ``freeze_reps`` the representatives get zero updates
    (``optax.partition`` + ``set_to_zero``).
    """
    schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    tx = optimizer(config.optimizer, schedule, config.weight_decay, kernels_mask)
    if freeze_reps:

        def labels(tree: Any) -> Any:
            return {
                "model": jax.tree.map(lambda _: "train", tree["model"]),
                "reps": jax.tree.map(lambda _: "frozen", tree["reps"]),
            }

        tx = optax.partition({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def lam_schedule(lam: float, warmup: float, total_steps: int) -> float | optax.Schedule:
    """Lambda over the regularized phase: linear ramp from 0 over ``warmup * total_steps``."""
    ramp = int(round(warmup * total_steps))
    if ramp == 0 or lam == 0:
        return lam
    return optax.linear_schedule(0.0, lam, ramp)
