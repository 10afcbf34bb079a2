"""Selection, specs, representatives in the param tree, penalty, one optax step."""

import dataclasses
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import qareg_jax as q
from qareg_jax import codebook, validation


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = nn.Dense(8)(x)
        return nn.Dense(3)(nn.relu(x))


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.lin = nnx.Linear(4 * 6 * 6, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.lin(x.reshape(x.shape[0], -1))


def linen_variables():
    return LinenNet().init(jax.random.PRNGKey(0), jnp.ones((2, 6, 6, 2)))


def test_default_selection_takes_kernels_only():
    v = linen_variables()
    paths = q.select(v)
    assert paths == ["params/Conv_0/kernel", "params/Dense_0/kernel", "params/Dense_1/kernel"]
    _, state = nnx.split(NnxNet(nnx.Rngs(0)))
    assert q.select(state) == ["conv/kernel", "lin/kernel"]


def test_selection_rules_compose():
    v = linen_variables()
    assert q.select(v, include=r"Dense_\d/kernel") == [
        "params/Dense_0/kernel",
        "params/Dense_1/kernel",
    ]
    assert q.select(v, exclude="Dense_1") == ["params/Conv_0/kernel", "params/Dense_0/kernel"]
    big = q.select(v, predicate=lambda p, x: x.size > 50)
    assert big == ["params/Conv_0/kernel", "params/Dense_0/kernel"]


def test_overrides_are_one_line_per_layer():
    v = linen_variables()
    specs = q.make_specs(v, k=4, overrides={"Conv_0": dict(k=16), "Dense_1": None})
    assert set(specs) == {"params/Conv_0/kernel", "params/Dense_0/kernel"}
    assert specs["params/Conv_0/kernel"].k == 16 and specs["params/Dense_0/kernel"].k == 4


@pytest.mark.parametrize("init", ["grid", "quantile", "kmeans"])
def test_attach_builds_reps_for_dynamic_only(init):
    v = linen_variables()
    specs = q.make_specs(
        v, k=4, regularizer="nearest", init=init, overrides={"Dense_1": dict(regularizer="sine")}
    )
    tp, resolved = q.attach(v, specs)
    assert tp["model"] is v
    assert set(tp["reps"]) == {"params/Conv_0/kernel", "params/Dense_0/kernel"}
    for path, spec in resolved.items():
        w = np.asarray(q.paths.named_leaves(v)[path])
        assert spec.lo == pytest.approx(w.min()) and spec.hi == pytest.approx(w.max())
        assert spec.tau > 0 and spec.sigma > 0
        if spec.dynamic:
            c = np.asarray(tp["reps"][path])
            assert c.shape == (4,) and c.dtype == w.dtype
            assert np.all(np.diff(c) > 0) and w.min() <= c.min() and c.max() <= w.max()
    if init == "grid":
        c = np.asarray(tp["reps"]["params/Conv_0/kernel"])
        np.testing.assert_allclose(np.diff(c), np.diff(c)[0], rtol=1e-5)


def test_robust_intervals():
    w = {
        "kernel": jnp.asarray(np.r_[np.random.default_rng(0).normal(0, 1, 4999), 40.0]).reshape(
            50, 100
        )
    }
    for interval in ("percentile", "std"):
        _, specs = q.attach(w, q.make_specs(w, interval=interval, init="grid"))
        spec = specs["kernel"]
        assert -5 < spec.lo < -1.5 and 1.5 < spec.hi < 5, (interval, spec.lo, spec.hi)
    _, specs = q.attach(w, q.make_specs(w, lo=-1.0, hi=2.0, init="grid"))
    assert (specs["kernel"].lo, specs["kernel"].hi) == (-1.0, 2.0)


def _task_loss(model, variables, x, y):
    logits = model.apply(variables, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("regularizer", ["nearest", "softmin", "product", "wells", "sine"])
def test_one_optax_step_moves_weights_and_reps_linen(regularizer):
    v = linen_variables()
    params = {"params": v["params"]}
    stats = {"batch_stats": v["batch_stats"]}
    specs = q.make_specs(params, k=4, regularizer=regularizer, lam=10.0, init="quantile")
    tp, specs = q.attach(params, specs)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 6, 2))
    y = jnp.arange(8) % 3
    model = LinenNet()

    def loss(tp):
        task = _task_loss(model, {**tp["model"], **stats}, x, y)
        return task + q.penalty(tp, specs)

    opt = optax.adam(1e-2)
    state = opt.init(tp)

    @jax.jit
    def step(tp, state):
        value, grads = jax.value_and_grad(loss)(tp)
        updates, state = opt.update(grads, state, tp)
        return optax.apply_updates(tp, updates), state, value, grads

    tp2, state, _, grads = step(tp, state)
    for path in specs:
        w0 = q.paths.named_leaves(tp["model"])[path]
        w1 = q.paths.named_leaves(tp2["model"])[path]
        assert not np.allclose(w0, w1)
        if specs[path].dynamic:
            assert np.abs(np.asarray(grads["reps"][path])).sum() > 0
            assert not np.allclose(tp["reps"][path], tp2["reps"][path])
    if regularizer == "sine":
        assert tp2["reps"] == {}
    losses = []
    for _ in range(30):
        tp2, state, value, _ = step(tp2, state)
        losses.append(float(value))
    assert losses[-1] < losses[0]


