"""Tests for qareg_jax.models: shapes, parameter counts and names, train/eval modes, learning."""

from __future__ import annotations

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qareg_jax import data
from qareg_jax.models import (
    MODELS,
    VGG16,
    AlexNet,
    SmallCNN,
    check_input_size,
    get_model,
    min_input_size,
)

# Initializing 15-23M weights compiles ~3x faster on CPU with the "rbg" generator.
INIT_KEY = jax.random.key(0, impl="rbg")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _leaf_names(tree) -> list[str]:
    return [
        "/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]


def _shapes(model, image_shape):
    """Variables of ``model`` as ShapeDtypeStructs (no compilation, no random numbers)."""
    x = jnp.zeros((1, *image_shape))
    return jax.eval_shape(lambda key: model.init(key, x, train=False), jax.random.key(0))


@pytest.mark.parametrize(
    "name, shape, low, high, exact",
    [
        ("alexnet", (32, 32, 3), 20e6, 25e6, 23_468_874),
        ("vgg16", (32, 32, 3), 14e6, 16e6, 14_986_698),
        ("small", (8, 8, 1), 1e4, 1e5, 38_282),
        ("cifar_vgg", (32, 32, 3), 2e5, 1e6, 295_290),
    ],
)
def test_param_counts_match_docstrings(name, shape, low, high, exact):
    model = get_model(name, 10)
    variables = _shapes(model, shape)
    count = _count(variables["params"])
    assert low <= count <= high and count == exact
    assert f"{exact:,}" in type(model).__doc__
    names = _leaf_names(variables["params"])
    assert all(n.split("/")[-1] in ("kernel", "bias", "scale") for n in names)
    kernels = [n for n in names if n.endswith("kernel")]
    assert all(n.split("/")[0].startswith(("conv", "fc")) for n in kernels)
    assert all(n.split("/")[0].startswith("bn") for n in names if n.endswith("scale"))


@pytest.mark.parametrize(
    "name, convs, denses, per_class",
    [("alexnet", 5, 3, 4097), ("vgg16", 13, 2, 513), ("small", 2, 2, 65), ("cifar_vgg", 8, 1, 129)],
)
def test_param_layout_per_model(name, convs, denses, per_class):
    names = _leaf_names(_shapes(get_model(name, 7), (32, 32, 3))["params"])
    kernels = [n.split("/")[0] for n in names if n.endswith("kernel")]
    assert sum(k.startswith("conv") for k in kernels) == convs
    assert sum(k.startswith("fc") for k in kernels) == denses
    counts = [_count(_shapes(get_model(name, k), (32, 32, 3))["params"]) for k in (10, 11)]
    assert counts[1] - counts[0] == per_class


def test_alexnet_shapes_and_dropout_only_in_train():
    model, no_dropout = AlexNet(num_classes=10), AlexNet(num_classes=10, dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))

    @jax.jit  # one compilation for init and every forward pass (fast on CPU)
    def run(x):
        variables = model.init(INIT_KEY, x[:1], train=False)
        dropout = [{"dropout": jax.random.key(k)} for k in (2, 2, 3)]
        return (
            model.apply(variables, x, train=False),
            [model.apply(variables, x, train=True, rngs=r) for r in dropout],
            no_dropout.apply(variables, x, train=True),
        )

    y_eval, (y_a, y_a_again, y_b), y_no_dropout = run(x)
    assert y_eval.shape == (3, 10) and y_eval.dtype == jnp.float32
    assert not np.allclose(y_a, y_eval) and not np.allclose(y_a, y_b)
    np.testing.assert_array_equal(y_a, y_a_again)  # dropout is a function of the rng
    # Without dropout, train mode computes the eval function.
    np.testing.assert_allclose(y_no_dropout, y_eval, rtol=1e-4, atol=1e-5)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)


def test_cifar_vgg_is_global_pooled_and_keeps_batch_statistics():
    model = get_model("cifar_vgg", 10)
    # Global average pooling: any size from the minimum up gives the same fc.
    for size in (16, 32, 40):
        variables = _shapes(model, (size, size, 3))
        assert variables["params"]["fc"]["kernel"].shape == (128, 10)
        assert set(variables["batch_stats"]) == {f"bn{s}_{i}" for s in (1, 2, 3, 4) for i in (1, 2)}
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(INIT_KEY, x[:1], train=False)
    y, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.shape == (4, 10) and set(updates) == {"batch_stats"}
    assert not np.allclose(model.apply(variables, x, train=False), y)


