"""``cifar10_jpeg_vgg_budget.py`` at the file size of uniform K = 4 (84,936 B) (see that file)."""

import cifar10_jpeg_vgg_budget

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_budget.config_at(84_936)
