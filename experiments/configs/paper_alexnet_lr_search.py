"""The learning rate of the AlexNet table's regularized / QAT phase, chosen on the 5,000
validation images. The rate of ``paper_alexnet.py`` (Adam 5e-4) is ``alexnet_cifar10.py``'s
for training from scratch-like settings; the full-precision model it starts from was
trained with SGD at 0.01 decayed to 0, and the recipe's K = 4 latent net lost 7.8 points
in two epochs at that rate. Each variant runs the recommended recipe (``nearest`` beside
STE, ``paper_alexnet_recipe.py``) at K = 4, seed 0, from the same full-precision model,
for the table's 702 + 351 steps:

    python -m experiments.recipe_search experiments/configs/paper_alexnet_lr_search.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

CPU: ~8.5 min per variant on a quiet 2-core Xeon. Result (2026-12-04,
``experiments/results/paper_alexnet_lr_search/search.md``): Adam 1e-4 best on the
validation split (77.86 % after fine-tuning; 5e-4: 76.38, 2e-5: 75.42), now
``paper_alexnet.REG_LR``. SGD at 1e-3 diverged at step 7: a level's gradient is the sum of
its weights' (millions in fc1), which Adam normalizes and plain SGD does not.
"""

import paper_alexnet_recipe

from qareg_jax.train import Config


def get_config() -> Config:
    return paper_alexnet_recipe.get_config().replace(ks=(4,))


def get_variants() -> dict[str, dict]:
    return {
        "adam5e-4": dict(reg_optimizer="adam", reg_lr=5e-4),  # alexnet_cifar10.py's
        "adam1e-4": dict(reg_optimizer="adam", reg_lr=1e-4),
        "adam2e-5": dict(reg_optimizer="adam", reg_lr=2e-5),
        # The pretraining optimizer at sHAM's retraining rate (PAPERS.md section 2).
        "sgd1e-3": dict(reg_optimizer="sgd", reg_lr=1e-3),
    }
