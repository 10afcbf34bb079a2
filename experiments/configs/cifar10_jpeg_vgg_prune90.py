"""``cifar10_jpeg_vgg_prune.py`` at 90 % sparsity (see that file)."""

import cifar10_jpeg_vgg_prune

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_prune.config_at(0.90)
