"""One lambda scale for every regularizer (issue #14 item 11): each regularizer at K = 2
and 4 on the digits default, with the unit penalty (``penalty_normalize="unit"``: summed
over the layer's weights, in squared level spacings) and lambda grown geometrically to
its final value, over a grid of final lambdas; chosen on the validation split.

    python -m experiments.recipe_search experiments/configs/digits_lambda_scale.py
"""

import legacy_lambda

from qareg_jax.train import Config

UNIT = dict(reduction="sum", penalty_normalize="unit", lam_schedule="exp")
UNIT_RAMP = dict(UNIT, lam_schedule="ramp", lam_warmup=0.5)


def get_config() -> Config:
    return Config(
        model="small",
        dataset="digits",
        val_fraction=0.2,
        regularizers=("sine", "cosine", "nearest", "softmin", "product", "wells"),
        ks=(2, 4),
        baselines=(),
    )


def get_variants() -> dict[str, dict]:
    return {
        # The registry's lambdas before this search (mean over the layer, raw weight
        # units, ramped): the defaults when it ran.
        "registry": legacy_lambda.LEGACY,
        **{f"unit-lam{lam:g}": dict(UNIT, lam=lam) for lam in (0.01, 0.1, 1.0, 10.0)},
        # The same unit penalty, lambda ramped linearly over the first half, then held.
        **{f"unit-ramp-lam{lam:g}": dict(UNIT_RAMP, lam=lam) for lam in (0.1, 1.0, 10.0)},
    }
