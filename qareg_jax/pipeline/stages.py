"""The stages of a run and their typed results.

A run is "pretrain" followed by the stages :func:`planned_stages` lists: per K, every
registered stage kind contributes its stages (``STAGE_KINDS``: "regularizer" for the
quantization-aware penalties, "ptq" for post-training quantizers, "ste" and "dkm" for the
quantization-aware training baselines). A new kind of method
(e.g. quantization-aware training) is one ``plan(config, k) -> [Stage]`` function, one
``run(ctx, fp, stage) -> StageResult`` function and one ``STAGE_KINDS`` entry; its
``run`` reuses :func:`finetune` and :func:`pack` and returns a :class:`StageResult`.

With ``config.budget`` every kind's ``plan`` is also called with K None, after the Ks of
``config.ks``: those stages (named ``<...>-budget``, e.g. "reg-nearest-budget") run at the
budget plan's K per layer (``ctx.plan``, see ``budget_plan``); :func:`layer_ks` and
:func:`k_overrides` give every runner its per-layer K either way.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import compress, data, pruning, quantizers
from .. import regularizers as R
from ..batch_stats import recalibrate_batch_stats
from ..codebook import QuantSpec, attach, check_schedules, levels, make_specs
from ..contrib import dkm
from ..finetune import assignments_by_path, finetune_specs, quantized_finetune
from ..paths import named_leaves, replace_leaves
from ..provenance import tree_digest
from ..qat import ste
from ..snap import check_snappable, snap
from .budget_plan import planned_ks
from .config import ANNEALED, Config
from .loop import Context, batches_from, phase_seed, run_phase, variables
from .optim import anneal_schedule, lam_schedule, make_optimizer, optimizer
from .recipe import (
    edge_overrides,
    edge_paths,
    recipe_step,
    ste_switch,
)
from .records import Packed, Pretrained, Stage, StageKind, StageResult
from .steps import (
    LossFn,
    make_init_fn,
    make_train_step,
    task_loss,
)

HIST_BINS = 80


# ----------------------------------------------------------------------------- pretrain


def pretrain(ctx: Context) -> Pretrained:
    """The full-precision phase, from ``ctx.initial_variables()``."""
    cfg = ctx.config
    t0 = time.perf_counter()
    start = ctx.initial_variables()
    params, model_state = start["params"], {k: v for k, v in start.items() if k != "params"}
    total = cfg.pretrain_epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    tx = make_optimizer(cfg, cfg.pretrain_lr, total)
    seed = phase_seed(cfg.seed, "pretrain/train")
    state = make_init_fn(tx)({"model": params, "reps": {}}, model_state, np.uint32(seed))
    step_fn = make_train_step(ctx.model, tx)
    state = run_phase(ctx, "pretrain", "train", state, step_fn, cfg.pretrain_epochs)
    acc = ctx.accuracy(state.params["model"], state.model_state)
    acc_val = ctx.val_accuracy(state.params["model"], state.model_state)
    fp = variables(state.params["model"], state.model_state)
    step_s = ctx.step_times.get((ctx.stage_id("pretrain"), "train"))
    digest = tree_digest(fp)
    return Pretrained(fp, acc, time.perf_counter() - t0, step_s, acc_val, digest)


# ------------------------------------------------------------------ fine-tune and pack


def finetune(
    ctx: Context,
    stage: str,
    snapped: dict[str, Any],
    model_state: dict[str, Any],
    specs: Mapping[str, QuantSpec],
    lr: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """Quantized fine-tuning of a snapped tree at rate ``lr`` (default: the config's
    float ``finetune_lr``); ``(tree, model_state, assignments)``.

    Every selected weight stays exactly on its representative; the representatives move
    with the summed gradients of their weights (``snap.quantized_finetune``).
    """
    cfg = ctx.config
    # quantized_finetune reads only each spec's K, groups and pinned zero: the same step
    # serves every stage with the same ones (one compilation), the stage enters through
    # the dropout seed in the state.
    ks = tuple(sorted({(p, s.k, s.group_size, s.pin_zero) for p, s in specs.items()}))
    lr = cfg.finetune_lr if lr is None else lr
    if ("finetune", ks, lr) not in ctx.compiled:
        plain = {
            p: QuantSpec(k=k, regularizer="nearest", lam=0.0, group_size=g, pin_zero=z)
            for p, k, g, z in ks
        }
        base = optimizer(cfg.finetune_optimizer, lr)
        tx = quantized_finetune(base, plain, index_dtype=cfg.index_dtype)
        ctx.compiled["finetune", ks, lr] = (make_init_fn(tx), make_train_step(ctx.model, tx))
    init_fn, step_fn = ctx.compiled["finetune", ks, lr]
    seed = np.uint32(phase_seed(cfg.seed, f"{stage}/finetune"))
    state = init_fn(snapped, model_state, seed)
    state = run_phase(ctx, stage, "finetune", state, step_fn, cfg.finetune_epochs)
    return state.params, state.model_state, assignments_by_path(state.opt_state)


def pack(
    ctx: Context,
    stage: str,
    tree: dict[str, Any],
    model_state: dict[str, Any],
    assignments: Mapping[str, Any],
) -> Packed:
    """Size report and ``compress.save`` of the final quantized model."""
    full = jax.device_get(variables(tree["model"], model_state))
    quantized = {
        f"params/{p}": (np.asarray(jax.device_get(tree["reps"][p]), np.float32), np.asarray(a))
        for p, a in jax.device_get(assignments).items()
    }
    codebook_dtype = ctx.config.codebook_dtype
    report = compress.size_report(full, quantized, codebook_dtype)
    out = ctx.workdir / "models" / f"{ctx.stage_id(stage)}.qareg"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = compress.save(out, full, quantized, codebook_dtype=codebook_dtype, overwrite=True)
    return Packed(
        original_bytes=report.original_bits / 8,
        packed_bytes=report.packed_bits / 8,
        huffman_bytes=report.huffman_bits / 8,
        ratio=1.0 / report.psi_packed,
        huffman_ratio=1.0 / report.psi_huffman,
        file_bytes=info.file_bytes,
        model_file=os.fspath(out.relative_to(ctx.workdir)),
    )


def _result(
    ctx: Context, fp: Pretrained, stage: Stage, t0: float, phase: str | None, **fields: Any
) -> StageResult:
    """A :class:`StageResult` with the run's common fields, the stage's wall time and the
    median step time of its training ``phase`` (None: it has none)."""
    cfg = ctx.config
    step_s = ctx.step_times.get((ctx.stage_id(stage.name), phase)) if phase else None
    if stage.k is None:  # a budget stage: its budget and the K of every layer
        fields.update(budget_bytes=ctx.plan.budget_bytes, layer_ks=dict(ctx.plan.ks))
    return StageResult(
        model=cfg.model,
        dataset=cfg.dataset_label or cfg.dataset,
        device=ctx.device,
        stage=ctx.stage_id(stage.name),
        acc_fp=fp.acc_fp,
        k=stage.k,
        **fields,
        wall_s=time.perf_counter() - t0,
        seed=cfg.seed,
        step_s=step_s,
        step_rel=step_s / fp.step_s if step_s and fp.step_s else None,
        acc_val_fp=fp.acc_val_fp,
        fp_digest=fp.digest,
    )


def recalibrate(
    ctx: Context, stage: str, params: Any, model_state: dict[str, Any]
) -> dict[str, Any]:
    """``model_state`` with BatchNorm statistics re-estimated for ``params`` (snapped, or
    a regularized stage's unsnapped net) on ``config.bn_recalibrate`` training batches
    (unchanged when 0 or without BatchNorm)."""
    n = ctx.config.bn_recalibrate
    if not n or "batch_stats" not in model_state:
        return model_state
    seed = phase_seed(ctx.config.seed, f"{stage}/recalibrate")
    batches = batches_from(ctx.ds, ctx.config.batch_size, seed, 0)
    try:
        out = recalibrate_batch_stats(
            ctx.model, variables(params, model_state), itertools.islice(batches, n),
            rng=jax.random.key(seed),
        )  # fmt: skip
    finally:
        batches.close()  # stops the loader's threads
    return {k: v for k, v in out.items() if k != "params"}


def _tune_and_pack(
    ctx: Context,
    fp: Pretrained,
    stage: Stage,
    t0: float,
    snapped: dict[str, Any],
    model_state: dict[str, Any],
    specs: Mapping[str, QuantSpec],
    phase: str | None,
    **fields: Any,
) -> StageResult:
    """The common tail of every stage: pre-tuning accuracy of ``snapped`` (a
    ``{"model", "reps"}`` tree on its levels), :func:`finetune`, post-tuning accuracy,
    :func:`pack`; ``fields`` fill the rest of the row (with ``histograms`` the final
    levels are added to them)."""
    model_state = recalibrate(ctx, stage.name, snapped["model"], model_state)
    acc_pre = ctx.accuracy(snapped["model"], model_state)
    val_pre = ctx.val_accuracy(snapped["model"], model_state)
    lr = ctx.config.finetune_lr_for(stage.method)
    tree, model_state, assignments = finetune(ctx, stage.name, snapped, model_state, specs, lr)
    acc_post = ctx.accuracy(tree["model"], model_state)
    val_post = ctx.val_accuracy(tree["model"], model_state)
    for path, hist in (fields.get("histograms") or {}).items():
        hist["levels_final"] = np.sort(np.asarray(tree["reps"][path], np.float64)).tolist()
    packed = pack(ctx, stage.name, tree, model_state, assignments)
    return _result(
        ctx, fp, stage, t0, phase, acc_pre=acc_pre, acc_post=acc_post,
        acc_val_pre=val_pre, acc_val_post=val_post, **dataclasses.asdict(packed), **fields,
    )  # fmt: skip


def _start(ctx: Context, fp: Pretrained) -> tuple[Any, dict[str, Any]]:
    """``(params, model_state)`` the trained stages start from (``config.from_pretrained``)."""
    start = fp.variables if ctx.config.from_pretrained else ctx.initial_variables()
    return start["params"], {k: v for k, v in start.items() if k != "params"}


# ------------------------------------------------------------------------- K per layer


def k_tag(k: int | None) -> str:
    """The K part of a stage name: ``"k4"``, or ``"budget"`` for a budget stage."""
    return "budget" if k is None else f"k{k}"


def layer_ks(ctx: Context, params: Any, stage: Stage, *, edges: bool = True) -> dict[str, int]:
    """``{path: K}`` of the stage's quantized leaves of ``params``: the budget plan's for a
    budget stage (``stage.k`` None), else ``stage.k`` on every selected leaf with
    ``edge_layers_k`` on the edge layers (unless ``edges`` is False)."""
    if stage.k is None:
        return planned_ks(ctx.plan)
    cfg = ctx.config
    ks = dict.fromkeys(_paths(cfg, params, stage.k), stage.k)
    if edges and cfg.edge_layers_k is not None:
        ks.update(dict.fromkeys(edge_paths(list(ks)), cfg.edge_layers_k))
    return ks


def k_overrides(ctx: Context, params: Any, stage: Stage) -> dict[str, dict[str, int]] | None:
    """``make_specs`` overrides giving each layer its K (with ``k=base_k(...)``): every
    layer's planned K in a budget stage, else the edge layers' (None: no option)."""
    if stage.k is None:
        return {p: {"k": k} for p, k in planned_ks(ctx.plan).items()}
    return edge_overrides(ctx.config, params)


def base_k(ctx: Context, stage: Stage) -> int:
    """The ``k`` passed to ``make_specs`` beside :func:`k_overrides`: ``stage.k``, or in a
    budget stage the plan's smallest (every layer is overridden; any valid K would do)."""
    return stage.k if stage.k is not None else min(planned_ks(ctx.plan).values())


# --------------------------------------------------------------------------- regularizer


def method_name(regularizer: str, freeze_reps: bool, ste_last: float = 0.0) -> str:
    """Table name of a regularized run, e.g. ``"nearest"``, ``"nearest (frozen reps)"`` or
    (the hybrid) ``"nearest + ste0.2"``."""
    name = f"{regularizer} (frozen reps)" if freeze_reps else regularizer
    return f"{name} + ste{ste_last:g}" if ste_last else name


def _pruned(cfg: Config) -> str:
    """The table's note on a pruned run ("" when not pruning)."""
    return "" if cfg.prune_sparsity is None else f" + prune {cfg.prune_sparsity:.0%}"


def stage_name(regularizer: str, k: int | None, freeze_reps: bool, ste_last: float = 0.0) -> str:
    """Directory-safe stage name, e.g. ``"reg-nearest-k4"``, ``"reg-nearest-frozen-k4"``,
    (the hybrid) ``"reg-nearest-ste0.2-k4"`` or (k None) ``"reg-nearest-budget"``."""
    hybrid = f"-ste{ste_last:g}" if ste_last else ""
    return f"reg-{regularizer}{'-frozen' if freeze_reps else ''}{hybrid}-{k_tag(k)}"


def plan_regularized(config: Config, k: int | None) -> list[Stage]:
    """Per regularizer and ``freeze_reps`` value (static penalties have no reps: once);
    hybrids (``config.ste_last > 0``) instead of plain runs."""
    return [
        Stage(stage_name(reg, k, frozen, config.ste_last), "regularizer", reg, k, frozen)
        for reg in config.regularizers
        for frozen in ((False,) if reg in R.STATIC else config.freeze_reps)
    ]


def _reg_specs(ctx: Context, params: Any, stage: Stage, total: int) -> dict[str, QuantSpec]:
    cfg = ctx.config
    switch = ste_switch(cfg, total)
    # The schedule spans the regularizer's part (all of the phase when STE runs from step
    # 0); the hybrid's STE part has lambda 0 unless kept.
    lam = lam_schedule(
        cfg.lam_for(stage.method),
        cfg.lam_warmup,
        switch or total,
        kind=cfg.lam_schedule,
        exp_start=cfg.lam_exp_start,
        until=None if switch is None or cfg.ste_keep_lam else switch,
    )
    specs = make_specs(
        params,
        include=cfg.include,
        exclude=cfg.exclude,
        overrides=k_overrides(ctx, params, stage),
        k=base_k(ctx, stage),
        regularizer=stage.method,
        lam=lam,
        interval=cfg.interval,
        interval_param=cfg.interval_param,
        init=cfg.init,
        reduction=cfg.reduction,
        normalize=cfg.penalty_normalize,
        tau=cfg.tau,
        sigma=cfg.sigma,
        group_size=cfg.group_size,
        pin_zero=cfg.pin_zero,
    )
    check_schedules(specs, total)  # a schedule gone NaN or negative mid-run: refuse now
    return specs


def regularized_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """Attach representatives, train with task loss + penalty, snap ("pre-tuning"),
    fine-tune ("post-tuning"), pack; with weight histograms before / after training.

    Options: ``reps_lr``, ``anneal`` and the hybrid's STE part (``ste_last``) change the
    step; ``lam_schedule``, ``penalty_normalize`` and ``edge_layers_k`` the specs.
    """
    cfg, t0, name = ctx.config, time.perf_counter(), stage.name
    params, model_state = _start(ctx, fp)
    total = cfg.reg_epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    tree, specs = attach(params, _reg_specs(ctx, params, stage, total))
    before = _named(tree, specs)
    tx = make_optimizer(
        cfg, cfg.reg_lr, total, freeze_reps=bool(stage.freeze_reps), reps_lr=cfg.reps_lr,
        name=cfg.reg_optimizer,
    )  # fmt: skip
    if cfg.prune_sparsity is not None:  # ~20 mask updates over the ramp (a sort each)
        ramp = int(round(cfg.prune_ramp * total))
        sparsity = pruning.cubic_sparsity(cfg.prune_sparsity, 0, ramp)
        every = max(1, ramp // 20) if ramp else max(total, 1)
        tx = optax.chain(tx, pruning.prune(specs, sparsity, update_every=every))
    state = make_init_fn(tx)(tree, model_state, np.uint32(phase_seed(cfg.seed, f"{name}/reg")))
    switch = ste_switch(cfg, total)
    anneal = (
        anneal_schedule(cfg.anneal, switch or total)
        if cfg.anneal is not None and stage.method in ANNEALED
        else None
    )
    step_fn = recipe_step(ctx.model, tx, specs, switch=switch, anneal=anneal)
    state = run_phase(ctx, name, "reg", state, step_fn, cfg.reg_epochs, specs=specs)
    tree, model_state = state.params, state.model_state
    del state
    # The unsnapped net gets fresh BatchNorm statistics too, like the snapped one below:
    # after an STE part the running ones belong to the quantized forward net.
    acc_reg = ctx.accuracy(tree["model"], recalibrate(ctx, name, tree["model"], model_state))
    histograms = _histograms(before, _named(tree, specs), specs)
    # One compilation instead of one per eager op.
    check_snappable(tree, specs)  # finiteness: the jitted snap sees traced values
    snapped, _ = jax.jit(lambda t: snap(t, specs, index_dtype=cfg.index_dtype))(tree)
    method = method_name(stage.method, bool(stage.freeze_reps), cfg.ste_last) + _pruned(cfg)
    return _tune_and_pack(
        ctx, fp, stage, t0, snapped, model_state, finetune_specs(specs), "reg",
        method=method, kind="regularizer",
        regularizer=stage.method, freeze_reps=stage.freeze_reps, lam=cfg.lam_for(stage.method),
        acc_reg=acc_reg, histograms=histograms,
    )  # fmt: skip


def _named(tree: dict[str, Any], specs: Mapping[str, QuantSpec]) -> dict[str, Any]:
    leaves = named_leaves(tree["model"])
    return {"model": {p: jax.device_get(leaves[p]) for p in specs}, "tree": jax.device_get(tree)}


def _histograms(
    before: Mapping[str, Any], after: Mapping[str, Any], specs: Mapping[str, QuantSpec]
) -> dict[str, Any]:
    """Per layer: weight histograms before/after regularizing on common bins, and levels."""
    out = {}
    for path, spec in specs.items():
        wb = np.asarray(before["model"][path], np.float64).ravel()
        wa = np.asarray(after["model"][path], np.float64).ravel()
        lb = np.asarray(levels(before["tree"], spec, path), np.float64)
        la = np.asarray(levels(after["tree"], spec, path), np.float64)
        lo = min(wb.min(), wa.min(), lb.min(), la.min())
        hi = max(wb.max(), wa.max(), lb.max(), la.max())
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        out[path] = {
            "edges": edges.tolist(),
            "before": np.histogram(wb, edges)[0].tolist(),
            "after": np.histogram(wa, edges)[0].tolist(),
            "levels_before": np.sort(lb).tolist(),
            "levels_after": np.sort(la).tolist(),
        }
    return out


# ----------------------------------------------------------------------------------- ptq


def plan_ptq(config: Config, k: int | None) -> list[Stage]:
    """Per baseline quantizer ("binary" at K=2 only, so never at a budget)."""
    return [
        Stage(f"ptq-{method}-{k_tag(k)}", "ptq", method, k)
        for method in config.baselines
        if method != "binary" or k == 2
    ]


def ptq_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """Post-training quantization of the pretrained model (pre-tuning), then the same
    quantized fine-tuning as the regularized runs with the codebooks as representatives.
    ``edge_layers_k`` levels for the edge layers, except "binary" (2 levels on every layer)."""
    cfg, t0 = ctx.config, time.perf_counter()
    params = fp.variables["params"]
    model_state = {k_: v for k_, v in fp.variables.items() if k_ != "params"}
    ks = layer_ks(ctx, params, stage, edges=stage.method != "binary")  # binary: K=2 only
    paths = list(ks)
    kw = {"seed": cfg.seed} if stage.method == "pws" else {}
    if cfg.group_size is not None or cfg.pin_zero:  # the "kmeans" baseline only (Config)
        kw = {"group_size": cfg.group_size, "pin_zero": cfg.pin_zero}
    label = stage.method
    if cfg.prune_sparsity is not None:  # sHAM's order: prune one-shot, then share
        leaves = named_leaves(params)
        params = replace_leaves(params, {
            p: jnp.where(pruning.magnitude_mask(leaves[p], cfg.prune_sparsity), leaves[p], 0)
            for p in paths
        })  # fmt: skip
        label = f"prune {cfg.prune_sparsity:.0%} then {stage.method}"
    qparams, quantized = quantizers.quantize_tree(params, paths, ks, stage.method, **kw)
    # The baseline's codebooks become representatives: the same fine-tuning transform.
    specs = {
        p: QuantSpec(
            k=ks[p], regularizer="nearest", lam=0.0, group_size=cfg.group_size,
            pin_zero=cfg.pin_zero,
        )
        for p in paths
    }  # fmt: skip
    leaves = named_leaves(qparams)
    reps = {p: jnp.asarray(cb, leaves[p].dtype) for p, (cb, _) in quantized.items()}
    tree = {"model": qparams, "reps": reps}
    return _tune_and_pack(
        ctx, fp, stage, t0, tree, dict(model_state), specs, None,
        method=label, kind="baseline", regularizer=None, freeze_reps=None, lam=None,
        acc_reg=None,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- qat


def plan_ste(config: Config, k: int | None) -> list[Stage]:
    """One straight-through QAT stage per K when ``config.qat`` names "ste"."""
    return [Stage(f"qat-ste-{k_tag(k)}", "ste", "ste", k)] if "ste" in config.qat else []


def plan_dkm(config: Config, k: int | None) -> list[Stage]:
    """One DKM stage per K when ``config.qat`` names "dkm"."""
    return [Stage(f"qat-dkm-{k_tag(k)}", "dkm", "dkm", k)] if "dkm" in config.qat else []


def _paths(cfg: Config, params: Any, k: int) -> list[str]:
    """The quantized leaves: the same selection as the regularizers and baselines."""
    return list(make_specs(params, include=cfg.include, exclude=cfg.exclude, k=k))


def ste_loss(model: Any, specs: Mapping[str, QuantSpec]) -> LossFn:
    """Task loss of the STE forward net: every selected weight on its nearest level."""

    def loss(tree: Any, model_state: dict[str, Any], batch: Any, rng: Any, step: Any) -> Any:
        return task_loss(model, ste.quantize(tree, specs), model_state, batch, rng)

    return loss


def train_ste(
    ctx: Context, fp: Pretrained, stage: Stage
) -> tuple[dict[str, Any], dict[str, Any], dict[str, QuantSpec], dict[str, Any]]:
    """The STE phase: ``(tree {"model": latent weights, "reps": levels}, model_state,
    specs, the start's _named weights)``; ``reg_epochs`` at ``reg_lr`` (same schedule as
    the regularized phase; ``reps_lr`` for the levels), levels re-fit every
    ``ste_recluster_every`` steps; ``edge_layers_k`` levels for the edge layers (a budget
    stage: the plan's K per layer)."""
    cfg, name = ctx.config, stage.name
    params, model_state = _start(ctx, fp)
    total = cfg.reg_epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    overrides = k_overrides(ctx, params, stage)
    grouping = {"group_size": cfg.group_size, "pin_zero": cfg.pin_zero}
    if overrides is None:  # k-means levels
        tree, specs = ste.init(params, _paths(cfg, params, stage.k), k=stage.k, **grouping)
    else:
        start = make_specs(
            params, include=cfg.include, exclude=cfg.exclude, overrides=overrides,
            k=base_k(ctx, stage), **grouping,
        )  # fmt: skip
        tree, specs = ste.init(params, start)
    before = _named(tree, specs)
    tx = make_optimizer(cfg, cfg.reg_lr, total, reps_lr=cfg.reps_lr, name=cfg.reg_optimizer)
    state = make_init_fn(tx)(tree, model_state, np.uint32(phase_seed(cfg.seed, f"{name}/ste")))
    step_fn = make_train_step(ste_loss(ctx.model, specs), tx)
    every = cfg.ste_recluster_every

    def recluster(state: Any) -> Any:
        return state.replace(params=ste.recluster(state.params, specs))

    hook = recluster if every else None
    state = run_phase(ctx, name, "ste", state, step_fn, cfg.reg_epochs, hook=hook, hook_every=every)
    return state.params, state.model_state, specs, before


def ste_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """STE QAT from the pretrained model; pre-tuning = the snapped net (the STE forward
    net), then the same fine-tuning (levels as representatives) and packing."""
    cfg, t0 = ctx.config, time.perf_counter()
    tree, model_state, specs, before = train_ste(ctx, fp, stage)
    histograms = _histograms(before, _named(tree, specs), specs)
    check_snappable(tree, specs)  # finiteness: the jitted snap sees traced values
    snapped, _ = jax.jit(lambda t: snap(t, specs, index_dtype=cfg.index_dtype))(tree)
    return _tune_and_pack(
        ctx, fp, stage, t0, snapped, model_state, specs, "ste",
        method="ste", kind="qat", regularizer=None, freeze_reps=None, lam=None, acc_reg=None,
        histograms=histograms,
    )  # fmt: skip


def dkm_taus(centroids: Mapping[str, Any], frac: float) -> dict[str, float]:
    """Per-layer DKM temperature ``(frac * mean spacing of the centroids)**2``."""
    return {
        p: float((frac * np.mean(np.diff(np.sort(np.asarray(c, np.float64))))) ** 2)
        for p, c in centroids.items()
    }


def dkm_loss(model: Any, taus: Mapping[str, float], iters: int) -> LossFn:
    """Task loss of the DKM soft weights; the centroids ride in ``model_state["dkm"]``
    (warm start of each step's k-means iterations, gradient stopped)."""

    def loss(tree: Any, model_state: dict[str, Any], batch: Any, rng: Any, step: Any) -> Any:
        soft, centroids = dkm.dkm_transform(tree["model"], model_state["dkm"], taus, iters)
        rest = {k: v for k, v in model_state.items() if k != "dkm"}
        value, rest = task_loss(model, soft, rest, batch, rng)
        return value, {**rest, "dkm": centroids}

    return loss


def dkm_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """DKM (blocked, O(N) memory) for the regularized phase's steps and schedule;
    pre-tuning = ``dkm_snap``, then the same fine-tuning and packing; ``edge_layers_k``
    centroids for the edge layers (a budget stage: the plan's K per layer)."""
    cfg, t0, name = ctx.config, time.perf_counter(), stage.name
    params, model_state = _start(ctx, fp)
    total = cfg.reg_epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    ks = layer_ks(ctx, params, stage)
    paths = list(ks)
    cents = dkm.dkm_init(params, paths, ks, init="kmeans")
    specs = {p: QuantSpec(k=ks[p], regularizer="nearest", lam=0.0) for p in cents}
    before = _named({"model": params, "reps": cents}, specs)
    tx = make_optimizer(cfg, cfg.reg_lr, total, name=cfg.reg_optimizer)
    seed = np.uint32(phase_seed(cfg.seed, f"{name}/dkm"))
    state = make_init_fn(tx)({"model": params, "reps": {}}, {**model_state, "dkm": cents}, seed)
    step_fn = make_train_step(
        dkm_loss(ctx.model, dkm_taus(cents, cfg.dkm_tau_frac), cfg.dkm_iters), tx
    )
    state = run_phase(ctx, name, "dkm", state, step_fn, cfg.reg_epochs)
    model_state = dict(state.model_state)
    cents, trained = model_state.pop("dkm"), state.params["model"]
    histograms = _histograms(before, _named({"model": trained, "reps": cents}, specs), specs)
    snapped, books = jax.jit(dkm.dkm_snap)(trained, cents)
    leaves = named_leaves(snapped)
    reps = {p: cb.astype(leaves[p].dtype) for p, (cb, _) in books.items()}
    return _tune_and_pack(
        ctx, fp, stage, t0, {"model": snapped, "reps": reps}, model_state, specs, "dkm",
        method="dkm", kind="qat", regularizer=None, freeze_reps=None, lam=None, acc_reg=None,
        histograms=histograms,
    )  # fmt: skip


# ------------------------------------------------------------------------------ registry

# Run order within each K: the kinds in insertion order.
STAGE_KINDS: dict[str, StageKind] = {
    "regularizer": StageKind(plan_regularized, regularized_stage),
    "ptq": StageKind(plan_ptq, ptq_stage),
    "ste": StageKind(plan_ste, ste_stage),
    "dkm": StageKind(plan_dkm, dkm_stage),
}


def planned_stages(config: Config) -> list[Stage]:
    """The stages after "pretrain", in run order: per K of ``config.ks``, then (K None) at
    ``config.budget`` when set, every kind's stages."""
    ks: list[int | None] = [*config.ks, *([None] if config.budget is not None else [])]
    return [stage for k in ks for kind in STAGE_KINDS.values() for stage in kind.plan(config, k)]


def config_for_stage(config: Config, name: str) -> Config:
    """``config`` restricted to its one planned stage ``name`` (e.g. "reg-softmin-ste1-k2"),
    every setting kept: the stage trains alone as it does in the whole run, since its
    phases' seeds derive from its name, not from what runs before it.

    Raises:
      ValueError: ``config`` plans no stage ``name`` (the message lists those it plans).
    """
    planned = {s.name: s for s in planned_stages(config)}
    if name not in planned:
        raise ValueError(f"stage {name!r} is not one of the config's: {', '.join(planned)}")
    stage = planned[name]
    only: dict[str, Any] = dict(regularizers=(), baselines=(), qat=())
    if stage.k is not None:
        only.update(ks=(stage.k,), budget=None)
    else:
        only["ks"] = ()
    if stage.kind == "regularizer":
        only.update(regularizers=(stage.method,), freeze_reps=(bool(stage.freeze_reps),))
    else:
        only[{"ptq": "baselines"}.get(stage.kind, "qat")] = (stage.method,)
    restricted = config.replace(**only)
    if [s.name for s in planned_stages(restricted)] != [name]:  # a kind this does not know
        raise ValueError(f"stage {name!r} (kind {stage.kind!r}) cannot be run alone")
    return restricted


def run_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """Run ``stage`` with its kind's runner."""
    return STAGE_KINDS[stage.kind].run(ctx, fp, stage)
