"""Snapping to the nearest level and fine-tuning with weights kept exactly on their reps."""

from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qareg_jax import codebook
from qareg_jax.codebook import QuantSpec
from qareg_jax.penalty import penalty
from qareg_jax.quantizers import index_dtype
from qareg_jax.regularizers import static_levels
from qareg_jax.snap import QuantizedFinetuneState, assign, finetune_specs, quantized_finetune, snap

BF16 = jnp.bfloat16
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Few distinct K (one compilation each): the compare chain (K <= 32) and the binary search.
KS = (2, 3, 5, 32, 33, 40)


def bits(x):
    x = np.asarray(x)
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))


def assert_on_reps(w, c, a):
    """``w`` is bitwise ``c[a]``: <= K distinct values, all members of ``c``."""
    w, c, a = np.asarray(w), np.asarray(c), np.asarray(a)
    np.testing.assert_array_equal(bits(w), bits(c)[a])
    assert len(np.unique(bits(w))) <= c.shape[0]
    assert np.isin(bits(w), bits(c)).all()


def nearest_oracle(w, levels):
    """Exact nearest level (rational arithmetic); ties to the lower value, then first index."""
    ls = [Fraction(float(v)) for v in levels]
    out = []
    for x in np.ravel(w):
        d = [abs(Fraction(float(x)) - v) for v in ls]
        best = min(d)
        cands = [j for j in range(len(ls)) if d[j] == best]
        out.append(min(cands, key=lambda j: (ls[j], j)))
    return np.array(out).reshape(np.shape(w))


floats32 = st.floats(-8, 8, width=32, allow_subnormal=False).filter(
    lambda x: x == 0 or abs(x) > 1e-30
)


def tiny_tree(w, reps, static=None):
    """Model with a dynamic "d/kernel", a bias and optionally a static "s/kernel" leaf."""
    model = {"d": {"kernel": w, "bias": jnp.zeros(w.shape[-1:], w.dtype)}}
    specs = {"d/kernel": QuantSpec(k=reps.shape[0], regularizer="nearest", lo=-1.0, hi=1.0)}
    if static is not None:
        kind, ws, k = static
        model["s"] = {"kernel": ws}
        specs["s/kernel"] = QuantSpec(k=k, regularizer=kind, lo=-0.5, hi=1.5)
    return {"model": model, "reps": {"d/kernel": reps}}, specs


# ----------------------------------------------------------------------- assign / snap


@st.composite
def levels_and_weights(draw):
    k = draw(st.sampled_from(KS))
    pool = draw(st.lists(floats32, min_size=1, max_size=k))  # duplicate levels too
    levels = np.array(
        draw(st.lists(st.sampled_from(pool) | floats32, min_size=k, max_size=k)), np.float32
    )
    s = np.sort(levels)
    mids = (s[:-1] + s[1:]) / np.float32(2)  # rounded float midpoints, and their neighbours
    special = np.concatenate([levels, mids, np.nextafter(mids, 9), np.nextafter(mids, -9)])
    w = draw(st.lists(st.sampled_from(special.tolist()) | floats32, min_size=24, max_size=24))
    return np.array(w, np.float32), levels


@settings(max_examples=60, **SETTINGS)
@given(levels_and_weights())
def test_assign_is_the_exact_nearest_level_with_ties_to_the_lower(data):
    w, levels = data
    a = jax.jit(assign)(jnp.asarray(w), jnp.asarray(levels))
    assert a.dtype == index_dtype(levels.shape[0])
    np.testing.assert_array_equal(np.asarray(a), nearest_oracle(w, levels))


def test_assign_ties_adjacent_levels_and_duplicates():
    # Exact ties go to the lower level, whatever the stored order.
    assert assign(jnp.float32([0.5, 0.25, 0.75]), jnp.float32([1.0, 0.0])).tolist() == [1, 1, 0]
    # Adjacent floats: the float midpoint rounds up to b, yet b is nearest to itself.
    a = np.float32(1.0)
    b = np.nextafter(a, np.float32(2))
    assert assign(jnp.asarray([a, b]), jnp.asarray([b, a])).tolist() == [1, 0]
    # Equal levels: the first of them; K = 40 takes the binary search path.
    levels = jnp.linspace(-1, 1, 40).at[7].set(0.5).at[30].set(0.5)
    i = int(assign(jnp.float32([0.5001]), levels)[0])
    assert i == 7
    assert assign(jnp.float32([0.5001]), levels, index_dtype=jnp.int32).dtype == jnp.int32


