"""Flax NNX models with the core: ``nnx.split(model, nnx.Param)`` state as the "model" of the
train tree. NNX and linen copies of the same network must give the same penalty, gradients,
snapped values and packed files; NNX training and fine-tuning run in both the functional
split/merge style and with ``nnx.Optimizer``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import qareg_jax as q
from qareg_jax import compress
from qareg_jax.finetune import assignments_by_path
from qareg_jax.paths import named_leaves, replace_leaves
from qareg_jax.snap import quantized_finetune, snap

K = 4


class NNXSmallCNN(nnx.Module):
    """The NNX twin of ``models.SmallCNN``: same layers, names and parameter layout."""

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.fc1 = nnx.Linear(4 * 4 * 32, 64, rngs=rngs)
        self.fc2 = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, 8, 8, 1) -> logits (B, num_classes)."""
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)


@pytest.fixture(scope="module")
def twins(small_cnn):
    """A linen SmallCNN's variables and an NNX SmallCNN holding the same weights."""
    linen, variables = small_cnn
    model = NNXSmallCNN(rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model, nnx.Param)
    by_path = named_leaves(variables)
    params = replace_leaves(params, {p: by_path[f"params/{p}"] for p in named_leaves(params)})
    nnx.update(model, params)
    return linen, variables, model


def ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_twins_compute_the_same_function(twins, digits):
    linen, variables, model = twins
    x = digits[0][:16]
    np.testing.assert_allclose(model(x), linen.apply(variables, x, train=False), atol=1e-5)


def same_specs(variables, params, **kw):
    """Attached trees and specs for both twins, keyed alike ("params/" prefix dropped)."""
    kw = dict(k=K, init="kmeans", lam=0.5, **kw)
    tp_l, specs_l = q.attach(variables, q.make_specs(variables, **kw))
    tp_n, specs_n = q.attach(params, q.make_specs(params, **kw))
    assert {f"params/{p}" for p in specs_n} == set(specs_l)
    return tp_l, specs_l, tp_n, specs_n


@pytest.mark.parametrize("regularizer", ["nearest", "softmin", "sine"])
def test_nnx_and_linen_give_the_same_penalty_and_gradients(twins, regularizer):
    _, variables, model = twins
    params = nnx.state(model, nnx.Param)
    tp_l, specs_l, tp_n, specs_n = same_specs(variables, params, regularizer=regularizer)
    for (path, spec_n), spec_l in zip(specs_n.items(), specs_l.values(), strict=True):
        assert spec_n == spec_l, path  # same intervals and hyper-parameters
    fn_l = jax.jit(jax.value_and_grad(lambda t: q.penalty(t, specs_l)))
    fn_n = jax.jit(jax.value_and_grad(lambda t: q.penalty(t, specs_n)))
    (value_l, grads_l), (value_n, grads_n) = fn_l(tp_l), fn_n(tp_n)
    assert value_n > 0
    np.testing.assert_allclose(value_n, value_l, rtol=1e-6)
    g_l, g_n = named_leaves(grads_l), named_leaves(grads_n)
    for path in named_leaves(tp_n["model"]):
        np.testing.assert_allclose(g_n[f"model/{path}"], g_l[f"model/params/{path}"], rtol=1e-6)
    for path in tp_n["reps"]:
        np.testing.assert_allclose(
            grads_n["reps"][path], grads_l["reps"][f"params/{path}"], rtol=1e-5, atol=1e-9
        )


def test_nnx_and_linen_snap_to_the_same_values(twins):
    _, variables, model = twins
    params = nnx.state(model, nnx.Param)
    tp_l, specs_l, tp_n, specs_n = same_specs(
        variables, params, overrides={"conv1": dict(regularizer="cosine")}
    )
    snap_n = jax.jit(lambda t: snap(t, specs_n))
    (snapped_n, a_n), (snapped_l, a_l) = snap_n(tp_n), snap(tp_l, specs_l)
    assert isinstance(snapped_n["model"], nnx.State)
    leaves_l = named_leaves(snapped_l["model"])
    for path, value in named_leaves(snapped_n["model"]).items():
        np.testing.assert_array_equal(value, leaves_l[f"params/{path}"], err_msg=path)
    for path in specs_n:
        np.testing.assert_array_equal(a_n[path], a_l[f"params/{path}"])
        np.testing.assert_array_equal(snapped_n["reps"][path], snapped_l["reps"][f"params/{path}"])


