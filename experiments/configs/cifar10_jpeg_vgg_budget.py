"""The size-budget planner against uniform K (issue: what users of the other
compression tools ask for, item 4), on the CPU-scale QAT comparison's setting (same
full-precision models and phases as ``cifar10_jpeg_vgg_qat.py``): the recommended recipe
(``cifar10_jpeg_vgg_qat_damp.py``), STE and k-means PTQ at the K per layer that
``budget.plan_bits`` picks for a file size, beside the uniform-K rows of
``cifar10_jpeg_vgg_uniform.py`` (same FP models).

At the file size of uniform K = 2 (48,071 B) the only plan that fits is K = 2 on every
layer (no smaller K exists), so the comparison is made at the size of uniform K = 4
(84,936 B: ``cifar10_jpeg_vgg_budget_k4size.py``) and at the sizes of one codebook per
output channel at K = 2 and 4 (52,031 and 92,743 B: ``_budget_ch2size.py``,
``_budget_ch4size.py``, the per-tensor models of ``_channel.py``'s bytes)::

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_budget_k4size.py \\
        --seeds 0 1 2 --pretrained-from experiments/pretrained/cifar_vgg_fp

CPU estimate (quiet 2-core Xeon): per seed and budget 3 stages x 1,404 steps plus the
sensitivity table (16 k-means quantizations x 4 validation batches) ~ 15 min; 2 budgets
x 3 seeds ~ 1.5 h.
"""

import cifar10_jpeg_vgg_qat_damp

from qareg_jax.train import Config


def config_at(budget_bytes: int) -> Config:
    """Only the budget stages (``ks=()``), at ``budget_bytes`` for the whole packed file."""
    return cifar10_jpeg_vgg_qat_damp.get_config().replace(
        ks=(),
        budget=budget_bytes,
        qat=("ste",),
        baselines=("kmeans",),
        finetune_lr=cifar10_jpeg_vgg_qat_damp.FINETUNE_LR,
    )


def get_config() -> Config:
    return config_at(84_936)