@st.composite
def snap_cases(draw):
    dtype = draw(st.sampled_from([jnp.float32, BF16]))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    k = draw(st.sampled_from(KS))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["sine", "cosine"]))
    ks = draw(st.integers(2, 8))
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=shape), dtype)
    reps = jnp.asarray(rng.permutation(rng.normal(size=k)), dtype)  # unsorted
    ws = jnp.asarray(rng.uniform(-1, 2, size=(3, 4)), dtype)
    return tiny_tree(w, reps, static=(kind, ws, ks))


@settings(max_examples=10, **SETTINGS)
@given(snap_cases())
def test_snap_puts_every_weight_on_a_rep_and_is_idempotent(case):
    tp, specs = case
    snapped, assignments = jax.jit(lambda t: snap(t, specs))(tp)
    assert set(snapped["reps"]) == set(specs)
    np.testing.assert_array_equal(bits(snapped["reps"]["d/kernel"]), bits(tp["reps"]["d/kernel"]))
    s = specs["s/kernel"]
    dtype = tp["model"]["s"]["kernel"].dtype
    static = jnp.asarray(static_levels(s.regularizer, s.k, s.lo, s.hi), dtype)
    np.testing.assert_array_equal(bits(snapped["reps"]["s/kernel"]), bits(static))
    assert snapped["reps"]["s/kernel"].dtype == dtype
    for path, a in assignments.items():
        w = codebook.check_tree(snapped, finetune_specs(specs))[path]
        assert a.shape == w.shape and a.dtype == index_dtype(specs[path].k)
        assert_on_reps(w, snapped["reps"][path], a)
        # Each weight went to its nearest level (exact oracle).
        original = np.asarray(codebook.check_tree(tp, specs)[path], np.float32)
        np.testing.assert_array_equal(
            np.asarray(a), nearest_oracle(original, np.asarray(snapped["reps"][path], np.float32))
        )
    np.testing.assert_array_equal(
        bits(snapped["model"]["d"]["bias"]), bits(tp["model"]["d"]["bias"])
    )
    again, assignments2 = jax.jit(lambda t: snap(t, specs))(snapped)
    for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(snapped), strict=True):
        np.testing.assert_array_equal(bits(x), bits(y))
    for path in specs:
        np.testing.assert_array_equal(assignments2[path], assignments[path])


# ---------------------------------------------------------------------- fine-tuning


def lsq_loss(x, y):
    def loss(tp):
        m = tp["model"]
        out = jnp.tanh(x @ m["d"]["kernel"].astype(jnp.float32)) + m["d"]["bias"]
        if "s" in m:
            out = out + jnp.sum(m["s"]["kernel"].astype(jnp.float32))
        return jnp.mean((out - y) ** 2)

    return loss


def make_step(tx, loss):
    @jax.jit
    def step(tp, state, **extra):
        value, grads = jax.value_and_grad(loss)(tp)
        updates, state = tx.update(grads, state, tp, **extra)
        return optax.apply_updates(tp, updates), state, value

    return step


def finetune_state(state):
    (found,) = [s for s in state if isinstance(s, QuantizedFinetuneState)]
    return found


@settings(max_examples=5, **SETTINGS)
@given(
    st.sampled_from([jnp.float32, BF16]),
    st.sampled_from(KS),
    st.integers(1, 12),
    st.sampled_from(["sgd", "adam"]),
    st.integers(0, 2**16),
)
def test_every_finetuning_step_keeps_weights_on_fixed_assignments(dtype, k, n_out, opt, seed):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(8, n_out)) * 0.3, dtype)
    reps = jnp.asarray(rng.normal(size=k) * 0.3, dtype)
    tp, specs = tiny_tree(
        w, reps, static=("cosine", jnp.asarray(rng.normal(size=(2, 3)), dtype), 3)
    )
    x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, n_out)), jnp.float32)
    tp, assignments = jax.jit(lambda t: snap(t, specs))(tp)
    inner = optax.sgd(0.05, momentum=0.9) if opt == "sgd" else optax.adam(1e-2)
    tx = optax.chain(optax.clip_by_global_norm(1.0), quantized_finetune(inner, specs))
    state = jax.jit(tx.init)(tp)
    step = make_step(tx, lsq_loss(x, y))
    start = {p: np.asarray(r) for p, r in tp["reps"].items()}
    for _ in range(100):
        tp, state, _ = step(tp, state)
        fixed = finetune_state(state).assignments
        leaves = codebook.check_tree(tp, finetune_specs(specs))
        for path in specs:
            np.testing.assert_array_equal(fixed[path], assignments[path])
            assert_on_reps(leaves[path], tp["reps"][path], assignments[path])
    assert any(not np.array_equal(start[p], tp["reps"][p]) for p in specs)


