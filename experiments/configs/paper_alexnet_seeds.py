"""Seeds 1 and 2 of the AlexNet table's three-seed rows (issue 13): K = 2 and 4 of the best
regularizer, k-means (CWS), STE and DKM, each seed from its own full-precision model
(``alexnet_cifar10_jpeg_fp.py`` with that seed). The best regularizer is ``softmin``
beside STE at ``paper_alexnet.LAM``: the best on the validation split at K = 2, at the
recipe's lambda (66.92 % post-tuning against 65.24-65.44 for ``nearest`` and ``wells``)
and at the chosen one (``paper_alexnet_lambda.py``). Seed 0 of the same rows is the paper
table's; ``experiments/combine.py`` joins them::

    python -m experiments.run_table experiments/configs/alexnet_cifar10_jpeg_fp.py \\
        --seeds 1 2 --workdir RUN_FP12 --name alexnet_cifar10_jpeg_fp_seeds12
    python -m experiments.run_table experiments/configs/paper_alexnet_seeds.py \\
        --pretrained-from RUN_FP12

Every phase, rate and lambda is the paper table's (``paper_alexnet.py``), so each row
differs from its seed-0 row in the seed and its training examples only: the full-precision
config holds no validation split, so each seed trains on its own 45,000 of the 50,000
training images (``val_fraction = 0``), and these rows keep that seed's examples
(``--pretrained-from`` refuses a model trained on others). For seed 0 those examples are
the paper table's training split exactly, so its rows join these; the seed rows report
test accuracy only (no hyper-parameter is chosen on them).

CPU estimate (2-core EPYC, alone): 2 x ~2 h of pretraining, then per seed and K about
20 (softmin) + 20 (STE) + 60 (DKM) + 10 (k-means) min: ~11 h in all.
"""

import paper_alexnet

from qareg_jax.train import Config

METHODS = ("softmin",), ("ste", "dkm"), ("kmeans",)


def get_config() -> Config:
    regularizers, qat, baselines = METHODS
    return paper_alexnet.get_config().replace(
        regularizers=regularizers,
        freeze_reps=(False,),
        ks=(2, 4),
        seeds=(1, 2),
        # Each seed's own training examples, those of its full-precision model.
        val_fraction=0.0,
        qat=qat,
        baselines=baselines,
        finetune_lr=paper_alexnet.finetune_rates(regularizers, qat + baselines),
    )
