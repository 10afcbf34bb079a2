"""Element-wise penalties: minima, gradients, dtypes, jit, clustering, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qareg_jax import nearest_level as N
from qareg_jax import regularizers as R

INTERVALS = [(-1.0, 1.0), (-0.3, 0.05), (0.0, 2.5)]
KS = [2, 3, 4, 7, 16]


def _expected_minima(kind, k, lo, hi):
    # Independent of the library: the K evenly spread points the paper names.
    if kind == "sine":
        return [lo + j * (hi - lo) / (k - 1) for j in range(k)]
    return [lo + (j + 0.5) * (hi - lo) / k for j in range(k)]


def _zero_runs(values, xs, thresh=1e-3):
    """The arg-min of each contiguous run of near-zero values (the penalty's zeros)."""
    v = np.asarray(values, np.float64)
    low = np.concatenate([[False], v < thresh, [False]]).astype(int)
    starts, ends = np.flatnonzero(np.diff(low) == 1), np.flatnonzero(np.diff(low) == -1)
    return np.array([xs[a + np.argmin(v[a:b])] for a, b in zip(starts, ends, strict=True)])


@pytest.mark.parametrize("kind", ["sine", "cosine"])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("interval", INTERVALS)
def test_static_minima_match_independent_points(kind, k, interval):
    lo, hi = interval
    fn = jax.jit(getattr(R, kind), static_argnums=1)
    expected = np.array(_expected_minima(kind, k, lo, hi))
    np.testing.assert_allclose(R.static_levels(kind, k, lo, hi), expected, rtol=1e-12, atol=1e-12)
    at_min = fn(jnp.asarray(expected, jnp.float32), k, lo, hi)
    assert np.all(np.asarray(at_min) < 1e-6)
    mids = (expected[1:] + expected[:-1]) / 2
    assert np.all(np.asarray(fn(jnp.asarray(mids, jnp.float32), k, lo, hi)) > 0.1)
    # The zeros on a fine grid over a widened range are exactly the expected set.
    width = hi - lo
    xs = np.linspace(lo - 0.3 * width, hi + 0.3 * width, 40001)
    found = _zero_runs(fn(jnp.asarray(xs, jnp.float32), k, lo, hi), xs)
    step = xs[1] - xs[0]
    assert len(found) == k, (found, expected)
    np.testing.assert_allclose(found, expected, atol=2 * step)


@pytest.mark.parametrize("kind", ["sine", "cosine"])
@pytest.mark.parametrize("k", [2, 4, 9])
def test_static_gradient_vanishes_at_minima_and_points_to_nearest(kind, k):
    lo, hi = -0.7, 0.4
    fn = getattr(R, kind)
    grad = jax.jit(jax.vmap(jax.grad(lambda x: fn(x, k, lo, hi))))
    mins = np.array(_expected_minima(kind, k, lo, hi))
    np.testing.assert_allclose(grad(jnp.asarray(mins, jnp.float32)), 0.0, atol=1e-3)
    xs = np.random.default_rng(0).uniform(lo - 0.5, hi + 0.5, 2000)
    nearest_min = mins[np.argmin(np.abs(xs[:, None] - mins[None, :]), axis=1)]
    g = np.asarray(grad(jnp.asarray(xs, jnp.float32)))
    # Descent direction -g points to the nearest minimum, except close to the maxima
    # (half-way between minima, and for cosine the interval ends) where it is flat.
    spacing = mins[1] - mins[0] if k > 1 else hi - lo
    dist = np.abs(xs - nearest_min)
    clear = (dist > 1e-3 * spacing) & (dist < 0.45 * spacing)
    if kind == "cosine":
        clear |= (xs < lo) | (xs > hi)
        clear &= np.abs(xs - lo) > 1e-3 * spacing
        clear &= np.abs(xs - hi) > 1e-3 * spacing
    assert clear.sum() > 500
    assert np.all(np.sign(-g[clear]) == np.sign(nearest_min[clear] - xs[clear]))


def test_static_wall_is_continuous_and_grows():
    for kind, k in [("sine", 3), ("cosine", 4)]:
        fn = getattr(R, kind)
        eps = 1e-4
        for edge in (-1.0, 1.0):
            inside = float(fn(jnp.float32(edge - np.sign(edge) * eps), k, -1.0, 1.0))
            outside = float(fn(jnp.float32(edge + np.sign(edge) * eps), k, -1.0, 1.0))
            assert abs(inside - outside) < 1e-3
        far = np.asarray(fn(jnp.array([-3.0, -2.0, 2.0, 3.0]), k, -1.0, 1.0))
        assert far[0] > far[1] and far[3] > far[2] and far.min() > 1.0


DYNAMIC = {
    "nearest": lambda w, c: R.nearest(w, c),
    "softmin": lambda w, c: R.softmin(w, c, 1e-4),
    "product": lambda w, c: R.product(w, c),
    "wells_max": lambda w, c: R.wells(w, c, 0.05),
    "wells_mean": lambda w, c: R.wells(w, c, 0.05, "mean"),
}


@pytest.mark.parametrize("name", list(DYNAMIC))
def test_dynamic_zero_at_reps_positive_between(name):
    fn = jax.jit(DYNAMIC[name])
    c = jnp.array([0.3, -0.5, 0.0, 0.9], jnp.float32)  # unsorted on purpose
    at = np.asarray(fn(c, c))
    between = np.asarray(fn(jnp.array([-0.25, 0.15, 0.6]), c))
    if name == "softmin":
        # 0 on a level up to the far wells' overlap (no tau log K floor), never above.
        assert np.all(np.abs(at) <= 1e-6 * 1e-4) and np.all(at <= 0), at
        assert np.all(between > 1e-3)
    elif name == "wells_mean":
        # 1 - mean of the wells: every other well is far, so 1 - 1/K at a rep.
        np.testing.assert_allclose(at, 0.75, atol=1e-4)
        assert np.all(between > at.max() + 0.05)
    else:
        assert np.all(at < 1e-5), at
        assert np.all(between > 1e-3)


@pytest.mark.parametrize("name", list(DYNAMIC))
def test_dynamic_gradients_match_finite_differences(name):
    fn = DYNAMIC[name]
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(0, 0.4, 64), jnp.float64 if jax.config.x64_enabled else jnp.float32)
    c = jnp.array([-0.6, -0.1, 0.25, 0.7], w.dtype)

    def loss(w, c):
        return jnp.sum(fn(w, c) * jnp.linspace(0.5, 1.5, w.size))

    gw, gc = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, c)
    assert np.abs(np.asarray(gc)).sum() > 0, "reps receive no gradient"
    eps = 1e-3
    for i in range(4):
        e = jnp.zeros_like(c).at[i].set(eps)
        fd = (loss(w, c + e) - loss(w, c - e)) / (2 * eps)
        np.testing.assert_allclose(gc[i], fd, rtol=2e-2, atol=2e-3)
    for i in [0, 5, 17]:
        e = jnp.zeros_like(w).at[i].set(eps)
        fd = (loss(w + e, c) - loss(w - e, c)) / (2 * eps)
        np.testing.assert_allclose(gw[i], fd, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("k", [2, 5, 33, 100])
def test_nearest_matches_bruteforce_for_chain_and_binary_search(k):
    rng = np.random.default_rng(k)
    c = rng.normal(size=k).astype(np.float32)
    w = rng.normal(size=5000).astype(np.float32)
    want = np.min((w[:, None] - c[None, :]) ** 2, axis=1)
    got = np.asarray(jax.jit(R.nearest)(w, c))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    gc = jax.grad(lambda c: R.nearest(w, c).sum())(jnp.asarray(c))
    owner = np.argmin((w[:, None] - c[None, :]) ** 2, axis=1)
    want_gc = np.array([-2 * np.sum(w[owner == j] - c[j]) for j in range(k)])
    np.testing.assert_allclose(gc, want_gc, rtol=1e-4, atol=1e-3)


def test_nearest_ties_go_to_lower_representative():
    cs = jnp.array([-1.0, 1.0])
    mid = (cs[1:] + cs[:-1]) / 2
    assert int(R.nearest_index(jnp.array([0.0]), cs, mid)[0]) == 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "fn",
    [
        lambda w, c: R.sine(w, 4, -1.0, 1.0),
        lambda w, c: R.cosine(w, 4, -1.0, 1.0),
        *DYNAMIC.values(),
    ],
)
def test_dtype_preserved_under_jit(dtype, fn):
    w = jnp.linspace(-1, 1, 37).astype(dtype).reshape(37, 1)
    c = jnp.array([-0.5, 0.0, 0.5, 0.8], dtype)
    out = jax.jit(fn)(w, c)
    assert out.dtype == dtype and out.shape == w.shape
    gw, gc = jax.jit(jax.grad(lambda w, c: fn(w, c).astype(jnp.float32).sum(), (0, 1)))(w, c)
    assert gw.dtype == dtype and gc.dtype == dtype
    assert np.isfinite(np.asarray(gw, np.float32)).all()


