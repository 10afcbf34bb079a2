"""DKM: agreement with the O(NK) reference, memory, snapping, the tree API, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qareg_jax.contrib import dkm as D
from qareg_jax.contrib import dkm_core


def _w(shape, seed=0, scale=0.1):
    return jnp.asarray(np.random.default_rng(seed).normal(0, scale, shape), jnp.float32)


@pytest.mark.parametrize("keep", [True, False], ids=["A-kept", "A-recomputed"])
@pytest.mark.parametrize(
    ("shape", "k", "block", "iters"),
    [
        ((37, 29), 4, None, 1),
        ((37, 29), 8, 100, 3),
        ((1000,), 16, 7, 2),
        ((3, 3, 4, 8), 2, 64, 5),
        ((16, 8), 4, 32, 2),  # whole blocks, no remainder
    ],
)
def test_matches_reference_values_and_gradients(shape, k, block, iters, keep, monkeypatch):
    monkeypatch.setattr(dkm_core, "KEEP_ELEMENTS", dkm_core.KEEP_ELEMENTS if keep else 0)
    w = _w(shape, seed=k)
    c = jnp.linspace(-0.15, 0.15, k)
    tau = (0.3 / k) ** 2
    r = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)

    def run(fn):
        out, cn = jax.jit(fn)(w, c, tau)
        loss = lambda w, tau: jnp.sum(fn(w, c, tau)[0] * r)  # noqa: E731
        g, gt = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, tau)
        return np.asarray(out), np.asarray(cn), np.asarray(g), float(gt)

    ours = run(lambda w, c, tau: D.dkm_layer(w, c, tau, iters, block_size=block))
    ref = run(lambda w, c, tau: D.dkm_layer_reference(w, c, tau, iters))
    assert ours[0].shape == shape and ours[1].shape == (k,)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-6)
    scale = np.abs(ref[2]).max()
    assert np.isfinite(ours[2]).all() and scale > 0
    np.testing.assert_allclose(ours[2], ref[2], rtol=1e-3, atol=1e-4 * scale)
    assert ref[3] != 0.0
    np.testing.assert_allclose(ours[3], ref[3], rtol=1e-3)


@pytest.mark.parametrize("keep", [True, False], ids=["A-kept", "A-recomputed"])
@pytest.mark.parametrize("block", [16, None])
def test_hand_written_gradient_matches_finite_differences(block, keep, monkeypatch):
    # The backward pass (written by hand) against numbers independent of any derivative:
    # in the weights and in tau, with blocks and a remainder, and with one block; with
    # each iteration's A kept from the forward pass (small layers) or recomputed.
    monkeypatch.setattr(dkm_core, "KEEP_ELEMENTS", dkm_core.KEEP_ELEMENTS if keep else 0)
    jax.config.update("jax_enable_x64", True)
    try:
        w = jnp.asarray(np.random.default_rng(3).normal(0, 0.1, 40))
        c = jnp.array([-0.1, 0.0, 0.12])
        r = jnp.linspace(-1.0, 1.0, 40)

        @jax.jit
        def f(w, tau):
            return jnp.sum(D.dkm_layer(w, c, tau, 3, block_size=block)[0] * r)

        tau = jnp.asarray(2e-3)
        g, gt = jax.jit(jax.grad(f, argnums=(0, 1)))(w, tau)
        eps = 1e-6
        for i in (0, 7, 33):
            e = jnp.zeros_like(w).at[i].set(eps)
            fd = (f(w + e, tau) - f(w - e, tau)) / (2 * eps)
            np.testing.assert_allclose(g[i], fd, rtol=1e-5, atol=1e-8)
        fd = (f(w, tau * (1 + 1e-6)) - f(w, tau * (1 - 1e-6))) / (2e-6 * tau)
        np.testing.assert_allclose(gt, fd, rtol=1e-5)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_float32_sums_stay_accurate_on_a_large_layer():
    # Sums over a million weights: within blocks, then over the blocks, so float32 stays
    # near float64 (one float32 sum over every weight drifts as N grows).
    n, k, tau = 1 << 20, 4, 2.5e-5
    w = np.random.default_rng(4).normal(0, 0.02, n)
    c = np.quantile(w, (np.arange(k) + 0.5) / k)
    r = np.sin(np.arange(n) / 7.0)

    def run(fn, dtype):
        wj, cj, rj = (jnp.asarray(x, dtype) for x in (w, c, r))
        loss = lambda w: 0.5 * jnp.sum(fn(w, cj, tau, 3)[0] ** 2 * rj)  # noqa: E731
        value, g = jax.jit(jax.value_and_grad(loss))(wj)
        return float(value), np.asarray(g, np.float64)

    jax.config.update("jax_enable_x64", True)
    try:
        exact = run(D.dkm_layer_reference, jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", False)
    ours = run(D.dkm_layer, jnp.float32)
    np.testing.assert_allclose(ours[0], exact[0], rtol=1e-5)
    assert np.abs(ours[1] - exact[1]).max() < 1e-5 * np.abs(exact[1]).max()


def test_centroids_are_weighted_means_and_weights_move_towards_them():
    w = jnp.concatenate([_w(300, 0, 0.01) - 0.5, _w(300, 1, 0.01) + 0.5])
    out, c = jax.jit(lambda w: D.dkm_layer(w, jnp.array([-0.3, 0.3]), 1e-3, 3))(w)
    means = [float(w[:300].mean()), float(w[300:].mean())]
    np.testing.assert_allclose(np.asarray(c), means, rtol=1e-6)
    # Hard clusters this far apart: every weight becomes its cluster's mean.
    np.testing.assert_allclose(np.asarray(out[:300]), float(c[0]), atol=1e-6)


def test_gradients_finite_with_sharp_tau_and_unreachable_centroids():
    w = _w((64, 16))
    c = jnp.array([-0.1, 0.0, 0.1, 50.0])  # the last centroid gets no weight at all
    fwd = jax.jit(lambda w, tau: D.dkm_layer(w, c, tau, 3, block_size=100))
    grad = jax.jit(jax.grad(lambda w, tau: jnp.sum(D.dkm_layer(w, c, tau, 3)[0] ** 2)))
    for tau in (1e-8, 1e-3, 10.0):
        out, cn = fwd(w, tau)
        g = grad(w, tau)
        assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(g)).all()
        assert float(cn[3]) == 50.0  # a dead centroid stays where it was


def test_no_gradient_into_starting_centroids_and_bfloat16():
    w = _w((16, 8)).astype(jnp.bfloat16)
    c = jnp.array([-0.1, 0.0, 0.1], jnp.bfloat16)
    gc = jax.grad(lambda c: jnp.sum(D.dkm_layer(w, c, 1e-3, 2)[0].astype(jnp.float32)))(c)
    assert np.all(np.asarray(gc, np.float32) == 0)
    out, cn = D.dkm_layer(w, c, 1e-3, 2)
    assert out.dtype == jnp.bfloat16 and out.shape == w.shape and cn.dtype == jnp.float32


def test_compiled_memory_is_far_below_n_times_k():
    n, k = 1 << 19, 256  # above KEEP_ELEMENTS: A is recomputed in the backward pass
    assert n * k > dkm_core.KEEP_ELEMENTS
    w, c = _w(n), jnp.linspace(-0.2, 0.2, k)

    def peak(fn):
        f = jax.jit(jax.value_and_grad(lambda w: jnp.sum(fn(w, c, 1e-4, 3)[0] ** 2)))
        m = f.lower(w).compile().memory_analysis()
        return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes

    nk_bytes = n * k * 4
    assert peak(D.dkm_layer_reference) > nk_bytes
    assert peak(D.dkm_layer) < nk_bytes / 8


_SNAP_N = 300


@jax.jit
def _transform_and_snap(params, cents, tau):
    _, cents = D.dkm_transform(params, cents, tau, 2)
    return cents, *D.dkm_snap(params, cents)


@settings(max_examples=25, deadline=None)
@given(
    k=st.sampled_from([2, 3, 12]),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 10.0),
    log_tau=st.floats(-8, -1),
)
def test_snap_gives_at_most_k_values_and_is_idempotent(k, seed, scale, log_tau):
    # Fixed shapes (one compilation per k); hypothesis varies the values.
    params = {"layer": {"kernel": _w((_SNAP_N, 1), seed, scale), "bias": jnp.ones(1)}}
    cents = D.dkm_init(params, ["layer/kernel"], k, init="quantile")
    cents, snapped, books = _transform_and_snap(params, cents, 10.0**log_tau * scale**2)
    w_snap = np.asarray(snapped["layer"]["kernel"])
    assert len(np.unique(w_snap)) <= k
    codebook, idx = books["layer/kernel"]
    np.testing.assert_array_equal(np.asarray(codebook)[np.asarray(idx)], w_snap)
    # Each weight went to its nearest centroid.
    w = np.asarray(params["layer"]["kernel"])
    dist = np.abs(w[..., None] - np.asarray(codebook)).min(-1)
    np.testing.assert_allclose(np.abs(w - w_snap), dist, rtol=1e-6, atol=1e-7 * scale)
    again, _ = jax.jit(D.dkm_snap)(snapped, cents)
    np.testing.assert_array_equal(np.asarray(again["layer"]["kernel"]), w_snap)
    np.testing.assert_array_equal(np.asarray(snapped["layer"]["bias"]), 1.0)


def test_transform_in_a_training_loop_clusters_the_weights():
    # Regression onto a target made of 3 levels: training through DKM, then snapping,
    # loses little relative to the soft weights.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 32)), jnp.float32)
    levels = np.array([-0.3, 0.05, 0.4])
    target_w = levels[rng.integers(0, 3, (32, 4))]
    y = x @ target_w
    params = {"Dense_0": {"kernel": _w((32, 4), 5, 0.2)}}
    tp = {"model": params, "dkm": D.dkm_init(params, None, 3)}
    opt = optax.adam(3e-2)
    state = opt.init(tp)

    def loss_fn(tp):
        # tau ~ (spacing / 3)^2: soft enough for weights to change clusters.
        soft, cents = D.dkm_transform(tp["model"], tp["dkm"], 1e-2, 3)
        return jnp.mean((x @ soft["Dense_0"]["kernel"] - y) ** 2), cents

    @jax.jit
    def step(tp, state):
        (loss, cents), g = jax.value_and_grad(loss_fn, has_aux=True)(tp)
        u, state = opt.update(g, state, tp)
        return {**optax.apply_updates(tp, u), "dkm": cents}, state, loss

    first = None
    for _ in range(400):
        tp, state, loss = step(tp, state)
        first = float(loss) if first is None else first
    snapped, books = D.dkm_snap(tp["model"], tp["dkm"])
    snap_loss = float(jnp.mean((x @ snapped["Dense_0"]["kernel"] - y) ** 2))
    assert float(loss) < 1e-3 * first
    assert snap_loss < 1e-3 * first
    np.testing.assert_allclose(np.asarray(books["Dense_0/kernel"][0]), levels, atol=0.01)


def test_per_layer_k_init_transform_and_snap():
    # Centroids of different K per layer: each layer is the single-K computation.
    params = {"a": {"kernel": _w((40, 3), 1)}, "b": {"kernel": _w((6, 5), 2)}}
    ks = {"a/kernel": 8, "b/kernel": 2, "unused": 4}
    cents = D.dkm_init(params, None, ks)
    assert {p: c.shape for p, c in cents.items()} == {"a/kernel": (8,), "b/kernel": (2,)}
    taus = {"a/kernel": 1e-3, "b/kernel": 2e-3}
    cents2, snapped, books = _transform_and_snap(params, cents, taus)
    soft, _ = jax.jit(D.dkm_transform)(params, cents, taus)
    for path, k in (("a/kernel", 8), ("b/kernel", 2)):
        layer = path.split("/")[0]
        one = {layer: params[layer]}
        alone = D.dkm_init(one, [path], k)
        np.testing.assert_array_equal(np.asarray(cents[path]), np.asarray(alone[path]))
        c_alone, s_alone, b_alone = _transform_and_snap(one, alone, taus[path])
        np.testing.assert_allclose(np.asarray(cents2[path]), np.asarray(c_alone[path]), rtol=1e-6)
        np.testing.assert_array_equal(
            np.asarray(snapped[layer]["kernel"]), np.asarray(s_alone[layer]["kernel"])
        )
        assert books[path][0].shape == (k,) and int(books[path][1].max()) < k
        assert len(np.unique(np.asarray(snapped[layer]["kernel"]))) <= k
        assert soft[layer]["kernel"].shape == params[layer]["kernel"].shape
    with pytest.raises(ValueError, match="k has no entry for paths"):
        D.dkm_init(params, None, {"a/kernel": 8})
    with pytest.raises(ValueError, match="k of 'b/kernel' must be an integer >= 2"):
        D.dkm_init(params, None, {"a/kernel": 8, "b/kernel": 1})
    with pytest.raises(TypeError, match="k of 'a/kernel' must be an integer"):
        D.dkm_init(params, None, {"a/kernel": 8.0, "b/kernel": 2})


def test_errors():
    w = _w(10)
    c = jnp.array([-0.1, 0.1])
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        D.dkm_layer(w, c, 0.0)
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        D.dkm_layer_reference(w, c, -1.0)
    with pytest.raises(ValueError, match="iters must be an integer >= 1"):
        D.dkm_layer(w, c, 1e-3, 0)
    with pytest.raises(ValueError, match="K must be an integer >= 2"):
        D.dkm_layer(w, jnp.array([0.1]), 1e-3)
    with pytest.raises(ValueError, match="block_size"):
        D.dkm_layer(w, c, 1e-3, block_size=0)
    with pytest.raises(ValueError, match="w is empty"):
        D.dkm_layer(jnp.zeros((0, 3)), c, 1e-3)
    params = {"Dense_0": {"kernel": _w((4, 3))}}
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        D.dkm_init(params, None, 1)
    with pytest.raises(ValueError, match="unknown init 'random'"):
        D.dkm_init(params, None, 4, init="random")
    with pytest.raises(TypeError, match="k must be an integer"):
        D.dkm_init(params, None, 4.0)
    with pytest.raises(TypeError, match="iters must be an integer"):
        D.dkm_layer(w, c, 1e-3, 2.0)
    with pytest.raises(TypeError, match="block_size"):
        D.dkm_layer(w, c, 1e-3, block_size=8.0)
    with pytest.raises(ValueError, match="paths is empty"):
        D.dkm_init(params, [], 4)
    with pytest.raises(ValueError, match="does not have"):
        D.dkm_transform(params, {"Dense_1/kernel": c}, 1e-3)
    with pytest.raises(ValueError, match="tau has no entry"):
        D.dkm_transform(params, {"Dense_0/kernel": c}, {"other": 1e-3})
    with pytest.raises(ValueError, match="centroids is empty"):
        D.dkm_snap(params, {})


def test_snap_ties_agree_with_snap_assign_and_quantizers():
    """dkm_snap, snap.assign and quantizers.assign_nearest share one tie rule: an exact
    midpoint goes to the lower level, and a weight whose float midpoint rounds onto
    it (1 and 2**24 + 2: fl(a + b) / 2 = 2**23 + 2, exact 2**23 + 1.5) to the nearer."""
    from qareg_jax.quantizers import assign_nearest
    from qareg_jax.snap import assign

    cases = [
        ([0.0, 1.0, 3.0], [0.5, 2.0, -0.5, 1.0, 1.5, 3.5], [0, 1, 0, 1, 1, 2]),
        ([1.0, 2.0**24 + 2], [2.0**23 + 2, 2.0**23 + 1], [1, 0]),
    ]
    for levels, weights, expected in cases:
        w = np.asarray(weights, np.float32)
        c = jnp.asarray(levels, jnp.float32)
        _, books = D.dkm_snap({"w": jnp.asarray(w)}, {"w": c})
        np.testing.assert_array_equal(np.asarray(books["w"][1]), expected)
        np.testing.assert_array_equal(np.asarray(assign(jnp.asarray(w), c)), expected)
        np.testing.assert_array_equal(assign_nearest(w, np.asarray(c)), expected)
