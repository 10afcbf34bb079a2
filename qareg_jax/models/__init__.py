"""flax.linen classifiers: NHWC inputs, ``model.apply(variables, x, train=...)`` -> logits.

Conv and dense weights are leaves named ``kernel``, biases ``bias``, batch-norm parameters
``scale``/``bias`` (in "params") and statistics ``mean``/``var`` (in "batch_stats").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from ..validation import check_choice
from .alexnet import AlexNet
from .cifar import CifarVGG
from .small import SmallCNN
from .vgg import VGG16

MODELS: dict[str, type[nn.Module]] = {
    "alexnet": AlexNet,
    "vgg16": VGG16,
    "cifar_vgg": CifarVGG,
    "small": SmallCNN,
}


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The model called ``name`` (a key of :data:`MODELS`) with ``num_classes`` outputs.

    ``kwargs`` go to the module, e.g. ``dropout_rate`` for "alexnet" and "vgg16".
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; allowed: {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def min_input_size(name: str) -> int:
    """The smallest image height and width the model called ``name`` accepts: below it
    the pooling leaves no features for the first dense layer."""
    check_choice("model", name, list(MODELS))
    return MODELS[name].min_input_size


def check_input_size(name: str, image_shape: Sequence[int]) -> None:
    """Refuse (ValueError) ``image_shape`` (H, W, C) smaller than :func:`min_input_size`.

    Without this check flax fails inside ``init`` with a bare ZeroDivisionError.
    """
    need, (h, w) = min_input_size(name), tuple(image_shape[:2])
    if h < need or w < need:
        raise ValueError(
            f"model {name!r} needs images of at least {need}x{need} pixels, got {h}x{w}"
        )


__all__ = [
    "MODELS",
    "AlexNet",
    "CifarVGG",
    "SmallCNN",
    "VGG16",
    "check_input_size",
    "get_model",
    "min_input_size",
]
