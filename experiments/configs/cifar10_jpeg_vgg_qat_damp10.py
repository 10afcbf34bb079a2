"""``cifar10_jpeg_vgg_qat_damp.py`` with the search's ``ste-damp10-late`` (lambda grown to
10 instead of 1, as late): 0.7 points less validation accuracy at K = 2 (one seed), the
worst layer 0.08 level spacings off its levels instead of 0.20 (docs/recipe.md). Its
3-seed rows test whether the latent weights then end on their levels (unsnapped accuracy
within 2 points of the snapped one):

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_qat_damp10.py \\
        --seeds 0 1 2 --ks 2 4 --pretrained-from RUNDIR_OF_THE_QAT_COMPARISON
"""

import cifar10_jpeg_vgg_qat_damp
import cifar10_jpeg_vgg_search

from qareg_jax.train import Config


def get_config() -> Config:
    recipe = cifar10_jpeg_vgg_search.get_variants()["ste-damp10-late"]
    return cifar10_jpeg_vgg_qat_damp.get_config().replace(**recipe)
