"""The CPU-scale QAT comparison (issue: hold accuracy like QAT does): on
``cifar10_jpeg_vgg.py``'s setting, the regularizer with the recipe chosen on the
validation split (``cifar10_jpeg_vgg_search.py``, docs/recipe.md), STE, DKM and k-means
PTQ, each from the same full-precision model per seed, at equal steps (3 epochs, Adam
1e-3 cosine; then 1 epoch of quantized fine-tuning, Adam at a rate per method chosen on the
validation split). Three seeds at K = 2
and 4, one at K = 8:

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_qat.py \\
        --seeds 0 1 2 --ks 2 4 --name cifar10_jpeg_vgg_qat \\
        --pretrained-from runs/cifar10_jpeg_vgg_fp runs/cifar10_jpeg_vgg_fp_s12
    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_qat.py \\
        --seeds 0 --ks 8 --name cifar10_jpeg_vgg_qat_k8 --pretrained-from ...

CPU estimate on a quiet 2-core Xeon (plain step 0.17 s; regularizer and STE steps ~1.0x,
DKM ~1.6x, ``benchmarks/results/method_cost_cifar_vgg.json``): per seed and K, 4 x 1,404
steps ~ 17 min; 3 seeds x 2 K + 1 x K = 8: ~2 h, plus 40 min of pretraining for seeds
1 and 2.
"""

import cifar10_jpeg_vgg_search

from qareg_jax.train import Config

# The recipe chosen on the validation split (docs/recipe.md, "What was tried").
RECIPE = cifar10_jpeg_vgg_search.get_variants()["scale-free-hybrid0.7"]


def get_config() -> Config:
    return (
        cifar10_jpeg_vgg_search.get_config()
        .replace(**RECIPE)
        .replace(
            ks=(2, 4, 8),
            seeds=(0, 1, 2),
            regularizers=("nearest",),
            qat=("ste", "dkm"),
            baselines=("kmeans",),
            # Chosen on the validation split (docs/recipe.md): 1e-3 helps the hybrid's
            # levels and undoes STE's and DKM's, which trained their levels already.
            finetune_lr={"nearest": 1e-3, "ste": 1e-5, "dkm": 1e-5, "kmeans": 1e-3},
        )
    )
