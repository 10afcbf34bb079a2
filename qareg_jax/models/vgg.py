"""VGG16 with batch normalization, CIFAR variant."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

# Output channels of the 13 convolutions, "M" = 2x2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")  # fmt: skip


class VGG16(nn.Module):
    """VGG16-BN for 32x32 inputs: 14,986,698 params at 10 classes (+513 per extra class),
    14,710,464 of them in conv kernels; the "batch_stats" statistics are not counted.

    13 x (conv 3x3 no bias -> BatchNorm -> ReLU), max-pool after blocks 1-5, ending 1x1x512;
    then dropout -> fc1 512 -> ReLU -> dropout -> fc2 num_classes. Layers are named
    ``conv{block}_{i}``/``bn{block}_{i}`` (e.g. ``conv3_2``), ``fc1``, ``fc2``.
    BatchNorm uses batch statistics and updates "batch_stats" when ``train``, the running
    averages otherwise; dropout (rate ``dropout_rate``) uses the "dropout" rng.
    """

    # Five 2x2 pools (the convolutions keep the size): 32 -> 1; less leaves no features.
    min_input_size: ClassVar[int] = 32

    num_classes: int = 10
    dropout_rate: float = 0.5
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """(B, 32, 32, C) -> logits (B, num_classes)."""
        block, index = 1, 1
        for layer in VGG16_LAYERS:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                block, index = block + 1, 1
                continue
            name = f"{block}_{index}"
            x = nn.Conv(layer, (3, 3), use_bias=False, name=f"conv{name}")(x)
            x = nn.BatchNorm(
                use_running_average=not train, momentum=self.bn_momentum, name=f"bn{name}"
            )(x)
            x = nn.relu(x)
            index += 1
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(512, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="fc2")(x)
