"""The stages of a run and their typed results.

A run is "pretrain" followed by the stages :func:`planned_stages` lists: per K, every
registered stage kind contributes its stages (``STAGE_KINDS``: "regularizer" for the
quantization-aware penalties, "ptq" for post-training quantizers). A new kind of method
(e.g. quantization-aware training) is one ``plan(config, k) -> [Stage]`` function, one
``run(ctx, fp, stage) -> StageResult`` function and one ``STAGE_KINDS`` entry; its
``run`` reuses :func:`finetune` and :func:`pack` and returns a :class:`StageResult`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import compress, data, quantizers
from .. import regularizers as R
from .._tree import named_leaves
from ..codebook import QuantSpec, attach, levels, make_specs
from ..finetune import assignments_by_path, finetune_specs, quantized_finetune
from ..snap import snap
from .config import Config
from .loop import Context, phase_seed, run_phase, variables
from .optim import lam_schedule, make_optimizer, optimizer
from .steps import make_init_fn, make_train_step

HIST_BINS = 80


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """The full-precision model every stage starts from, and its row fields.

    Attributes:
      variables: flax variables ``{"params", "batch_stats"?}`` (not serialised).
      acc_fp: test accuracy.
      wall_s: seconds the pretraining took (in the run that did it).
    """

    variables: dict[str, Any]
    acc_fp: float
    wall_s: float

    def to_json(self) -> dict[str, float]:
        """``stages/pretrain.json`` and the results' ``"pretrain"`` entry."""
        return {"acc_fp": self.acc_fp, "wall_s": self.wall_s}


@dataclasses.dataclass(frozen=True)
class Packed:
    """Sizes of a packed model (``compress.size_report``) and its file."""

    original_bytes: float
    packed_bytes: float
    huffman_bytes: float
    ratio: float
    huffman_ratio: float
    file_bytes: int
    model_file: str


