"""penalty.py: registry dispatch, per-layer reduction, lambda schedules, stats, exact ties."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qareg_jax as q
from qareg_jax import nearest_level as N
from qareg_jax import regularizers as R
from qareg_jax.penalty import elementwise, reduced
from qareg_jax.snap import assign

BUILTIN = ("sine", "cosine", "nearest", "softmin", "product", "wells")


def test_builtin_registry_entries():
    assert R.REGULARIZERS[: len(BUILTIN)] == BUILTIN
    assert set(R.STATIC) == {"sine", "cosine"} and set(R.DYNAMIC) >= set(BUILTIN[2:])
    for name in BUILTIN:  # a spec without lambda takes its entry's (unit-scale) default
        lam = R.get(name).default_lam
        assert 0 < lam < np.inf and q.QuantSpec(regularizer=name).lam_at() == lam
        changed = dataclasses.replace(q.QuantSpec(regularizer="nearest"), regularizer=name)
        assert changed.lam_at() == lam  # resolved when read, so replace() keeps it right
    wells = R.get("wells")
    assert wells.cost_of(q.QuantSpec(regularizer="wells", wells_mode="max")) == "O(N log K)"
    assert wells.cost_of(q.QuantSpec(regularizer="wells", wells_mode="mean")) == "O(N K)"


def _resolved(name, k, mode="max"):
    return q.QuantSpec(
        k=k, regularizer=name, lo=-0.2, hi=0.25, tau=1e-3, sigma=0.03, wells_mode=mode,
        reduction="mean", normalize=None,
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:regularizer .* evaluates all")
@pytest.mark.parametrize("k", [2, 5, 40])
@pytest.mark.parametrize("name,mode", [(n, "max") for n in BUILTIN] + [("wells", "mean")])
def test_dispatch_equals_the_direct_functions(name, mode, k):
    """elementwise is bitwise the regularizer's own function; reduced is its mean."""
    rng = np.random.default_rng(k)
    w = jnp.asarray(rng.normal(size=(37, 11)) * 0.1, jnp.float32)
    reps = jnp.asarray(rng.normal(size=k) * 0.1, jnp.float32)
    spec = _resolved(name, k, mode)
    direct = {
        "sine": lambda: R.sine(w, k, spec.lo, spec.hi),
        "cosine": lambda: R.cosine(w, k, spec.lo, spec.hi),
        "nearest": lambda: R.nearest(w, reps),
        "softmin": lambda: R.softmin(w, reps, spec.tau),
        "product": lambda: R.product(w, reps),
        "wells": lambda: R.wells(w, reps, spec.sigma, mode),
    }[name]()
    got = elementwise(w, spec, reps)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(direct))
    mean = float(reduced(w, spec, reps))
    assert mean == pytest.approx(float(jnp.mean(direct)), rel=1e-5, abs=1e-9)
    total = float(reduced(w, dataclasses.replace(spec, reduction="sum"), reps))
    assert total == pytest.approx(mean * w.size, rel=1e-6)


def test_dynamic_regularizer_without_reps_is_an_error():
    with pytest.raises(ValueError, match="needs representatives"):
        elementwise(jnp.ones(3), _resolved("nearest", 2))


def test_penalty_is_lambda_weighted_sum_of_layer_means_and_handles_any_pytree():
    tree = {
        "a": {"kernel": jnp.array([[0.1, 0.9], [0.4, 0.6]])},
        "b": [{"kernel": jnp.ones((1, 3))}],
    }
    specs = q.make_specs(
        tree,
        k=2,
        regularizer="nearest",
        init="grid",
        lo=0.0,
        hi=1.0,
        lam=2.0,
        reduction="mean",
        normalize=None,
        overrides={"b/": dict(reduction="sum", lam=0.5, lo=-1.0)},
    )
    tp, specs = q.attach(tree, specs)
    per = q.layer_penalties(tp, specs)
    a = np.mean(np.min((np.array([0.1, 0.9, 0.4, 0.6])[:, None] - np.array([0, 1])) ** 2, 1))
    np.testing.assert_allclose(per["a/kernel"], a, rtol=1e-6)
    np.testing.assert_allclose(per["b/0/kernel"], 0.0, atol=1e-7)
    np.testing.assert_allclose(jax.jit(lambda t: q.penalty(t, specs))(tp), 2.0 * a, rtol=1e-6)


def test_lambda_schedule_and_stats():
    tree = {"kernel": jnp.array([[0.1, 0.9], [0.4, 0.6]])}
    ramp = optax.linear_schedule(0.0, 4.0, 10)
    specs = q.make_specs(tree, k=2, lam=ramp, init="grid", lo=0.0, hi=1.0)
    tp, specs = q.attach(tree, specs)
    with pytest.raises(ValueError, match="step is required"):
        q.penalty(tp, specs)
    fn = jax.jit(lambda t, s: q.penalty(t, specs, s))
    assert float(fn(tp, 0)) == 0.0
    assert float(fn(tp, 10)) == pytest.approx(4.0 * float(q.layer_penalties(tp, specs)["kernel"]))
    stats = jax.jit(lambda t, s: q.penalty_stats(t, specs, s))(tp, 5)["kernel"]
    assert float(stats["lambda"]) == pytest.approx(2.0)
    assert float(stats["distance"]) == pytest.approx(np.mean([0.1, 0.1, 0.4, 0.4]), rel=1e-5)


# ------------------------------------------------------------------------ exact ties


