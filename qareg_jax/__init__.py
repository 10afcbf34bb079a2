"""qareg_jax: quantization-aware regularization for JAX, Flax and Optax.

Weights are pushed during training towards K quantization levels by per-layer
penalties; the levels of the dynamic penalties are trainable representatives
living in the same parameter tree. Afterwards every selected weight is snapped
to its level and fine-tuned with the weights kept exactly quantized.
"""

from . import compress, contrib, quantizers, regularizers, sharding
from .codebook import (
    QuantSpec,
    attach,
    check_tree,
    default_rule,
    init_representatives,
    levels,
    make_specs,
    select,
)
from .penalty import elementwise, layer_penalties, penalty, penalty_stats
from .regularizers import (
    all_reps_total,
    cosine,
    nearest,
    nearest_total,
    product,
    sine,
    softmin,
    static_levels,
    wells,
    wells_total,
)
from .snap import QuantizedFinetuneState, finetune_specs, quantized_finetune, snap

__version__ = "0.1.0"

__all__ = [
    "QuantSpec",
    "QuantizedFinetuneState",
    "all_reps_total",
    "attach",
    "check_tree",
    "compress",
    "contrib",
    "cosine",
    "default_rule",
    "elementwise",
    "finetune_specs",
    "init_representatives",
    "layer_penalties",
    "levels",
    "make_specs",
    "nearest",
    "nearest_total",
    "penalty",
    "penalty_stats",
    "product",
    "quantized_finetune",
    "quantizers",
    "regularizers",
    "select",
    "sharding",
    "sine",
    "snap",
    "softmin",
    "static_levels",
    "wells",
    "wells_total",
]