def test_unsnapped_weights_with_reps_land_on_them():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    tp, specs = tiny_tree(w, jnp.float32([-1.0, 1e-20, 1.0]))
    expected = snap(tp, specs)[1]["d/kernel"]
    tx = quantized_finetune(optax.sgd(0.1), specs)
    state = tx.init(tp)  # no snap() first: the transform assigns
    np.testing.assert_array_equal(state.assignments["d/kernel"], expected)
    step = make_step(tx, lsq_loss(jnp.ones((4, 8)), jnp.zeros((4, 4))))
    c0 = tp["reps"]["d/kernel"]
    tp, state, _ = step(tp, state)  # reps hold still while the weights move onto them
    np.testing.assert_array_equal(tp["reps"]["d/kernel"], c0)
    np.testing.assert_allclose(tp["model"]["d"]["kernel"], c0[expected], atol=1e-7)
    for _ in range(3):
        tp, state, _ = step(tp, state)
    assert not np.array_equal(tp["reps"]["d/kernel"], c0)
    assert_on_reps(tp["model"]["d"]["kernel"], tp["reps"]["d/kernel"], expected)


def test_rep_gradient_is_the_sum_or_mean_of_its_weights_gradients():
    w = jnp.float32([[1.0, 2.0, 2.0], [5.0, 1.0, 5.0]])
    reps = jnp.float32([5.0, 1.0, 2.0, 9.0])  # unsorted; 9 owns no weight
    tp, specs = tiny_tree(w, reps)
    g_w = jnp.float32([[0.25, 0.5, 1.0], [2.0, 4.0, 8.0]])
    grads = {
        "model": {"d": {"kernel": g_w, "bias": jnp.float32([1.0, 2.0, 3.0])}},
        "reps": {"d/kernel": jnp.float32([0.125, 0.0, 0.0, 0.0625])},
    }
    expected = {
        "sum": [2.0 + 8.0 + 0.125, 0.25 + 4.0, 0.5 + 1.0, 0.0625],
        "mean": [5.0 + 0.125, 4.25 / 2, 1.5 / 2, 0.0625],
    }
    for rep_grad, want in expected.items():
        for train_unselected in (True, False):
            tx = quantized_finetune(
                optax.identity(), specs, rep_grad=rep_grad, train_unselected=train_unselected
            )
            updates, _ = jax.jit(tx.update)(grads, tx.init(tp), tp)
            u_c = updates["reps"]["d/kernel"]
            np.testing.assert_array_equal(u_c, want)
            np.testing.assert_array_equal(
                updates["model"]["d"]["kernel"], u_c[jnp.int32([[1, 2, 2], [0, 1, 0]])]
            )
            bias = updates["model"]["d"]["bias"]
            np.testing.assert_array_equal(bias, grads["model"]["d"]["bias"] * train_unselected)


def test_train_unselected_false_freezes_biases_and_extra_entries():
    rng = np.random.default_rng(1)
    tp, specs = tiny_tree(
        jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), jnp.float32([-0.5, 0.5])
    )
    tp["range"] = {"margin": jnp.float32(0.3)}  # another top-level entry
    loss0 = lsq_loss(jnp.ones((4, 8)), jnp.ones((4, 4)))

    def loss(t):
        return loss0(t) + t["range"]["margin"] ** 2

    tp, _ = snap(tp, specs)
    assert set(tp) == {"model", "reps", "range"}
    for train_unselected in (True, False):
        tx = quantized_finetune(optax.sgd(0.1), specs, train_unselected=train_unselected)
        state, t = tx.init(tp), tp
        step = make_step(tx, loss)
        for _ in range(3):
            t, state, _ = step(t, state)
        frozen = [
            np.array_equal(t["model"]["d"]["bias"], tp["model"]["d"]["bias"]),
            np.array_equal(t["range"]["margin"], tp["range"]["margin"]),
        ]
        assert frozen == [not train_unselected] * 2
        assert not np.array_equal(t["reps"]["d/kernel"], tp["reps"]["d/kernel"])
        assert_on_reps(
            t["model"]["d"]["kernel"], t["reps"]["d/kernel"], state.assignments["d/kernel"]
        )


