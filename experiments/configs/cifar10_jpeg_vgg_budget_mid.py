"""``cifar10_jpeg_vgg_budget.py`` at 66,500 B, halfway between the files of uniform K = 2
and K = 4 (see that file)."""

import cifar10_jpeg_vgg_budget

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_budget.config_at(66_500)