@pytest.mark.parametrize("name", ["nearest", "softmin", "product", "wells_max"])
def test_sgd_on_weights_and_reps_forms_k_tight_clusters(name):
    k = 3
    fn = DYNAMIC[name]
    if name == "softmin":
        fn = lambda w, c: R.softmin(w, c, 1e-5)  # noqa: E731
    if name == "wells_max":
        # Wells only reach weights within a few sigma: make them as wide as the spacing.
        fn = lambda w, c: R.wells(w, c, 0.3)  # noqa: E731
    w0 = jnp.asarray(np.random.default_rng(0).normal(0, 0.3, 400), jnp.float32)
    params = {"w": w0, "c": jnp.array([-0.4, 0.0, 0.4], jnp.float32)}
    # A data term pulls each weight to where it started; the penalty wins as lambda grows.
    lam = 50.0

    def loss(p):
        return 0.01 * jnp.mean((p["w"] - w0) ** 2) + lam * jnp.mean(fn(p["w"], p["c"]))

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(400):
        params, state = step(params, state)
    w, c = np.asarray(params["w"]), np.asarray(params["c"])
    dist = np.min(np.abs(w[:, None] - c[None, :]), axis=1)
    spread = float(w0.max() - w0.min())
    assert np.quantile(dist, 0.95) < 0.01 * spread, np.quantile(dist, 0.95)
    # At most k tight groups: the sorted weights (bar 2% stragglers) break into <= k runs.
    core = np.sort(w[dist <= np.quantile(dist, 0.98)])
    assert 1 + np.sum(np.diff(core) > 0.05 * spread) <= k
    assert not np.allclose(c, [-0.4, 0.0, 0.4]), "representatives did not move"


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize("k", [1, 0, -3])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        R.sine(jnp.ones(3), k, 0.0, 1.0)