def test_vgg_shapes_and_batchnorm_modes():
    model = VGG16(num_classes=10, dropout_rate=0.0)  # isolates what BatchNorm changes
    dropped = VGG16(num_classes=10, dropout_rate=0.5)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (4, 32, 32, 3))

    @jax.jit  # one compilation for init and every forward pass (fast on CPU)
    def run(x):
        variables = model.init(INIT_KEY, x[:1], train=False)
        y_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        y_drop, _ = dropped.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
        )
        y_eval = model.apply(variables, x, train=False)
        y_updated = model.apply({**variables, **updates}, x, train=False)
        return variables, updates, y_eval, y_train, y_drop, y_updated

    variables, updates, y_eval, y_train, y_drop, y_updated = run(x)
    assert set(variables) == {"params", "batch_stats"} and set(updates) == {"batch_stats"}
    assert y_eval.shape == y_train.shape == (4, 10)
    assert not np.allclose(y_train, y_eval)  # batch statistics vs running averages
    old, new = variables["batch_stats"]["bn1_1"], updates["batch_stats"]["bn1_1"]
    # momentum 0.9 towards the batch mean (about 3 after the first conv of inputs near 3).
    assert not np.allclose(old["mean"], new["mean"]) and not np.allclose(old["var"], new["var"])
    assert not np.allclose(y_updated, y_eval)  # eval mode reads the running averages
    assert not np.allclose(y_drop, y_train)  # dropout acts in train mode
    with pytest.raises(flax.errors.ModifyScopeVariableError):
        jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)


def test_small_cnn_is_mode_independent():
    model = SmallCNN(num_classes=4)
    x = jax.random.normal(jax.random.key(0), (5, 8, 8, 1))

    @jax.jit
    def run(x):
        variables = model.init(jax.random.key(1), x, train=True)
        return model.apply(variables, x, train=True), model.apply(variables, x, train=False)

    y_train, y_eval = run(x)
    assert y_train.shape == (5, 4)
    np.testing.assert_array_equal(y_train, y_eval)
    # Any input size works: fc1 adapts to (H/2)*(W/2)*32 features.
    assert _shapes(model, (32, 32, 3))["params"]["fc1"]["kernel"].shape == (16 * 16 * 32, 64)


def test_get_model_factory_and_errors():
    assert isinstance(get_model("alexnet", 100, dropout_rate=0.2), AlexNet)
    assert get_model("alexnet", 100, dropout_rate=0.2).dropout_rate == 0.2
    assert isinstance(get_model("vgg16", 10), VGG16)
    assert get_model("small", 3).num_classes == 3
    with pytest.raises(
        ValueError, match=r"unknown model name 'resnet'.*alexnet, vgg16, cifar_vgg, small"
    ):
        get_model("resnet", 10)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be a positive int"):
            get_model("small", bad)
    with pytest.raises(TypeError, match="dropout_rate"):
        get_model("small", 10, dropout_rate=0.5)  # SmallCNN has no dropout


def _abstract_init(name: str, size: int):
    model, rngs = get_model(name, 10), {"params": jax.random.PRNGKey(0)}
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)


@pytest.mark.parametrize("name", list(MODELS))
def test_declared_min_input_size_is_the_smallest_that_initialises(name):
    need = min_input_size(name)
    _abstract_init(name, need)  # shapes only: no weights are computed
    # cifar_vgg refuses by itself (global pooling would average nothing); the others fail
    # with flax's bare error, which check_input_size prevents.
    if name == "cifar_vgg":
        with pytest.raises(ValueError, match=f"needs images of at least {need}x{need}"):
            _abstract_init(name, need - 1)
    else:
        with pytest.raises(ZeroDivisionError):
            _abstract_init(name, need - 1)
    check_input_size(name, (need, need + 5, 3))
    with pytest.raises(ValueError, match=f"needs images of at least {need}x{need} pixels"):
        check_input_size(name, (need + 5, need - 1, 3))


def test_min_input_size_names_the_allowed_models():
    with pytest.raises(ValueError, match="unknown model 'resnet'; allowed: alexnet, vgg16"):
        min_input_size("resnet")


def test_small_cnn_learns_digits(digits_dataset, small_cnn):
    ds = digits_dataset
    model, params = small_cnn  # 10 classes, (8, 8, 1) inputs: the digits set's
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply(p, images, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def correct(params, images, labels):
        return (model.apply(params, images, train=False).argmax(-1) == labels).sum()

    def accuracy(params):
        hits = sum(int(correct(params, b["image"], b["label"])) for b in data.eval_batches(ds, 128))
        return hits / len(ds.test_labels)

    before = accuracy(params)
    losses = []
    for epoch in range(3):
        for batch in data.train_batches(ds, 64, seed=0, epoch=epoch):
            params, opt_state, loss = step(params, opt_state, batch["image"], batch["label"])
            losses.append(float(loss))
    after = accuracy(params)
    assert before < 0.3 and after > 0.9
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])
