"""K = 16 on AlexNet (issue 13): the best regularizer (``softmin`` beside STE at
``paper_alexnet.LAM``, the validation split's best at K = 2; ``paper_alexnet_seeds.py``
says why), STE, and the post-training baselines with more than two levels (k-means / CWS,
uniform, PWS, ECSQ), from the full-precision model of the paper table, with its data
split, phases, lambda and rates::

    python -m experiments.run_table experiments/configs/paper_alexnet_k16.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

CPU estimate (2-core EPYC, ~0.5 s per regularized step): 2 x (702 + 351) steps + 4 x 351
~ 30 min.
"""

import paper_alexnet

from qareg_jax.train import Config

BASELINES = ("kmeans", "uniform", "pws", "ecsq")


def get_config() -> Config:
    return paper_alexnet.get_config().replace(
        regularizers=("softmin",),
        freeze_reps=(False,),
        ks=(16,),
        qat=("ste",),
        baselines=BASELINES,
        finetune_lr=paper_alexnet.finetune_rates(("softmin",), ("ste", *BASELINES)),
    )
