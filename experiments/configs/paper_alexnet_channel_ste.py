"""Straight-through QAT on AlexNet with one codebook per output channel (``group_size=1``),
at K = 4 then 2: the candidate for issue 13's K = 4 goal (post-tuning within 1.5 points of
the full-precision 80.90 %) after per-layer STE kept 78.57 % pre / 78.19 % post-tuning in
the paper table and the per-channel recipe 78.33 / 78.71 (``paper_alexnet_channel.py``).
Same full-precision model, data split, phases and fine-tuning rate as the table's STE row
(its STE settings differ from the table's only in ``group_size``; tested)::

    python -m experiments.run_table experiments/configs/paper_alexnet_channel_ste.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

CPU: ~20 min per K alone on a 2-core EPYC (702 STE + 351 fine-tuning steps).
"""

import paper_alexnet
import paper_alexnet_channel

from qareg_jax.train import Config


def get_config() -> Config:
    return paper_alexnet_channel.get_config().replace(
        regularizers=(),
        baselines=(),
        qat=("ste",),
        finetune_lr=paper_alexnet.finetune_rates((), ("ste",)),
    )
