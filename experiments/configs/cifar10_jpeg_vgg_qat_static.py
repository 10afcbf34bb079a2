"""One-seed rows of the CPU-scale QAT comparison (issue: hold accuracy like QAT does)
beside ``cifar10_jpeg_vgg_qat.py``'s three-seed ones: the static penalties ``sine`` and
``cosine`` at their default lambdas (the unit penalty, docs/recipe.md). Same setting,
phases and fine-tuning as the regularized rows of the QAT comparison, seed 0,
K = 2, 4 and 8:

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_qat_static.py \\
        --pretrained-from runs/cifar10_jpeg_vgg_fp
"""

import cifar10_jpeg_vgg_search

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_search.get_config().replace(
        ks=(2, 4, 8), seeds=(0,), regularizers=("sine", "cosine")
    )
