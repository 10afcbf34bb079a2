"""The recommended recipe's rows beside the paper table for AlexNet
(``paper_alexnet.py``): STE from the first step with the ``nearest`` penalty beside it,
lambda grown geometrically from 1e-6 to 1 over the phase, fine-tuned at 1e-5
(``cifar10_jpeg_vgg_qat_damp.py``, chosen on the CPU-scale net's validation split;
docs/recipe.md). Same full-precision model, data split and phases as the paper table.
The table now runs every regularizer with this recipe, at the unit scale where these rows
use ``"spacing"`` (the same at K = 2), so its own ``nearest + ste1`` rows replace these::

    python -m experiments.run_table experiments/configs/paper_alexnet_recipe.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

CPU estimate (quiet 2-core Xeon, 0.38 s per plain step): 3 K x (702 + 351) steps ~ 25 min.
"""

import cifar10_jpeg_vgg_qat_damp
import paper_alexnet

from qareg_jax.train import Config


def get_config() -> Config:
    return (
        paper_alexnet.get_config()
        .replace(**cifar10_jpeg_vgg_qat_damp.RECIPE)
        .replace(regularizers=("nearest",), freeze_reps=(False,), qat=(), baselines=())
    )
