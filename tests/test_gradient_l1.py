"""Gradient-l1 loss wrapper: exact value, gradient, start_step, schedules, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qareg_jax.gradient_l1 import grad_l1_penalty, gradient_l1

A = np.array([[1.0, 2.0, -0.5], [3.0, -1.0, 0.25], [0.5, 0.5, 2.0], [-1.0, 0.0, 1.0]])
B = np.array([1.0, 0.5, -0.25, 0.75])


def _params(w=(0.3, -0.2, 0.1)):
    return {
        "Dense_0": {"kernel": jnp.asarray(np.reshape(w, (3, 1)), jnp.float32), "bias": 0.5},
    }


def _loss(params, batch):
    """0.5 |A w + bias - b|^2 (batch scales it): a quadratic with a hand-computable gradient."""
    p = params["Dense_0"]
    r = jnp.asarray(A, jnp.float32) @ p["kernel"][:, 0] + p["bias"] - jnp.asarray(B, jnp.float32)
    return batch * 0.5 * jnp.sum(r * r)


def _by_hand(w, lam, bias=0.5, scale=1.0):
    w = np.asarray(w, np.float64)
    r = A @ w + bias - B
    loss = scale * 0.5 * r @ r
    grad = scale * A.T @ r  # d loss / d kernel
    return loss, np.abs(grad).sum(), loss + lam * np.abs(grad).sum()


def test_value_equals_hand_computed():
    w = (0.3, -0.2, 0.1)
    loss, pen, total = _by_hand(w, 0.1, scale=2.0)
    fn = jax.jit(gradient_l1(_loss, 0.1))
    got, info = fn(_params(w), 2.0)
    assert float(got) == pytest.approx(total, rel=1e-6)
    assert float(info["loss"]) == pytest.approx(loss, rel=1e-6)
    assert float(info["grad_l1"]) == pytest.approx(pen, rel=1e-6)
    assert float(info["lam"]) == pytest.approx(0.1)
    # The bias is not a selected leaf (default: kernels only); selecting it adds |d loss/d b|.
    both = jax.jit(gradient_l1(_loss, 0.1, paths=["Dense_0/kernel", "Dense_0/bias"]))
    r = A @ np.asarray(w) + 0.5 - B
    _, info = both(_params(w), 2.0)
    assert float(info["grad_l1"]) == pytest.approx(pen + 2.0 * abs(r.sum()), rel=1e-6)
    loss2, pen2, _ = jax.jit(lambda p: grad_l1_penalty(_loss, p, 2.0))(_params(w))
    assert float(loss2) == pytest.approx(loss, rel=1e-6) and float(pen2) == pytest.approx(pen)


def test_gradient_matches_hand_and_finite_differences():
    w = np.array([0.3, -0.2, 0.1])
    lam = 0.1
    fn = gradient_l1(_loss, lam)
    grad = jax.jit(jax.grad(lambda p: fn(p, 1.0)[0]))(_params(w))
    g = np.asarray(grad["Dense_0"]["kernel"])[:, 0]
    # d/dw [L + lam |A^T r|_1] = A^T r + lam A^T A sign(A^T r): needs the second derivative.
    r = A @ w + 0.5 - B
    want = A.T @ r + lam * A.T @ A @ np.sign(A.T @ r)
    np.testing.assert_allclose(g, want, rtol=1e-5)
    eps = 1e-3
    for i in range(3):
        e = np.zeros(3)
        e[i] = eps
        fd = (_by_hand(w + e, lam)[2] - _by_hand(w - e, lam)[2]) / (2 * eps)
        assert g[i] == pytest.approx(fd, rel=1e-4)
    # The bias gets the second-order term too: d/db |A^T r|_1 = sum_j sign(A^T r)_j (A^T 1)_j.
    gb = float(grad["Dense_0"]["bias"])
    want_b = r.sum() + lam * np.sign(A.T @ r) @ A.T @ np.ones(4)
    assert gb == pytest.approx(want_b, rel=1e-5)


def test_start_step_and_schedule():
    w = (0.3, -0.2, 0.1)
    loss, pen, total = _by_hand(w, 0.2)
    fn = jax.jit(gradient_l1(_loss, 0.2, start_step=10))
    before, info = fn(_params(w), 1.0, 9)
    after, _ = fn(_params(w), 1.0, jnp.int32(10))
    assert float(before) == pytest.approx(loss, rel=1e-6) and float(info["lam"]) == 0.0
    assert float(info["grad_l1"]) == pytest.approx(pen, rel=1e-6)  # still logged
    assert float(after) == pytest.approx(total, rel=1e-6)
    g_before = jax.grad(lambda p: fn(p, 1.0, 3)[0])(_params(w))
    g_plain = jax.grad(_loss)(_params(w), 1.0)
    np.testing.assert_allclose(g_before["Dense_0"]["kernel"], g_plain["Dense_0"]["kernel"])
    sched = optax.linear_schedule(0.0, 0.4, 100)
    fs = jax.jit(gradient_l1(_loss, sched))
    got, info = fs(_params(w), 1.0, 50)
    assert float(info["lam"]) == pytest.approx(0.2) and float(got) == pytest.approx(total, 1e-6)


def test_has_aux_passes_aux_through():
    def loss_aux(params, batch):
        value = _loss(params, batch)
        return value, {"twice": 2 * value}

    fn = jax.jit(gradient_l1(loss_aux, 0.1, has_aux=True))
    total, info = fn(_params(), 1.0)
    assert float(info["aux"]["twice"]) == pytest.approx(2 * float(info["loss"]))
    assert float(total) == pytest.approx(_by_hand((0.3, -0.2, 0.1), 0.1)[2], rel=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        gradient_l1(_loss, -0.1)
    with pytest.raises(ValueError, match="lam schedule must be >= 0"):
        gradient_l1(_loss, optax.constant_schedule(-1.0))
    with pytest.raises(ValueError, match="start_step must be >= 0"):
        gradient_l1(_loss, 0.1, start_step=-1)
    with pytest.raises(ValueError, match="step is required"):
        gradient_l1(_loss, 0.1, start_step=5)(_params(), 1.0)
    calls = []

    def vector_loss(params, batch):
        calls.append(1)
        return params["Dense_0"]["kernel"][:, 0] * batch

    with pytest.raises(ValueError, match="must return a floating-point scalar"):
        gradient_l1(vector_loss, 0.1)(_params(), 1.0)
    assert len(calls) == 1  # traced once by eval_shape, never run on values
    with pytest.raises(ValueError, match="must return a floating-point scalar"):
        gradient_l1(lambda p, b: jnp.int32(1), 0.1)(_params(), 1.0)
    with pytest.raises(ValueError, match="paths is empty"):
        gradient_l1(_loss, 0.1, paths=[])(_params(), 1.0)
    with pytest.raises(ValueError, match="does not have"):
        gradient_l1(_loss, 0.1, paths=["Dense_1/kernel"])(_params(), 1.0)
    with pytest.raises(ValueError, match="matches no leaf"):
        gradient_l1(lambda p, b: jnp.sum(p["w"]), 0.1)({"w": jnp.ones(3)}, None)


class _SmoothCNN(nn.Module):
    """Conv-tanh-conv-tanh-avgpool-dense: smooth, so ||grad||_1 is differentiable almost
    everywhere (a ReLU net's gradient jumps whenever a unit switches, which defeats
    finite differences of any gradient penalty)."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3))(x))
        x = jnp.tanh(nn.Conv(8, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _tree_dot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_double_backprop_through_a_cnn_matches_finite_differences():
    # A CNN on a few digits, float64: the wrapped loss's directional derivative
    # (second derivatives through conv, pooling and dense layers) against a
    # central finite difference.
    from qareg_jax.data import load_dataset

    jax.config.update("jax_enable_x64", True)
    try:
        ds = load_dataset("digits")
        x = jnp.asarray(ds.normalize(ds.train_images[:16]), jnp.float64)
        y = jnp.asarray(ds.train_labels[:16])
        model = _SmoothCNN()
        params = jax.tree.map(
            lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(0), x[:1])
        )

        def loss(p, batch):
            logits = model.apply(p, batch[0])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

        fn = gradient_l1(loss, 0.5)
        total = jax.jit(lambda p: fn(p, (x, y))[0])
        grad = jax.jit(jax.grad(total))(params)
        leaves = jax.tree.leaves(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        direction = jax.tree.unflatten(
            jax.tree.structure(params),
            [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)],
        )
        eps = 1e-6
        ends = [jax.tree.map(lambda p, d, s=s: p + s * eps * d, params, direction) for s in (1, -1)]
        fd = float((total(ends[0]) - total(ends[1])) / (2 * eps))
        assert float(_tree_dot(grad, direction)) == pytest.approx(fd, rel=1e-5)
        # The second-order term matters: the plain loss's derivative is far from it.
        plain = jax.grad(lambda p: loss(p, (x, y)))(params)
        assert abs(float(_tree_dot(plain, direction)) - fd) > 0.05 * abs(fd)
    finally:
        jax.config.update("jax_enable_x64", False)
