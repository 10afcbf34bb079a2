"""Per-channel codebooks against per-tensor ones (issue: what users of the other
compression tools ask for, item 4): the recommended recipe
(``cifar10_jpeg_vgg_qat_damp.py``) and k-means PTQ with one codebook per output channel
(``group_size=1``, tfmot's ``cluster_per_channel``), at K = 2 and 4, from the same
full-precision models as the per-tensor rows of ``cifar10_jpeg_vgg_uniform.py``. The
packed sizes count every codebook (channels x K float32 values per layer): 52,031 B at
K = 2 and 92,743 B at K = 4, against 48,071 and 84,936 B per tensor; the per-tensor
model of the same bytes is the planner's at those sizes (``_budget_ch2size.py``,
``_budget_ch4size.py``)::

    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg_channel.py \\
        --seeds 0 1 2 --pretrained-from experiments/pretrained/cifar_vgg_fp

(``cifar_vgg``'s last layer has 10 outputs, so the only group sizes that divide every
layer are 1 and 2: ``_group2.py``.) DKM has no grouped mode. CPU estimate (2-core AMD
EPYC, beside another run): ~ 35 min per seed (4 stages); 3 seeds ~ 1 h 45 min.
"""

import cifar10_jpeg_vgg_uniform

from qareg_jax.train import Config


def get_config() -> Config:
    return cifar10_jpeg_vgg_uniform.get_config().replace(qat=(), group_size=1)
