"""STE fine-tuned at the regularized rows' rate (Adam 1e-5, ``REG_FINETUNE_LR``) instead
of the base's 1e-4, at K = 2 and 4: how much of the K = 4 gap between ``softmin`` beside
STE and STE alone (+0.34 +- 0.26 points before fine-tuning, +0.57 +- 0.22 after, three
seeds) is the fine-tuning rate, and whether the K = 2 tie holds at equal rates. Every
other field is the seed rows' (``paper_alexnet_seeds.py``), so the STE phase is theirs
step for step and only the fine-tuning differs. An ablation read on the test set, not a
choice: no row of the table changes with it. Seeds 0-2, from the full-precision models of
the paper table (seed 0) and of the seed rows (seeds 1 and 2)::

    python -m experiments.run_table experiments/configs/paper_alexnet_ste_rate.py \
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET RUNDIR_OF_THE_SEED_ROWS

CPU estimate (2-core EPYC, alone): ~11 min per seed and K (702 STE + 351 fine-tuning steps).
"""

import paper_alexnet
import paper_alexnet_seeds

from qareg_jax.train import Config


def get_config() -> Config:
    return paper_alexnet_seeds.get_config().replace(
        regularizers=(),
        ks=(2, 4),
        seeds=(0, 1, 2),
        qat=("ste",),
        baselines=(),
        finetune_lr={"ste": paper_alexnet.REG_FINETUNE_LR},
    )
