"""The experiment pipeline, flax-examples style: ``train_and_evaluate(config, workdir)``.

For one model and dataset it runs:

1. **pretrain** a full-precision model (the reference accuracy, and the start of the
   baselines and of the regularized runs when ``config.from_pretrained``);
2. per K, every stage kind of ``stages.STAGE_KINDS``: per regularizer and
   ``freeze_reps`` value a **regularized** run (attach representatives, train with
   task loss + penalty, snap: "pre-tuning", quantized fine-tuning: "post-tuning",
   pack), per baseline quantizer a **PTQ** run (quantize the pretrained model,
   then the same fine-tuning and packing), and per ``config.qat`` method a **QAT** run
   ("ste": straight-through training on k-means levels; "dkm": differentiable k-means),
   trained like the regularized runs, then snapped, fine-tuned and packed the same way;
3. recipe options (off by default; ``Config``): lambda schedules ("ramp", "exp"),
   a learning rate for the representatives, per-layer penalty normalisation, tau/sigma
   annealing, more levels for the edge layers, and the hybrid (the penalty, then STE at
   the end of the same phase: ``ste_last``);
4. with ``config.budget`` (e.g. "1MB", "16x"), every method once more at one K per layer
   chosen after pretraining to fit the packed file in the budget (``budget_plan``; stages
   ``<...>-budget``, rows with K "budget");
5. all of it once per seed of ``config.seeds`` (tables: mean +- std over seeds), with an
   optional validation split (``config.val_fraction``) reported beside the test accuracy.

Modules: ``config`` (the schema), ``optim`` (optimizer recipes), ``steps`` (the training
core: ``TrainState``, ``task_loss``, ``make_train_step``, ``make_eval_fn``), ``loop``
(one phase with checkpoints, metrics, NaN detection, resume), ``stages`` (the stage
kinds and their typed ``StageResult``), ``budget_plan`` (the budget stages' K per
layer), ``workdir`` (the run-directory policy) and
``run`` (``train_and_evaluate``).
"""

from . import budget_plan
from .config import (
    ANNEALED,
    BASELINES,
    DEFAULT_LAM,
    LAM_SCHEDULES,
    OPTIMIZERS,
    PENALTY_NORMALIZE,
    QAT_METHODS,
    Config,
    load_config,
)
from .loop import (
    Context,
    StepTimer,
    TrainingDivergedError,
    TrainingInterrupted,
    checkpoint_manager,
    phase_seed,
    restore_state,
    run_phase,
)
from .optim import anneal_schedule, lam_schedule, make_optimizer
from .recipe import annealed_penalty, edge_paths, recipe_loss, recipe_step, ste_switch
from .records import Packed, Pretrained, Stage, StageKind, StageResult
from .run import device_name, load_data, seed_data, split_indices, subset, train_and_evaluate
from .stages import (
    STAGE_KINDS,
    config_for_stage,
    dkm_loss,
    dkm_taus,
    finetune,
    method_name,
    pack,
    planned_stages,
    stage_name,
    ste_loss,
    train_ste,
)
from .steps import (
    TrainState,
    empty_window,
    init_variables,
    make_eval_fn,
    make_init_fn,
    make_train_step,
    task_loss,
    train_step_fn,
)
from .workdir import WorkdirError, export_pretrained, prepare_workdir

__all__ = [
    "ANNEALED",
    "BASELINES",
    "DEFAULT_LAM",
    "LAM_SCHEDULES",
    "OPTIMIZERS",
    "PENALTY_NORMALIZE",
    "QAT_METHODS",
    "STAGE_KINDS",
    "Config",
    "Context",
    "Packed",
    "Pretrained",
    "Stage",
    "StageKind",
    "StageResult",
    "StepTimer",
    "TrainState",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "WorkdirError",
    "anneal_schedule",
    "budget_plan",
    "annealed_penalty",
    "checkpoint_manager",
    "config_for_stage",
    "device_name",
    "dkm_loss",
    "dkm_taus",
    "edge_paths",
    "empty_window",
    "export_pretrained",
    "finetune",
    "init_variables",
    "lam_schedule",
    "load_config",
    "load_data",
    "make_eval_fn",
    "make_init_fn",
    "make_optimizer",
    "make_train_step",
    "method_name",
    "pack",
    "phase_seed",
    "planned_stages",
    "prepare_workdir",
    "recipe_loss",
    "recipe_step",
    "restore_state",
    "run_phase",
    "seed_data",
    "split_indices",
    "stage_name",
    "ste_loss",
    "ste_switch",
    "subset",
    "task_loss",
    "train_and_evaluate",
    "train_ste",
    "train_step_fn",
]
