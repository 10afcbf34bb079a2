"""STE quantization-aware training: forward on the levels, straight-through and summed grads."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from helpers import bits

from qareg_jax import codebook
from qareg_jax.codebook import QuantSpec
from qareg_jax.paths import named_leaves
from qareg_jax.penalty import penalty
from qareg_jax.qat import ste
from qareg_jax.quantizers import kmeans_1d
from qareg_jax.regularizers import static_levels
from qareg_jax.snap import snap

KERNEL = "dense/kernel"
# 2x3 kernel; levels (0, 1): nearest indices [[0, 1, 0], [1, 0, 1]] (0.5 is a tie: lower level).
W = np.array([[0.1, 0.9, 0.5], [0.6, -0.2, 1.3]], np.float32)
C = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)  # upstream grads of sum(C * w_q)
B = np.array([0.3, -0.7, 2.0], np.float32)
IDX = np.array([[0, 1, 0], [1, 0, 1]])


def tiny_tree(levels=(0.0, 1.0)):
    params = {"dense": {"kernel": jnp.asarray(W), "bias": jnp.asarray(B)}}
    tp = {"model": params, "reps": {KERNEL: jnp.asarray(levels, jnp.float32)}}
    return tp, {KERNEL: QuantSpec(k=len(levels))}


def linear_loss(tp, specs, **kw):
    """``sum(C * w_q) + sum(bias)``: upstream gradients C (kernel) and ones (bias)."""
    model = ste.quantize(tp, specs, **kw)
    return jnp.sum(C * model["dense"]["kernel"]) + jnp.sum(model["dense"]["bias"])


SIZES = (8, 16, 16, 3)


def mlp_params(seed=0):
    """A linen-style ``{"params": {"Dense_i": {"kernel", "bias"}}}`` tree (built by hand: fast)."""
    rng = np.random.default_rng(seed)
    layers = {
        f"Dense_{i}": {
            "kernel": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), jnp.float32),
            "bias": jnp.asarray(0.1 * rng.normal(size=n), jnp.float32),
        }
        for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True))
    }
    return {"params": layers}


def mlp_apply(params, x):
    layers = params["params"]
    for i in range(len(SIZES) - 1):
        x = x @ layers[f"Dense_{i}"]["kernel"] + layers[f"Dense_{i}"]["bias"]
        x = jax.nn.relu(x) if i < len(SIZES) - 2 else x
    return x


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_on_levels_and_equal_to_snap(dtype):
    params = jax.tree.map(lambda x: x.astype(dtype), mlp_params())
    tp, specs = ste.init(params, None, k=4)
    # Move the latent weights off the k-means levels.
    noise = jax.tree.map(lambda x: 0.03 * np.sin(np.arange(x.size).reshape(x.shape) * 1.7), params)
    tp = {**tp, "model": jax.tree.map(lambda p, n: (p + n).astype(dtype), tp["model"], noise)}
    # Separately compiled, as a train step and snap() would be.
    model = jax.jit(lambda tp: ste.quantize(tp, specs))(tp)
    snapped = jax.jit(lambda tp: snap(tp, specs)[0]["model"])(tp)
    q, s, latent = (named_leaves(t) for t in (model, snapped, tp["model"]))
    assert set(specs) == {p for p in latent if p.endswith("kernel")}
    for path, leaf in q.items():
        assert leaf.dtype == latent[path].dtype and leaf.shape == latent[path].shape
        if path in specs:
            assert np.isin(bits(leaf), bits(tp["reps"][path])).all()
            np.testing.assert_array_equal(bits(leaf), bits(s[path]))
            assert not np.array_equal(bits(leaf), bits(latent[path]))
        else:  # biases: untouched
            np.testing.assert_array_equal(bits(leaf), bits(latent[path]))


def test_forward_static_spec_uses_its_fixed_levels():
    params = mlp_params()
    specs = codebook.make_specs(params, regularizer="sine", k=4, interval="minmax")
    tp, specs = codebook.attach(params, specs)
    assert tp["reps"] == {}
    model = named_leaves(jax.jit(lambda tp: ste.quantize(tp, specs))(tp))
    snapped = named_leaves(jax.jit(lambda tp: snap(tp, specs)[0]["model"])(tp))
    for path, spec in specs.items():
        lv = np.asarray(static_levels("sine", 4, spec.lo, spec.hi), np.float32)
        assert np.isin(bits(model[path]), bits(lv)).all()
        np.testing.assert_array_equal(bits(model[path]), bits(snapped[path]))


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("levels", [(0.0, 1.0), (1.0, 0.0)])
def test_backward_by_hand(levels):
    tp, specs = tiny_tree(levels)
    grads = jax.grad(linear_loss)(tp, specs)
    np.testing.assert_array_equal(grads["model"]["dense"]["kernel"], C)  # straight through
    np.testing.assert_array_equal(grads["model"]["dense"]["bias"], np.ones(3))
    per_level = np.array([C[IDX == 0].sum(), C[IDX == 1].sum()])  # [1+3+5, 2+4+6] = [9, 12]
    np.testing.assert_array_equal(per_level, [9.0, 12.0])
    expected = per_level if levels == (0.0, 1.0) else per_level[::-1]
    np.testing.assert_array_equal(grads["reps"][KERNEL], expected)
    q = ste.quantize(tp, specs)["dense"]["kernel"]
    np.testing.assert_array_equal(
        q, np.asarray(levels, np.float32)[IDX if levels[0] == 0 else 1 - IDX]
    )


@pytest.mark.parametrize("k", [5, 300])  # uint8 and uint16 indices
def test_level_grad_is_per_level_sum(k):
    rng = np.random.default_rng(k)
    w = jnp.asarray(rng.normal(size=(7, 11)), jnp.float32)
    levels = jnp.asarray(rng.normal(size=k), jnp.float32)
    g = jnp.asarray(rng.normal(size=(7, 11)), jnp.float32)
    grad = jax.jit(jax.grad(lambda w, c: jnp.sum(g * ste.quantize_leaf(w, c)), argnums=(0, 1)))
    gw, gc = grad(w, levels)
    idx = np.argmin(np.abs(np.asarray(w)[..., None] - np.asarray(levels)), axis=-1)
    oracle = np.zeros(k, np.float64)
    np.add.at(oracle, idx.ravel(), np.asarray(g, np.float64).ravel())
    np.testing.assert_array_equal(gw, g)
    np.testing.assert_allclose(gc, oracle, rtol=1e-6, atol=1e-6)


def test_inactive_is_identity_with_no_level_grad():
    tp, specs = tiny_tree()
    np.testing.assert_array_equal(ste.quantize(tp, specs, active=False)["dense"]["kernel"], W)
    grads = jax.grad(linear_loss)(tp, specs, active=False)
    np.testing.assert_array_equal(grads["model"]["dense"]["kernel"], C)
    np.testing.assert_array_equal(grads["reps"][KERNEL], [0.0, 0.0])


# ------------------------------------------------------------------------ jit / no jit


class JitTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(None, True, False)
    def test_jit_and_traced_switch_agree(self, active):
        tp, specs = tiny_tree()

        def value_and_grad(tp, on):
            kw = {} if active is None else {"active": on}
            return jax.value_and_grad(linear_loss)(tp, specs, **kw)

        got = self.variant(value_and_grad)(tp, jnp.asarray(bool(active)))
        on = active is not False
        q = np.where(IDX == 1, 1.0, 0.0) if on else W
        want = (
            jnp.float32(np.sum(C * q) + B.sum()),
            {
                "model": {"dense": {"kernel": C, "bias": np.ones(3, np.float32)}},
                "reps": {KERNEL: np.array([9.0, 12.0] if on else [0.0, 0.0], np.float32)},
            },
        )
        chex.assert_trees_all_close(got, want, rtol=1e-6)


def test_hybrid_penalty_then_ste_in_one_jitted_step():
    tp, specs = tiny_tree()  # a "nearest" spec, lam = 1: penalty() reads the same reps

    @jax.jit
    def grads(tp, step):  # one compiled step for both phases
        return jax.grad(lambda tp: linear_loss(tp, specs, active=step >= 10) + penalty(tp, specs))(
            tp
        )

    pen = jax.grad(lambda tp: penalty(tp, specs))(tp)
    for step, level_grads in ((0, [0.0, 0.0]), (10, [9.0, 12.0])):
        want = {
            "model": {"dense": {"kernel": C, "bias": np.ones(3, np.float32)}},
            "reps": {KERNEL: np.asarray(level_grads, np.float32)},
        }
        want = jax.tree.map(lambda a, b: a + b, want, pen)
        chex.assert_trees_all_close(grads(tp, step), want, rtol=1e-6)
    assert np.abs(pen["reps"][KERNEL]).min() > 0  # the penalty does move the levels


# ---------------------------------------------------------------------------- training


def test_training_reduces_quantized_loss():
    params = mlp_params()
    tp, specs = ste.init(params, None, k=4)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=64))

    @jax.jit
    def loss_fn(tp):
        logits = mlp_apply(ste.quantize(tp, specs), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.adam(1e-2)
    traces = []

    @jax.jit
    def step(tp, opt_state):
        traces.append(1)  # runs once per compilation
        grads = jax.grad(loss_fn)(tp)
        updates, opt_state = tx.update(grads, opt_state, tp)
        return optax.apply_updates(tp, updates), opt_state

    first, reps0, opt_state = float(loss_fn(tp)), tp["reps"], tx.init(tp)
    for _ in range(40):
        tp, opt_state = step(tp, opt_state)
    for path in specs:  # the levels trained
        assert not np.allclose(tp["reps"][path], reps0[path])
    tp = ste.recluster(tp, specs)  # keeps the tree structure: opt_state stays valid
    for _ in range(40):
        tp, opt_state = step(tp, opt_state)
    assert len(traces) == 1  # the new reps did not trigger a recompilation
    last = float(loss_fn(tp))
    assert last < 0.5 * first, (first, last)
    model = named_leaves(jax.jit(lambda tp: ste.quantize(tp, specs))(tp))
    for path in specs:  # the evaluated net is quantized: at most K values per layer
        assert len(np.unique(np.asarray(model[path]))) <= 4


# --------------------------------------------------------------------- init, recluster


def test_init_levels_are_kmeans():
    params = mlp_params()
    tp, specs = ste.init(params, ["params/Dense_0/kernel", "params/Dense_2/kernel"], k=5)
    assert set(tp["reps"]) == set(specs) == {"params/Dense_0/kernel", "params/Dense_2/kernel"}
    leaves = named_leaves(params)
    for path in specs:
        book = np.sort(np.asarray(kmeans_1d(leaves[path], 5).codebook, np.float64))
        np.testing.assert_array_equal(tp["reps"][path], book.astype(np.float32))
        assert specs[path].init == "kmeans" and specs[path].dynamic
    assert tp["model"] is params
    # Specs: same levels; k comes from each spec.
    tp2, specs2 = ste.init(params, {p: QuantSpec(k=5, init="grid") for p in specs})
    chex.assert_trees_all_equal(tp2["reps"], tp["reps"])


def test_recluster_gives_kmeans_of_latent_weights():
    params = mlp_params()
    tp, specs = ste.init(params, None, k=4)
    moved = jax.tree.map(lambda p: p * 1.5 + 0.01, tp["model"])
    tp = {**tp, "model": moved}
    new = ste.recluster(tp, specs)
    assert new["model"] is moved
    leaves = named_leaves(moved)
    for path in specs:
        book = np.sort(np.asarray(kmeans_1d(leaves[path], 4).codebook, np.float64))
        np.testing.assert_array_equal(new["reps"][path], book.astype(np.float32))
        assert new["reps"][path].dtype == tp["reps"][path].dtype
    warm = ste.recluster(tp, specs, warm_start=True)
    for path in specs:  # a Lloyd fixed point: each level is the mean of its cell
        w = np.asarray(leaves[path], np.float64).ravel()
        c = np.asarray(warm["reps"][path], np.float64)
        idx = np.argmin(np.abs(w[:, None] - c), axis=1)
        for j in np.unique(idx):
            np.testing.assert_allclose(c[j], w[idx == j].mean(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ errors


def test_errors_name_the_argument():
    tp, specs = tiny_tree()
    with pytest.raises(ValueError, match="does not have: 'dense/nope'"):
        ste.quantize(tp, {"dense/nope": QuantSpec(k=2)})
    with pytest.raises(ValueError, match="no representatives for 'dense/kernel'"):
        ste.quantize({**tp, "reps": {}}, specs)
    with pytest.raises(ValueError, match=r"has shape \(2,\), expected \(3,\)"):
        ste.quantize(tp, {KERNEL: QuantSpec(k=3)})
    int_model = {"dense": {"kernel": jnp.ones((2, 3), jnp.int32), "bias": jnp.asarray(B)}}
    with pytest.raises(TypeError, match="'dense/kernel' must be a floating-point"):
        ste.quantize({**tp, "model": int_model}, specs)
    with pytest.raises(TypeError, match=r'\["reps"\]\[\'dense/kernel\'\] must be a floating'):
        ste.quantize({**tp, "reps": {KERNEL: jnp.array([0, 1])}}, specs)
    with pytest.raises(TypeError, match="dtype bfloat16 but its weight has dtype float32"):
        ste.quantize({**tp, "reps": {KERNEL: jnp.array([0, 1], jnp.bfloat16)}}, specs)
    with pytest.raises(ValueError, match='keys "model" and "reps"'):
        ste.quantize(tp["model"], specs)
    with pytest.raises(TypeError, match="specs must be a mapping"):
        ste.quantize(tp, [KERNEL])
    with pytest.raises(TypeError, match=r"specs\['dense/kernel'\] must be a QuantSpec"):
        ste.quantize(tp, {KERNEL: 2})
    with pytest.raises(ValueError, match="specs is empty"):
        ste.quantize(tp, {})
    with pytest.raises(TypeError, match="active must be a bool"):
        ste.quantize(tp, specs, active=1)
    with pytest.raises(ValueError, match=r"levels must have shape \(K,\)"):
        ste.quantize_leaf(jnp.asarray(W), jnp.ones((2, 2)))
    params = tp["model"]
    with pytest.raises(ValueError, match="k .* is required"):
        ste.init(params, [KERNEL])
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        ste.init(params, [KERNEL], k=1)
    with pytest.raises(ValueError, match="k and QuantSpec fields cannot be given with specs"):
        ste.init(params, specs, k=2)
    with pytest.raises(ValueError, match="static regularizers"):
        ste.init(params, {KERNEL: QuantSpec(k=2, regularizer="sine")})
    with pytest.raises(ValueError, match="paths name leaves that params does not have"):
        ste.init(params, ["dense/nope"], k=2)
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(lambda tp: ste.recluster(tp, specs))(tp)
