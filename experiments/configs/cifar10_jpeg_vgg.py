"""The CPU-scale CIFAR-10 setting of the QAT comparison (docs/recipe.md): ``cifar_vgg``
(0.30M parameters) on all 45,000 training images of the JPEG-75 copy with random crop +
flip, 5,000 held out for choosing hyper-parameters (``val_fraction``), the 10,000 test
images for reporting. Full precision: SGD-Nesterov lr 0.05, cosine decay, weight decay
5e-4, 20 epochs (~20 min on a quiet 2-core Xeon at 0.17 s per step). Every snapped
net's BatchNorm statistics are re-estimated before its pre-tuning accuracy.

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg.py \\
        --workdir RUNDIR [--resume] [--pretrained-from FP_RUNDIR]
"""

import data_paths

from qareg_jax.train import Config


def get_config() -> Config:
    return Config(
        model="cifar_vgg",
        dataset=data_paths.cifar10_jpeg(),
        dataset_label="CIFAR-10 (JPEG-75 copy; 45k train / 5k val / 10k test)",
        val_fraction=0.1,
        data_seed=0,
        batch_size=128,
        eval_batch_size=1000,
        optimizer="sgd",
        weight_decay=5e-4,
        pretrain_epochs=20,
        pretrain_lr=0.05,
        regularizers=("nearest",),
        ks=(2, 4),
        freeze_reps=(False,),
        reg_epochs=4,
        reg_lr=0.01,
        finetune_epochs=1,
        finetune_lr=1e-3,
        finetune_optimizer="adam",
        # Snapping changes what the BatchNorm statistics should be, most after PTQ: every
        # method's snapped net gets fresh statistics (50 batches, forward only) first.
        bn_recalibrate=50,
        baselines=("kmeans",),
        qat=(),
        log_every=50,
        checkpoint_every=352,
    )