def test_one_optax_step_moves_weights_and_reps_nnx():
    model = NnxNet(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    specs = q.make_specs(params, k=3, lam=5.0, init="grid")
    tp, specs = q.attach(params, specs)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 6, 2))
    y = jnp.arange(8) % 3

    def loss(tp):
        logits = nnx.merge(graphdef, tp["model"], rest)(x)
        task = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return task + q.penalty(tp, specs)

    opt = optax.adam(1e-2)
    state = opt.init(tp)
    grads = jax.jit(jax.grad(loss))(tp)
    updates, state = opt.update(grads, state, tp)
    tp2 = optax.apply_updates(tp, updates)
    assert set(tp2["reps"]) == {"conv/kernel", "lin/kernel"}
    for path in specs:
        assert np.abs(np.asarray(grads["reps"][path])).sum() > 0
        assert not np.allclose(tp["reps"][path], tp2["reps"][path])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_preserved_through_attach_and_grad(dtype):
    tree = {"kernel": jnp.linspace(-1, 1, 12, dtype=dtype).reshape(3, 4)}
    tp, specs = q.attach(tree, q.make_specs(tree, k=3, regularizer="softmin", init="quantile"))
    assert tp["reps"]["kernel"].dtype == dtype
    grads = jax.jit(jax.grad(lambda t: q.penalty(t, specs)))(tp)
    assert grads["model"]["kernel"].dtype == dtype and grads["reps"]["kernel"].dtype == dtype


# --------------------------------------------------------------------- bad input


def test_bad_specs():
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        q.QuantSpec(k=1)
    with pytest.raises(TypeError, match="k must be an integer >= 2"):
        q.QuantSpec(k=3.0)
    with pytest.raises(ValueError, match="unknown regularizer 'cubic'; allowed: sine, cosine, "):
        q.QuantSpec(regularizer="cubic")
    with pytest.raises(TypeError, match="regularizer must be a str"):
        q.QuantSpec(regularizer=None)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        q.QuantSpec(lam=-1.0)
    with pytest.raises(ValueError, match="lam schedule must be >= 0"):
        q.QuantSpec(lam=optax.constant_schedule(-2.0))
    with pytest.raises(ValueError, match="lo < hi"):
        q.QuantSpec(lo=1.0, hi=0.5)
    with pytest.raises(ValueError, match="tau must be"):
        q.QuantSpec(tau=0.0)
    with pytest.raises(ValueError, match="sigma must be"):
        q.QuantSpec(sigma=-1.0)
    with pytest.raises(ValueError, match="unknown init 'random'; allowed: grid, quantile, kmeans"):
        q.QuantSpec(init="random")
    with pytest.raises(TypeError, match="lam must be"):
        q.QuantSpec(lam="big")


