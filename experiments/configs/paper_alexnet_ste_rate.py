"""STE at K = 4 fine-tuned at the regularized rows' rate (Adam 1e-5, ``REG_FINETUNE_LR``)
instead of the base's 1e-4: how much of the K = 4 gap between ``softmin`` beside STE and
STE alone (+0.34 +- 0.26 points before fine-tuning, +0.57 +- 0.22 after, three seeds) is
the fine-tuning rate. Every other field is the seed rows' (``paper_alexnet_seeds.py``), so
the STE phase is theirs step for step and only the fine-tuning differs. An ablation read
on the test set, not a choice: no row of the table changes with it::

    python -m experiments.run_table experiments/configs/paper_alexnet_ste_rate.py \\
        --seeds 0 --pretrained-from RUNDIR_OF_THE_FP_ALEXNET --name paper_alexnet_ste_rate0
    python -m experiments.run_table experiments/configs/paper_alexnet_ste_rate.py \\
        --seeds 1 2 --pretrained-from RUN_FP12

CPU estimate (2-core EPYC, alone): ~11 min per seed (702 STE + 351 fine-tuning steps).
"""

import paper_alexnet
import paper_alexnet_seeds

from qareg_jax.train import Config


def get_config() -> Config:
    return paper_alexnet_seeds.get_config().replace(
        regularizers=(),
        ks=(4,),
        seeds=(0, 1, 2),
        qat=("ste",),
        baselines=(),
        finetune_lr={"ste": paper_alexnet.REG_FINETUNE_LR},
    )
