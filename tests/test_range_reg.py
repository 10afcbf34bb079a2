"""R2 range regularizers: values, learnable parameters, range shrinking, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qareg_jax.contrib import range_reg as RR


def _params(seed=0):
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.1, (64, 32)).astype(np.float32)
    w1[3, 4], w1[10, 1] = 0.9, -0.7  # outliers
    w2 = rng.standard_t(3, (3, 3, 4, 8)).astype(np.float32) * 0.05
    return {
        "Dense_0": {"kernel": jnp.asarray(w1), "bias": jnp.zeros(32)},
        "Conv_0": {"kernel": jnp.asarray(w2), "bias": jnp.zeros(8)},
    }


def test_values_match_definitions():
    w = jnp.array([[-0.5, 0.1], [0.3, -0.05]], jnp.float32)
    assert float(jax.jit(RR.linf)(w)) == pytest.approx(0.5)
    # mean relu(|w| - 0.2) = (0.3 + 0.1) / 4, plus 0.2^2.
    assert float(jax.jit(RR.margin)(w, 0.2)) == pytest.approx(0.1 + 0.04, rel=1e-6)
    flat = np.asarray(w, np.float64).ravel()
    alpha = 7.0
    p_max = np.exp(alpha * flat) / np.exp(alpha * flat).sum()
    p_min = np.exp(-alpha * flat) / np.exp(-alpha * flat).sum()
    want = flat @ p_max - flat @ p_min + np.exp(-alpha)
    assert float(jax.jit(RR.soft_min_max)(w, alpha)) == pytest.approx(want, rel=1e-5)
    # Large alpha: the soft range tends to max - min.
    assert float(RR.soft_min_max(w, 500.0)) == pytest.approx(0.8, rel=1e-4)


def test_init_range_params_shapes_and_defaults():
    params = _params()
    paths = ["Dense_0/kernel", "Conv_0/kernel"]
    m = RR.init_range_params(params, paths, "margin")
    assert set(m) == set(paths)
    w1 = np.asarray(params["Dense_0"]["kernel"])
    assert float(m["Dense_0/kernel"]["margin"]) == pytest.approx(np.abs(w1).max())
    a = RR.init_range_params(params, None, "soft_min_max")  # default selection: the kernels
    assert set(a) == set(paths)
    assert float(a["Dense_0/kernel"]["alpha"]) == pytest.approx(3.0 / w1.std(), rel=1e-5)
    fixed = RR.init_range_params(params, paths, "soft_min_max", alpha=20.0)
    assert all(float(v["alpha"]) == 20.0 for v in fixed.values())
    assert RR.init_range_params(params, paths, "linf") == {}
    assert m["Dense_0/kernel"]["margin"].shape == () and m["Dense_0/kernel"]["margin"].dtype == (
        jnp.float32
    )


@pytest.mark.parametrize("kind", ["margin", "soft_min_max"])
def test_learnable_parameters_receive_gradients(kind):
    params = _params()
    tp = {"model": params, "range": RR.init_range_params(params, None, kind)}
    grad_fn = jax.jit(jax.grad(lambda tp: RR.range_penalty(tp, None, kind, 0.5)))
    grads = grad_fn(tp)
    name = "margin" if kind == "margin" else "alpha"
    for path in ("Dense_0/kernel", "Conv_0/kernel"):
        g = float(grads["range"][path][name])
        assert np.isfinite(g) and g != 0.0
    if kind == "margin":
        # At its start (max |w|) the margin has no weight outside it: the weights'
        # gradient is zero until the margin shrinks below the largest weights.
        assert np.all(np.asarray(grads["model"]["Dense_0"]["kernel"]) == 0)
        tp["range"] = jax.tree.map(lambda m: m / 2, tp["range"])
        grads = grad_fn(tp)
    gw = np.asarray(grads["model"]["Dense_0"]["kernel"])
    assert np.isfinite(gw).all() and np.abs(gw).sum() > 0
    assert np.all(np.asarray(grads["model"]["Dense_0"]["bias"]) == 0)


def test_penalty_sums_layers_and_scales_with_lam():
    params = _params()
    tp = {"model": params, "range": RR.init_range_params(params, None, "margin"), "reps": {}}
    per = RR.layer_range_penalties(tp, None, "margin")
    total = jax.jit(lambda tp: RR.range_penalty(tp, None, "margin", 0.25))(tp)
    assert float(total) == pytest.approx(0.25 * sum(float(v) for v in per.values()), rel=1e-6)
    sched = optax.linear_schedule(0.0, 1.0, 10)
    at5 = RR.range_penalty(tp, None, "margin", sched, step=5)
    assert float(at5) == pytest.approx(0.5 * sum(float(v) for v in per.values()), rel=1e-6)


@pytest.mark.parametrize("kind", ["linf", "margin", "soft_min_max"])
def test_optax_training_shrinks_the_range(kind):
    params = _params(1)
    w0 = {p: params[p.split("/")[0]]["kernel"] for p in ("Dense_0/kernel", "Conv_0/kernel")}
    tp = {"model": params, "range": RR.init_range_params(params, None, kind)}
    lam = {"linf": 0.05, "margin": 1.0, "soft_min_max": 0.05}[kind]

    def loss(tp):
        # A data term holds every weight near its start; the range penalty fights the tails.
        fit = sum(
            jnp.mean((tp["model"][p.split("/")[0]]["kernel"] - w) ** 2) for p, w in w0.items()
        )
        return fit + RR.range_penalty(tp, None, kind, lam)

    opt = optax.adam(3e-3)
    state = opt.init(tp)

    @jax.jit
    def step(tp, state):
        g = jax.grad(loss)(tp)
        u, state = opt.update(g, state, tp)
        return optax.apply_updates(tp, u), state

    for _ in range(300):
        tp, state = step(tp, state)
    for path, w in w0.items():
        new = tp["model"][path.split("/")[0]]["kernel"]
        before, after = float(jnp.abs(w).max()), float(jnp.abs(new).max())
        assert after < 0.8 * before, (path, before, after)
        # The bulk stays: the median magnitude moves much less than the maximum.
        med_b, med_a = float(jnp.median(jnp.abs(w))), float(jnp.median(jnp.abs(new)))
        assert abs(med_a - med_b) < 0.25 * (before - after)
    if kind != "linf":
        name = "margin" if kind == "margin" else "alpha"
        start = RR.init_range_params(params, None, kind)
        moved = [float(tp["range"][p][name]) != float(start[p][name]) for p in ("Dense_0/kernel",)]
        assert all(moved)


def test_errors():
    params = _params()
    tp = {"model": params, "range": RR.init_range_params(params, None, "margin")}
    with pytest.raises(ValueError, match="lam must be"):
        RR.range_penalty(tp, None, "margin", -1.0)
    with pytest.raises(ValueError, match="unknown kind 'l2'"):
        RR.range_penalty(tp, None, "l2", 1.0)
    with pytest.raises(ValueError, match="unknown kind 'minmax'"):
        RR.init_range_params(params, None, "minmax")
    with pytest.raises(TypeError, match="kind must be a str"):
        RR.init_range_params(params, None, 2)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        RR.init_range_params(params, None, "soft_min_max", alpha=0.0)
    with pytest.raises(ValueError, match="alpha_scale must be a finite number > 0"):
        RR.init_range_params(params, None, "soft_min_max", alpha_scale=-1.0)
    with pytest.raises(ValueError, match="no 'alpha'"):
        RR.range_penalty(tp, None, "soft_min_max", 1.0)
    with pytest.raises(ValueError, match="paths is empty"):
        RR.range_penalty(tp, [], "margin", 1.0)
    with pytest.raises(ValueError, match="does not have"):
        RR.range_penalty(tp, ["Dense_9/kernel"], "linf", 1.0)
    with pytest.raises(ValueError, match="step is required"):
        RR.range_penalty(tp, None, "margin", optax.constant_schedule(1.0))
    with pytest.raises(TypeError, match="floating-point"):
        RR.linf(jnp.arange(4))
