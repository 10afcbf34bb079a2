"""One-seed rows of the CPU-scale QAT comparison (issue: hold accuracy like QAT does):
``nearest`` with the defaults from before the recipe (the registry's lambda of that
time in raw weight units, the mean over each layer, ramped over the first half;
``legacy_lambda.py``), to show what the recipe changed. Same setting, phases and
fine-tuning as the regularized rows of the QAT comparison, seed 0, K = 2, 4 and 8:

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_qat_old.py \\
        --pretrained-from runs/cifar10_jpeg_vgg_fp
"""

import cifar10_jpeg_vgg_search
import legacy_lambda

from qareg_jax.train import Config


def get_config() -> Config:
    return (
        cifar10_jpeg_vgg_search.get_config()
        .replace(**legacy_lambda.LEGACY)
        .replace(ks=(2, 4, 8), seeds=(0,), regularizers=("nearest",))
    )
