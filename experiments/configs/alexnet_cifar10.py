"""The paper's setting for AlexNet (CIFAR variant) on CIFAR-10: every regularizer and
baseline at K in {2, 4, 8, 16, 32}, with the frozen-representatives ablation.

The paper's training hyper-parameters are not available to us (PAPERS.md); these are
ours. Adam with cosine decay for the full-precision and the regularized phases, as in
the digits runs where the default lambdas were chosen (Adam's step is bounded by the
learning rate, so a strong lambda cannot throw the weights off as with SGD). Quantized
fine-tuning with Adam 1e-4: sHAM used SGD 1e-3 with momentum, whose step on a
representative grows with the number of weights summed into its gradient (millions
here). Lambda defaults to ``train.DEFAULT_LAM`` (chosen on the digits CPU runs), ramped
up over the first half of the regularized phase. Needs an accelerator: AlexNet costs
~0.6 s/step on a 2-core CPU.

    python experiments/run_table.py experiments/configs/alexnet_cifar10.py
"""

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
        log_every=100,
        checkpoint_every=1000,
    )
