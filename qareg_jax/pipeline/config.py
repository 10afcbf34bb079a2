"""The experiment schema: ``Config`` (validated on construction) and ``load_config``."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import data
from .. import regularizers as R
from ..budget import DEFAULT_KS, parse_budget
from ..codebook import INITS, INTERVALS
from ..models import MODELS
from ..nearest_level import check_index_dtype
from ..regularizers import registry
from ..validation import check_choice, check_k, check_positive

BASELINES = ("kmeans", "uniform", "pws", "ecsq", "binary")
# Quantization-aware training baselines (stages.STAGE_KINDS "ste" and "dkm").
QAT_METHODS = ("ste", "dkm")
OPTIMIZERS = ("adam", "sgd")
# Lambda over the regularized phase (optim.lam_schedule).
LAM_SCHEDULES = ("ramp", "exp")
# Per-layer penalty normalisations (codebook.QuantSpec.normalize).
PENALTY_NORMALIZE = ("unit", "variance", "spacing")
# The regularizers Config.anneal changes, and the QuantSpec field it shrinks.
ANNEALED = {"softmin": "tau", "wells": "sigma"}
# Lambda per regularizer when Config.lam does not name it: each registry entry's
# default_lam, in the unit-penalty scale (see qareg_jax.regularizers.registry).
DEFAULT_LAM: dict[str, float] = {name: registry.get(name).default_lam for name in registry.names()}


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment: model, data, the three training phases, methods and K values.

    Attributes:
      model: "alexnet", "vgg16", "cifar_vgg" (the CPU-scale CIFAR net) or "small".
      dataset: "cifar10", "digits" or "folder:PATH" (see ``data.load_dataset``).
      dataset_label: how tables name the dataset (default: ``dataset``).
      data_dir: tensorflow-datasets directory for "cifar10".
      train_subset, test_subset: use only this many examples (a fixed random subset).
      dropout_rate: passed to models that have dropout (alexnet, vgg16); None: their default.
      seed: initialisation, data order, dropout and PWS rounding.
      seeds: run the whole pipeline once per seed (one full-precision model each) and
        report mean +- std over seeds; None: ``(seed,)``, the single-seed layout.
      val_fraction: hold out this fraction of the training set as a validation split
        (0: none). The split, and then the training / test subsets, are drawn with
        ``data_seed`` (fixed across seeds): ``permutation(n)[n - n_val:]`` is validation,
        the training subset its first ``train_subset`` entries (all others by default).
      data_seed: seed of the validation split (used only when ``val_fraction > 0``;
        otherwise the subsets are drawn with each run's seed, as before).
      batch_size, eval_batch_size: examples per step / per evaluation batch.
      optimizer: "adam" (AdamW) or "sgd" (momentum 0.9, nesterov) for pretraining and
        regularizing.
      reg_optimizer: the optimizer of the regularized, STE and DKM phases when it differs
        from pretraining's (e.g. SGD pretraining, Adam regularizing: Adam's step is bounded
        by the learning rate whatever lambda is); None: ``optimizer``.
      weight_decay: decoupled weight decay on the model's kernels (not on representatives).
      pretrain_epochs, pretrain_lr: full-precision phase (cosine-decayed learning rate).
      regularizers: the quantization-aware penalties to run (``regularizers.REGULARIZERS``).
      ks: numbers of levels, one uniform-K stage of every method per entry; may be empty
        when ``budget`` is set (then only the budget's stages run).
      budget: the packed model's size limit (the whole ``compress.save`` file), as bytes
        (an int, or a str: "250000", "500kB", "1MB", "1.5MiB") or a compression ratio
        against the float32 model ("16x"); see ``budget.parse_budget``. When set, every
        method (regularizers, baselines except "binary", STE, DKM) also runs once at the
        K per layer that ``budget.plan_bits`` chooses to fit it, in stages named
        ``<...>-budget`` (rows with ``k`` None, shown as "budget"), after those of
        ``ks``. The plan is made once per seed from the full-precision model
        (``pipeline.budget_plan``; so ``pretrain_epochs`` > 0); ``edge_layers_k`` pins
        the edge layers' K in it. None: no budget stages.
      budget_ks: the K values the budget planner may give a layer.
      budget_batches: the sensitivity (loss increase when one layer alone is
        k-means-quantized at K) is measured on this many batches of ``eval_batch_size``
        examples (a fixed random subset per seed) of the validation split when
        ``val_fraction > 0``, else of the training split (unaugmented).
      freeze_reps: run each dynamic regularizer once per value: ``(False, True)`` adds the
        frozen-representatives ablation (reps keep their initial values while regularizing).
      from_pretrained: start the regularized runs from the pretrained weights (True) or
        from the same random initialisation as pretraining (False).
      reg_epochs, reg_lr: regularized phase (cosine-decayed learning rate).
      lam: lambda for every regularizer, or a ``{regularizer: lambda}`` dict (missing
        names take ``DEFAULT_LAM``); in the scale set by ``reduction`` and
        ``penalty_normalize`` (default: the unit penalty, docs/recipe.md).
      lam_warmup: fraction of the regularized phase over which lambda ramps linearly up
        from 0 (0: constant lambda); used by ``lam_schedule="ramp"``.
      lam_schedule: "ramp" (linear over ``lam_warmup``, then constant) or "exp" (geometric
        growth from ``lam * lam_exp_start`` at the first step to ``lam`` at the last step of
        the regularizer's part of the phase; ``lam_warmup`` unused).
      lam_exp_start: the "exp" schedule's start as a fraction of lambda, in (0, 1].
      reps_lr: peak learning rate of the representatives (regularized, hybrid and STE
        stages; same optimizer and cosine decay as the weights); None: ``reg_lr``.
      penalty_normalize: divide each layer's penalty by a constant of the layer fixed at
        attach time so one lambda fits every layer: "unit" (default: in squared level
        spacings whatever the regularizer, ``codebook.QuantSpec.normalize``), "variance"
        (of its weights) or "spacing" (squared mean spacing of its initial levels); None:
        no division (raw weight units: lambda then depends on the weights' scale).
      anneal: the factor by which softmin's tau / wells' sigma shrink, geometrically, over
        the regularizer's part of the phase (other regularizers: no effect); None: fixed.
      edge_layers_k: K of the first and last selected layers (natural order of their paths:
        conv1 ... fc2) in every stage (regularized, hybrid, post-training baselines, STE,
        DKM), so the rows stay comparable; except the "binary" baseline, a sign quantizer
        that keeps K=2 on every layer. None: the stage's K on every layer.
      ste_last: fraction of the regularized phase run as STE at the end (the hybrid:
        the penalty, then the STE forward net on the same levels in one compiled step;
        stages named e.g. "reg-nearest-ste0.2-k2"); 0: no STE part; 1: STE from the first
        step with the penalty beside it (needs ``ste_keep_lam``; the penalty then damps
        the latent weights' oscillation across level boundaries, and its schedule spans
        the whole phase).
      ste_keep_lam: keep the penalty (its last lambda) during the STE part; False: 0.
      interval, interval_param, init, reduction: ``QuantSpec`` fields of every layer.
      tau, sigma: softmin temperature / wells width of every layer; None: from the spread
        of each layer's initial representatives (see ``codebook.QuantSpec``).
      include, exclude: path regexes selecting the quantized leaves (default: every conv
        and dense kernel).
      finetune_epochs, finetune_lr, finetune_optimizer: quantized fine-tuning (constant rate).
        ``finetune_lr`` may be a ``{method: rate}`` dict (method: a regularizer, "ste",
        "dkm" or a baseline; methods it lacks take 1e-3), since the rate that helps one
        method's levels can undo another's (docs/recipe.md).
      bn_recalibrate: after snapping, re-estimate the BatchNorm statistics on this many
        training batches before measuring the pre-tuning accuracy, for every method alike
        (``batch_stats.recalibrate_batch_stats``; no effect on models without BatchNorm),
        and likewise before a regularized stage's unsnapped accuracy (a hybrid's running
        statistics are those of its STE forward net); 0: keep the running statistics.
      baselines: post-training quantizers, ``BASELINES``; "binary" runs at K=2 only.
      qat: quantization-aware training baselines, ``QAT_METHODS``: "ste" (straight-through
        forward on k-means levels) and "dkm" (differentiable k-means), each trained for
        ``reg_epochs`` at ``reg_lr`` from the same start as the regularized runs.
      ste_recluster_every: re-fit the STE levels by k-means every this many steps (None:
        never).
      dkm_tau_frac: DKM temperature per layer, ``(dkm_tau_frac * mean spacing of the
        k-means start)**2`` (squared-weight units).
      dkm_iters: DKM k-means iterations per training step.
      group_size: one codebook per group of this many output channels
        (``QuantSpec.group_size``; 1: per channel) for the regularizers, STE and the
        "kmeans" baseline; None: one per layer. Not with DKM, a budget or other baselines.
      pin_zero: one level of every codebook held at exactly 0.0 (``QuantSpec.pin_zero``)
        for the regularizers, STE and the "kmeans" baseline. Not with DKM or other
        baselines.
      prune_sparsity: magnitude-prune every selected layer to this fraction of zeros
        (``pruning``): the regularized runs prune gradually during their phase (a cubic
        ramp over its first ``prune_ramp``), the "kmeans" baseline one-shot before its
        k-means (sHAM's order: prune, share, fine-tune). Needs ``pin_zero``; not with
        STE, DKM or other baselines. None: no pruning.
      prune_ramp: the fraction of the regularized phase over which the sparsity ramps up
        (0: one-shot at the first step).
      index_dtype: dtype of the stored indices (e.g. "uint8"); None: the smallest per K.
      codebook_dtype: "float32" or "float16" codebooks in the packed model.
      log_every, checkpoint_every: steps between metric records / checkpoints.
    """

    model: str = "small"
    dataset: str = "digits"
    dataset_label: str | None = None
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    dropout_rate: float | None = None
    seed: int = 0
    seeds: tuple[int, ...] | None = None
    val_fraction: float = 0.0
    data_seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 500
    optimizer: str = "adam"
    reg_optimizer: str | None = None
    weight_decay: float = 0.0
    pretrain_epochs: int = 15
    pretrain_lr: float = 3e-3
    regularizers: tuple[str, ...] = ("nearest", "softmin", "sine")
    ks: tuple[int, ...] = (2, 4)
    budget: str | int | None = None
    budget_ks: tuple[int, ...] = DEFAULT_KS
    budget_batches: int = 4
    freeze_reps: tuple[bool, ...] = (False,)
    from_pretrained: bool = True
    reg_epochs: int = 10
    reg_lr: float = 3e-3
    lam: float | Mapping[str, float] = dataclasses.field(default_factory=dict)
    lam_warmup: float = 0.5
    lam_schedule: str = "ramp"
    lam_exp_start: float = 1e-3
    reps_lr: float | None = None
    penalty_normalize: str | None = "unit"
    anneal: float | None = None
    edge_layers_k: int | None = None
    ste_last: float = 0.0
    ste_keep_lam: bool = False
    interval: str = "minmax"
    interval_param: float | None = None
    init: str = "kmeans"
    reduction: str = "sum"
    tau: float | None = None
    sigma: float | None = None
    include: str | None = None
    exclude: str | None = None
    finetune_epochs: int = 3
    finetune_lr: float | Mapping[str, float] = 1e-3
    finetune_optimizer: str = "adam"
    bn_recalibrate: int = 0
    baselines: tuple[str, ...] = ("kmeans", "uniform")
    qat: tuple[str, ...] = ()
    ste_recluster_every: int | None = None
    dkm_tau_frac: float = 0.3
    dkm_iters: int = 3
    group_size: int | None = None
    pin_zero: bool = False
    prune_sparsity: float | None = None
    prune_ramp: float = 0.5
    index_dtype: str | None = None
    codebook_dtype: str = "float32"
    log_every: int = 20
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        # Lists (from JSON or the CLI) become tuples so configs compare and hash by value.
        for name in ("regularizers", "ks", "freeze_reps", "baselines", "qat", "budget_ks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.seeds, list):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if isinstance(self.lam, Mapping):
            object.__setattr__(self, "lam", dict(self.lam))
        if isinstance(self.finetune_lr, Mapping):
            object.__setattr__(self, "finetune_lr", dict(self.finetune_lr))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and its allowed values."""
        self._validate_methods()
        self._validate_training()
        self._validate_lambda()
        self._validate_qat_and_seeds()
        self._validate_recipe()
        self._validate_budget()
        self._validate_compression()

    def _validate_methods(self) -> None:
        check_choice("model", self.model, tuple(MODELS))
        if self.dataset not in ("cifar10", "digits") and not (
            self.dataset.startswith("folder:") and len(self.dataset) > len("folder:")
        ):
            raise ValueError(
                f"unknown dataset {self.dataset!r}; allowed: {', '.join(data.DATASET_NAMES)}"
            )
        for name in self.regularizers:
            check_choice("regularizer", name, R.REGULARIZERS)
        for name in self.baselines:
            check_choice("baseline", name, BASELINES)
        for name in self.qat:
            check_choice("qat", name, QAT_METHODS)
        if not self.regularizers and not self.baselines and not self.qat:
            raise ValueError("nothing to run: give at least one regularizer, baseline or qat")
        if not self.ks and self.budget is None:
            raise ValueError("ks is empty: give at least one number of levels K, or a budget")
        _check_ks("ks", self.ks, self.index_dtype)
        if not self.freeze_reps or not all(isinstance(f, bool) for f in self.freeze_reps):
            raise ValueError(
                f"freeze_reps must be a non-empty tuple of bools, got {self.freeze_reps}"
            )

    def _validate_training(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("finetune_optimizer", self.finetune_optimizer, OPTIMIZERS)
        if self.reg_optimizer is not None:
            check_choice("reg_optimizer", self.reg_optimizer, OPTIMIZERS)
        check_choice("interval", self.interval, INTERVALS)
        check_choice("init", self.init, INITS)
        check_choice("reduction", self.reduction, ("mean", "sum"))
        check_choice("codebook_dtype", self.codebook_dtype, ("float32", "float16"))
        for name in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        for name in ("pretrain_epochs", "reg_epochs", "finetune_epochs", "bn_recalibrate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        # The budget plan's sensitivities are measured on the pretrained model.
        if self.pretrain_epochs == 0 and (
            self.baselines or self.from_pretrained or self.budget is not None
        ):
            raise ValueError(
                "pretrain_epochs is 0 but the baselines, from_pretrained or budget need a "
                "pretrained model"
            )
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("pretrain_lr", "reg_lr"):
            check_positive(getattr(self, name), name)
        rates = self.finetune_lr
        if not isinstance(rates, Mapping):
            rates = {"": rates}
        for method, rate in rates.items():
            check_positive(rate, f"finetune_lr[{method!r}]" if method else "finetune_lr")
            if method:
                check_choice("finetune_lr key", method, (*R.REGULARIZERS, *QAT_METHODS, *BASELINES))
        for name in ("tau", "sigma"):
            if getattr(self, name) is not None:
                check_positive(getattr(self, name), name)

    def _validate_lambda(self) -> None:
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.lam_warmup <= 1:
            raise ValueError(f"lam_warmup must be in [0, 1], got {self.lam_warmup!r}")
        lams = self.lam.values() if isinstance(self.lam, Mapping) else [self.lam]
        for value in lams:
            if isinstance(value, bool) or not np.isfinite(value) or value < 0:
                raise ValueError(f"lambda must be a finite number >= 0, got {value!r}")
        if isinstance(self.lam, Mapping):
            for name in self.lam:
                check_choice("lam key", name, R.REGULARIZERS)

    def _validate_qat_and_seeds(self) -> None:
        if len(set(self.qat)) != len(self.qat):
            raise ValueError(f"qat has duplicates: {list(self.qat)}")
        if self.ste_recluster_every is not None:
            _positive_int("ste_recluster_every", self.ste_recluster_every)
        check_positive(self.dkm_tau_frac, "dkm_tau_frac")
        _positive_int("dkm_iters", self.dkm_iters)
        if self.seeds is not None:
            if not isinstance(self.seeds, tuple) or not self.seeds:
                raise ValueError(
                    f"seeds must be None or a non-empty tuple of ints, got {self.seeds!r}"
                )
            for s in self.seeds:
                _int_at_least("seeds entry", s, 0)
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds has duplicates: {list(self.seeds)}")
        _int_at_least("seed", self.seed, 0)
        _int_at_least("data_seed", self.data_seed, 0)
        f = self.val_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {f!r}")

    def _validate_recipe(self) -> None:
        check_choice("lam_schedule", self.lam_schedule, LAM_SCHEDULES)
        check_positive(self.lam_exp_start, "lam_exp_start")
        if self.lam_exp_start > 1:
            raise ValueError(f"lam_exp_start must be in (0, 1], got {self.lam_exp_start!r}")
        if self.reps_lr is not None:
            check_positive(self.reps_lr, "reps_lr")
        if self.penalty_normalize is not None:
            check_choice("penalty_normalize", self.penalty_normalize, PENALTY_NORMALIZE)
        if self.anneal is not None:
            check_positive(self.anneal, "anneal")
            if not set(ANNEALED) & set(self.regularizers):
                raise ValueError(
                    f"anneal changes softmin's tau / wells' sigma, but regularizers is "
                    f"{list(self.regularizers)}: add one of them or set anneal=None"
                )
        if self.edge_layers_k is not None:
            check_k(self.edge_layers_k, "edge_layers_k")
            _check_k(self.edge_layers_k, self.index_dtype)
        f = self.ste_last
        if isinstance(f, bool) or not isinstance(f, int | float):
            raise TypeError(f"ste_last must be a number in [0, 1], got {type(f).__name__} {f!r}")
        if not 0 <= f <= 1:
            raise ValueError(f"ste_last must be a number in [0, 1], got {f!r}")
        if not isinstance(self.ste_keep_lam, bool):
            raise TypeError(f"ste_keep_lam must be a bool, got {self.ste_keep_lam!r}")
        if self.ste_keep_lam and not f:
            raise ValueError("ste_keep_lam=True needs ste_last > 0 (there is no STE part)")
        if f == 1 and not self.ste_keep_lam:
            raise ValueError(
                "ste_last=1 (STE from the first step) needs ste_keep_lam=True, else the "
                "penalty never acts: for plain STE use qat=('ste',)"
            )

    def _validate_budget(self) -> None:
        if self.budget is not None:
            # The ratio form ("16x") needs the model's size, known only once it is built
            # (train_and_evaluate checks the budget against it before any training): here
            # only the syntax and sign are checked, against a size no model reaches.
            parse_budget(self.budget, original_bytes=2**62)
        if not self.budget_ks:
            raise ValueError("budget_ks is empty: give the K values the budget planner may use")
        _check_ks("budget_ks", self.budget_ks, self.index_dtype)
        _positive_int("budget_batches", self.budget_batches)
        if (
            not self.ks
            and not self.regularizers
            and not self.qat
            and set(self.baselines) <= {"binary"}
        ):
            raise ValueError(
                "nothing to run at the budget: the 'binary' baseline runs at K=2 only; add "
                "a K to ks or another method"
            )

    def _validate_compression(self) -> None:
        """group_size, pin_zero and pruning: only where every method of the run has them."""
        if not isinstance(self.pin_zero, bool):
            raise TypeError(f"pin_zero must be True or False, got {self.pin_zero!r}")
        if self.group_size is not None:
            _positive_int("group_size", self.group_size)
        wanted = [
            name
            for name, on in (
                ("group_size", self.group_size is not None),
                ("pin_zero", self.pin_zero),
                ("prune_sparsity", self.prune_sparsity is not None),
            )
            if on
        ]
        for name in wanted:
            others = sorted(set(self.baselines) - {"kmeans"})
            if others or "dkm" in self.qat:
                raise ValueError(
                    f"{name} is supported by the regularizers, STE and the 'kmeans' baseline; "
                    f"remove {others + (['dkm'] if 'dkm' in self.qat else [])} from "
                    "baselines / qat"
                )
        if self.group_size is not None and self.budget is not None:
            raise ValueError("group_size with a budget is not supported: the planner is per layer")
        f = self.prune_sparsity
        if f is not None:
            if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f < 1:
                raise ValueError(f"prune_sparsity must be a number in (0, 1) or None, got {f!r}")
            if not self.pin_zero:
                raise ValueError(
                    "prune_sparsity needs pin_zero=True: the pruned weights must snap to a "
                    "zero level"
                )
            if self.qat:
                raise ValueError(
                    f"prune_sparsity is supported by the regularizers and the 'kmeans' "
                    f"baseline; remove {list(self.qat)} from qat"
                )
        r = self.prune_ramp
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r <= 1:
            raise ValueError(f"prune_ramp must be a number in [0, 1], got {r!r}")

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds the pipeline runs: ``seeds``, or ``(seed,)``."""
        return self.seeds if self.seeds is not None else (self.seed,)

    def finetune_lr_for(self, method: str) -> float:
        """The fine-tuning rate of ``method`` (a dict's entry, else 1e-3, or the float)."""
        if isinstance(self.finetune_lr, Mapping):
            return float(self.finetune_lr.get(method, 1e-3))
        return float(self.finetune_lr)

    def lam_for(self, regularizer: str) -> float:
        """The (final) lambda of ``regularizer``."""
        if isinstance(self.lam, Mapping):
            return float(self.lam.get(regularizer, DEFAULT_LAM[regularizer]))
        return float(self.lam)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> Config:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_ks(name: str, ks: tuple[object, ...], index_dtype: str | None) -> None:
    """Distinct Ks, each valid for ``index_dtype``."""
    if len(set(ks)) != len(ks):
        raise ValueError(f"{name} has duplicates: {list(ks)}")
    for k in ks:
        _check_k(k, index_dtype, "K" if name == "ks" else f"each K in {name}")


def _check_k(k: object, index_dtype: str | None, name: str = "K") -> None:
    """K and, when given, an unsigned index dtype that holds ``K - 1``."""
    check_index_dtype(check_k(k, name), index_dtype, unsigned=True)


def load_config(path: str | os.PathLike) -> Config:
    """The ``Config`` returned by ``get_config()`` in the Python file ``path``.

    The file's folder is importable while it runs, as for a script, so a variant can
    derive from a base config beside it (``import alexnet_cifar10``).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"qareg_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, Config):
        raise ValueError(f"get_config() in {str(path)!r} must return a qareg_jax.pipeline.Config")
    return config
