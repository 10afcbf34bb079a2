"""CPU-scale run on the embedded default: SmallCNN on scikit-learn's 8x8 digits, every
regularizer with and without frozen representatives, K in {2, 4, 8}, every baseline.

Uses the library defaults (``train.Config``) for training, and the lambda scale of its
committed results (``legacy_lambda.py``: mean over each layer, raw weight units).

    python experiments/run_table.py experiments/configs/digits_small.py
"""

import legacy_lambda

from qareg_jax.train import Config


def get_config() -> Config:
    return Config(
        model="small",
        dataset="digits",
        regularizers=("sine", "cosine", "nearest", "softmin", "product", "wells"),
        ks=(2, 4, 8),
        freeze_reps=(False, True),
        baselines=("kmeans", "uniform", "pws", "ecsq", "binary"),
        **legacy_lambda.LEGACY,
    )
