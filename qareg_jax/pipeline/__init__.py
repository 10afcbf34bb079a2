"""The experiment pipeline, flax-examples style: ``train_and_evaluate(config, workdir)``.

For one model and dataset it runs:

1. **pretrain** a full-precision model (the reference accuracy, and the start of the
   baselines and of the regularized runs when ``config.from_pretrained``);
2. per K, every stage kind of ``stages.STAGE_KINDS``: per regularizer and
   ``freeze_reps`` value a **regularized** run (attach representatives, train with
   task loss + penalty, snap: "pre-tuning", quantized fine-tuning: "post-tuning",
   pack), and per baseline quantizer a **PTQ** run (quantize the pretrained model,
   then the same fine-tuning and packing).

Modules: ``config`` (the schema), ``optim`` (optimizer recipes), ``steps`` (the training
core: ``TrainState``, ``task_loss``, ``make_train_step``, ``make_eval_fn``), ``loop``
(one phase with checkpoints, metrics, NaN detection, resume), ``stages`` (the stage
kinds and their typed ``StageResult``), ``workdir`` (the run-directory policy) and
``run`` (``train_and_evaluate``).
"""

from .config import BASELINES, DEFAULT_LAM, OPTIMIZERS, Config, load_config
from .loop import (
    Context,
    TrainingDivergedError,
    TrainingInterrupted,
    checkpoint_manager,
    phase_seed,
    restore_state,
    run_phase,
)
from .optim import lam_schedule, make_optimizer
from .run import device_name, load_data, subset, train_and_evaluate
from .stages import (
    STAGE_KINDS,
    Packed,
    Pretrained,
    Stage,
    StageKind,
    StageResult,
    finetune,
    method_name,
    pack,
    planned_stages,
    stage_name,
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
from .workdir import WorkdirError, prepare_workdir

__all__ = [
    "BASELINES",
    "DEFAULT_LAM",
    "OPTIMIZERS",
    "STAGE_KINDS",
    "Config",
    "Context",
    "Packed",
    "Pretrained",
    "Stage",
    "StageKind",
    "StageResult",
    "TrainState",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "WorkdirError",
    "checkpoint_manager",
    "device_name",
    "empty_window",
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
    "restore_state",
    "run_phase",
    "stage_name",
    "subset",
    "task_loss",
    "train_and_evaluate",
    "train_step_fn",
]