@pytest.mark.parametrize("k", [2.5, True, "4"])
def test_k_of_a_wrong_type(k):
    with pytest.raises(TypeError, match="k must be an integer >= 2"):
        R.sine(jnp.ones(3), k, 0.0, 1.0)


@pytest.mark.parametrize("lo,hi", [(1.0, 1.0), (2.0, 1.0), (np.nan, 1.0), (0.0, np.inf)])
def test_bad_interval(lo, hi):
    with pytest.raises(ValueError, match="lo < hi|lo, hi must be finite"):
        R.cosine(jnp.ones(3), 3, lo, hi)


def test_bad_temperatures_and_modes():
    c = jnp.array([0.0, 1.0])
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="tau must be"):
            R.softmin(jnp.ones(3), c, bad)
        with pytest.raises(ValueError, match="sigma must be"):
            R.wells(jnp.ones(3), c, bad)
    with pytest.raises(ValueError, match="unknown mode 'min'; allowed: max, mean"):
        R.wells(jnp.ones(3), c, 0.1, mode="min")


def test_bad_dtypes_and_reps_shape():
    with pytest.raises(TypeError, match="w must be a floating-point array"):
        R.nearest(jnp.arange(3), jnp.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="reps must be a floating-point array"):
        R.nearest(jnp.ones(3), jnp.array([0, 1]))
    with pytest.raises(ValueError, match=r"reps must have shape \(K,\)"):
        R.nearest(jnp.ones(3), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="K >= 2"):
        R.softmin(jnp.ones(3), jnp.ones(1), 0.1)


@pytest.mark.parametrize("k", [2, 8, 9, 40])
def test_nearest_total_equals_sum_of_nearest_in_value_and_gradient(k):
    rng = np.random.default_rng(k)
    w = jnp.asarray(rng.normal(size=(300, 7)), jnp.float32)
    c = jnp.asarray(rng.normal(size=k), jnp.float32)
    scale = jnp.float32(0.7)
    f1 = jax.jit(jax.value_and_grad(lambda w, c: scale * R.nearest_total(w, c), (0, 1)))
    f2 = jax.jit(jax.value_and_grad(lambda w, c: scale * R.nearest(w, c).sum(), (0, 1)))
    (v1, (gw1, gc1)), (v2, (gw2, gc2)) = f1(w, c), f2(w, c)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(gw1, gw2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gc1, gc2, rtol=1e-4, atol=1e-4)


