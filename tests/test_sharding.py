"""Tests of qareg_jax.sharding.

Placement rules are checked on abstract meshes in this process. Everything that
needs several devices runs in one subprocess with 8 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX
starts): ``test_on_8_host_devices`` re-runs this file there, where the tests marked
``multi`` run instead of being skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import qareg_jax as q
from qareg_jax import compress
from qareg_jax.finetune import assignments_by_path
from qareg_jax.models import get_model
from qareg_jax.paths import named_leaves
from qareg_jax.pipeline import make_init_fn
from qareg_jax.pipeline import make_train_step as make_core_train_step
from qareg_jax.sharding import (
    Layout,
    init_opt_state,
    make_mesh,
    make_train_step,
    shard,
    shard_batch,
    snap_sharded,
    tree_shardings,
)
from qareg_jax.snap import quantized_finetune, snap

N_DEVICES = 8
multi = pytest.mark.skipif(
    jax.device_count() < N_DEVICES,
    reason=f"needs {N_DEVICES} devices: run in a subprocess by test_on_8_host_devices",
)
MIN_SIZE = 4096  # splits conv2 (3, 3, 16, 32) and fc1 (512, 64) of SmallCNN; not fc2 (64, 10)
K = 4


def test_on_8_host_devices():
    """Runs the ``multi`` tests of this file in a fresh process with 8 host devices."""
    if jax.device_count() >= N_DEVICES:
        pytest.skip("already running with several devices")
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={N_DEVICES}".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    cmd = [sys.executable, "-m", "pytest", "-rsx", "-n", "0", "-p", "no:cacheprovider"]
    cmd += [f"{__file__}::TestOn8Devices"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, report


# ------------------------------------------------------------------ rules, one process


def abstract_layout(**kw) -> Layout:
    return Layout(AbstractMesh((4, 2), ("data", "model")), **kw)


def test_default_rule_splits_large_kernels_last_dim():
    layout = abstract_layout(min_size=100)
    assert layout.spec("model/params/fc1/kernel", (512, 64)) == P(None, "model")
    assert layout.spec("model/params/conv/kernel", (3, 3, 16, 32)) == P(None, None, None, "model")
    assert layout.spec("model/params/fc1/kernel", (64, 9)) == P()  # 9 not divisible by 2
    assert layout.spec("model/params/fc1/kernel", (8, 8)) == P()  # below min_size
    assert layout.spec("model/params/fc1/bias", (4096,)) == P()  # 1-D stays replicated
    assert Layout(AbstractMesh((8,), ("data",)), min_size=1).spec("w", (64, 64)) == P()


def test_rules_first_match_wins_and_skip_lower_rank_leaves():
    rules = [("fc1/kernel", P("model", None)), ("kernel", P())]
    layout = abstract_layout(rules=rules, min_size=1)
    assert layout.spec("model/params/fc1/kernel", (64, 8)) == P("model", None)
    assert layout.spec("0/mu/model/params/fc1/kernel", (64, 8)) == P("model", None)
    assert layout.spec("model/params/fc2/kernel", (64, 8)) == P()
    # The (K,) representatives under the same path: the 2-entry rule does not apply.
    assert layout.spec("reps/params/fc1/kernel", (4,)) == P()


def test_tree_shardings_follow_the_tree():
    tree = {"model": {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}, "reps": {"w": jnp.zeros(4)}}
    layout = abstract_layout(min_size=1)
    out = tree_shardings(jax.eval_shape(lambda t: t, tree), layout)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    assert out["model"]["w"] == NamedSharding(layout.mesh, P(None, "model"))
    assert out["model"]["b"].spec == P() and out["reps"]["w"].spec == P()


def test_rules_may_split_a_dimension_over_several_axes():
    layout = abstract_layout(rules=[("emb", P(("data", "model"), P.UNCONSTRAINED))])
    assert layout.spec("emb", (16, 3)) == P(("data", "model"), P.UNCONSTRAINED)
    with pytest.raises(ValueError, match=r"6 is not divisible by \('data', 'model'\) of size 8"):
        layout.spec("emb", (6, 3))


def test_unknown_mesh_axis_is_named():
    with pytest.raises(ValueError, match=r"'tensor'.*\('data', 'model'\)"):
        abstract_layout(rules=[("fc", P(None, "tensor"))])
    with pytest.raises(ValueError, match=r"'model'.*\('data',\)"):
        Layout(AbstractMesh((8,), ("data",)), rules=[("fc", P(None, ("data", "model")))])
    with pytest.raises(ValueError, match="model_axis 'mp'"):
        abstract_layout(model_axis="mp")
    with pytest.raises(ValueError, match="'data' axis"):
        Layout(AbstractMesh((8,), ("batch",)))


def test_explicit_mesh_axes_are_refused():
    mesh = AbstractMesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Explicit))
    with pytest.raises(ValueError, match=r"AxisType.Auto.*\['model'\]"):
        Layout(mesh)


def test_rule_that_does_not_divide_raises():
    layout = abstract_layout(rules=[("fc", P(None, "model"))])
    with pytest.raises(ValueError, match=r"'w/fc'.*\(4, 3\).*3 is not divisible"):
        layout.spec("w/fc", (4, 3))


def test_make_mesh_checks_model_size():
    mesh = make_mesh(model=1)
    assert mesh.axis_names == ("data", "model") and mesh.shape["model"] == 1
    assert make_mesh().axis_names == ("data",)
    with pytest.raises(ValueError, match="positive divisor"):
        make_mesh(model=jax.device_count() + 1)


# ------------------------------------------------------------------------ training set-up


# The raw penalty scale (mean over the layer, weight units): with SGD at lr 0.1 the unit
# scale's per-weight pull (~ lambda * distance / spacing^2) throws the weights off in a few
# steps, and these tests compare trajectories, not scales.
RAW = dict(reduction="mean", normalize=None)


def setup_problem(batch: int = 32):
    """SmallCNN on random 8x8 digits-like data; specs with a static and dynamic layers."""
    model = get_model("small", 10)
    rng = np.random.default_rng(0)
    data = {
        "x": rng.normal(size=(batch, 8, 8, 1)).astype(np.float32),
        "y": rng.integers(0, 10, batch).astype(np.int32),
    }
    variables = model.init(jax.random.PRNGKey(0), data["x"][:1], train=False)
    specs = q.make_specs(
        variables,
        k=K,
        lam=optax.linear_schedule(0.0, 0.5, 4),
        overrides={"conv1": dict(regularizer="sine")},
        **RAW,
    )
    train_params, specs = q.attach(variables, specs)

    def task_loss(params, b):
        logits = model.apply(params, b["x"], train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

    return task_loss, train_params, specs, data


def train(layout, tx, specs, task_loss, train_params, data, steps):
    """``steps`` sharded steps from a placed copy of ``train_params``."""
    tp = shard(train_params, layout)
    state = init_opt_state(tx, tp, layout)
    step = make_train_step(task_loss, tx, specs, layout, tp, state)
    metrics = []
    for i in range(steps):
        tp, state, m = step(tp, state, shard_batch(data, layout.mesh), i)
        metrics.append(jax.device_get(m))
    return tp, state, metrics


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_close(a, b, **tol):
    la, lb = named_leaves(host(a)), named_leaves(host(b))
    assert la.keys() == lb.keys()
    for path in la:
        np.testing.assert_allclose(la[path], lb[path], err_msg=path, **tol)


def assert_placed(tree, layout):
    """Every leaf has the sharding the layout gives its path and shape."""
    expected = named_leaves(tree_shardings(tree, layout))
    for path, leaf in named_leaves(tree).items():
        assert leaf.sharding.is_equivalent_to(expected[path], leaf.ndim), path


def test_train_step_on_one_device_is_the_plain_step():
    task_loss, tp0, specs, data = setup_problem()
    tx = optax.sgd(0.1, momentum=0.9)
    layout = Layout(make_mesh(devices=jax.devices()[:1]))
    tp, _, metrics = train(layout, tx, specs, task_loss, tp0, data, 3)

    def loss(t, step):
        return task_loss(t["model"], data) + q.penalty(t, specs, step)

    ref, state = tp0, tx.init(tp0)
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    for i in range(3):
        value, grads = value_and_grad(ref, i)
        updates, state = tx.update(grads, state, ref)
        ref = optax.apply_updates(ref, updates)
    assert_trees_close(tp, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics[-1]["loss"], value, rtol=1e-5)
    assert metrics[0]["penalty"] == 0.0 < metrics[-1]["penalty"]  # lambda ramps from 0


class BNDropoutCNN(nn.Module):
    """(B, 8, 8, 1) -> (B, 10): conv, BatchNorm, pool, dropout, fc1 64, dropout, fc2."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(16, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
        x = nn.Dropout(0.3, deterministic=not train)(x)
        x = nn.relu(nn.Dense(64, name="fc1")(x))  # (256, 64) kernel: split over "model"
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(10, name="fc2")(x)


