"""The length of the recipe's phases at K = 4 with one codebook per output channel, chosen
on the 5,000 validation images (issue 13's goal: post-tuning within 1.5 points of the
full-precision AlexNet's 80.90 %; the table's 702 + 351 steps leave it 2.2 under).
Each variant runs ``paper_alexnet_channel.py`` at K = 4, seed 0, from the same
full-precision model:

    python -m experiments.recipe_search experiments/configs/paper_alexnet_channel_phase.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

``phases1x`` is ``paper_alexnet_channel_k4``'s run (its workdir can be copied to
``<workdir>/phases1x`` and is read back); ``phases3x`` trains 3x longer in both phases
(6 epochs regularized, 2,112 steps; 3 epochs fine-tuning, 1,056 steps) and skips k-means.
CPU: ~15 min (1x) and ~50 min (3x) alone on a 2-core EPYC.
"""

import paper_alexnet_channel

from qareg_jax.train import Config


def get_config() -> Config:
    return paper_alexnet_channel.get_config().replace(ks=(4,))


def get_variants() -> dict[str, dict]:
    base = get_config()
    return {
        "phases1x": {},
        "phases3x": dict(
            reg_epochs=3 * base.reg_epochs,
            finetune_epochs=3 * base.finetune_epochs,
            baselines=(),
            finetune_lr=base.finetune_lr["nearest"],
        ),
    }
