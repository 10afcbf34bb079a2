"""CPU-scale CIFAR-10 run on the JPEG-75 copy of CIFAR-10 (not the original pixels):
``digits_small.py``'s SmallCNN (0.56M parameters on 32x32x3, 0.52M of them in fc1) on a
fixed 10,000-image training subset and 2,000-image test subset, a few epochs. One K at
a time keeps each run under ~15 minutes on 2 CPU cores:

    python experiments/run_table.py experiments/configs/cifar10_jpeg_small.py --ks 2 \\
        --name cifar10_jpeg_small_k2

Lambda: the registry defaults (chosen on digits).
"""

import data_paths
import digits_small

from qareg_jax.train import Config


def get_config() -> Config:
    return digits_small.get_config().replace(
        dataset=data_paths.cifar10_jpeg(),
        dataset_label="CIFAR-10 (JPEG-75 copy; 10k train / 2k test subset)",
        train_subset=10_000,
        test_subset=2_000,
        batch_size=128,
        pretrain_epochs=8,
        pretrain_lr=2e-3,
        regularizers=("nearest", "softmin", "sine"),
        ks=(2, 4),
        freeze_reps=(False,),
        reg_epochs=4,
        reg_lr=2e-3,
        finetune_epochs=1,
        baselines=("kmeans", "uniform"),
        log_every=20,
        checkpoint_every=200,
    )