def test_o_n_k_penalties_warn_above_32_levels_and_point_to_nearest():
    for kw in (
        dict(regularizer="softmin"),
        dict(regularizer="product"),
        dict(regularizer="wells", wells_mode="mean"),
    ):
        with pytest.warns(UserWarning, match=r"all k=64 representatives.*'nearest'"):
            q.QuantSpec(k=64, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.QuantSpec(k=32, regularizer="softmin")
        q.QuantSpec(k=256, regularizer="nearest")
        q.QuantSpec(k=256, regularizer="wells")  # mode "max": O(N log K)
        q.QuantSpec(k=256, regularizer="sine")


def test_bad_selection_and_attach():
    v = linen_variables()
    with pytest.raises(ValueError, match="matches no leaf"):
        q.select(v, include="nothing_here")
    with pytest.raises(TypeError, match="must be floating point"):
        q.select({"kernel": jnp.ones((2, 2), jnp.int32)})
    with pytest.raises(ValueError, match="skipped every selected leaf"):
        q.make_specs(v, overrides={"kernel": None})
    bad = {"kernel": jnp.array([[0.0, jnp.nan]])}
    with pytest.raises(ValueError, match="NaN or inf"):
        q.attach(bad, {"kernel": q.QuantSpec()})
    with pytest.raises(ValueError, match="does not have"):
        q.attach(v, {"params/Conv_9/kernel": q.QuantSpec()})
    with pytest.raises(ValueError, match="specs is empty"):
        q.attach(v, {})
    const = {"kernel": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="constant"):
        q.attach(const, {"kernel": q.QuantSpec()})


def test_mismatched_reps_tree_is_rejected():
    tree = {"kernel": jnp.linspace(-1, 1, 8).reshape(2, 4)}
    tp, specs = q.attach(tree, q.make_specs(tree, k=3, init="grid"))
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        q.penalty({"model": tree, "reps": {"kernel": jnp.zeros(4)}}, specs)
    with pytest.raises(ValueError, match="no representatives"):
        q.penalty({"model": tree, "reps": {}}, specs)
    with pytest.raises(ValueError, match="without a dynamic spec"):
        q.penalty({"model": tree, "reps": {**tp["reps"], "other": jnp.zeros(3)}}, specs)
    with pytest.raises(ValueError, match='keys "model" and "reps"'):
        q.penalty(tree, specs)
    unresolved = {
        "kernel": dataclasses.replace(specs["kernel"], regularizer="sine", lo=None, hi=None)
    }
    with pytest.raises(ValueError, match="no interval"):
        q.penalty(tp | {"reps": {}}, unresolved)


# ------------------------------------------------ no silent mistakes (overrides, include, k)


def _named_layers():
    rng = np.random.default_rng(0)
    return {
        name: {"kernel": jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)}
        for name in ("conv1", "fc1", "fc10")
    }


def test_overrides_match_whole_path_segments():
    tree = _named_layers()
    specs = q.make_specs(tree, include="kernel", k=4, overrides={"fc1": dict(k=8)})
    assert {p: s.k for p, s in specs.items()} == {
        "conv1/kernel": 4,
        "fc1/kernel": 8,
        "fc10/kernel": 4,  # "fc1" is not a substring match
    }
    specs = q.make_specs(tree, include="kernel", overrides={"fc1/kernel": None, "fc*": dict(k=3)})
    assert {p: s.k for p, s in specs.items()} == {"conv1/kernel": 4, "fc10/kernel": 3}
    specs = q.make_specs(tree, include="kernel", overrides={"/conv1/": dict(k=2)})
    assert specs["conv1/kernel"].k == 2


@pytest.mark.parametrize("key", ["Conv1", "fc", "c1", "fc1/bias", "kernel/fc1"])
def test_overrides_key_matching_nothing_is_refused_listing_paths(key):
    with pytest.raises(ValueError, match=r"match no selected leaf.*conv1/kernel, fc1/kernel"):
        q.make_specs(_named_layers(), include="kernel", overrides={key: dict(k=8)})


def test_include_and_exclude_take_lists_of_patterns():
    v = linen_variables()
    assert q.select(v, include=["Conv_0/kernel", "Dense_1/kernel"]) == [
        "params/Conv_0/kernel",
        "params/Dense_1/kernel",
    ]
    assert q.select(v, exclude=("Conv_0", "Dense_1")) == ["params/Dense_0/kernel"]
    specs = q.make_specs(v, include=["Dense_0/kernel"], k=2)
    assert list(specs) == ["params/Dense_0/kernel"]
    with pytest.raises(TypeError, match="include must be a regex str or a list/tuple"):
        q.select(v, include={"Conv_0"})
    with pytest.raises(ValueError, match="include holds an invalid regex"):
        q.select(v, include="Conv_0[")


