"""The paper's setting for VGG16-BN (CIFAR variant) on CIFAR-10: ``alexnet_cifar10.py``
with the model swapped. Needs an accelerator.

    python experiments/run_table.py experiments/configs/vgg16_cifar10.py
"""

import alexnet_cifar10

from qareg_jax.train import Config


def get_config() -> Config:
    return alexnet_cifar10.get_config().replace(model="vgg16")
