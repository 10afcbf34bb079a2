"""CPU-scale CIFAR-10 run on the JPEG-75 copy of CIFAR-10 (not the original pixels):
SmallCNN (the digits CNN, unchanged, on 32x32x3 inputs: 0.56M parameters, 0.52M of them
in fc1) on a fixed 10,000-image training subset and 2,000-image test subset, a few
epochs. Run one K at a time to keep each run under ~15 minutes on 2 CPU cores:

    python experiments/run_table.py experiments/configs/cifar10_jpeg_small.py --ks 2 \\
        --name cifar10_jpeg_small_k2
    python experiments/run_table.py experiments/configs/cifar10_jpeg_small.py --ks 4 \\
        --name cifar10_jpeg_small_k4

Lambda: the library defaults (chosen on digits).
"""

from qareg_jax.train import Config


def get_config() -> Config:
    return Config(
        model="small",
        dataset="folder:/work/shared/data/cifar10-jpeg75.tar.gz",
        dataset_label="CIFAR-10 (JPEG-75 copy; 10k train / 2k test subset)",
        train_subset=10_000,
        test_subset=2_000,
        batch_size=128,
        pretrain_epochs=8,
        pretrain_lr=2e-3,
        regularizers=("nearest", "softmin", "sine"),
        ks=(2, 4),
        reg_epochs=4,
        reg_lr=2e-3,
        finetune_epochs=1,
        baselines=("kmeans", "uniform"),
        log_every=20,
        checkpoint_every=200,
    )
