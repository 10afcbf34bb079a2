"""The regularizer registry: a toy regularizer registered from outside the package
trains end to end (make_specs, attach, penalty, optax, snap); registry errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qareg_jax as q
from qareg_jax import regularizers as R
from qareg_jax.nearest_level import nearest_value
from qareg_jax.regularizers import Regularizer, registry


def abs_distance(w: jax.Array, reps: jax.Array) -> jax.Array:
    """``|w - nearest rep|``, shape of ``w`` (an L1 pull towards the nearest level)."""
    cs = jnp.sort(reps)
    return jnp.abs(w - nearest_value(w, cs, (cs[1:] + cs[:-1]) / 2))


TOY = Regularizer(
    name="toy",
    elementwise=lambda w, reps, spec: abs_distance(w, reps),
    dynamic=True,
    cost="O(N log K)",
    default_lam=1.0,
)


@pytest.fixture
def toy():
    R.register(TOY)
    yield TOY
    R.unregister("toy")


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def test_a_toy_regularizer_trains_and_snaps(toy, digits):
    x, y = jnp.asarray(digits[0]), jnp.asarray(digits[1])
    model = Mlp()
    params = model.init(jax.random.key(0), x[:1])
    specs = q.make_specs(
        params, k=4, regularizer="toy", lam=30.0, init="quantile", reduction="mean", normalize=None
    )
    assert "toy" in R.REGULARIZERS and "toy" in R.DYNAMIC
    assert all(spec.dynamic and not spec.all_reps for spec in specs.values())
    tp, specs = q.attach(params, specs)
    assert set(tp["reps"]) == set(specs)

    def loss(t):
        logits = model.apply(t["model"], x)
        task = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return task + q.penalty(t, specs)

    def distance(t):
        stats = q.penalty_stats(t, specs)
        return float(np.mean([float(s["distance"]) for s in stats.values()]))

    tx = optax.adam(3e-3)
    opt_state = tx.init(tp)

    @jax.jit
    def step(t, s):
        grads = jax.grad(loss)(t)
        updates, s = tx.update(grads, s, t)
        return optax.apply_updates(t, updates), s

    before = distance(tp)
    for _ in range(150):
        tp, opt_state = step(tp, opt_state)
    after = distance(tp)
    assert after < 0.5 * before, (before, after)

    # The toy penalty equals its own element-wise form, summed (no total form given).
    path = next(iter(specs))
    w = q.check_tree(tp, specs)[path]
    want = float(jnp.mean(abs_distance(w, tp["reps"][path])))
    assert float(q.layer_penalties(tp, specs)[path]) == pytest.approx(want, rel=1e-6)

    snapped, assignments = q.snap(tp, specs)
    for path, a in assignments.items():
        w = q.check_tree(snapped, specs)[path]
        np.testing.assert_array_equal(np.asarray(w), np.asarray(snapped["reps"][path][a]))


def test_unknown_name_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown regularizer 'nope'; allowed: sine, cosine, "):
        R.get("nope")
    with pytest.raises(ValueError, match="allowed: .*nearest"):
        q.QuantSpec(regularizer="nope")
    with pytest.raises(ValueError, match="unknown regularizer 'toy'"):
        R.unregister("toy")


def test_duplicate_names_need_overwrite(toy):
    with pytest.raises(ValueError, match="'toy' is already registered"):
        R.register(TOY)
    with pytest.raises(ValueError, match="'nearest' is already registered"):
        R.register(
            Regularizer(
                name="nearest",
                elementwise=TOY.elementwise,
                dynamic=True,
                cost="O(N)",
                default_lam=1.0,
            )
        )
    other = Regularizer(
        name="toy", elementwise=TOY.elementwise, dynamic=True, cost="O(N K)", default_lam=2.0
    )
    R.register(other, overwrite=True)
    assert R.get("toy") is other
    assert q.QuantSpec(k=4, regularizer="toy").all_reps


def test_bad_entries():
    with pytest.raises(ValueError, match=r"unknown cost 'O\(1\)'"):
        Regularizer(
            name="x", elementwise=TOY.elementwise, dynamic=True, cost="O(1)", default_lam=1.0
        )
    with pytest.raises(ValueError, match="a static entry needs levels"):
        Regularizer(
            name="x", elementwise=TOY.elementwise, dynamic=False, cost="O(N)", default_lam=1.0
        )
    with pytest.raises(TypeError, match="must be a Regularizer"):
        R.register("toy")
    assert registry.names(dynamic=False) == R.STATIC
