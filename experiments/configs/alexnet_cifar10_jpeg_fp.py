"""Full-precision AlexNet on all of CIFAR-10 (JPEG-75 copy): the start of the paper table.

``alexnet_cifar10.py`` with the data of this workplace and a full-precision schedule:
45,000 training images (a fixed random subset, seed 0) with random crop + flip; the other
5,000 are the validation split, the 10,000 test images are for reporting only. SGD with
Nesterov momentum 0.9, lr 0.01 cosine-decayed over 40 epochs, weight decay 5e-4 on the
kernels, dropout 0.5. A quiet 2-core Xeon of this workplace takes 0.38 s per step at
batch 128 (352 steps per epoch, ~2.2 min per epoch):

    python experiments/run_table.py experiments/configs/alexnet_cifar10_jpeg_fp.py \\
        --workdir RUNDIR [--resume]
"""

import alexnet_cifar10
import data_paths

from qareg_jax.train import Config


def get_config() -> Config:
    return alexnet_cifar10.get_config().replace(
        dataset=data_paths.cifar10_jpeg(),
        dataset_label="CIFAR-10 (JPEG-75 copy; 45k train / 5k val / 10k test)",
        train_subset=45_000,
        optimizer="sgd",
        weight_decay=5e-4,
        pretrain_epochs=40,
        pretrain_lr=0.01,
        regularizers=(),
        ks=(2,),
        freeze_reps=(False,),
        baselines=("kmeans",),
        finetune_epochs=0,
        # Unused by this full-precision run; kept at the values its workdir was started
        # with so that --resume accepts the workdir.
        reg_epochs=10,
        reg_lr=3e-3,
        finetune_lr=1e-3,
        log_every=50,
        checkpoint_every=352,
    )