def test_nnx_functional_loop_trains_snaps_finetunes_and_packs(digits, attached, tmp_path):
    """The README recipe: split, train with the penalty, snap, fine-tune, merge back, pack."""
    x, y, x_test, y_test = digits
    model = NNXSmallCNN(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    ramp = optax.linear_schedule(0.0, 1.0, 20)
    tp, specs = attached(params, k=K, lam=ramp)

    def make_step(tx, specs):
        @jax.jit
        def step(tp, opt_state, i):
            def loss(tp):
                task = ce(nnx.merge(graphdef, tp["model"])(x), y)
                return task + (q.penalty(tp, specs, i) if specs else 0.0)

            value, grads = jax.value_and_grad(loss)(tp)
            updates, opt_state = tx.update(grads, opt_state, tp)
            return optax.apply_updates(tp, updates), opt_state, value

        return step

    tx = optax.adam(3e-3)
    step, opt_state, losses = make_step(tx, specs), tx.init(tp), []
    for i in range(40):
        tp, opt_state, value = step(tp, opt_state, i)
        losses.append(float(value))
    assert losses[-1] < losses[20]  # lambda is at its final value from step 20
    assert isinstance(tp["model"], nnx.State)

    snapped, _ = snap(tp, specs)
    ft = quantized_finetune(optax.sgd(1e-3, momentum=0.9), specs)
    ft_step, ft_state = make_step(ft, None), ft.init(snapped)
    for i in range(5):
        snapped, ft_state, _ = ft_step(snapped, ft_state, i)
    nnx.update(model, snapped["model"])
    leaves = named_leaves(nnx.state(model, nnx.Param))
    for path in specs:
        values = np.unique(np.asarray(leaves[path]))
        assert values.size <= K and np.isin(values, np.asarray(snapped["reps"][path])).all()
    np.testing.assert_array_equal(model(x_test), nnx.merge(graphdef, snapped["model"])(x_test))

    quantized = {p: (snapped["reps"][p], assignments_by_path(ft_state)[p]) for p in specs}
    compress.save(tmp_path / "nnx.qareg", snapped["model"], quantized)
    loaded, _ = compress.load(tmp_path / "nnx.qareg")
    for path, value in named_leaves(loaded).items():
        np.testing.assert_array_equal(value, np.asarray(leaves[path]), err_msg=path)


class WithReps(nnx.Module):
    """A model and its representatives as ``nnx.Param``: ``nnx.state(self, nnx.Param)`` is a
    ``{"model": ..., "reps": {path: (K,)}}`` train tree, so ``nnx.Optimizer`` trains both."""

    def __init__(self, model: nnx.Module, reps: dict[str, jax.Array]):
        self.model = model
        self.reps = nnx.Dict({path: nnx.Param(c) for path, c in reps.items()})


def test_nnx_optimizer_style_matches_functional_style(digits, attached):
    x, y = digits[0][:64], digits[1][:64]
    model = NNXSmallCNN(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tp, specs = attached(params, k=K, lam=1.0)
    tx = optax.adam(1e-2)

    # nnx.merge reuses the state's Variable objects: give the stateful copy its own.
    wrapped = WithReps(nnx.merge(graphdef, jax.tree.map(jnp.copy, tp["model"])), tp["reps"])
    optimizer = nnx.Optimizer(wrapped, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(wrapped, optimizer):
        def loss(wrapped):
            return ce(wrapped.model(x), y) + q.penalty(nnx.state(wrapped, nnx.Param), specs)

        optimizer.update(wrapped, nnx.grad(loss)(wrapped))

    @jax.jit
    def step(tp, opt_state):
        def loss(tp):
            return ce(nnx.merge(graphdef, tp["model"])(x), y) + q.penalty(tp, specs)

        updates, opt_state = tx.update(jax.grad(loss)(tp), opt_state, tp)
        return optax.apply_updates(tp, updates), opt_state

    opt_state = tx.init(tp)
    for _ in range(3):
        nnx_step(wrapped, optimizer)
        tp, opt_state = step(tp, opt_state)
    got = named_leaves(nnx.state(wrapped, nnx.Param))
    for path, value in named_leaves(tp).items():
        np.testing.assert_allclose(got[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    assert not np.allclose(
        tp["reps"]["fc1/kernel"], q.attach(params, specs)[0]["reps"]["fc1/kernel"]
    )


def test_nnx_optimizer_finetune(digits, attached):
    x, y = digits[0][:64], digits[1][:64]
    model = NNXSmallCNN(rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tp, specs = attached(params, k=K)
    snapped, _ = snap(tp, specs)
    nnx.update(model, snapped["model"])
    wrapped = WithReps(model, snapped["reps"])
    optimizer = nnx.Optimizer(wrapped, quantized_finetune(optax.sgd(1e-2), specs), wrt=nnx.Param)
    grads = nnx.grad(lambda w: ce(w.model(x), y))(wrapped)
    optimizer.update(wrapped, grads)
    kernel = np.asarray(wrapped.model.fc1.kernel[...])
    assert np.unique(kernel).size <= K
    assert jnp.all(jnp.isin(kernel, wrapped.reps["fc1/kernel"][...]))
