"""The paper table for VGG16-BN on CIFAR-10 (JPEG-75 copy), sized for one H200 GPU in
under 10 minutes including compilation: ``python -m experiments.paper_table --model vgg16``.

The same methods, recipe and fine-tuning rates as ``paper_alexnet.py`` (36 trained
stages: 10 regularized + STE + DKM per K; 13 post-training ones; all 49 fine-tuned and
packed) from ``vgg16_cifar10.py`` with the data and the phases cut to fit:

- data: a fixed 10,000-image training subset (seed 0) of the JPEG-75 copy with random
  crop + flip, the 10,000 test images for reporting; decoded on the machine from
  ``../shared/data/cifar10-jpeg75.tar.gz`` (``data_paths``; no tensorflow-datasets);
- pretraining: 20 epochs, SGD-Nesterov lr 0.05 cosine, weight decay 5e-4 (the CIFAR
  recipe of ``cifar10_jpeg_vgg.py``); the regularized / QAT phases Adam (the base's
  reasoning: a strong lambda cannot throw the weights off);
- the table's phases: the base's 20 regularized and 10 fine-tuning epochs divided by
  ``SHORTEN``: 2 and 1 epochs (158 and 79 steps at batch 128).

Device-time estimate (not measured: no GPU has been available). VGG16-BN on 32x32
inputs does 0.31 G multiply-adds (0.63 GFLOP) per image forward, ~1.9 GFLOP per training
image. Assuming a pessimistic 10,000 training images/s (~19 TFLOP/s, under 5 % of the
H200's dense TF32 peak, for JAX's default-precision f32 convolutions at batch 128 with
per-step dispatch) and 40,000 images/s for evaluation:

- training: 20 x 10k (pretraining) + 36 x 2 x 10k x 1.2 (regularized / QAT steps cost
  up to ~1.2x plain) + 49 x 10k (fine-tuning) = 1.55M image-steps ~ 155 s;
- evaluation: 135 passes over the 10k test images ~ 35 s;
- compilation: 41 distinct train steps (pretraining, 30 regularized, 6 QAT, 3
  fine-tuning, one per K) at ~4 s each after a ~15 s first one, plus ~1 s of small jits
  per stage ~ 215 s (the largest and least certain term);
- host work: start-up and decoding the 60k JPEGs ~35 s, 86 orbax checkpoints of ~180 MB
  ~35 s, packing ~10 s, 36 histogram figures ~45 s.

Total ~ 530 s ~ 9 min. The pipeline prints its own estimate after the first timed steps;
if a first run overshoots, lower the pretraining epochs before the table's phases.
"""

import data_paths
import paper_alexnet
import vgg16_cifar10

from qareg_jax.train import Config

# Every table phase is the base config's divided by this factor (issue 13: shorten every
# phase by one factor rather than drop methods): regularized 20 -> 2, fine-tuning 10 -> 1.
SHORTEN = 10
# Training images: 10k of the 50k keep the whole table within the GPU budget.
TRAIN_SUBSET = 10_000


def get_config() -> Config:
    base = vgg16_cifar10.get_config()
    return base.replace(
        dataset=data_paths.cifar10_jpeg(),
        dataset_label="CIFAR-10 (JPEG-75 copy; 10k train subset / 10k test)",
        train_subset=TRAIN_SUBSET,
        optimizer="sgd",
        weight_decay=5e-4,
        pretrain_epochs=20,
        pretrain_lr=0.05,
        regularizers=paper_alexnet.REGULARIZERS,
        ks=(2, 4, 8),
        freeze_reps=(False, True),
        qat=paper_alexnet.QAT,
        baselines=paper_alexnet.BASELINES,
        reg_optimizer="adam",
        reg_epochs=base.reg_epochs // SHORTEN,
        finetune_epochs=base.finetune_epochs // SHORTEN,
        # The regularizers with the recipe and the fine-tuning rates of paper_alexnet.py.
        finetune_lr=paper_alexnet.finetune_rates(),
        **paper_alexnet.RECIPE,
        log_every=20,
        checkpoint_every=10_000,
    )
