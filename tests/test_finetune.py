"""Fine-tuning with every selected weight kept exactly on its representative."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_on_reps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qareg_jax import codebook
from qareg_jax.codebook import QuantSpec
from qareg_jax.finetune import (
    QuantizedFinetuneState,
    RegularizeThenFinetuneState,
    assignments_by_path,
    finetune_specs,
    is_finetuning,
    quantized_finetune,
    regularize_then_finetune,
)
from qareg_jax.penalty import penalty
from qareg_jax.snap import snap

BF16 = jnp.bfloat16
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
KS = (2, 3, 5, 32, 33, 40)


def tiny_tree(w, reps, static=None):
    """Model with a dynamic "d/kernel", a bias and optionally a static "s/kernel" leaf."""
    model = {"d": {"kernel": w, "bias": jnp.zeros(w.shape[-1:], w.dtype)}}
    specs = {"d/kernel": QuantSpec(k=reps.shape[0], regularizer="nearest", lo=-1.0, hi=1.0)}
    if static is not None:
        kind, ws, k = static
        model["s"] = {"kernel": ws}
        specs["s/kernel"] = QuantSpec(k=k, regularizer=kind, lo=-0.5, hi=1.5)
    return {"model": model, "reps": {"d/kernel": reps}}, specs


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
        fixed = assignments_by_path(state)
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
    np.testing.assert_array_equal(assignments_by_path(state)["d/kernel"], expected)
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
            t["model"]["d"]["kernel"], t["reps"]["d/kernel"], assignments_by_path(state)["d/kernel"]
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
        fixed = assignments_by_path(state)["d/kernel"]
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


def test_state_is_shaped_like_the_model():
    w = jnp.ones((3, 2), jnp.float32)
    tp, specs = tiny_tree(w, jnp.float32([0.0, 1.0]))
    state = quantized_finetune(optax.sgd(0.1), specs).init(tp)
    assert isinstance(state, QuantizedFinetuneState)
    chex.assert_trees_all_equal_structs(
        state.assignments, {"d": {"kernel": w, "bias": optax.MaskedNode()}}
    )
    assert state.assignments["d"]["kernel"].dtype == jnp.uint8
    assert set(assignments_by_path(state)) == {"d/kernel"}
    assert set(assignments_by_path((optax.EmptyState(), state))) == {"d/kernel"}
    with pytest.raises(ValueError, match="exactly one QuantizedFinetuneState, found 2"):
        assignments_by_path((state, state))


class QuantizedFinetuneVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_weights_stay_on_reps_and_match_across_variants(self):
        rng = np.random.default_rng(4)
        tp, specs = tiny_tree(
            jnp.asarray(rng.normal(size=(8, 4)) * 0.3, jnp.float32), jnp.float32([-0.3, 0.1, 0.4])
        )
        tp, assignments = snap(tp, specs)
        loss = lsq_loss(jnp.ones((4, 8)), jnp.zeros((4, 4)))
        tx = quantized_finetune(optax.adam(1e-2), specs)

        def step(t, state):
            updates, state = tx.update(jax.grad(loss)(t), state, t)
            return optax.apply_updates(t, updates), state

        step = self.variant(step)
        t, state = tp, tx.init(tp)
        for _ in range(3):
            t, state = step(t, state)
            assert_on_reps(
                t["model"]["d"]["kernel"], t["reps"]["d/kernel"], assignments["d/kernel"]
            )
        reference, ref_state = tp, tx.init(tp)
        for _ in range(3):
            reference, ref_state = jax.jit(step)(reference, ref_state)
        chex.assert_trees_all_close(t, reference, rtol=1e-6, atol=1e-7)


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


# ------------------------------------------------------------- regularize_then_finetune

LAM, SNAP_AT, TUNE = 0.1, 5, 4


def rtf_problem(seed=5, reps=(-0.4, -0.1, 0.1, 0.4)):
    """A dynamic "d/kernel" with a bias; ``loss(t, lam)`` is task + lam * penalty."""
    rng = np.random.default_rng(seed)
    tp, specs = tiny_tree(
        jnp.asarray(rng.normal(size=(8, 5)) * 0.3, jnp.float32), jnp.float32(reps)
    )
    task = lsq_loss(jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), jnp.ones((16, 5)))

    def loss(t, lam):
        return task(t) + lam * penalty(t, specs)

    return tp, specs, loss


def two_step_run(tp, specs, loss, train_tx, finetune_tx, wrap):
    """``SNAP_AT`` steps of ``train_tx``, ``snap``, ``TUNE`` steps of quantized_finetune."""
    ft_tx = quantized_finetune(finetune_tx, specs)

    def make(tx, lam):
        def step(t, state):
            updates, state = tx.update(jax.grad(loss)(t, lam), state, t)
            return optax.apply_updates(t, updates), state

        return wrap(step)

    t, state = tp, train_tx.init(tp)
    train_step = make(train_tx, jnp.float32(LAM))
    for _ in range(SNAP_AT):
        t, state = train_step(t, state)
    snapped, assignments = snap(t, specs)
    t, state = snapped, ft_tx.init(snapped)
    tune_step = make(ft_tx, jnp.float32(0.0))
    for _ in range(TUNE):
        t, state = tune_step(t, state)
    return snapped, assignments, t


def combined_run(tp, specs, loss, train_tx, finetune_tx, wrap):
    """The same run with regularize_then_finetune: ``SNAP_AT + 2 + TUNE`` updates."""
    tx = regularize_then_finetune(train_tx, finetune_tx, specs, SNAP_AT)

    def step(t, state):
        lam = jnp.where(is_finetuning(state), 0.0, LAM)
        updates, state = tx.update(jax.grad(loss)(t, lam), state, t)
        return optax.apply_updates(t, updates), state

    step = wrap(step)
    t, state = tp, tx.init(tp)
    for _ in range(SNAP_AT + 2):
        t, state = step(t, state)
    snapped, assignments = t, assignments_by_path(state)
    for _ in range(TUNE):
        t, state = step(t, state)
    return snapped, assignments, t


class RegularizeThenFinetuneTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_train_snap_finetune(self):
        tp, specs, loss = rtf_problem()
        txs = (optax.adam(1e-2), optax.sgd(0.05, momentum=0.9))
        ref_snapped, ref_assignments, ref_tuned = two_step_run(tp, specs, loss, *txs, self.variant)
        snapped, assignments, tuned = combined_run(tp, specs, loss, *txs, self.variant)
        chex.assert_trees_all_equal(assignments, ref_assignments)
        assert_on_reps(
            snapped["model"]["d"]["kernel"], snapped["reps"]["d/kernel"], assignments["d/kernel"]
        )
        assert_on_reps(
            tuned["model"]["d"]["kernel"], tuned["reps"]["d/kernel"], assignments["d/kernel"]
        )
        # Compiled, the phases sit in lax.switch branches and XLA fuses them otherwise
        # than the separate steps: an ulp or so apart (bitwise without jit, below).
        chex.assert_trees_all_close(snapped, ref_snapped, rtol=1e-6, atol=1e-7)
        chex.assert_trees_all_close(tuned, ref_tuned, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(tuned["reps"]["d/kernel"], snapped["reps"]["d/kernel"])


def test_matches_train_snap_finetune_bitwise_op_by_op():
    tp, specs, loss = rtf_problem()
    txs = (optax.adam(1e-2), optax.sgd(0.05, momentum=0.9))
    with jax.disable_jit():
        reference = two_step_run(tp, specs, loss, *txs, lambda f: f)
        got = combined_run(tp, specs, loss, *txs, lambda f: f)
    chex.assert_trees_all_equal(got, reference)


def test_levels_far_below_the_weights_land_by_the_settling_update():
    tp, specs, loss = rtf_problem(seed=6, reps=(-1.0, 1e-20, 0.1, 1.0))
    tp["model"]["d"]["kernel"] = tp["model"]["d"]["kernel"] * 3
    tx = regularize_then_finetune(optax.sgd(0.1), optax.sgd(0.1), specs, 0)
    state, t = tx.init(tp), tp
    expected, assignments = snap(tp, specs)
    step = make_step(tx, lambda t: loss(t, 0.0))
    t, state, _ = step(t, state)
    first = np.asarray(t["model"]["d"]["kernel"])
    missed = first != np.asarray(expected["model"]["d"]["kernel"])
    assert missed.any() and (first[missed] == 0).all()  # the case this update exists for
    assert bool(is_finetuning(state))
    t, state, _ = step(t, state)
    chex.assert_trees_all_equal(t, expected)
    chex.assert_trees_all_equal(assignments_by_path(state), assignments)


def test_one_compilation_across_the_switch():
    tp, specs, loss = rtf_problem()
    tx = regularize_then_finetune(optax.adam(1e-2), optax.adam(1e-3), specs, 2)
    traces = []

    @jax.jit
    def step(t, state):
        traces.append(None)
        lam = jnp.where(is_finetuning(state), 0.0, LAM)
        updates, state = tx.update(jax.grad(loss)(t, lam), state, t)
        return optax.apply_updates(t, updates), state

    t, state = tp, tx.init(tp)
    phases = []
    for _ in range(7):
        t, state = step(t, state)
        phases.append(bool(is_finetuning(state)))
    assert len(traces) == 1
    assert phases == [False, False, True, True, True, True, True]
    assert isinstance(state, RegularizeThenFinetuneState) and int(state.count) == 7


# --------------------------------------------------------------------------- errors


def test_errors():
    w = jnp.ones((3, 2), jnp.float32)
    tp, specs = tiny_tree(w, jnp.float32([0.0, 1.0]))
    big = {"d/kernel": QuantSpec(k=300, regularizer="sine", lo=0.0, hi=1.0)}
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


@pytest.mark.parametrize(
    ("snap_at", "error", "match"),
    [
        (-1, ValueError, "snap_at must be >= 0, got -1"),
        (2.0, TypeError, "snap_at must be a Python int, got float"),
        (True, TypeError, "snap_at must be a Python int, got bool"),
        (None, TypeError, "snap_at must be a Python int, got NoneType"),
    ],
)
def test_regularize_then_finetune_bad_snap_at(snap_at, error, match):
    _, specs, _ = rtf_problem()
    with pytest.raises(error, match=match):
        regularize_then_finetune(optax.sgd(0.1), optax.sgd(0.1), specs, snap_at)


def test_regularize_then_finetune_errors():
    tp, specs, _ = rtf_problem()
    static = tiny_tree(jnp.ones((3, 2)), jnp.float32([0.0, 1.0]), ("sine", jnp.ones(3), 3))[1]
    with pytest.raises(ValueError, match=r"needs dynamic specs; \['s/kernel'\] are static"):
        regularize_then_finetune(optax.sgd(0.1), optax.sgd(0.1), static, 3)
    with pytest.raises(ValueError, match="rep_grad"):
        regularize_then_finetune(optax.sgd(0.1), optax.sgd(0.1), specs, 3, rep_grad="median")
    tx = regularize_then_finetune(optax.sgd(0.1), optax.sgd(0.1), specs, 3)
    state = tx.init(tp)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(tp, state)
    with pytest.raises(ValueError, match="no representatives"):
        tx.init({"model": tp["model"], "reps": {}})
    with pytest.raises(ValueError, match="exactly one RegularizeThenFinetuneState"):
        is_finetuning(optax.EmptyState())