def test_partition_masked_schedule_and_extra_args_as_inner_optimizers():
    rng = np.random.default_rng(2)
    tp, specs = tiny_tree(
        jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), jnp.float32([-0.5, 0.5])
    )
    tp, _ = snap(tp, specs)
    loss = lsq_loss(jnp.ones((4, 8)), jnp.ones((4, 4)))

    def labels(t):
        return {"model": jax.tree.map(lambda _: "model", t["model"]), "reps": {"d/kernel": "reps"}}

    def reps_mask(t):
        return {"model": jax.tree.map(lambda _: False, t["model"]), "reps": {"d/kernel": True}}

    inners = {
        "reps frozen": optax.partition(
            {"model": optax.sgd(0.1), "reps": optax.set_to_zero()}, labels
        ),
        "model frozen": optax.partition(
            {"model": optax.set_to_zero(), "reps": optax.sgd(0.1)}, labels
        ),
        "masked decay": optax.chain(
            optax.masked(optax.add_decayed_weights(0.5), reps_mask), optax.sgd(0.1)
        ),
        "schedule + plateau": optax.chain(
            optax.sgd(optax.linear_schedule(0.1, 0.01, 5)), optax.contrib.reduce_on_plateau()
        ),
    }
    for name, inner in inners.items():
        tx = optax.chain(optax.clip_by_global_norm(1.0), quantized_finetune(inner, specs))
        state, t = tx.init(tp), tp
        step = make_step(tx, loss)
        for _ in range(3):
            extra = {"value": loss(t)} if name == "schedule + plateau" else {}
            t, state, _ = step(t, state, **extra)
        moved_reps = not np.array_equal(t["reps"]["d/kernel"], tp["reps"]["d/kernel"])
        moved_bias = not np.array_equal(t["model"]["d"]["bias"], tp["model"]["d"]["bias"])
        assert (moved_reps, moved_bias) == {
            "reps frozen": (False, True),
            "model frozen": (True, False),
        }.get(name, (True, True)), name
        fixed = finetune_state(state).assignments["d/kernel"]
        assert_on_reps(t["model"]["d"]["kernel"], t["reps"]["d/kernel"], fixed)


def test_static_specs_snap_to_their_levels_and_fine_tune():
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.uniform(-1, 1, size=(8, 4)), jnp.float32)
    model = {"a": {"kernel": w}, "b": {"kernel": w * 2}}
    specs = {
        "a/kernel": QuantSpec(k=3, regularizer="sine", lo=-1.0, hi=1.0),
        "b/kernel": QuantSpec(k=4, regularizer="cosine", lo=-2.0, hi=2.0),
    }
    tp = {"model": model, "reps": {}}
    snapped, assignments = snap(tp, specs)
    np.testing.assert_array_equal(snapped["reps"]["a/kernel"], [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(snapped["reps"]["b/kernel"], [-1.5, -0.5, 0.5, 1.5])
    with pytest.raises(ValueError, match="without a dynamic spec"):
        codebook.check_tree(snapped, specs)  # the snapped tree needs finetune_specs
    assert float(penalty(snapped, finetune_specs(specs))) == 0.0

    def loss(t):
        m = t["model"]
        return jnp.sum((m["a"]["kernel"] - 0.3) ** 2) + jnp.sum((m["b"]["kernel"] + 0.2) ** 2)

    tx = quantized_finetune(optax.sgd(1e-2), specs)
    state, t = tx.init(snapped), snapped
    step = make_step(tx, loss)
    for _ in range(5):
        t, state, _ = step(t, state)
    for path in specs:
        assert_on_reps(t["model"][path[0]]["kernel"], t["reps"][path], assignments[path])
    assert float(loss(t)) < float(loss(snapped))


# ----------------------------------------------------------- digits: fine-tuning helps


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


@pytest.fixture(scope="module")
def digits_model():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = jnp.asarray(x / 16.0, jnp.float32)
    y = jnp.asarray(y)
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), x[:1])
    tx = optax.adam(1e-2)

    def loss(p):
        logits = model.apply(p, x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(p):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (p, tx.init(p)), None, length=300)[0][0]

    return model, x, y, train(params)


