"""The paper's setting for AlexNet (CIFAR variant) on CIFAR-10: every regularizer and
baseline at K in {2, 4, 8, 16, 32}, with the frozen-representatives ablation. The base
of the other paper-scale configs (``vgg16_cifar10.py``, ``alexnet_cifar10_jpeg_fp.py``).

The paper's training hyper-parameters are not public (docs/references.md section 1);
these are ours. Adam with cosine decay for the full-precision and the regularized
phases: Adam's step is bounded by the learning rate, so a strong lambda cannot throw the
weights off as with SGD. Quantized fine-tuning with Adam 1e-4: sHAM's SGD 1e-3 moves a
representative by the sum of its weights' gradients, millions of them here. Lambda: the
scale the paper table started with (``legacy_lambda.py``: each regularizer's registry
lambda of that time, mean over the layer, raw weight units), ramped up over the first
half of the regularized phase.

    python experiments/run_table.py experiments/configs/alexnet_cifar10.py
"""

import legacy_lambda

from qareg_jax.train import Config


def get_config() -> Config:
    return Config(
        model="alexnet",
        dataset="cifar10",
        batch_size=128,
        eval_batch_size=1000,
        optimizer="adam",
        pretrain_epochs=60,
        pretrain_lr=1e-3,
        regularizers=("sine", "cosine", "nearest", "softmin", "product", "wells"),
        ks=(2, 4, 8, 16, 32),
        freeze_reps=(False, True),
        from_pretrained=True,
        reg_epochs=20,
        reg_lr=5e-4,
        lam_warmup=0.5,
        finetune_epochs=10,
        finetune_lr=1e-4,
        finetune_optimizer="adam",
        baselines=("kmeans", "uniform", "pws", "ecsq", "binary"),
        **legacy_lambda.LEGACY,
        log_every=100,
        checkpoint_every=1000,
    )
