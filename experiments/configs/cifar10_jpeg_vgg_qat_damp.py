"""The CPU-scale QAT comparison's regularizer row with round 3 of the recipe search
(docs/recipe.md): STE from the first step with the ``nearest`` penalty beside it, its
lambda grown geometrically from 1e-6 to 1 over the phase (``ste-damp1-late`` of
``cifar10_jpeg_vgg_search.py``, chosen on the validation split), fine-tuned at STE's rate.
Same setting, phases and full-precision models as ``cifar10_jpeg_vgg_qat.py``:

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_qat_damp.py \\
        --seeds 0 1 2 --ks 2 4 --pretrained-from RUNDIR_OF_THE_QAT_COMPARISON

(its run directory holds the three seeds' full-precision models).
"""

import cifar10_jpeg_vgg_search

from qareg_jax.train import Config

RECIPE = cifar10_jpeg_vgg_search.get_variants()["ste-damp1-late"]
# Fine-tuning rates when other methods run beside it: the recipe's, and those the QAT
# comparison chose on the validation split for STE, DKM and k-means (docs/recipe.md).
FINETUNE_LR = {"nearest": 1e-5, "ste": 1e-5, "dkm": 1e-5, "kmeans": 1e-3}


def get_config() -> Config:
    return (
        cifar10_jpeg_vgg_search.get_config()
        .replace(**RECIPE)
        .replace(ks=(2, 4, 8), seeds=(0, 1, 2), regularizers=("nearest",))
    )
