"""The budget stages' K per layer (``Config.budget``): planned once per seed, cached.

After pretraining, :func:`budget_plan` measures each quantized layer's sensitivity on the
full-precision model (``budget.layer_sensitivity``: the loss increase when that layer
alone is k-means-quantized at each K of ``budget_ks``), sizes every choice exactly as
``compress.save`` writes it (``budget.packed_bytes_per_choice``) and solves the knapsack
(``budget.plan_bits``). The plan is written to ``budget/<seed dir>/plan.json`` in the
workdir and read back on resume, so a resumed run uses the same K per layer.

Paths in a plan are those of the packed file, ``"params/conv1/kernel"``; the stages'
specs use the params tree's paths (:func:`planned_ks` drops the ``"params/"``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from .. import budget
from ..codebook import select
from .config import Config
from .loop import Context, phase_seed
from .recipe import edge_paths
from .records import Pretrained

PREFIX = "params/"  # the "params" collection's leaves in the packed file


def candidate_ks(config: Config, params: Any) -> dict[str, tuple[int, ...]]:
    """``{file path: Ks}`` the planner may choose from: ``budget_ks`` for every selected
    leaf of ``params`` (the "params" collection), ``(edge_layers_k,)`` for the edge layers
    when set (so the budget stages keep that option like every other stage)."""
    paths = select(params, config.include, config.exclude)
    ks = dict.fromkeys(paths, config.budget_ks)
    if config.edge_layers_k is not None:
        ks.update(dict.fromkeys(edge_paths(paths), (config.edge_layers_k,)))
    return {PREFIX + p: k for p, k in ks.items()}


def layer_bytes(config: Config, variables: Mapping[str, Any]) -> budget.LayerBytes:
    """Exact bytes of the packed file of ``variables`` (``{"params", ...}``, the tree
    ``compress.save`` writes) at each candidate K (shapes and dtypes only are read)."""
    ks = candidate_ks(config, variables["params"])
    return budget.packed_bytes_per_choice(
        variables, list(ks), ks, codebook_dtype=config.codebook_dtype
    )


def smallest_bytes(sizes: budget.LayerBytes, budget_bytes: int) -> int:
    """The smallest packed file the candidate Ks allow (every layer at its cheapest K):
    the exact file size, or ``budget.plan_bits``'s bound on it under ``budget_bytes``
    when that is larger (by a byte or two near the budget), so a budget that passes
    :func:`check_budget` is one the planner accepts."""
    cheapest = {p: min(c, key=c.__getitem__) for p, c in sizes.choices.items()}
    bound = sizes.fixed_bytes(budget_bytes) + sum(min(c.values()) for c in sizes.choices.values())
    return max(sizes.file_bytes(cheapest), bound)


def check_budget(config: Config, sizes: budget.LayerBytes) -> int:
    """``config.budget`` in bytes for the model of ``sizes`` (:func:`layer_bytes`); called
    before any training.

    Raises:
      ValueError: naming ``budget`` and the smallest packed file the candidate Ks allow,
        when the budget is below it.
    """
    target = budget.parse_budget(config.budget, sizes.float32_bytes)
    smallest = smallest_bytes(sizes, target)
    if smallest > target:
        raise ValueError(
            f"budget {config.budget!r} ({target:,} bytes) is below the smallest packed "
            f"{config.model} model: {smallest:,} bytes (every quantized layer at its smallest "
            f"K of budget_ks {list(config.budget_ks)}, the other leaves raw; float32: "
            f"{sizes.float32_bytes:,} bytes); raise the budget or add a smaller K"
        )
    return target


def sensitivity_examples(ctx: Context) -> tuple[np.ndarray, np.ndarray, str]:
    """``(normalized images (n, H, W, C), labels (n,), split)``: up to ``budget_batches *
    eval_batch_size`` examples of the validation split ("val") when the dataset has one,
    else of the training split ("train", unaugmented); a fixed random subset per seed."""
    cfg, ds = ctx.config, ctx.ds
    if ds.val_labels is not None:
        images, labels, split = ds.val_images, ds.val_labels, "val"
    else:
        images, labels, split = ds.train_images, ds.train_labels, "train"
    n = min(len(labels), cfg.budget_batches * cfg.eval_batch_size)
    rng = np.random.default_rng(phase_seed(cfg.seed, "budget/sensitivity"))
    # Sorted: the same examples in file order (folder datasets are ordered by class).
    idx = np.sort(rng.permutation(len(labels))[:n])
    return ds.normalize(images[idx]), np.asarray(labels[idx]), split


def eval_loss(ctx: Context, images: np.ndarray, labels: np.ndarray) -> Callable[[Any], Any]:
    """``variables -> mean cross-entropy`` of the model (eval mode) on the examples, in
    batches of ``eval_batch_size`` (unrolled: a few batches)."""
    x, y, bs = jnp.asarray(images), jnp.asarray(labels), ctx.config.eval_batch_size

    def loss(variables: Any) -> Any:
        total = jnp.zeros((), jnp.float32)
        for lo in range(0, len(labels), bs):
            logits = ctx.model.apply(variables, x[lo : lo + bs], train=False)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[lo : lo + bs])
            total = total + ce.astype(jnp.float32).sum()
        return total / len(labels)

    return loss


def make_plan(ctx: Context, fp: Pretrained) -> dict[str, Any]:
    """The plan of ``ctx``'s seed from the full-precision model, as stored in plan.json:
    ``{"budget", "budget_bytes", "float32_bytes", "split", "examples", "sensitivity":
    {path: {K: loss increase}}, "plan": dataclasses.asdict(budget.Plan)}``."""
    cfg, variables = ctx.config, fp.variables
    sizes = layer_bytes(cfg, variables)
    target = check_budget(cfg, sizes)
    images, labels, split = sensitivity_examples(ctx)
    ks = candidate_ks(cfg, variables["params"])
    sens = budget.layer_sensitivity(eval_loss(ctx, images, labels), variables, list(ks), ks)
    plan = budget.plan_bits(sens, sizes, target)
    return {
        "budget": cfg.budget,
        "budget_bytes": target,
        "float32_bytes": sizes.float32_bytes,
        "split": split,
        "examples": int(len(labels)),
        "sensitivity": {p: {str(k): v for k, v in s.items()} for p, s in sens.items()},
        "plan": dataclasses.asdict(plan),
    }


def budget_plan(ctx: Context, fp: Pretrained) -> tuple[budget.Plan, dict[str, Any], bool]:
    """``(plan, its plan.json record, whether it was read back)`` for ``ctx``'s seed:
    ``budget/<stage_id("plan")>.json`` when it exists (a resumed run), else
    :func:`make_plan`, written there."""
    path = ctx.workdir / "budget" / f"{ctx.stage_id('plan')}.json"
    stored = path.exists()
    if stored:
        record = json.loads(path.read_text())
    else:
        record = make_plan(ctx, fp)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
    return budget.Plan(**record["plan"]), record, stored


def planned_ks(plan: budget.Plan | None) -> dict[str, int]:
    """``{params path: K}`` of a plan (its file paths without ``"params/"``).

    Raises:
      ValueError: ``plan`` is None (a budget stage run without ``Context.plan``).
    """
    if plan is None:
        raise ValueError(
            "a budget stage needs the budget plan (Context.plan), which train_and_evaluate "
            "sets after pretraining when Config.budget is given"
        )
    return {p.removeprefix(PREFIX): int(k) for p, k in plan.ks.items()}


def describe(plan: budget.Plan, record: Mapping[str, Any], stored: bool, where: str = "") -> str:
    """The lines printed before the budget stages: what was planned, then ``Plan.table()``."""
    how = "read back from the workdir" if stored else "planned on the full-precision model"
    return (
        f"{where}budget {record['budget']!r} = {plan.budget_bytes:,} bytes "
        f"(float32 model {record['float32_bytes']:,} bytes): K per layer {how}; sensitivity = "
        f"loss increase on {record['examples']:,} {record['split']} examples\n{plan.table()}"
    )
