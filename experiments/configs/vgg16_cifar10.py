"""The paper's setting for VGG16-BN (CIFAR variant) on CIFAR-10: every regularizer and
baseline at K in {2, 4, 8, 16, 32}, with the frozen-representatives ablation.

Hyper-parameters are ours (the paper's are not available, PAPERS.md); see
``alexnet_cifar10.py`` for the choices. Needs an accelerator.

    python experiments/run_table.py experiments/configs/vgg16_cifar10.py
"""

from qareg_jax.train import Config


def get_config() -> Config:
    return Config(
        model="vgg16",
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
        log_every=100,
        checkpoint_every=1000,
    )
