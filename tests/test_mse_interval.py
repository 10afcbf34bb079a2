"""``interval="mse"``: the static levels that snap a leaf's weights with the least error."""

import jax.numpy as jnp
import numpy as np
import pytest

import qareg_jax as q
from qareg_jax import codebook
from qareg_jax.regularizers import static_levels

# Max (1960), the mean-squared-error optimal uniform quantizer of a unit Gaussian: step.
MAX_STEP = {2: 1.596, 4: 0.9957, 8: 0.5860}


def _snap_error(w: np.ndarray, levels: np.ndarray) -> float:
    return float(np.min((w.ravel()[:, None] - levels[None]) ** 2, axis=1).mean())


@pytest.mark.parametrize("k", sorted(MAX_STEP))
def test_a_gaussian_gets_the_optimal_uniform_quantizer(k):
    x = np.random.default_rng(k).normal(1.0, 2.0, (1, 100_000))
    first, step = codebook.mse_grid(x, k)
    np.testing.assert_allclose(step[0], 2.0 * MAX_STEP[k], rtol=0.02)
    # symmetric about the mean
    np.testing.assert_allclose(first[0] + (k - 1) / 2 * step[0], 1.0, atol=0.03)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_sine_and_cosine_share_the_levels_and_they_beat_minmax_and_std(k):
    rng = np.random.default_rng(0)
    w = np.r_[rng.laplace(0, 0.02, 20_000), 0.5, -0.3].astype(np.float32).reshape(-1, 2)
    tree = {"kernel": jnp.asarray(w)}
    levels = {}
    for reg in ("sine", "cosine"):
        for interval in ("mse", "minmax", "std"):
            _, specs = q.attach(tree, q.make_specs(tree, k=k, regularizer=reg, interval=interval))
            s = specs["kernel"]
            levels[reg, interval] = static_levels(reg, k, s.lo, s.hi)
    np.testing.assert_allclose(
        levels["sine", "mse"], levels["cosine", "mse"], rtol=1e-9, atol=1e-12
    )
    best = _snap_error(w, levels["sine", "mse"])
    for reg in ("sine", "cosine"):
        for other in ("minmax", "std"):
            assert best < _snap_error(w, levels[reg, other]), (reg, other)
    # the outliers do not drag the levels out to them
    assert np.all(np.abs(levels["sine", "mse"]) < 0.2)


def test_the_fit_never_ends_worse_than_its_starts():
    rng = np.random.default_rng(3)
    rows = np.stack([rng.normal(0, 1, 5000), rng.exponential(1, 5000), rng.uniform(-1, 1, 5000)])
    for k in (2, 3, 4, 8):
        first, step = codebook.mse_grid(rows, k)
        for g, row in enumerate(rows):
            fit = _snap_error(row, first[g] + step[g] * np.arange(k))
            mm = np.linspace(row.min(), row.max(), k)
            assert fit <= _snap_error(row, mm) + 1e-12, (k, g)


def test_grouped_leaves_get_each_group_s_own_interval():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (64, 4)) * np.array([0.5, 1.0, 2.0, 4.0])
    tree = {"kernel": jnp.asarray(w, jnp.float32)}
    _, specs = q.attach(
        tree, q.make_specs(tree, k=4, regularizer="sine", interval="mse", group_size=1)
    )
    s = specs["kernel"]
    widths = np.asarray(s.hi) - np.asarray(s.lo)
    assert np.all(np.diff(widths) > 0)  # wider channels, wider grids
    for g in range(4):
        per_tensor = {"kernel": jnp.asarray(w[:, g : g + 1], jnp.float32)}
        _, one = q.attach(
            per_tensor, q.make_specs(per_tensor, k=4, regularizer="sine", interval="mse")
        )
        np.testing.assert_allclose(
            [s.lo[g], s.hi[g]], [one["kernel"].lo, one["kernel"].hi], rtol=1e-5
        )


def test_a_dynamic_grid_start_takes_the_levels_with_both_ends():
    rng = np.random.default_rng(2)
    tree = {"kernel": jnp.asarray(rng.normal(0, 1, (100, 50)), jnp.float32)}
    tp, specs = q.attach(
        tree, q.make_specs(tree, k=4, regularizer="nearest", interval="mse", init="grid")
    )
    first, step = codebook.mse_grid(np.asarray(tree["kernel"], np.float64).reshape(1, -1), 4)
    np.testing.assert_allclose(
        np.asarray(tp["reps"]["kernel"]), first[0] + step[0] * np.arange(4), rtol=1e-5
    )


def test_a_constant_leaf_is_refused_by_name():
    const = {"layer": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match="'mse' interval of leaf 'layer/kernel' is empty"):
        q.attach(const, {"layer/kernel": q.QuantSpec(regularizer="sine", interval="mse")})


def test_unknown_intervals_name_the_choices():
    with pytest.raises(ValueError, match="interval.*mse"):
        q.QuantSpec(interval="gauss")
