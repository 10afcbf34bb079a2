"""K = 16 on AlexNet (issue 13): the recommended recipe (``nearest`` beside STE, the best
regularizer row at K = 2, 4 and 8), STE, and the post-training baselines with more than two
levels (k-means / CWS, uniform, PWS, ECSQ), from the full-precision model of the paper
table, with its data split, phases and rates; each method fine-tuned at the rate of its
K = 2-8 rows (the recipe's 1e-5, the table's otherwise)::

    python -m experiments.run_table experiments/configs/paper_alexnet_k16.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

CPU estimate (2-core EPYC, ~0.5 s per regularized step): 2 x (702 + 351) steps + 4 x 351
~ 30 min.
"""

import paper_alexnet
import paper_alexnet_recipe

from qareg_jax.train import Config

BASELINES = ("kmeans", "uniform", "pws", "ecsq")


def get_config() -> Config:
    return paper_alexnet_recipe.get_config().replace(
        ks=(16,),
        qat=("ste",),
        baselines=BASELINES,
        finetune_lr=paper_alexnet.finetune_rates(("nearest",), ("ste", *BASELINES)),
    )