@dataclasses.dataclass(frozen=True)
class StageResult:
    """One row of the results table (``stages/<stage>.json``, ``results.json``).

    Attributes:
      model, dataset, device: what ran where (``dataset`` is the table label).
      stage: the directory-safe stage name, e.g. ``"reg-nearest-k4"``.
      acc_fp: the pretrained model's test accuracy.
      method: the table name, e.g. ``"nearest (frozen reps)"`` or ``"kmeans"``.
      kind: "regularizer" or "baseline" (a ``STAGE_KINDS`` entry names its own).
      regularizer, freeze_reps, lam: the penalty; None for stages without one.
      k: number of levels.
      acc_reg: accuracy of the trained, unsnapped model; None for stages that do not
        train before quantizing.
      acc_pre, acc_post: accuracy after quantizing ("pre-tuning") and after fine-tuning.
      original_bytes ... model_file: :class:`Packed`.
      wall_s: seconds the stage took.
      histograms: per layer weight histograms before / after training (not a table
        column; only in ``stages/<stage>.json``).
    """

    model: str
    dataset: str
    device: str
    stage: str
    acc_fp: float
    method: str
    kind: str
    regularizer: str | None
    freeze_reps: bool | None
    k: int
    lam: float | None
    acc_reg: float | None
    acc_pre: float
    acc_post: float
    original_bytes: float
    packed_bytes: float
    huffman_bytes: float
    ratio: float
    huffman_ratio: float
    file_bytes: int
    model_file: str
    wall_s: float
    histograms: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    def to_json(self, *, histograms: bool = True) -> dict[str, Any]:
        """The JSON row (field order = column order of ``table.csv``)."""
        row = dataclasses.asdict(self)
        if not histograms or self.histograms is None:
            row.pop("histograms")
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> StageResult:
        """A row read back from ``stages/<stage>.json`` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Stage:
    """One planned stage: its name, its ``STAGE_KINDS`` key, method, K and options."""

    name: str
    kind: str
    method: str
    k: int
    freeze_reps: bool | None = None


@dataclasses.dataclass(frozen=True)
class StageKind:
    """A kind of method: ``plan(config, k)`` lists its stages at K, ``run`` runs one."""

    plan: Callable[[Config, int], list[Stage]]
    run: Callable[[Context, Pretrained, Stage], StageResult]


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
    fp = variables(state.params["model"], state.model_state)
    return Pretrained(fp, acc, time.perf_counter() - t0)


# ------------------------------------------------------------------ fine-tune and pack


def finetune(
    ctx: Context,
    stage: str,
    snapped: dict[str, Any],
    model_state: dict[str, Any],
    specs: Mapping[str, QuantSpec],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """Quantized fine-tuning of a snapped tree; ``(tree, model_state, assignments)``.

    Every selected weight stays exactly on its representative; the representatives move
    with the summed gradients of their weights (``snap.quantized_finetune``).
    """
    cfg = ctx.config
    # quantized_finetune reads only each spec's K: the same step serves every stage with
    # the same K (one compilation), the stage enters through the dropout seed in the state.
    ks = tuple(sorted({(p, s.k) for p, s in specs.items()}))
    if ("finetune", ks) not in ctx.compiled:
        plain = {p: QuantSpec(k=k, regularizer="nearest", lam=0.0) for p, k in ks}
        base = optimizer(cfg.finetune_optimizer, cfg.finetune_lr)
        tx = quantized_finetune(base, plain, index_dtype=cfg.index_dtype)
        ctx.compiled["finetune", ks] = (make_init_fn(tx), make_train_step(ctx.model, tx))
    init_fn, step_fn = ctx.compiled["finetune", ks]
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
    out = ctx.workdir / "models" / f"{stage}.qareg"
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


def _result(ctx: Context, fp: Pretrained, stage: Stage, t0: float, **fields: Any) -> StageResult:
    """A :class:`StageResult` with the run's common fields and the stage's wall time."""
    cfg = ctx.config
    return StageResult(
        model=cfg.model,
        dataset=cfg.dataset_label or cfg.dataset,
        device=ctx.device,
        stage=stage.name,
        acc_fp=fp.acc_fp,
        k=stage.k,
        **fields,
        wall_s=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- regularizer


def method_name(regularizer: str, freeze_reps: bool) -> str:
    """Table name of a regularized run, e.g. ``"nearest"`` or ``"nearest (frozen reps)"``."""
    return f"{regularizer} (frozen reps)" if freeze_reps else regularizer


def stage_name(regularizer: str, k: int, freeze_reps: bool) -> str:
    """Directory-safe stage name, e.g. ``"reg-nearest-k4"`` or ``"reg-nearest-frozen-k4"``."""
    return f"reg-{regularizer}{'-frozen' if freeze_reps else ''}-k{k}"


def plan_regularized(config: Config, k: int) -> list[Stage]:
    """Per regularizer and ``freeze_reps`` value (static penalties have no reps: once)."""
    return [
        Stage(stage_name(reg, k, frozen), "regularizer", reg, k, frozen)
        for reg in config.regularizers
        for frozen in ((False,) if reg in R.STATIC else config.freeze_reps)
    ]


def _reg_specs(ctx: Context, params: Any, stage: Stage, total: int) -> dict[str, QuantSpec]:
    cfg = ctx.config
    return make_specs(
        params,
        include=cfg.include,
        exclude=cfg.exclude,
        k=stage.k,
        regularizer=stage.method,
        lam=lam_schedule(cfg.lam_for(stage.method), cfg.lam_warmup, total),
        interval=cfg.interval,
        interval_param=cfg.interval_param,
        init=cfg.init,
        reduction=cfg.reduction,
        tau=cfg.tau,
        sigma=cfg.sigma,
    )


def regularized_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """Attach representatives, train with task loss + penalty, snap ("pre-tuning"),
    fine-tune ("post-tuning"), pack; with weight histograms before / after training."""
    cfg, t0, name = ctx.config, time.perf_counter(), stage.name
    start = fp.variables if cfg.from_pretrained else ctx.initial_variables()
    params, model_state = start["params"], {k_: v for k_, v in start.items() if k_ != "params"}
    total = cfg.reg_epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    tree, specs = attach(params, _reg_specs(ctx, params, stage, total))
    before = _named(tree, specs)
    tx = make_optimizer(cfg, cfg.reg_lr, total, freeze_reps=bool(stage.freeze_reps))
    state = make_init_fn(tx)(tree, model_state, np.uint32(phase_seed(cfg.seed, f"{name}/reg")))
    step_fn = make_train_step(ctx.model, tx, specs)
    state = run_phase(ctx, name, "reg", state, step_fn, cfg.reg_epochs, specs=specs)
    tree, model_state = state.params, state.model_state
    del state
    acc_reg = ctx.accuracy(tree["model"], model_state)
    histograms = _histograms(before, _named(tree, specs), specs)
    # One compilation instead of one per eager op.
    snapped, _ = jax.jit(lambda t: snap(t, specs, index_dtype=cfg.index_dtype))(tree)
    acc_pre = ctx.accuracy(snapped["model"], model_state)
    tree, model_state, assignments = finetune(
        ctx, name, snapped, model_state, finetune_specs(specs)
    )
    acc_post = ctx.accuracy(tree["model"], model_state)
    for path, hist in histograms.items():
        hist["levels_final"] = np.sort(np.asarray(tree["reps"][path], np.float64)).tolist()
    packed = pack(ctx, name, tree, model_state, assignments)
    return _result(
        ctx, fp, stage, t0,
        method=method_name(stage.method, bool(stage.freeze_reps)), kind="regularizer",
        regularizer=stage.method, freeze_reps=stage.freeze_reps, lam=cfg.lam_for(stage.method),
        acc_reg=acc_reg, acc_pre=acc_pre, acc_post=acc_post, **dataclasses.asdict(packed),
        histograms=histograms,
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


def plan_ptq(config: Config, k: int) -> list[Stage]:
    """Per baseline quantizer ("binary" at K=2 only)."""
    return [
        Stage(f"ptq-{method}-k{k}", "ptq", method, k)
        for method in config.baselines
        if method != "binary" or k == 2
    ]


def ptq_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """Post-training quantization of the pretrained model (pre-tuning), then the same
    quantized fine-tuning as the regularized runs with the codebooks as representatives."""
    cfg, t0, k = ctx.config, time.perf_counter(), stage.k
    params = fp.variables["params"]
    model_state = {k_: v for k_, v in fp.variables.items() if k_ != "params"}
    paths = list(make_specs(params, include=cfg.include, exclude=cfg.exclude, k=k))
    kw = {"seed": cfg.seed} if stage.method == "pws" else {}
    qparams, quantized = quantizers.quantize_tree(params, paths, k, stage.method, **kw)
    acc_pre = ctx.accuracy(qparams, model_state)
    # The baseline's codebooks become representatives: the same fine-tuning transform.
    specs = {p: QuantSpec(k=k, regularizer="nearest", lam=0.0) for p in paths}
    leaves = named_leaves(qparams)
    reps = {p: jnp.asarray(cb, leaves[p].dtype) for p, (cb, _) in quantized.items()}
    tree = {"model": qparams, "reps": reps}
    tree, model_state, assignments = finetune(ctx, stage.name, tree, dict(model_state), specs)
    acc_post = ctx.accuracy(tree["model"], model_state)
    packed = pack(ctx, stage.name, tree, model_state, assignments)
    return _result(
        ctx, fp, stage, t0,
        method=stage.method, kind="baseline", regularizer=None, freeze_reps=None, lam=None,
        acc_reg=None, acc_pre=acc_pre, acc_post=acc_post, **dataclasses.asdict(packed),
    )  # fmt: skip


# ------------------------------------------------------------------------------ registry

# Run order within each K: the kinds in insertion order.
STAGE_KINDS: dict[str, StageKind] = {
    "regularizer": StageKind(plan_regularized, regularized_stage),
    "ptq": StageKind(plan_ptq, ptq_stage),
}


def planned_stages(config: Config) -> list[Stage]:
    """The stages after "pretrain", in run order: per K, every kind's stages."""
    return [
        stage for k in config.ks for kind in STAGE_KINDS.values() for stage in kind.plan(config, k)
    ]


def run_stage(ctx: Context, fp: Pretrained, stage: Stage) -> StageResult:
    """Run ``stage`` with its kind's runner."""
    return STAGE_KINDS[stage.kind].run(ctx, fp, stage)
