"""Per-channel codebooks against per-tensor ones (issue: what users of the other
compression tools ask for, item 4), on the CPU-scale QAT comparison's setting (same
full-precision models and phases as ``cifar10_jpeg_vgg_qat.py``): the recommended recipe
(``cifar10_jpeg_vgg_qat_damp.py``), STE and k-means PTQ with one codebook per output
channel (``group_size=1``, tfmot's ``cluster_per_channel``), at K = 2 and 4. Its rows
sit beside the per-tensor rows of ``cifar10_jpeg_vgg_uniform.py`` (same FP models): the packed
sizes count every codebook (channels x K float32 values per layer). DKM has no grouped
mode.

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_channel.py \\
        --seeds 0 1 2 --pretrained-from experiments/pretrained/cifar_vgg_fp

(``cifar_vgg``'s last layer has 10 outputs, so the only group sizes that divide every
layer are 1 and 2.) CPU estimate (quiet 2-core Xeon): per seed 3 methods x 2 K x 1,404
steps ~ 30 min with the grouped penalty's overhead; 3 seeds ~ 1.5 h.
"""

import cifar10_jpeg_vgg_qat_damp

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_qat_damp.get_config().replace(
        ks=(2, 4),
        qat=("ste",),
        baselines=("kmeans",),
        finetune_lr=cifar10_jpeg_vgg_qat_damp.FINETUNE_LR,
        group_size=1,
    )
