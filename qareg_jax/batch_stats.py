"""Re-estimate BatchNorm statistics after snapping: the running means and variances were
accumulated with the unquantized weights, and a snapped network evaluated with them can
lose much more accuracy than its weights explain (most of all after post-training
quantization, where weights move furthest)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax


def recalibrate_batch_stats(
    model: nn.Module,
    variables: Mapping[str, Any],
    batches: Iterable[Mapping[str, Any]],
    *,
    rng: jax.Array | None = None,
) -> dict[str, Any]:
    """``variables`` with "batch_stats" re-estimated on ``batches`` (the weights untouched).

    Runs ``model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])`` on
    each batch in turn: every flax ``BatchNorm`` moves its running averages towards the
    batch's statistics with its momentum ``m``, so after ``n`` batches the old statistics
    weigh ``m**n`` (0.5 % for m = 0.9 and 50 batches).

    Args:
      model: a flax module called as ``model(x, train=...)``.
      variables: ``{"params": ..., "batch_stats": ..., ...}``; returned unchanged when it
        has no "batch_stats".
      batches: ``{"image": (B, H, W, C)}`` mappings, e.g. training batches.
      rng: key of the "dropout" rng for models with dropout (a fixed key by default).

    Returns:
      A new variables dict; ``variables`` itself is not modified.
    """
    out = dict(variables)
    if "batch_stats" not in out:
        return out
    key = jax.random.key(0) if rng is None else rng

    @jax.jit
    def step(v: dict[str, Any], images: jax.Array, key: jax.Array) -> Any:
        _, updates = model.apply(
            v, images, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        return updates["batch_stats"]

    for batch in batches:
        key, sub = jax.random.split(key)
        out["batch_stats"] = step(out, batch["image"], sub)
    return out