def setup_bn_problem(batch: int = 32):
    """BNDropoutCNN with train.py's conventions: the train tree holds the "params"
    collection, ``model_state`` the batch statistics; batches are {"image", "label"}."""
    model = BNDropoutCNN()
    rng = np.random.default_rng(1)
    data = {
        "image": rng.normal(size=(batch, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, batch).astype(np.int32),
    }
    variables = model.init(jax.random.PRNGKey(0), data["image"][:1], train=False)
    model_state = {"batch_stats": variables["batch_stats"]}
    specs = q.make_specs(variables["params"], k=K, lam=optax.linear_schedule(0.0, 0.5, 4), **RAW)
    train_params, specs = q.attach(variables["params"], specs)

    def task_loss(params, state, b, key):
        logits, new_state = model.apply(
            {"params": params, **state},
            b["image"],
            train=True,
            rngs={"dropout": key},
            mutable=list(state),
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean()
        return loss, new_state

    return model, task_loss, train_params, model_state, specs, data


def train_bn(layout, tx, specs, task_loss, train_params, model_state, data, steps, seed=0):
    """``steps`` sharded steps with batch statistics and dropout keys ``fold_in(seed key, i)``."""
    tp = shard(train_params, layout)
    ms = shard(model_state, layout)
    state = init_opt_state(tx, tp, layout)
    step = make_train_step(task_loss, tx, specs, layout, tp, state, model_state=ms, rng=True)
    key = jax.random.PRNGKey(seed)
    metrics = []
    for i in range(steps):
        tp, state, ms, m = step(tp, state, ms, shard_batch(data, layout.mesh), i, key)
        metrics.append(jax.device_get(m))
    return tp, ms, metrics


def test_batchnorm_dropout_step_matches_the_core_step():
    """On one device the sharded step is the pipeline's core step: same dropout keys,
    same batch statistics, same parameters."""
    model, task_loss, tp0, ms0, specs, data = setup_bn_problem()
    tx = optax.sgd(0.1, momentum=0.9)
    layout = Layout(make_mesh(devices=jax.devices()[:1]))
    tp, ms, metrics = train_bn(layout, tx, specs, task_loss, tp0, ms0, data, 3, seed=5)

    ref = make_init_fn(tx)(tp0, ms0, np.uint32(5))
    ref_step = make_core_train_step(model, tx, specs)
    for _ in range(3):
        ref = ref_step(ref, data)
    assert_trees_close(tp, ref.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(ms, ref.model_state, rtol=1e-5, atol=1e-6)
    mean_task = ref.window["task_loss"] / ref.window["count"]
    np.testing.assert_allclose(np.mean([m["task_loss"] for m in metrics]), mean_task, rtol=1e-5)
    stats, stats0 = named_leaves(host(ms)), named_leaves(host(ms0))
    assert all(not np.allclose(stats[p], stats0[p]) for p in stats)  # statistics moved

    other, _, _ = train_bn(layout, tx, specs, task_loss, tp0, ms0, data, 1, seed=6)
    again, _, _ = train_bn(layout, tx, specs, task_loss, tp0, ms0, data, 1, seed=6)
    fc1 = [host(t)["model"]["fc1"]["kernel"] for t in (tp, other, again)]
    np.testing.assert_array_equal(fc1[1], fc1[2])  # deterministic in the key
    first, _, _ = train_bn(layout, tx, specs, task_loss, tp0, ms0, data, 1, seed=5)
    assert not np.allclose(host(first)["model"]["fc1"]["kernel"], fc1[1])  # the key is used


def test_core_step_with_a_one_device_layout_gives_the_same_params():
    """``make_train_step(..., layout=...)`` on one device: bit-identical to the plain step."""
    model, _, tp0, ms0, specs, data = setup_bn_problem()
    tx = optax.adam(1e-2)
    layout = Layout(make_mesh(devices=jax.devices()[:1]))
    init = make_init_fn(tx)
    plain, placed = init(tp0, ms0, np.uint32(3)), shard(init(tp0, ms0, np.uint32(3)), layout)
    plain_step = make_core_train_step(model, tx, specs)
    placed_step = make_core_train_step(model, tx, specs, layout=layout)
    for _ in range(3):
        plain = plain_step(plain, data)
        placed = placed_step(placed, shard_batch(data, layout.mesh))
    a, b = named_leaves(host(plain.as_dict())), named_leaves(host(placed.as_dict()))
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)
    assert int(placed.step) == 3 and int(placed.bad_step) == -1
    assert_placed(placed.params, layout)


# ----------------------------------------------------------------------- on 8 devices


@pytest.fixture(scope="module")
def problem():
    return setup_problem()


@pytest.fixture(scope="module")
def layouts():
    return {
        "data4_model2": Layout(make_mesh(model=2), min_size=MIN_SIZE),
        "data8": Layout(make_mesh(), min_size=MIN_SIZE),
        "one": Layout(make_mesh(devices=jax.devices()[:1])),
    }


@pytest.fixture(scope="module")
def trained(problem, layouts):
    """Four regularized SGD steps on each layout, same global batch."""
    task_loss, tp0, specs, data = problem
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
    return {
        name: train(layout, tx, specs, task_loss, tp0, data, 4) for name, layout in layouts.items()
    }


@pytest.fixture(scope="module")
def bn_trained(layouts):
    """Four regularized steps of BNDropoutCNN (batch statistics, dropout) on each layout."""
    _, task_loss, tp0, ms0, specs, data = setup_bn_problem()
    tx = optax.sgd(0.1, momentum=0.9)
    return {
        name: train_bn(layout, tx, specs, task_loss, tp0, ms0, data, 4)
        for name, layout in layouts.items()
    }


def _all_gathered_shapes(compiled) -> set[str]:
    return set(re.findall(r"= \S+\[([\d,]+)\]\S* all-gather\(", compiled.as_text()))


class NNXMLP(nnx.Module):
    """(B, 64) -> (B, 10) with a 64 x 128 hidden layer."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, 128, rngs=rngs)
        self.fc2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(nnx.relu(self.fc1(x)))


@multi
class TestOn8Devices:
    """Run by test_on_8_host_devices in a process with 8 host devices."""

    def test_sharded_training_matches_one_device(self, trained):
        ref_tp, _, ref_metrics = trained["one"]
        for name in ("data4_model2", "data8"):
            tp, _, metrics = trained[name]
            assert_trees_close(tp, ref_tp, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(metrics[-1]["loss"], ref_metrics[-1]["loss"], rtol=1e-5)
        assert ref_metrics[-1]["task_loss"] < ref_metrics[0]["task_loss"]

    def test_batchnorm_dropout_training_matches_one_device(self, bn_trained, layouts):
        ref_tp, ref_ms, ref_metrics = bn_trained["one"]
        for name in ("data4_model2", "data8"):
            tp, ms, metrics = bn_trained[name]
            assert_trees_close(tp, ref_tp, rtol=1e-5, atol=1e-6)
            assert_trees_close(ms, ref_ms, rtol=1e-5, atol=1e-6)
            for m, ref in zip(metrics, ref_metrics, strict=True):
                np.testing.assert_allclose(m["loss"], ref["loss"], rtol=1e-5)
            assert_placed(tp, layouts[name])
            assert_placed(ms, layouts[name])
        assert bn_trained["data4_model2"][0]["model"]["fc1"]["kernel"].sharding.spec == P(
            None, "model"
        )
        assert ref_metrics[-1]["penalty"] > 0.0

    def test_params_and_state_stay_sharded(self, trained, layouts):
        layout = layouts["data4_model2"]
        tp, state, _ = trained["data4_model2"]
        assert_placed(tp, layout)
        assert_placed(state, layout)
        kernel = tp["model"]["params"]["fc1"]["kernel"]
        assert kernel.sharding.spec == P(None, "model")
        assert {s.data.shape for s in kernel.addressable_shards} == {(512, 32)}
        assert tp["reps"]["params/fc1/kernel"].sharding.is_fully_replicated
        momentum = state[1][0].trace["model"]["params"]["conv2"]["kernel"]
        assert momentum.sharding.spec == P(None, None, None, "model")

    def test_snap_sharded_equals_unsharded(self, trained, problem, layouts):
        _, _, specs, _ = problem
        layout = layouts["data4_model2"]
        tp = trained["data4_model2"][0]
        snapped, assignments = snap_sharded(tp, specs, layout)
        ref_snapped, ref_assignments = snap(host(tp), specs)
        for ref, got in ((ref_snapped, snapped), (ref_assignments, assignments)):
            r, g = named_leaves(host(ref)), named_leaves(host(got))
            assert r.keys() == g.keys()
            for path in r:
                np.testing.assert_array_equal(g[path], r[path], err_msg=path)
        assert_placed(snapped, layout)
        assert_placed(assignments, layout)
        assert assignments["params/fc1/kernel"].sharding.spec == P(None, "model")
        assert "params/conv1/kernel" in snapped["reps"]  # the static layer got its levels

    def test_finetune_sharded_keeps_k_values_and_matches_one_device(
        self, trained, problem, layouts
    ):
        task_loss, _, specs, data = problem
        tx = quantized_finetune(optax.sgd(0.05, momentum=0.9), specs)
        start = host(trained["one"][0])  # one start for both, so that the assignments agree
        out = {}
        for name in ("data4_model2", "one"):
            layout = layouts[name]
            snapped, _ = snap_sharded(start, specs, layout)
            out[name] = train(layout, tx, None, task_loss, snapped, data, 3)
        tp, state, metrics = out["data4_model2"]
        assert_trees_close(tp, out["one"][0], rtol=1e-5, atol=1e-6)
        assert_placed(tp, layouts["data4_model2"])
        assert assignments_by_path(state)["params/conv2/kernel"].sharding.spec == P(
            None, None, None, "model"
        )
        leaves, reps = named_leaves(host(tp)["model"]), host(tp)["reps"]
        for path in specs:
            values = np.unique(leaves[path])
            assert values.size <= K
            assert np.isin(values, reps[path]).all(), path
        assert metrics[-1]["penalty"] == 0.0

    def test_pack_sharded_params(self, trained, problem, layouts, tmp_path):
        _, _, specs, _ = problem
        layout = layouts["data4_model2"]
        snapped, assignments = snap_sharded(trained["data4_model2"][0], specs, layout)
        quantized = {p: (snapped["reps"][p], assignments[p]) for p in specs}
        host_quantized = {p: (np.asarray(c), np.asarray(a)) for p, (c, a) in quantized.items()}
        report = compress.size_report(snapped["model"], quantized)
        assert report == compress.size_report(host(snapped["model"]), host_quantized)
        assert report.packed_bits < report.original_bits
        compress.save(tmp_path / "m.qareg", snapped["model"], quantized)
        params, _ = compress.load(tmp_path / "m.qareg")
        loaded, ref = named_leaves(params), named_leaves(host(snapped["model"]))
        for path in ref:
            np.testing.assert_array_equal(loaded[path], ref[path], err_msg=path)

    def test_shard_batch_splits_over_data_and_checks_divisibility(self, layouts):
        mesh = layouts["data4_model2"].mesh
        batch = shard_batch({"x": np.zeros((8, 3), np.float32), "y": np.arange(8)}, mesh)
        assert batch["x"].sharding.spec == P("data")
        assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 3)}
        with pytest.raises(
            ValueError, match="global batch size 6 is not divisible by the 4 devices"
        ):
            shard_batch({"x": np.zeros((6, 3))}, mesh)
        with pytest.raises(ValueError, match="global batch size 12 is not divisible by the 8"):
            shard_batch({"x": np.zeros((12, 3))}, layouts["data8"].mesh)
        with pytest.raises(ValueError, match="share a leading batch dimension"):
            shard_batch({"x": np.zeros((8, 3)), "y": np.zeros(4)}, mesh)

    def test_no_whole_kernel_is_gathered(self, problem, layouts):
        task_loss, tp0, specs, data = problem
        layout = layouts["data4_model2"]
        tp = shard(tp0, layout)
        kernels = {"512,64", "3,3,16,32"}
        grad = jax.jit(
            jax.grad(lambda t: q.penalty(t, specs, 3)), in_shardings=(tree_shardings(tp, layout),)
        )
        assert not _all_gathered_shapes(grad.lower(tp).compile()) & kernels
        snapped, _ = snap_sharded(tp, specs, layout)
        tx = quantized_finetune(optax.sgd(0.1), specs)
        state = init_opt_state(tx, snapped, layout)
        step = make_train_step(task_loss, tx, None, layout, snapped, state)
        compiled = step.lower(snapped, state, shard_batch(data, layout.mesh), 0).compile()
        assert not _all_gathered_shapes(compiled) & kernels

    @pytest.mark.parametrize(
        ("spec", "reg", "k"),
        [
            (P(None, None, None, "model"), "nearest", 256),
            (P(None, None, "model", None), "nearest", 256),
            (P(None, None, None, "model"), "softmin", 4),
        ],
    )
    def test_blocked_penalties_keep_the_kernel_sharded(self, layouts, spec, reg, k):
        """The block-by-block paths (large conv kernel, table lookup / scan) reshape
        only the spatial axes: nothing is gathered, the gradient stays placed and equal."""
        w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 128, 256)) * 0.05
        reps = jnp.linspace(-0.1, 0.1, k)
        f = {
            "nearest": lambda w: q.nearest_total(w, reps),
            "softmin": lambda w: q.all_reps_total(w, reps, "softmin", 1e-3),
        }[reg]
        ws = jax.device_put(w, NamedSharding(layouts["data4_model2"].mesh, spec))
        grad = jax.jit(jax.grad(f))
        assert not _all_gathered_shapes(grad.lower(ws).compile()) & {"3,3,128,256"}
        out = grad(ws)
        assert out.sharding.spec == spec
        ref = jax.grad(f)(w)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(ref))))

    def test_grouped_codebooks_train_sharded_like_one_device(self, problem, layouts):
        # (G, K) reps share their kernel's path; a kernel rule must not split their K = 3.
        task_loss, tp0, _, data = problem
        specs = q.make_specs(tp0["model"], k=3, group_size=2, lam=0.5, **RAW)
        tp, specs = q.attach(tp0["model"], specs)
        rules = [("fc1/kernel", P(None, "model"))]
        tx = optax.sgd(0.1, momentum=0.9)
        sharded = Layout(make_mesh(model=2), rules=rules, min_size=MIN_SIZE)
        got = train(sharded, tx, specs, task_loss, tp, data, 3)
        want = train(layouts["one"], tx, specs, task_loss, tp, data, 3)
        assert_trees_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        assert got[0]["reps"]["params/fc1/kernel"].shape == (32, 3)
        assert_placed(got[0], sharded)

    def test_nnx_state_trains_sharded(self, problem, layouts):
        _, _, _, data = problem
        graphdef, params = nnx.split(NNXMLP(nnx.Rngs(0)), nnx.Param)
        specs = q.make_specs(params, k=K, lam=0.1, **RAW)
        tp0, specs = q.attach(params, specs)
        batch = {"x": data["x"].reshape(len(data["y"]), -1), "y": data["y"]}

        def task_loss(state, b):
            logits = nnx.merge(graphdef, state)(b["x"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

        # SGD, not Adam: Adam rescales near-zero gradients (reps at balance, whose
        # cluster sums cancel) to lr-sized steps, so the summation order of a sharded
        # reduction would show up far above rounding.
        tx = optax.sgd(0.1, momentum=0.9)
        out = {
            n: train(layouts[n], tx, specs, task_loss, tp0, batch, 3)
            for n in ("data4_model2", "one")
        }
        tp = out["data4_model2"][0]
        assert isinstance(tp["model"], nnx.State)
        assert_trees_close(tp, out["one"][0], rtol=1e-5, atol=1e-6)
        assert tp["model"]["fc1"]["kernel"].sharding.spec == P(None, "model")
        snapped, assignments = snap_sharded(tp, specs, layouts["data4_model2"])
        assert assignments["fc1/kernel"].sharding.spec == P(None, "model")
        assert np.unique(np.asarray(snapped["model"]["fc1"]["kernel"])).size <= K
