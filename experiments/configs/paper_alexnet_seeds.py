"""Seeds 1 and 2 of the AlexNet table's three-seed rows (issue 13): K = 2 and 4 of the
recommended recipe, k-means (CWS), STE and DKM, each seed from its own full-precision
model (``alexnet_cifar10_jpeg_fp.py`` with that seed). Seed 0 of the same rows comes from
``paper_alexnet.py`` and ``paper_alexnet_recipe.py``; ``experiments/combine.py`` joins
them::

    python -m experiments.run_table experiments/configs/alexnet_cifar10_jpeg_fp.py \\
        --seeds 1 2 --workdir RUN_FP12 --name alexnet_cifar10_jpeg_fp_seeds12
    python -m experiments.run_table experiments/configs/paper_alexnet_seeds.py \\
        --pretrained-from RUN_FP12

Every phase, rate and lambda is that of the row's seed-0 config: the recipe's for
``nearest`` (fine-tuned at 1e-5), ``paper_alexnet.py``'s for STE, DKM and k-means.
CPU estimate (quiet 2-core Xeon): 2 x 75 min of pretraining, then per seed and K about
8 (recipe) + 7 (STE) + 20 (DKM) + 2 (k-means) min: ~5 h in all.
"""

import paper_alexnet
import paper_alexnet_recipe

from qareg_jax.train import Config


def get_config() -> Config:
    return paper_alexnet_recipe.get_config().replace(
        ks=(2, 4),
        seeds=(1, 2),
        qat=("ste", "dkm"),
        baselines=("kmeans",),
        finetune_lr=paper_alexnet.finetune_rates(("nearest",), ("ste", "dkm", "kmeans")),
    )
