"""Per-channel codebooks against per-tensor ones (issue: what users of the other
compression tools ask for, item 4), on the CPU-scale QAT comparison's setting
(``cifar10_jpeg_vgg_qat.py``: same full-precision models, phases and recipe): every
method with one codebook per output channel (``group_size=1``, tfmot's
``cluster_per_channel``), at K = 2 and 4. Its rows sit beside the per-tensor rows of
``cifar10_jpeg_vgg_qat`` on the accuracy-vs-bytes plot: the packed sizes count every
codebook (channels x K float32 values per layer). DKM has no grouped mode.

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_channel.py \\
        --seeds 0 1 2 --pretrained-from runs/cifar10_jpeg_vgg_fp runs/cifar10_jpeg_vgg_fp_s12

(``cifar_vgg``'s last layer has 10 outputs, so the only group sizes that divide every
layer are 1 and 2.) CPU estimate (quiet 2-core Xeon): per seed 3 methods x 2 K x 1,404
steps ~ 30 min with the grouped penalty's overhead; 3 seeds ~ 1.5 h.
"""

import cifar10_jpeg_vgg_qat

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_qat.get_config().replace(
        ks=(2, 4), qat=("ste",), baselines=("kmeans",), group_size=1
    )
