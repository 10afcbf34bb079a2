"""A small CNN for the 8x8 digits default dataset and quick tests."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax


class SmallCNN(nn.Module):
    """conv1 3x3 16 -> conv2 3x3 32 -> maxpool 2 -> fc1 64 -> fc2 num_classes, ReLUs between.

    38,282 params for (8, 8, 1) inputs and 10 classes (fc1 sees (H/2)*(W/2)*32 features).
    No dropout or normalization: train and eval modes compute the same function.
    """

    # One 2x2 pool (the convolutions keep the size): 2 -> 1; 1 pixel leaves no features.
    min_input_size: ClassVar[int] = 2

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """(B, H, W, C) -> logits (B, num_classes); ``train`` is accepted for uniformity."""
        del train
        x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(32, (3, 3), name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64, name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)
