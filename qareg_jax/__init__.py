"""qareg_jax: quantization-aware regularization for JAX, Flax and Optax.

Weights are pushed during training towards K quantization levels by per-layer
penalties; the levels of the dynamic penalties are trainable representatives
living in the same parameter tree. Afterwards every selected weight is snapped
to its level and fine-tuned with the weights kept exactly quantized.

Where things are: ``codebook`` (specs, ``attach``), ``regularizers`` (one module
per penalty family and the registry), ``penalty``, ``snap``, ``finetune``,
``nearest_level`` (the exact nearest-level search), ``quantizers`` (post-training
baselines), ``qat`` (straight-through QAT), ``contrib`` (gradient-l1, R2, DKM),
``compress`` (packed export), ``budget`` (K per layer for a size budget),
``pruning`` (magnitude pruning to combine with ``QuantSpec(pin_zero=True)``),
``pipeline`` (the training core and the experiment pipeline; imported on use, it
pulls in orbax), ``sharding``.
"""

from . import budget, compress, contrib, pruning, qat, quantizers, regularizers, sharding
from .codebook import (
    QuantSpec,
    attach,
    check_schedules,
    check_tree,
    default_rule,
    init_representatives,
    levels,
    make_specs,
    select,
)
from .finetune import (
    QuantizedFinetuneState,
    RegularizeThenFinetuneState,
    assignments_by_path,
    finetune_specs,
    is_finetuning,
    quantized_finetune,
    regularize_then_finetune,
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
from .snap import check_snappable, snap

__version__ = "0.1.0"

__all__ = [
    "QuantSpec",
    "QuantizedFinetuneState",
    "RegularizeThenFinetuneState",
    "all_reps_total",
    "assignments_by_path",
    "attach",
    "budget",
    "check_schedules",
    "check_snappable",
    "check_tree",
    "compress",
    "contrib",
    "cosine",
    "default_rule",
    "elementwise",
    "finetune_specs",
    "init_representatives",
    "is_finetuning",
    "layer_penalties",
    "levels",
    "make_specs",
    "nearest",
    "nearest_total",
    "penalty",
    "penalty_stats",
    "product",
    "pruning",
    "quantized_finetune",
    "qat",
    "quantizers",
    "regularize_then_finetune",
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
