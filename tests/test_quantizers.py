"""Post-training quantizers: invariants, comparisons with scikit-learn, error paths.

The quantizers are one-off host (numpy) steps, not jit-able; jax inputs are tested.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qareg_jax import quantizers as q
from qareg_jax.paths import named_leaves
from qareg_jax.quantizers import assignment


def _data(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return (rng.normal(0.0, 0.05, n)).astype(np.float32)
    if kind == "student_t":  # heavy tails: outliers make 1-D k-means local minima
        return (rng.standard_t(2, n) * 0.02).astype(np.float32)
    if kind == "mixture":
        parts = [rng.normal(-1, 0.1, n // 3), rng.normal(0.5, 0.3, n // 3), rng.normal(3, 0.05, n)]
        return np.concatenate(parts)[:n].astype(np.float32)
    if kind == "ties":  # few distinct values, many repeats
        return np.round(rng.normal(0.0, 1.0, n), 1)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, n)
    raise ValueError(kind)


def _check_output(w: np.ndarray, k: int, codebook: np.ndarray, assignments: np.ndarray) -> None:
    assert codebook.shape == (k,) and codebook.dtype == np.float32
    assert np.all(np.diff(codebook) >= 0)
    assert assignments.shape == np.shape(w)
    assert assignments.dtype == q.index_dtype(k)
    assert int(assignments.max()) < k
    assert np.unique(codebook[assignments]).size <= k


# --------------------------------------------------------------------------- common


@pytest.mark.parametrize(
    ("k", "dtype"),
    [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)],
)
def test_index_dtype(k, dtype):
    assert q.index_dtype(k) == dtype
    assert q.index_dtype(2**32) == np.uint32


@pytest.mark.parametrize("method", ["kmeans", "cws", "uniform", "uq", "pws", "ecsq"])
@pytest.mark.parametrize("k", [2, 3, 16, 300])
def test_outputs_are_valid(method, k):
    w = _data("student_t", 3000).reshape(30, 10, 10)
    kw = {"seed": 1} if method == "pws" else {}
    codebook, assignments = q.QUANTIZERS[method](w, k, **kw)
    _check_output(w, k, codebook, assignments)


@pytest.mark.parametrize("method", ["kmeans", "uniform", "pws", "ecsq", "binary"])
def test_accepts_jax_arrays_and_half_precision(method):
    w = jnp.asarray(_data("normal", 500).reshape(5, 100), jnp.bfloat16)
    kw = {"seed": 0} if method == "pws" else {}
    codebook, assignments = q.QUANTIZERS[method](w, 2, **kw)
    _check_output(np.asarray(w), 2, codebook, assignments)


@pytest.mark.parametrize("method", ["kmeans", "uniform", "pws", "ecsq"])
def test_fewer_distinct_values_than_k_is_exact_and_padded(method):
    w = np.array([[0.5, -1.0], [0.5, 2.0]], np.float32)
    kw = {"seed": 0} if method == "pws" else {}
    codebook, assignments = q.QUANTIZERS[method](w, 5, **kw)
    _check_output(w, 5, codebook, assignments)
    if method != "pws":  # pws rounds at random between quantiles
        np.testing.assert_array_equal(codebook[assignments], w)
        np.testing.assert_array_equal(codebook, [-1.0, 0.5, 2.0, 2.0, 2.0])
        assert int(assignments.max()) <= 2  # the padding is never referenced


@settings(max_examples=40, deadline=None)
@given(
    w=hnp.arrays(
        np.float32,
        st.integers(1, 200),
        elements=st.floats(-(2.0**100), 2.0**100, width=32, allow_subnormal=True),
    ),
    k=st.integers(2, 20),
    method=st.sampled_from(["kmeans", "uniform", "pws", "ecsq"]),
)
def test_property_at_most_k_levels(w, k, method):
    kw = {"seed": 0} if method == "pws" else {}
    codebook, assignments = q.QUANTIZERS[method](w, k, **kw)
    _check_output(w, k, codebook, assignments)
    assert np.all(np.isfinite(codebook))


@pytest.mark.parametrize("method", ["kmeans", "ecsq"])
def test_values_tiny_next_to_a_huge_median_stay_distinct(method):
    # Centring on the median (-4.85e16) would merge the small values: found by hypothesis.
    small = [1.6e-11, -9.2e-10, -4.1e-9, -1e-5, -0.5, 0.0, 9.3e29, -1.27e30]
    w = np.array([-4.85e16] * 20 + small, np.float32)
    codebook, assignments = q.QUANTIZERS[method](w, 8)
    _check_output(w, 8, codebook, assignments)


def test_assign_nearest_matches_brute_force_and_ties_go_down():
    rng = np.random.default_rng(3)
    codebook = np.sort(rng.normal(size=7)).astype(np.float32)
    w = rng.normal(size=5000).astype(np.float32)
    got = q.assign_nearest(w, codebook)
    dist = np.abs(w[:, None].astype(np.float64) - codebook[None, :].astype(np.float64))
    best = dist[np.arange(w.size), got]
    np.testing.assert_array_equal(best, dist.min(axis=1))
    # Float32 neighbours of a float64 midpoint: nearest decided exactly.
    cb = np.array([1.0 + 2**-23, 2.0], np.float32)
    mid = 0.5 * (float(cb[0]) + float(cb[1]))  # 1.5 + 2**-24: not a float32
    below, above = np.float32(1.5), np.nextafter(np.float32(1.5), np.float32(2))
    assert float(below) < mid < float(above)
    np.testing.assert_array_equal(q.assign_nearest(np.array([below, above]), cb), [0, 1])
    np.testing.assert_array_equal(q.assign_nearest(np.array([1.0]), [0.0, 2.0]), [0])
    np.testing.assert_array_equal(q.assign_nearest(np.array([2.0, 3.0]), [0.0, 2.0, 2.0]), [1, 1])


def test_assign_nearest_chunked_threads_agree_with_plain_searchsorted():
    w = _data("normal", 2_500_000)  # > 2 chunks: exercises the thread pool
    codebook = np.linspace(-0.1, 0.1, 16).astype(np.float32)
    mids = 0.5 * (codebook[:-1].astype(np.float64) + codebook[1:])
    expected = np.searchsorted(mids, w.astype(np.float64), side="left")
    np.testing.assert_array_equal(q.assign_nearest(w, codebook), expected)


@pytest.mark.parametrize("k", [2, 3, 16, 33, 64, 65, 256, 1000])
def test_assign_nearest_every_path_exact_on_ties_float_neighbours_and_subnormals(k, monkeypatch):
    """The sum of comparisons (k <= 64) and the jitted XLA search (float32, k > 64,
    n * log2 k >= _FAST_WORK) equal a float64 searchsorted on the midpoints (ties
    lower), including weights on and next to midpoints, subnormal weights and
    midpoints (XLA flushes them), zeros and a padded tail."""
    monkeypatch.setattr(assignment, "_FAST_WORK", 0)  # the XLA path at any size
    rng = np.random.default_rng(k)
    codebook = np.sort(rng.normal(size=k) * 0.05).astype(np.float32)
    mids = 0.5 * (codebook[:-1].astype(np.float64) + codebook[1:])
    near = np.float32(mids[rng.integers(0, k - 1, 30_000)])
    n = 3 * assignment._CHUNK + 12_345
    w = (rng.normal(size=n) * 0.06).astype(np.float32)
    w[:30_000] = near
    w[30_000:60_000] = np.nextafter(near, np.float32(np.inf))
    w[60_000:90_000] = np.nextafter(near, np.float32(-np.inf))
    w[90_000:90_100] = 0.0
    w[-5:] = near[:5]
    rng.shuffle(w)
    w[assignment._CHUNK + 7] = np.float32(1e-40)  # one chunk with a subnormal weight
    expected = np.searchsorted(mids, w.astype(np.float64), side="left")
    np.testing.assert_array_equal(q.assign_nearest(w, codebook), expected)
    # Subnormal midpoints: levels straddling zero within the subnormal range.
    tiny = np.array([-3e-45, 1e-45, 5e-45, 1.0], np.float32)
    w2 = np.tile(np.array([0.0, 1e-45, 2.8e-45, -1e-45, 3e-45, 0.5], np.float32), 20_000)
    mids2 = 0.5 * (tiny[:-1].astype(np.float64) + tiny[1:])
    np.testing.assert_array_equal(
        q.assign_nearest(w2, tiny), np.searchsorted(mids2, w2.astype(np.float64), side="left")
    )


@pytest.mark.parametrize("k", [3, 5, 64, 100])
@pytest.mark.parametrize("fast_work", [0, 1 << 26])
def test_assign_nearest_ties_agree_with_snap_assign(k, fast_work, monkeypatch):
    """Exact midpoints (float32) go to the lower level in both, on every path."""
    from qareg_jax.snap import assign

    monkeypatch.setattr(assignment, "_FAST_WORK", fast_work)
    w = np.array([0.5, 2.0, -0.5, 0.0, 1.0, 3.0, 1.5, 2.5], np.float32)
    ours = q.assign_nearest(w, np.array([0.0, 1.0, 3.0], np.float32))
    np.testing.assert_array_equal(ours, [0, 1, 0, 0, 1, 2, 1, 2])
    np.testing.assert_array_equal(ours, assign(jnp.asarray(w), jnp.asarray([0.0, 1.0, 3.0])))
    # Levels on a 2**-10 grid: every midpoint is a float32; weights on, next to and
    # between them, in chunks past the thread and XLA thresholds.
    rng = np.random.default_rng(k)
    levels = np.unique(rng.integers(-2000, 2000, 4 * k))[:k].astype(np.float32) / 1024
    mids = 0.5 * (levels[:-1] + levels[1:])
    near = mids[rng.integers(0, k - 1, 100_000)]
    w = np.concatenate([near, np.nextafter(near, np.inf), np.nextafter(near, -np.inf)])
    w = np.concatenate([w, rng.uniform(-2.5, 2.5, 2_000_000).astype(np.float32)])
    ours = q.assign_nearest(w, levels)
    np.testing.assert_array_equal(ours[:100_000], np.searchsorted(levels, near) - 1)
    np.testing.assert_array_equal(ours, assign(jnp.asarray(w), jnp.asarray(levels)))


# --------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("kind", ["normal", "student_t", "mixture", "ties", "lognormal"])
@pytest.mark.parametrize("k", [2, 5, 16, 48])
def test_kmeans_inertia_not_worse_than_sklearn(kind, k):
    from sklearn.cluster import KMeans  # test-only dependency

    w = _data(kind, 4000, seed=k)
    ours = q.kmeans_1d(w, k)
    x = w.astype(np.float64).reshape(-1, 1)
    for seed in (0, 1):
        km = KMeans(n_clusters=k, random_state=seed).fit(x)  # n_init="auto": 1 run
        theirs = q.inertia(w, km.cluster_centers_.ravel(), km.labels_)
        assert ours.inertia <= theirs * (1 + 1e-3)


def test_kmeans_is_a_lloyd_fixed_point_with_nearest_assignments():
    w = _data("mixture", 20000).reshape(100, 200)
    res = q.kmeans_1d(w, 8)
    _check_output(w, 8, res.codebook, res.assignments)
    assert res.inertia == pytest.approx(q.inertia(w, res.codebook, res.assignments), rel=1e-12)
    flat, a = w.ravel().astype(np.float64), res.assignments.ravel().astype(np.int64)
    means = np.bincount(a, flat, 8) / np.bincount(a, minlength=8)
    np.testing.assert_allclose(res.codebook, means, rtol=1e-5, atol=1e-6)
    cb = res.codebook.astype(np.float64)
    own = np.abs(flat - cb[a])
    assert np.all(own <= np.abs(flat - cb[np.maximum(a - 1, 0)]))
    assert np.all(own <= np.abs(flat - cb[np.minimum(a + 1, 7)]))


@pytest.mark.parametrize("init", ["dp", "quantile", "uniform", "kmeans++"])
def test_kmeans_each_init_and_explicit_init(init):
    w = _data("student_t", 5000)
    best = q.kmeans_1d(w, 6)
    one = q.kmeans_1d(w, 6, init=init)
    _check_output(w, 6, one.codebook, one.assignments)
    assert best.inertia <= one.inertia * (1 + 1e-12)
    again = q.kmeans_1d(w, 6, init=one.codebook)  # a fixed point stays put
    np.testing.assert_allclose(again.codebook, one.codebook, rtol=1e-6)


def test_kmeans_deterministic_and_large_k():
    w = _data("normal", 30000)
    a, b = q.kmeans_1d(w, 16), q.kmeans_1d(w, 16)
    np.testing.assert_array_equal(a.codebook, b.codebook)
    big = q.kmeans_1d(w, 2000)  # above the costly-init limit; empty clusters repaired
    _check_output(w, 2000, big.codebook, big.assignments)
    assert np.unique(big.codebook).size == 2000


def test_kmeans_weighted_equals_kmeans_on_repeated_values():
    rng = np.random.default_rng(7)
    values = rng.normal(size=300)
    counts = rng.integers(1, 10, 300)
    weighted = q.kmeans_1d_weighted(values, counts.astype(np.float64), 7)
    plain = q.kmeans_1d(np.repeat(values, counts), 7)
    assert weighted.inertia == pytest.approx(plain.inertia, rel=1e-9)
    np.testing.assert_allclose(weighted.codebook, plain.codebook, rtol=1e-6)
    zero = q.kmeans_1d_weighted(values, np.where(np.arange(300) < 150, 0.0, 1.0), 3)
    _check_output(values, 3, zero.codebook, zero.assignments)


# --------------------------------------------------------------------------- UQ


@pytest.mark.parametrize("k", [3, 4, 16, 64])
def test_uq_levels_evenly_spaced_and_delta_minimal(k):
    w = np.random.default_rng(k).uniform(-0.2, 0.3, 20000).astype(np.float32)  # dense
    codebook, assignments = q.uq(w, k)
    used = codebook[np.unique(assignments)].astype(np.float64)
    steps = np.diff(used)
    delta = steps.min()
    np.testing.assert_allclose(steps, delta, rtol=1e-5)  # consecutive grid levels
    np.testing.assert_allclose(used / delta, np.round(used / delta), atol=1e-3)  # 0 on grid
    assert used.size <= k
    assert np.all(np.abs(w - codebook[assignments]) <= 0.5 * delta * (1 + 1e-4))
    assert np.unique(np.round(w / (0.9 * delta))).size > k  # a smaller step needs > k


def test_uq_heavy_tails_stay_on_the_grid():
    w = _data("student_t", 20000)
    codebook, assignments = q.uq(w, 32)
    used = codebook[np.unique(assignments)].astype(np.float64)
    ratio = (used - used[0]) / np.diff(used).min()
    np.testing.assert_allclose(ratio, np.round(ratio), atol=1e-3)


# --------------------------------------------------------------------------- PWS


def test_pws_levels_are_quantiles_and_rounding_is_unbiased():
    w = _data("normal", 40)
    k, draws = 4, 3000
    levels = np.quantile(w.astype(np.float64), np.linspace(0, 1, k)).astype(np.float32)
    total = np.zeros(w.size)
    for seed in range(draws):
        codebook, assignments = q.pws(w, k, seed=seed)
        total += codebook[assignments]
    np.testing.assert_array_equal(codebook, levels)
    spacing = float(np.diff(levels).max())
    assert np.max(np.abs(total / draws - w)) < 5 * 0.5 * spacing / np.sqrt(draws)


def test_pws_seeded_and_stays_between_neighbouring_levels():
    w = _data("student_t", 5000)
    c1, a1 = q.pws(w, 8, seed=3)
    c2, a2 = q.pws(w, 8, seed=3)
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, q.pws(w, 8, seed=4)[1])
    low = np.searchsorted(c1, w, side="right") - 1
    assert np.all((a1 == np.clip(low, 0, 6)) | (a1 == np.clip(low, 0, 6) + 1))


# --------------------------------------------------------------------------- ECSQ


def _entropy(assignments: np.ndarray, k: int) -> float:
    p = np.bincount(assignments.ravel(), minlength=k) / assignments.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_ecsq_mu_zero_is_kmeans_quality():
    w = _data("mixture", 10000)
    km = q.kmeans_1d(w, 8)
    codebook, assignments = q.ecsq(w, 8, mu=0.0)
    assert q.inertia(w, codebook, assignments) <= km.inertia * (1 + 1e-6)


@pytest.mark.parametrize("mu", [None, 1e-4, 1e-2])
def test_ecsq_lowers_distortion_plus_entropy(mu):
    w = _data("normal", 10000)
    k = 8
    km = q.kmeans_1d(w, k)
    lam = km.inertia / w.size if mu is None else mu
    codebook, assignments = q.ecsq(w, k, mu=mu)
    _check_output(w, k, codebook, assignments)

    def cost(cb, a):
        return q.inertia(w, cb, a) / w.size + lam * _entropy(a, k)

    assert cost(codebook, assignments) <= cost(km.codebook, km.assignments) * (1 + 1e-9)
    assert _entropy(assignments, k) <= _entropy(km.assignments, k) + 1e-9


def test_ecsq_large_mu_drops_levels_but_keeps_them_in_the_codebook():
    w = _data("normal", 10000)
    codebook, assignments = q.ecsq(w, 16, mu=1e-2)
    _check_output(w, 16, codebook, assignments)
    assert np.unique(assignments).size < 16
    assert np.unique(codebook).size == 16


# --------------------------------------------------------------------------- binary


def test_binary_least_squares():
    w = np.array([[-0.3, 0.0], [0.1, 0.6]], np.float32)
    codebook, assignments = q.binary_ls(w)
    alpha = np.float32(np.mean(np.abs(w.astype(np.float64))))
    np.testing.assert_array_equal(codebook, [-alpha, alpha])
    np.testing.assert_array_equal(assignments, [[0, 1], [1, 1]])
    assert assignments.dtype == np.uint8


# --------------------------------------------------------------------------- trees


def _tree():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "Conv_0": {
                "kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                "bias": jnp.zeros(4),
            },
            "Dense_0": {"kernel": rng.normal(size=(8, 3)).astype(np.float32), "bias": np.ones(3)},
        }
    }


@pytest.mark.parametrize("method", sorted(q.QUANTIZERS))
def test_quantize_tree(method):
    params = _tree()
    paths = ["params/Conv_0/kernel", "params/Dense_0/kernel"]
    k = 2 if method == "binary" else {"params/Conv_0/kernel": 4, "params/Dense_0/kernel": 3}
    kw = {"seed": 0} if method == "pws" else {}
    new, out = q.quantize_tree(params, paths, k, method, **kw)
    leaves, old = named_leaves(new), named_leaves(params)
    assert list(out) == paths
    for path in paths:
        codebook, assignments = out[path]
        assert type(leaves[path]) is type(old[path]) and leaves[path].dtype == old[path].dtype
        np.testing.assert_array_equal(np.asarray(leaves[path]), codebook[assignments])
    for path in ("params/Conv_0/bias", "params/Dense_0/bias"):
        assert leaves[path] is old[path]


def test_quantize_tree_pws_layer_seeds_differ_and_are_reproducible():
    w = _data("normal", 400).reshape(20, 20)
    params = {"a": w, "b": w.copy()}
    _, out1 = q.quantize_tree(params, ["a", "b"], 4, "pws", seed=5)
    _, out2 = q.quantize_tree(params, ["b", "a"], 4, "pws", seed=5)
    assert not np.array_equal(out1["a"][1], out1["b"][1])
    np.testing.assert_array_equal(out1["a"][1], out2["a"][1])


def test_quantize_tree_validates_everything_before_any_work():
    calls = []

    def spy(w, k):
        calls.append(k)
        return q.uq(w, k)

    params = {"a": np.ones(4, np.float32), "b": np.array([1.0, np.nan], np.float32)}
    with pytest.raises(ValueError, match="NaN"):
        q.quantize_tree(params, ["a", "b"], 4, spy)
    with pytest.raises(ValueError, match="k has no entry"):
        q.quantize_tree(params, ["a", "b"], {"a": 4}, spy)
    with pytest.raises(ValueError, match="not in the tree"):
        q.quantize_tree(params, ["a", "c"], 4, spy)
    with pytest.raises(ValueError, match="duplicates"):
        q.quantize_tree(params, ["a", "a"], 4, spy)
    with pytest.raises(TypeError, match="list of path"):
        q.quantize_tree(params, "a", 4, spy)
    with pytest.raises(ValueError, match="pws needs an explicit seed"):
        q.quantize_tree(params, ["a"], 4, "pws")
    with pytest.raises(ValueError, match=r"unknown method 'lloyd'.*'binary'"):
        q.quantize_tree(params, ["a"], 4, "lloyd")
    assert calls == []


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method", sorted(q.QUANTIZERS))
def test_error_paths(method):
    fn = q.QUANTIZERS[method]
    kw = {"seed": 0} if method == "pws" else {}
    good = np.linspace(-1, 1, 10, dtype=np.float32)
    k = 2
    with pytest.raises(ValueError, match="w contains NaN or inf"):
        fn(np.array([0.0, np.nan], np.float32), k, **kw)
    with pytest.raises(ValueError, match="w contains NaN or inf"):
        fn(np.array([0.0, np.inf]), k, **kw)
    with pytest.raises(ValueError, match="w is empty"):
        fn(np.zeros(0, np.float32), k, **kw)
    with pytest.raises(TypeError, match="w must be a float array"):
        fn(np.arange(10), k, **kw)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        fn(good, 1, **kw)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        fn(good, 2**32 + 1, **kw)
    for bad_k in (2.0, True, "2"):
        with pytest.raises(TypeError, match="k must be an int"):
            fn(good, bad_k, **kw)


def test_error_paths_of_options():
    w = _data("normal", 100)
    with pytest.raises(ValueError, match="pws needs an explicit seed"):
        q.pws(w, 4)
    with pytest.raises(ValueError, match="pws needs an explicit seed"):
        q.pws(w, 4, seed=None)
    with pytest.raises(TypeError, match="seed must be an int"):
        q.pws(w, 4, seed=1.5)
    with pytest.raises(ValueError, match="unknown init"):
        q.kmeans_1d(w, 4, init="random")
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        q.kmeans_1d(w, 4, init=[0.0, 1.0])
    with pytest.raises(ValueError, match="max_iter"):
        q.kmeans_1d(w, 4, max_iter=0)
    with pytest.raises(TypeError, match="max_iter"):
        q.kmeans_1d(w, 4, max_iter=10.0)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        q.kmeans_1d(w, 4, tol=-1.0)
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        q.ecsq(w, 4, mu=-1.0)
    with pytest.raises(ValueError, match="exactly 2 levels"):
        q.binary_ls(w, 3)
    with pytest.raises(ValueError, match="weights shape"):
        q.kmeans_1d_weighted(w, np.ones(3), 4)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        q.kmeans_1d_weighted(w, -np.ones(100), 4)
    with pytest.raises(ValueError, match="sorted ascending"):
        q.assign_nearest(w, [1.0, 0.0])


def test_quantize_tree_refuses_k_larger_than_a_leaf_and_names_non_finite_leaves():
    rng = np.random.default_rng(0)
    params = {"big": rng.normal(size=100).astype(np.float32), "small": np.ones((6, 6), np.float32)}
    with pytest.raises(ValueError, match=r"k=64 levels for leaf 'small'.*only 36 weights"):
        q.quantize_tree(params, ["big", "small"], 64)
    with pytest.raises(ValueError, match=r"k=37 levels for leaf 'small'"):
        q.quantize_tree(params, ["big", "small"], {"big": 4, "small": 37})
    params["big"][3] = np.nan
    with pytest.raises(ValueError, match=r"leaf 'big' contains NaN or inf"):
        q.quantize_tree(params, ["big"], 4)


# ------------------------------------------- uq(symmetric=True): the signed max-abs grid
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
