"""quantizers.uq(symmetric=True): the signed-integer max-abs grid (default uq unchanged)."""

import jax.numpy as jnp
import numpy as np
import pytest

from qareg_jax import quantizers as q


@pytest.mark.parametrize("k", [3, 4, 5, 16, 256])
def test_symmetric_grid_by_hand(k):
    rng = np.random.default_rng(k)
    w = rng.standard_t(3, size=(40, 30)).astype(np.float32)
    codebook, assignments = q.uq(w, k, symmetric=True)
    n = (k - 1) // 2
    delta = np.abs(w.astype(np.float64)).max() / n
    assert codebook.shape == (k,) and codebook.dtype == np.float32
    assert assignments.shape == w.shape and assignments.dtype == q.index_dtype(k)
    np.testing.assert_allclose(codebook[: 2 * n + 1], delta * np.arange(-n, n + 1), rtol=1e-6)
    assert np.all(codebook[2 * n + 1 :] == codebook[2 * n])  # padding repeats the top level
    assert codebook[n] == 0.0 and not np.signbit(codebook[n])
    codes = assignments.astype(np.int64) - n  # the signed integer code
    np.testing.assert_array_equal(codes, np.round(w.astype(np.float64) / delta))
    assert np.abs(codes).max() == n and assignments.max() <= 2 * n
    err = np.abs(codebook[assignments].astype(np.float64) - w)
    assert err.max() <= delta / 2 * (1 + 1e-6)  # the l_inf bound of the gradient-l1 paper


def test_symmetric_differs_from_default_and_default_is_unchanged():
    # A skewed layer: the default grid adapts to [min, max] and the sparse tail, the
    # symmetric one spends half its levels on the empty negative side.
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.normal(0.5, 0.1, 500), [-0.05, 2.0]]).astype(np.float32)
    cb_s, a_s = q.uq(w, 16, symmetric=True)
    cb_d, a_d = q.uq(w, 16)
    np.testing.assert_array_equal(cb_d, q.uq(w, 16, symmetric=False)[0])
    np.testing.assert_array_equal(a_d, q.uq(w, 16, symmetric=False)[1])
    err_s = np.mean((cb_s[a_s] - w) ** 2)
    err_d = np.mean((cb_d[a_d] - w) ** 2)
    assert err_d < err_s
    assert np.isclose(cb_s[0], -2.0, rtol=1e-6) and np.isclose(cb_s[14], 2.0, rtol=1e-6)


def test_symmetric_exact_few_values_errors_and_quantize_tree():
    w = np.array([0.0, 0.25, -1.0, 0.25], np.float32)  # 3 distinct values <= k: exact
    cb, a = q.uq(w, 4, symmetric=True)
    np.testing.assert_array_equal(cb[a], w)
    zeros = np.zeros(7, np.float32)
    cb, a = q.uq(zeros, 3, symmetric=True)
    np.testing.assert_array_equal(cb[a], zeros)
    with pytest.raises(ValueError, match="symmetric uq needs k >= 3"):
        q.uq(np.linspace(-1, 1, 10, dtype=np.float32), 2, symmetric=True)
    with pytest.raises(ValueError, match="NaN"):
        q.uq(np.array([0.0, np.nan, 1.0, 2.0], np.float32), 3, symmetric=True)
    params = {"fc": {"kernel": jnp.linspace(-1.0, 3.0, 64).reshape(8, 8), "bias": jnp.ones(8)}}
    out, books = q.quantize_tree(params, ["fc/kernel"], 16, "uq", symmetric=True)
    cb, a = books["fc/kernel"]
    np.testing.assert_allclose(cb[:15], 3.0 / 7 * np.arange(-7, 8), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["fc"]["kernel"]), cb[a])
    np.testing.assert_array_equal(np.asarray(out["fc"]["bias"]), np.ones(8))
