"""``cifar10_jpeg_vgg_channel.py`` with one codebook per two output channels
(``group_size=2``) at K = 2: 50,065 B, between one codebook per tensor (48,071 B) and
one per channel (52,031 B)::

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_group2.py \\
        --seeds 0 1 2 --pretrained-from experiments/pretrained/cifar_vgg_fp
"""

import cifar10_jpeg_vgg_channel

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_channel.get_config().replace(ks=(2,), group_size=2)
