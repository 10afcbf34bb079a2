"""flax.linen classifiers: NHWC inputs, ``model.apply(variables, x, train=...)`` -> logits.

Conv and dense weights are leaves named ``kernel``, biases ``bias``, batch-norm parameters
``scale``/``bias`` (in "params") and statistics ``mean``/``var`` (in "batch_stats").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from .alexnet import AlexNet
from .small import SmallCNN
from .vgg import VGG16

MODELS: dict[str, type[nn.Module]] = {"alexnet": AlexNet, "vgg16": VGG16, "small": SmallCNN}


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The model called ``name`` ("alexnet", "vgg16" or "small") with ``num_classes`` outputs.

    ``kwargs`` go to the module, e.g. ``dropout_rate`` for "alexnet" and "vgg16".
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; allowed: {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = ["MODELS", "AlexNet", "SmallCNN", "VGG16", "get_model"]
