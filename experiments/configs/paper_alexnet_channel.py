"""The recommended recipe and k-means (CWS) on AlexNet with one codebook per output
channel (``group_size=1``; tfmot's ``cluster_per_channel``, coremltools' per-channel
palettization), beside the per-tensor paper table (``paper_alexnet.py``) and recipe rows
(``paper_alexnet_recipe.py``): same full-precision model, data split, phases, rates and
lambda, at K = 2 and 4. The packed sizes count every codebook (channels x K float32
values per layer, about 0.1 % of AlexNet's indices at K = 4)::

    python -m experiments.run_table experiments/configs/paper_alexnet_channel.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

CPU estimate (2-core machine, 0.31-0.41 s per plain step): per K one recipe stage
(702 + 351 steps, ~9-12 min with the grouped penalty) and one k-means fine-tuning
(351 steps, ~2.5 min): ~30 min.
"""

import paper_alexnet
import paper_alexnet_recipe

from qareg_jax.train import Config


def get_config() -> Config:
    recipe = paper_alexnet_recipe.get_config()
    return recipe.replace(
        ks=(4, 2),
        baselines=("kmeans",),
        group_size=1,
        finetune_lr={"nearest": recipe.finetune_lr,
                     "kmeans": paper_alexnet.FINETUNE_LR},
    )  # fmt: skip