@pytest.mark.parametrize("dtype", [jnp.float32, BF16])
def test_finetuning_recovers_loss_lost_by_snapping_digits(digits_model, dtype):
    model, x, y, params = digits_model
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    specs = codebook.make_specs(params, k=2, regularizer="nearest", init="quantile")
    assert set(specs) == {"params/Dense_0/kernel", "params/Dense_1/kernel"}
    tp, specs = codebook.attach(params, specs)

    def loss(t):
        logits = model.apply(t["model"], x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def accuracy(t):
        return float(jnp.mean(model.apply(t["model"], x).argmax(-1) == y))

    snapped, assignments = jax.jit(lambda t: snap(t, specs))(tp)
    loss_trained, loss_snapped = float(loss(tp)), float(loss(snapped))
    assert loss_snapped > loss_trained + 0.1  # K = 2 hurts
    tx = optax.chain(optax.clip_by_global_norm(1.0), quantized_finetune(optax.adam(3e-3), specs))
    state, t = jax.jit(tx.init)(snapped), snapped
    step = make_step(tx, loss)
    for _ in range(100):
        t, state, _ = step(t, state)
    assert float(loss(t)) < 0.8 * loss_snapped
    assert accuracy(tp) > accuracy(t) > accuracy(snapped)
    leaves = codebook.check_tree(t, specs)
    for path in specs:
        assert t["reps"][path].dtype == dtype
        assert_on_reps(leaves[path], t["reps"][path], assignments[path])


# --------------------------------------------------------------------------- errors


def test_errors():
    w = jnp.ones((3, 2), jnp.float32)
    tp, specs = tiny_tree(w, jnp.float32([0.0, 1.0]))
    with pytest.raises(ValueError, match='keys "model" and "reps"'):
        snap({"model": tp["model"]}, specs)
    with pytest.raises(ValueError, match="no representatives"):
        snap({"model": tp["model"], "reps": {}}, specs)
    with pytest.raises(ValueError, match="does not have"):
        snap(tp, {**specs, "x/kernel": specs["d/kernel"]})
    with pytest.raises(ValueError, match="shape"):
        snap({**tp, "reps": {"d/kernel": jnp.zeros(3)}}, specs)
    with pytest.raises(TypeError, match="dtype"):
        snap({**tp, "reps": {"d/kernel": jnp.zeros(2, BF16)}}, specs)
    big = {"d/kernel": QuantSpec(k=300, regularizer="sine", lo=0.0, hi=1.0)}
    with pytest.raises(ValueError, match="cannot hold index 299"):
        snap({"model": tp["model"], "reps": {}}, big, index_dtype=jnp.uint8)
    assert snap({"model": tp["model"], "reps": {}}, big)[1]["d/kernel"].dtype == jnp.uint16
    with pytest.raises(ValueError, match="integer dtype"):
        assign(w, jnp.float32([0.0, 1.0]), index_dtype=jnp.float32)
    with pytest.raises(ValueError, match="shape"):
        assign(w, jnp.zeros((2, 2)))
    with pytest.raises(TypeError, match="floating"):
        assign(jnp.ones(3, jnp.int32), jnp.float32([0.0, 1.0]))

    with pytest.raises(ValueError, match="rep_grad"):
        quantized_finetune(optax.sgd(0.1), specs, rep_grad="median")
    with pytest.raises(ValueError, match="cannot hold index 299"):
        quantized_finetune(optax.sgd(0.1), big, index_dtype=jnp.uint8)
    with pytest.raises(ValueError, match=r"call snap\(\) first"):
        quantized_finetune(optax.sgd(0.1), big).init({"model": tp["model"], "reps": {}})
    tx = quantized_finetune(optax.sgd(0.1), specs)
    with pytest.raises(TypeError, match="dtype"):
        tx.init({**tp, "reps": {"d/kernel": jnp.zeros(2, BF16)}})
    with pytest.raises(ValueError, match="reps for paths without a dynamic spec"):
        tx.init({**tp, "reps": {**tp["reps"], "d/bias": jnp.zeros(2)}})
    state = tx.init(tp)
    grads = jax.tree.map(jnp.zeros_like, tp)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(grads, state)
    with pytest.raises(ValueError, match="no reps entries"):
        tx.update({**grads, "reps": {}}, state, tp)
    with pytest.raises(ValueError, match="top-level keys"):
        tx.update(grads["model"], state, tp)
