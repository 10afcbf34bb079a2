"""The lambda scale of the configs whose results were committed before the unit penalty
became the default (issue #14 item 11): each layer's penalty the mean over its weights
in raw weight units, no normalisation, lambda ramped linearly over the first half of the
phase, with the registry's lambdas of that time. A config that pins these reproduces its
committed tables.
"""

LEGACY_LAM = {
    "sine": 300.0,
    "cosine": 100.0,
    "nearest": 1e5,
    "softmin": 1e5,
    "product": 1e4,
    "wells": 300.0,
}
LEGACY = dict(reduction="mean", penalty_normalize=None, lam_schedule="ramp", lam=LEGACY_LAM)
