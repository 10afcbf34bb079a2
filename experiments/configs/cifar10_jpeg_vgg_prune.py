"""Pruning with a pinned zero level against sHAM's order (issue: what users of the other
compression tools ask for, item 2), on the CPU-scale QAT comparison's setting
(same full-precision models and phases as ``cifar10_jpeg_vgg_qat.py``), K = 4, with the
recommended recipe (``cifar10_jpeg_vgg_qat_damp.py``: STE with the ``nearest`` penalty
beside it):

- "nearest + ste1 + prune S%": the recipe with ``pin_zero`` while magnitude pruning ramps
  (cubic) to S % of every selected layer over the first half of the phase;
- "prune S% then kmeans": sHAM's order: one-shot magnitude pruning of the full-precision
  model, then k-means weight sharing around a pinned zero, then the same fine-tuning.

One file per sparsity (``cifar10_jpeg_vgg_prune50.py``, ``..._prune75.py``,
``..._prune90.py``), each e.g.::

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_prune75.py \\
        --seeds 0 1 2 --pretrained-from experiments/pretrained/cifar_vgg_fp

CPU estimate (quiet 2-core Xeon, ``cifar10_jpeg_vgg_qat.py``'s step times): per seed
and sparsity, 2 stages x 1,404 steps ~ 9 min; 3 sparsities x 3 seeds ~ 1.4 h.
"""

import cifar10_jpeg_vgg_qat_damp

from qareg_jax.train import Config


def config_at(sparsity: float) -> Config:
    """The comparison at one target sparsity (a fraction in (0, 1))."""
    return cifar10_jpeg_vgg_qat_damp.get_config().replace(
        ks=(4,),
        finetune_lr=cifar10_jpeg_vgg_qat_damp.FINETUNE_LR,
        regularizers=("nearest",),
        qat=(),
        baselines=("kmeans",),
        pin_zero=True,
        prune_sparsity=sparsity,
        prune_ramp=0.5,
    )


def get_config() -> Config:
    return config_at(0.75)