def test_nearest_total_blocked_path_matches_direct_sum():
    # Above the block length and K > 8 the forward pass runs block by block (3 here).
    assert R.common.leading_blocks((2064, 1024)) == 3
    w = jax.random.normal(jax.random.PRNGKey(0), (2064, 1024), jnp.float32)
    c = jnp.linspace(-2.0, 2.0, 40)
    f1 = jax.jit(jax.value_and_grad(lambda w, c: R.nearest_total(w, c), (0, 1)))
    f2 = jax.jit(jax.value_and_grad(lambda w, c: R.nearest(w, c).sum(), (0, 1)))
    (v1, (gw1, gc1)), (v2, (gw2, gc2)) = f1(w, c), f2(w, c)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(gw1, gw2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gc1, gc2, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("k", [2, 8, 40])
def test_wells_total_equals_sum_of_wells_in_value_and_gradient(k):
    rng = np.random.default_rng(k)
    w = jnp.asarray(rng.normal(size=(300, 7)), jnp.float32)
    c = jnp.asarray(rng.normal(size=k), jnp.float32)
    f1 = jax.jit(jax.value_and_grad(lambda w, c: 0.7 * R.wells_total(w, c, 0.3), (0, 1)))
    f2 = jax.jit(jax.value_and_grad(lambda w, c: 0.7 * R.wells(w, c, 0.3).sum(), (0, 1)))
    (v1, (gw1, gc1)), (v2, (gw2, gc2)) = f1(w, c), f2(w, c)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(gw1, gw2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gc1, gc2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [33, 64, 256])
@pytest.mark.parametrize("dist", ["uniform", "normal", "clustered"])
def test_nearest_index_matches_searchsorted(k, dist):
    """The bucket lookup (and its binary-search fallback) equal numpy's exact count of
    midpoints below ``w``, ties included, for spread-out and for clustered reps."""
    rng = np.random.default_rng(k)
    if dist == "uniform":
        reps = rng.uniform(-1, 1, k)
    elif dist == "normal":
        reps = rng.standard_normal(k)
    else:  # most reps within 1e-6 of each other: buckets overflow, fallback path
        reps = np.concatenate([rng.uniform(0, 1e-6, k - 2), [-5.0, 5.0]])
    cs = np.sort(reps.astype(np.float32))
    mid = (cs[1:] + cs[:-1]) / 2
    w = np.concatenate(
        [
            rng.standard_normal(4000).astype(np.float32) * 2,
            mid,  # exact ties go to the lower representative
            np.nextafter(mid, np.float32(np.inf)),
            np.nextafter(mid, np.float32(-np.inf)),
            np.float32([-1e30, 1e30, cs[0], cs[-1]]),
        ]
    ).astype(np.float32)
    got = jax.jit(R.nearest_index)(jnp.asarray(w), jnp.asarray(cs), jnp.asarray(mid))
    np.testing.assert_array_equal(np.asarray(got), np.searchsorted(mid, w, side="left"))
    _, fits = N._bucket_table(jnp.asarray(mid))
    assert bool(fits) == (dist != "clustered")


_SIGMA = 0.02
_NEAREST_SUMS = {  # total -> the slope f'(d) of its per-weight term f(d), d = w - nearest rep
    "nearest_total": (R.nearest_total, lambda d: 2 * d),
    "nearest (element-wise)": (lambda w, r: jnp.sum(R.nearest(w, r)), lambda d: 2 * d),
    "wells_total": (
        lambda w, r: R.wells_total(w, r, _SIGMA),
        lambda d: d / _SIGMA**2 * np.exp(-(d * d) / (2 * _SIGMA**2)),
    ),
}


@pytest.mark.parametrize("k", [2, 4, 16, 300])
@pytest.mark.parametrize("name", sorted(_NEAREST_SUMS))
def test_nearest_rep_gradients_are_accurate_on_a_large_layer(name, k):
    """Per-representative sums over 4M weights match a float64 reference on every
    path (threshold sums, variadic reduction, scatter-add): no sum runs as one
    sequential float32 loop (which drifted by ~1e-3)."""
    total, slope = _NEAREST_SUMS[name]
    w = jax.random.normal(jax.random.key(0), (2048, 2048)) * 0.05 + 0.003
    reps = jnp.quantile(w, jnp.linspace(0.01, 0.99, k))
    g = np.asarray(jax.jit(jax.grad(total, argnums=1))(w, reps), np.float64)
    wn, rn = np.asarray(w, np.float64).ravel(), np.asarray(reps, np.float64)
    mid = (np.asarray(reps)[1:] + np.asarray(reps)[:-1]) / 2  # float32 midpoints, as used
    idx = np.searchsorted(mid, np.asarray(w).ravel(), side="left")
    ref = np.bincount(idx, weights=-slope(wn - rn[idx]), minlength=k)
    assert np.max(np.abs(g - ref)) <= 2e-5 * np.max(np.abs(ref))


@pytest.mark.parametrize("kind", ["softmin", "product", "wells_mean"])
def test_all_reps_total_equals_the_elementwise_sum(kind):
    """The blocked total (what ``penalty`` uses) has the value and gradients of the
    element-wise penalty's sum, on a layer split into several blocks."""
    w = jax.random.normal(jax.random.key(1), (2 * (R.common.BLOCK // 512), 512)) * 0.1
    reps = jnp.array([-0.2, -0.05, 0.0, 0.1, 0.3])
    elem = {
        "softmin": lambda w, r: R.softmin(w, r, 0.01),
        "product": R.product,
        "wells_mean": lambda w, r: R.wells(w, r, 0.05, mode="mean"),
    }[kind]
    param = {"softmin": 0.01, "product": None, "wells_mean": 0.05}[kind]
    assert R.common.leading_blocks(w.shape) > 1
    v1, g1 = jax.value_and_grad(R.all_reps_total, argnums=(0, 1))(w, reps, kind, param)
    v0, g0 = jax.value_and_grad(lambda w, r: jnp.sum(elem(w, r)), argnums=(0, 1))(w, reps)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    # dw sums terms of both signs (softmin: pulls towards reps on either side), so
    # where they cancel the two summation orders differ at float32 rounding of the
    # terms: compare against the gradient's scale there.
    np.testing.assert_allclose(g1[0], g0[0], rtol=1e-5, atol=1e-6 * float(jnp.max(abs(g0[0]))))
    np.testing.assert_allclose(g1[1], g0[1], rtol=1e-4, atol=1e-6 * float(jnp.max(abs(g0[1]))))


def test_all_reps_total_rejects_bad_arguments():
    w, reps = jnp.ones((4,)), jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match="unknown kind 'nearest'; allowed: softmin"):
        R.all_reps_total(w, reps, "nearest")
    with pytest.raises(ValueError, match="tau must be"):
        R.all_reps_total(w, reps, "softmin", 0.0)
    with pytest.raises(TypeError, match="sigma must be"):
        R.all_reps_total(w, reps, "wells_mean", None)


def _registry_spec(name, k, wells_mode="max"):
    """A resolved spec of the registered ``name``: levels on [-1, 1], default tau/sigma."""
    from qareg_jax.codebook import QuantSpec

    spacing = 2.0 / (k - 1)
    return QuantSpec(
        k=k,
        regularizer=name,
        lo=-1.0,
        hi=1.0,
        tau=(spacing / 4) ** 2,
        sigma=spacing / 2,
        wells_mode=wells_mode,
        reduction="mean",  # the raw formula's scale: the bounds below are absolute
        normalize=None,
    )


@pytest.mark.parametrize("k", [2, 4, 16])
@pytest.mark.parametrize(
    "name, mode",
    [(n, "max") for n in ("sine", "cosine", "nearest", "softmin", "product", "wells")],
)
def test_every_registered_penalty_is_zero_on_its_levels(name, mode, k):
    from qareg_jax.penalty import reduced

    spec = _registry_spec(name, k, mode)
    entry = R.get(name)
    levels = np.linspace(-1.0, 1.0, k) if entry.dynamic else R.static_levels(name, k, -1.0, 1.0)
    c = jnp.asarray(levels, jnp.float32)
    w = jnp.tile(c, 5)
    reps = c if entry.dynamic else None
    values = np.asarray(entry.elementwise(w, reps, spec))
    total = float(reduced(w, spec, reps))
    if name == "softmin":
        # -tau log(1 + sum of the other wells at this level): 0 up to ~exp(-16) tau.
        bound = 2 * spec.tau * np.exp(-16.0) + 1e-7 * spec.tau
        assert np.all(np.abs(values) <= bound) and abs(total) <= bound, (values, total)
    elif name in ("sine", "cosine"):
        assert np.all(np.abs(values) < 1e-6) and abs(total) < 1e-6  # float32 sin(pi j)
    else:
        assert np.all(values == 0) and total == 0, (values, total)
    between = jnp.asarray((levels[1:] + levels[:-1]) / 2, jnp.float32)
    assert np.all(np.asarray(entry.elementwise(between, reps, spec)) > 0)


def test_registry_is_covered_by_the_zero_on_levels_test():
    # A new registered penalty must be added to the test above (or documented here).
    assert set(R.names()) == {"sine", "cosine", "nearest", "softmin", "product", "wells"}


def test_wells_mean_has_a_documented_floor():
    # Not a registry entry of its own: wells(mode="mean") averages all K wells, so on
    # a level it is 1 - 1/K less the overlap of the neighbouring wells (docs/methods.md).
    c = jnp.asarray(np.linspace(-1.0, 1.0, 4), jnp.float32)
    values = np.asarray(R.get("wells").elementwise(c, c, _registry_spec("wells", 4, "mean")))
    assert np.all((values > 0.6) & (values <= 0.75)), values
