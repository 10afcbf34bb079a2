"""The recipe search of the QAT comparison (docs/recipe.md) on ``cifar10_jpeg_vgg.py``'s
setting, K = 2, seed 0, chosen on the 5,000 validation images. Every variant starts from
the same full-precision model and trains 3 epochs (1,053 steps) with Adam at 1e-3 (cosine
decay), then fine-tunes 1 epoch:

    python -m experiments.recipe_search experiments/configs/cifar10_jpeg_vgg_search.py \\
        --pretrained-from RUNDIR_OF_THE_FP_MODEL
"""

import cifar10_jpeg_vgg
import legacy_lambda

from qareg_jax.train import Config

# One lambda scale for every layer: sum over the layer's weights of (distance / level
# spacing)^2, grown geometrically to lam over the phase.
SCALE_FREE = dict(reduction="sum", penalty_normalize="spacing", lam_schedule="exp")


def _damped(lam: float, start: float | None = None) -> dict:
    """STE from the first step with the penalty beside it, lambda grown to ``lam`` (from
    ``start`` when given, else the schedule's default start)."""
    variant = dict(SCALE_FREE, lam=lam, ste_last=1.0, ste_keep_lam=True, finetune_lr=1e-5)
    if start is not None:
        variant["lam_exp_start"] = start
    return variant


def get_config() -> Config:
    return cifar10_jpeg_vgg.get_config().replace(
        ks=(2,),
        reg_epochs=3,
        reg_optimizer="adam",
        reg_lr=1e-3,
        regularizers=("nearest",),
        baselines=(),
        qat=(),
    )


def get_variants() -> dict[str, dict]:
    return {
        # The registry's lambda of that time (1e5, mean over the layer), ramped over the
        # first half.
        "old": legacy_lambda.LEGACY,
        "scale-free": dict(SCALE_FREE, lam=1.0),
        "scale-free-hybrid": dict(SCALE_FREE, lam=1.0, ste_last=0.3),
        "qat": dict(regularizers=(), qat=("ste", "dkm"), baselines=("kmeans",)),
        # Round 2 (after round 1: STE far ahead; the hybrid's STE part came when the cosine
        # schedule had left it little learning rate): a short penalty part, then STE.
        "scale-free-hybrid0.7": dict(SCALE_FREE, lam=1.0, ste_last=0.7),
        "scale-free-hybrid0.7-keep": dict(SCALE_FREE, lam=1.0, ste_last=0.7, ste_keep_lam=True),
        # Round 3 (the penalty as STE's oscillation damping, Nagel et al. 2022): STE from
        # the first step with the penalty beside it, grown geometrically over the whole
        # phase so that it is weak while STE learns and pins the weights at the end. The
        # levels are trained by STE, so they fine-tune at STE's rate.
        **{f"ste-damp{lam:g}": _damped(lam) for lam in (1.0, 0.1, 0.01)},
        # Lambda 1 pins the weights (distance 0.00) but from a third of the phase on; 0.1
        # leaves them off their levels: the same end, reached only in the last sixth.
        "ste-damp1-late": _damped(1.0, start=1e-6),
        # ste-damp1-late leaves the first conv 0.20 spacings off its levels: 10x the final
        # pull, reached about as late (lambda above 0.1 in the last 29 % of the phase, above
        # 1 in the last 14 %).
        "ste-damp10-late": _damped(10.0, start=1e-7),
    }
