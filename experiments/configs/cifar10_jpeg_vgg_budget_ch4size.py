"""``cifar10_jpeg_vgg_budget.py`` at the file size of one codebook per output channel at
K = 4 (92,743 B, ``_channel.py``): the per-tensor model of the same bytes. The recipe
and k-means only, as in ``_channel.py`` (see ``_budget.py``)."""

import cifar10_jpeg_vgg_budget

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_budget.config_at(92_743).replace(qat=())
