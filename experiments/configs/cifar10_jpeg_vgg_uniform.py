"""The reference rows of the per-channel and budget comparisons (issue: what users of the
other compression tools ask for, item 4): the recommended recipe
(``cifar10_jpeg_vgg_qat_damp.py``), STE and k-means PTQ with one codebook per tensor and
the same K on every layer, at K = 2 and 4, with the QAT comparison's fine-tuning rates.
Run it from the same full-precision models as ``_channel.py``, ``_group2.py`` and
``_budget_*.py`` (``--pretrained-from``), so that each comparison differs only in the
codebooks: the FP models are not bit-identical across processors (seed 0: 83.34 % on a
Xeon, 83.55 % on an AMD EPYC), so rows of other runs are not a fair reference::

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_uniform.py \\
        --seeds 0 1 2 --pretrained-from experiments/pretrained/cifar_vgg_fp

CPU estimate (2-core AMD EPYC, beside another run): 3 seeds 1 h 45 min (6 stages each).
"""

import cifar10_jpeg_vgg_qat_damp

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_qat_damp.get_config().replace(
        ks=(2, 4),
        qat=("ste",),
        baselines=("kmeans",),
        finetune_lr=cifar10_jpeg_vgg_qat_damp.FINETUNE_LR,
    )
