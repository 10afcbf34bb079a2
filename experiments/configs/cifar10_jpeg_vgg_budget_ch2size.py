"""``cifar10_jpeg_vgg_budget.py`` at the file size of one codebook per output channel at
K = 2 (52,031 B, ``_channel.py``): the per-tensor model of the same bytes, so per-channel
codebooks are compared with what their extra codebook bytes buy as more levels in some
layers. The recipe and k-means only, as in ``_channel.py`` (see ``_budget.py``)."""

import cifar10_jpeg_vgg_budget

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_budget.config_at(52_031).replace(qat=())