def test_constant_kernel_is_refused_by_name():
    const = {"layer": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match="leaf 'layer/kernel' is empty.*constant"):
        q.attach(const, {"layer/kernel": q.QuantSpec()})


def test_k_larger_than_the_leaf_is_refused_by_name():
    tree = {"small": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)))}}
    with pytest.raises(ValueError, match=r"k=64 levels for leaf 'small/kernel'.*only 36"):
        q.make_specs(tree, k=64)
    with pytest.raises(ValueError, match=r"k=37 levels for leaf 'small/kernel'"):
        q.attach(tree, {"small/kernel": q.QuantSpec(k=37)})
    q.attach(tree, q.make_specs(tree, k=36, init="grid"))  # k == size is fine


# ------------------------------------------------------------------ lambda schedules


def _nan_after(n):
    return lambda step: jnp.where(jnp.asarray(step) < n, 1.0, jnp.nan)


def test_check_schedules_names_the_first_bad_step():
    v = linen_variables()
    specs = q.make_specs(v, lam=_nan_after(7), overrides={"Dense_1": dict(lam=1.0)})
    codebook.check_schedules(specs, 7)
    with pytest.raises(ValueError, match=r"lam of 'params/Conv_0/kernel' is nan at step 7"):
        codebook.check_schedules(specs, 100)
    ramp = optax.linear_schedule(1.0, -1.0, 10)  # negative from step 6
    with pytest.raises(ValueError, match=r"lam is -0.2.* at step 6"):
        validation.check_schedule(ramp, 20)
    with pytest.raises(ValueError, match="at step 3"):  # Python control flow: one call per step
        validation.check_schedule(lambda s: 1.0 if s < 3 else float("inf"), 5)


@pytest.mark.parametrize("bad", [jnp.nan, -1.0, jnp.inf])
def test_a_bad_lambda_is_never_a_silent_number(bad):
    v = linen_variables()
    sched = lambda step: jnp.where(jnp.asarray(step) < 5, 1.0, bad)  # noqa: E731
    tp, specs = q.attach(v, q.make_specs(v, lam=sched))
    jitted = jax.jit(lambda t, s: q.penalty(t, specs, s))
    assert np.isfinite(jitted(tp, 4)) and np.isnan(jitted(tp, 5))
    assert np.isnan(
        float(
            jax.jit(lambda t, s: q.penalty_stats(t, specs, s))(tp, 5)["params/Conv_0/kernel"][
                "lambda"
            ]
        )
    )
    with pytest.raises(ValueError, match="lam schedule gives .* at step 5"):
        q.penalty(tp, specs, 5)


def test_schedule_bad_at_step_0_is_refused():
    with pytest.raises(ValueError, match="lam schedule must be >= 0"):
        q.QuantSpec(lam=lambda step: jnp.nan)
    with pytest.raises(ValueError, match="lam schedule must be >= 0"):
        q.QuantSpec(lam=lambda step: jnp.inf)


def test_init_representatives_each_method():
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(64, 32)).astype(np.float32)
    flat = np.asarray(w, np.float64).ravel()
    k = 4
    grid = q.init_representatives(None, k, "grid", -1.0, 2.0)  # needs no weights
    np.testing.assert_array_equal(grid, np.linspace(-1.0, 2.0, k))
    quantile = q.init_representatives(w, k, "quantile", -1.0, 2.0)
    np.testing.assert_allclose(quantile, np.quantile(flat, (np.arange(k) + 0.5) / k))
    km = q.init_representatives(w, k, "kmeans", -1.0, 2.0)
    np.testing.assert_allclose(km, np.sort(np.asarray(q.quantizers.kmeans_1d(flat, k)[0])))
    # k-means levels are the means of their clusters (a Lloyd fixed point).
    a = np.argmin(np.abs(flat[:, None] - km[None]), axis=1)
    np.testing.assert_allclose(km, [flat[a == j].mean() for j in range(k)], rtol=1e-6)
    for method in ("grid", "quantile", "kmeans"):
        c = q.init_representatives(w, k, method, -1.0, 2.0, pin_zero=True)
        assert c.shape == (k,) and np.all(np.diff(c) > 0), (method, c)
        assert np.count_nonzero(c == 0.0) == 1, (method, c)
    with pytest.raises(ValueError, match="unknown init 'random'; allowed: grid, quantile"):
        q.init_representatives(w, k, "random", -1.0, 2.0)