def _midpoint_pair(sign):
    """Float32 levels ``a < b`` and ``w = fl(a + b) / 2`` strictly between them, where
    the rounding error ``e = (a + b) - fl(a + b)`` has the given sign (0: exact)."""
    rng = np.random.default_rng(7)
    while True:
        a, b = np.sort(rng.uniform(-1, 1, 2).astype(np.float32))
        if sign == 0:
            b = np.float32(a + np.float32(0.25))  # a + b then exact for |a| < 1 (mostly)
        s = np.float32(a + b)
        e = (np.float64(a) + np.float64(b)) - np.float64(s)
        w = np.float32(s / np.float32(2))
        if np.sign(e) == sign and a < w < b:
            return a, b, w


@pytest.mark.parametrize("sign", [0, 1, -1])
@pytest.mark.parametrize("k_pad", [0, 38])  # K = 2: compare chain; K = 40: bucket table
def test_exact_ties_assign_nearest_index_and_penalty(sign, k_pad):
    """A weight exactly on the float midpoint of two levels.

    ``e >= 0`` (the true midpoint is at or above the float one): the weight is a tie or
    nearer the lower level; assign, nearest_index on ``boundaries`` and the penalty
    all take the lower level. ``e < 0``: the weight is nearer the upper level, which
    assign and nearest_index on ``boundaries`` take; the penalty searches against plain
    midpoints (kept for bit-identical penalties) and takes the lower level there.
    """
    a, b, w = _midpoint_pair(sign)
    far = np.float32(10) + np.arange(k_pad, dtype=np.float32)  # levels far from w
    levels = np.concatenate([[b, a], far]).astype(np.float32)  # unsorted on purpose
    cs = np.sort(levels)
    ws = jnp.full((3, 5), w)
    upper = sign < 0
    want_level = b if upper else a

    got = np.asarray(assign(ws, jnp.asarray(levels)))
    assert (levels[got] == want_level).all()
    bounds = N.boundaries(jnp.asarray(cs))
    idx = np.asarray(N.nearest_index(ws, jnp.asarray(cs), bounds))
    assert (cs[idx] == want_level).all()
    np.testing.assert_array_equal(N.boundaries(cs), np.asarray(bounds))  # numpy path

    plain = (jnp.asarray(cs)[1:] + jnp.asarray(cs)[:-1]) / 2
    penalty_level = a  # plain midpoints: w == mid is a tie, to the lower level
    idx_plain = np.asarray(N.nearest_index(ws, jnp.asarray(cs), plain))
    assert (cs[idx_plain] == penalty_level).all()
    d2 = np.float32(w - penalty_level) ** 2
    np.testing.assert_array_equal(np.asarray(R.nearest(ws, jnp.asarray(levels))), d2)
    assert float(R.nearest_total(ws, jnp.asarray(levels))) == pytest.approx(15 * float(d2))
    # The rep gradient lands on the level the penalty chose, nowhere else.
    gr = np.asarray(jax.grad(lambda c: R.nearest_total(ws, c))(jnp.asarray(levels)))
    owner = np.flatnonzero(levels == penalty_level)[0]
    assert gr[owner] == pytest.approx(-2 * 15 * float(w - penalty_level))
    assert (np.delete(gr, owner) == 0).all()
    if upper:  # the two distances differ by rounding only
        assert abs(float(d2) - float(np.float32(b - w) ** 2)) <= 4 * np.spacing(d2)


# ------------------------------------------------------------- one lambda scale


def _unit_specs(name, k, w):
    params = {"d": {"kernel": w}}
    return q.attach(params, q.make_specs(params, k=k, regularizer=name))


@pytest.mark.filterwarnings("ignore:regularizer .* evaluates all")
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("name", BUILTIN)
def test_unit_penalty_costs_a_quarter_halfway_between_levels(name, k):
    """The default penalty (sum, normalize="unit") of every regularizer is in squared level
    spacings: a weight halfway between two adjacent starting levels costs 0.25 on average,
    and a weight on a level about 0."""
    w = jnp.asarray(np.random.default_rng(k).normal(0, 0.05, (32, 16)), jnp.float32)
    tp, specs = _unit_specs(name, k, w)
    spec = specs["d/kernel"]
    assert (spec.reduction, spec.normalize) == ("sum", "unit")
    c = np.sort(np.asarray(q.codebook.levels(tp, spec, "d/kernel"), np.float64))
    reps = tp["reps"].get("d/kernel")
    mids = jnp.asarray((c[:-1] + c[1:]) / 2, jnp.float32)
    np.testing.assert_allclose(float(reduced(mids, spec, reps)) / (k - 1), 0.25, rtol=1e-4)
    on = float(reduced(jnp.asarray(c, jnp.float32), spec, reps)) / k
    assert abs(on) < 0.01


@pytest.mark.filterwarnings("ignore:regularizer .* evaluates all")
@pytest.mark.parametrize("name", BUILTIN)
def test_unit_penalty_is_independent_of_the_weights_scale(name):
    """Scaling a layer's weights (and so its levels) by 100 leaves its unit penalty alone:
    one lambda fits layers of any scale."""
    w = jnp.asarray(np.random.default_rng(0).normal(0, 0.05, (32, 16)), jnp.float32)
    small = q.layer_penalties(*_unit_specs(name, 4, w))["d/kernel"]
    large = q.layer_penalties(*_unit_specs(name, 4, 100 * w))["d/kernel"]
    np.testing.assert_allclose(large, small, rtol=2e-3)
    raw = dict(reduction="mean", normalize=None)  # the raw form scales with the weights
    params, big = {"d": {"kernel": w}}, {"d": {"kernel": 100 * w}}
    a = q.layer_penalties(*q.attach(params, q.make_specs(params, k=4, regularizer=name, **raw)))
    b = q.layer_penalties(*q.attach(big, q.make_specs(big, k=4, regularizer=name, **raw)))
    if name not in ("sine", "cosine", "wells"):  # dimensionless already
        assert float(b["d/kernel"]) > 100 * float(a["d/kernel"])
