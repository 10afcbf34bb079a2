"""AlexNet adapted to 32x32 CIFAR inputs."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax


class AlexNet(nn.Module):
    """AlexNet for 32x32 inputs: 5 convolutions, then 3 dense layers; 23,468,874 params at
    10 classes (+4,097 per extra class), 21.0M of them in the dense layers.

    conv1 3x3/2 64 -> maxpool 2 -> conv2 5x5 192 -> maxpool 2 -> conv3 3x3 384
    -> conv4 3x3 256 -> conv5 3x3 256 -> maxpool 2 -> (2x2x256 = 1024)
    -> dropout -> fc1 4096 -> dropout -> fc2 4096 -> fc3 num_classes.
    ReLU after every layer but the last; dropout (rate ``dropout_rate``, "dropout" rng)
    on the inputs of fc1 and fc2, as in torchvision's AlexNet.
    """

    # Smallest height/width leaving a 1x1 map after the stride-2 conv and 3 pools:
    # ceil(15 / 2) = 8 -> 4 -> 2 -> 1; 14 pixels give 0 features (flax init divides by 0).
    min_input_size: ClassVar[int] = 15

    num_classes: int = 10
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """(B, 32, 32, C) -> logits (B, num_classes)."""
        x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2), name="conv1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(192, (5, 5), name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(384, (3, 3), name="conv3")(x))
        x = nn.relu(nn.Conv(256, (3, 3), name="conv4")(x))
        x = nn.relu(nn.Conv(256, (3, 3), name="conv5")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(4096, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(4096, name="fc2")(x))
        return nn.Dense(self.num_classes, name="fc3")(x)
