"""Recipe options of the pipeline (``Config``): lambda schedules, the representatives'
learning rate, tau/sigma annealing, edge layers' K, the hybrid (penalty, then STE) and
their errors; each changes what it should and nothing else."""

from __future__ import annotations

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qareg_jax as q
from qareg_jax import compress, pipeline
from qareg_jax.penalty import penalty
from qareg_jax.pipeline import recipe, stages
from qareg_jax.pipeline.optim import anneal_schedule, lam_schedule, make_optimizer
from qareg_jax.pipeline.steps import make_init_fn, task_loss
from qareg_jax.snap import snap

KERNELS = [f"{p}/kernel" for p in ("conv1", "conv2", "fc1", "fc2")]


def _batch(digits, n=32):
    x, y = digits[0][:n], digits[1][:n]
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}


# ------------------------------------------------------------------------- schedules


def test_ramp_is_the_default_and_unchanged():
    assert pipeline.Config().lam_schedule == "ramp"
    assert lam_schedule(2.0, 0.0, 10) == 2.0
    s = lam_schedule(2.0, 0.5, 10)
    assert [float(s(i)) for i in (0, 5, 9)] == pytest.approx([0.0, 2.0, 2.0])


def test_exp_schedule_grows_geometrically_to_lam_at_the_last_step():
    s = lam_schedule(2.0, 0.5, 11, kind="exp", exp_start=1e-2)  # warmup unused
    values = np.array([float(s(i)) for i in range(13)])
    assert values[0] == pytest.approx(2e-2, rel=1e-6)
    assert values[5] == pytest.approx(2e-1, rel=1e-5)  # halfway: geometric mean
    assert values[10] == pytest.approx(2.0, rel=1e-6)
    assert values[11] == values[12] == pytest.approx(2.0, rel=1e-6)  # held, capped at lam
    ratios = values[1:11] / values[:10]
    assert ratios == pytest.approx(np.full(10, 10 ** (2 / 10)), rel=1e-5)
    assert lam_schedule(2.0, 0.5, 11, kind="exp", exp_start=1.0) == 2.0
    assert lam_schedule(0.0, 0.5, 11, kind="exp") == 0.0


def test_lambda_drops_to_zero_from_until():
    for kind in ("ramp", "exp"):
        s = lam_schedule(3.0, 0.0, 8, kind=kind, until=8)
        assert float(s(7)) == pytest.approx(3.0, rel=1e-6)
        assert float(s(8)) == float(s(20)) == 0.0


def test_anneal_schedule_shrinks_by_the_factor():
    m = anneal_schedule(100.0, 5)
    assert [float(m(i)) for i in (0, 2, 4, 9)] == pytest.approx([1.0, 0.1, 0.01, 0.01], rel=1e-5)
    assert float(anneal_schedule(1.0, 5)(3)) == 1.0


# --------------------------------------------------------------------------- reps_lr


def _one_update(tx, tree, grads):
    updates, _ = tx.update(grads, tx.init(tree), tree)
    return updates


def test_reps_lr_scales_reps_updates_and_leaves_weights_bitwise(small_cnn, attached):
    _, variables = small_cnn
    tree, _ = attached(variables["params"], k=2)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3) * jnp.sign(x + 1e-3), tree)
    for opt in ("adam", "sgd"):
        cfg = pipeline.Config(optimizer=opt, weight_decay=1e-4)
        base = _one_update(make_optimizer(cfg, 1e-2, 10), tree, grads)
        split = _one_update(make_optimizer(cfg, 1e-2, 10, reps_lr=1e-3), tree, grads)
        pairs = zip(jax.tree.leaves(base["model"]), jax.tree.leaves(split["model"]), strict=True)
        for a, b in pairs:
            np.testing.assert_array_equal(a, b)
        for path in tree["reps"]:
            np.testing.assert_allclose(split["reps"][path], 0.1 * base["reps"][path], rtol=1e-5)
            assert np.abs(base["reps"][path]).min() > 0
        frozen = _one_update(
            make_optimizer(cfg, 1e-2, 10, freeze_reps=True, reps_lr=1e-3), tree, grads
        )
        assert all(not np.any(v) for v in frozen["reps"].values())


# ---------------------------------------------------------------------------- anneal


@pytest.mark.parametrize("reg, field", [("softmin", "tau"), ("wells", "sigma")])
def test_annealed_penalty_is_the_penalty_at_the_scaled_tau_or_sigma(
    small_cnn, attached, reg, field
):
    _, variables = small_cnn
    tree, specs = attached(variables["params"], k=3, regularizer=reg, lam=2.0, init="quantile")
    m = 0.25
    scaled = {p: dataclasses.replace(s, **{field: getattr(s, field) * m}) for p, s in specs.items()}
    # Jitted: the eager softmin scan compiles op by op (seconds).
    got = jax.jit(lambda t, i: recipe.annealed_penalty(t, specs, i, lambda step: m))
    np.testing.assert_allclose(got(tree, jnp.int32(3)), penalty(tree, scaled), rtol=2e-5)
    g_got = jax.jit(jax.grad(lambda t: recipe.annealed_penalty(t, specs, 0, lambda s: m)))(tree)
    g_ref = jax.jit(jax.grad(lambda t: penalty(t, scaled)))(tree)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7)
    at_one = recipe.annealed_penalty(tree, specs, 0, lambda step: 1.0)
    assert float(at_one) == float(penalty(tree, specs))


def test_anneal_leaves_other_regularizers_alone(small_cnn, attached):
    _, variables = small_cnn
    tree, specs = attached(variables["params"], k=2, regularizer="nearest", lam=1.5)
    got = recipe.annealed_penalty(tree, specs, 0, lambda step: 0.01)
    assert float(got) == float(penalty(tree, specs))


def test_annealed_step_logs_task_loss_and_penalty_apart(small_cnn, attached, digits):
    model, variables = small_cnn
    tree, specs = attached(variables["params"], k=2, regularizer="softmin", lam=5.0)
    tx = optax.sgd(0.0)
    step = recipe.recipe_step(model, tx, specs, anneal=anneal_schedule(10.0, 4))
    state = make_init_fn(tx)(tree, {}, np.uint32(0))
    batch = _batch(digits)
    new = step(state, batch)
    task, _ = task_loss(model, tree["model"], {}, batch)
    assert new.model_state == {} and int(new.step) == 1
    np.testing.assert_allclose(new.window["task_loss"], task, rtol=1e-6)
    np.testing.assert_allclose(new.window["penalty"], penalty(tree, specs), rtol=1e-6)


# ----------------------------------------------------------------------- edge layers


def test_edge_paths_are_first_and_last_in_natural_order():
    paths = ["params/conv10/kernel", "params/fc1/kernel", "params/conv2/kernel"]
    assert recipe.edge_paths(paths) == ["params/conv2/kernel", "params/fc1/kernel"]
    assert recipe.edge_paths(["params/fc/kernel"]) == ["params/fc/kernel"]


def _ctx(**changes):
    return types.SimpleNamespace(config=pipeline.Config(**changes))


def test_edge_layers_k_sets_k_of_first_and_last_layer_only(small_cnn):
    params = small_cnn[1]["params"]
    stage = pipeline.Stage("reg-nearest-k2", "regularizer", "nearest", 2, False)
    plain = stages._reg_specs(_ctx(lam_warmup=0.0), params, stage, 10)
    edged = stages._reg_specs(_ctx(lam_warmup=0.0, edge_layers_k=8), params, stage, 10)
    assert {p: s.k for p, s in edged.items()} == dict(zip(KERNELS, (8, 2, 2, 8), strict=True))
    for path in KERNELS:
        assert dataclasses.replace(edged[path], k=2) == plain[path]
    tree, specs = q.attach(params, edged)
    assert tree["reps"]["conv1/kernel"].shape == (8,)


# ---------------------------------------------------------------------------- hybrid


def test_hybrid_specs_drop_lambda_at_the_switch_unless_kept(small_cnn):
    params = small_cnn[1]["params"]
    stage = pipeline.Stage("reg-nearest-ste0.25-k2", "regularizer", "nearest", 2, False)
    cfg = dict(ste_last=0.25, lam={"nearest": 4.0}, lam_warmup=0.0)
    assert recipe.ste_switch(pipeline.Config(**cfg), 20) == 15
    assert recipe.ste_switch(pipeline.Config(), 20) is None
    spec = stages._reg_specs(_ctx(**cfg), params, stage, 20)["fc1/kernel"]
    assert [float(spec.lam_at(i)) for i in (0, 14, 15, 19)] == [4.0, 4.0, 0.0, 0.0]
    kept = stages._reg_specs(_ctx(**cfg, ste_keep_lam=True), params, stage, 20)
    assert float(kept["fc1/kernel"].lam_at(19)) == 4.0


def test_ste_from_the_first_step_spans_the_penalty_over_the_whole_phase(small_cnn):
    params = small_cnn[1]["params"]
    stage = pipeline.Stage("reg-nearest-ste1-k2", "regularizer", "nearest", 2, False)
    cfg = dict(ste_last=1.0, ste_keep_lam=True, lam={"nearest": 4.0}, lam_schedule="exp")
    assert recipe.ste_switch(pipeline.Config(**cfg), 20) == 0
    spec = stages._reg_specs(_ctx(**cfg), params, stage, 20)["fc1/kernel"]
    lams = [float(spec.lam_at(i)) for i in range(20)]
    # Geometric growth from 4e-3 at step 0 to 4.0 at the last step: damping, then pinning.
    assert lams[0] == pytest.approx(4e-3, rel=1e-5) and lams[-1] == pytest.approx(4.0, rel=1e-5)
    assert all(b > a for a, b in zip(lams, lams[1:], strict=False))


def test_hybrid_forward_net_is_on_levels_after_the_switch(small_cnn, attached, digits):
    model, variables = small_cnn
    tree, specs = attached(variables["params"], k=2, init="quantile")
    loss = recipe.recipe_loss(model, specs, switch=3)
    batch = _batch(digits)
    latent, _ = task_loss(model, tree["model"], {}, batch)
    snapped = snap(tree, specs)[0]["model"]
    quantized, _ = task_loss(model, snapped, {}, batch)
    assert float(latent) != float(quantized)
    value = jax.jit(loss)
    for step, want in ((0, latent), (2, latent), (3, quantized), (7, quantized)):
        got, state = value(tree, {}, batch, None, jnp.int32(step))
        assert float(got) == pytest.approx(float(want), rel=1e-6) and state == {}
    # After the switch the levels get the task gradient (straight through), before none.
    grad = jax.jit(jax.grad(lambda t, i: loss(t, {}, batch, None, i)[0]))
    g_before, g_after = grad(tree, jnp.int32(0)), grad(tree, jnp.int32(3))
    assert all(not np.any(v) for v in g_before["reps"].values())
    assert all(np.any(v) for v in g_after["reps"].values())


def test_hybrid_stage_names():
    cfg = pipeline.Config(regularizers=("nearest", "sine"), freeze_reps=(False, True), ks=(2,))
    cfg = cfg.replace(baselines=(), ste_last=0.2)
    assert [s.name for s in pipeline.planned_stages(cfg)] == [
        "reg-nearest-ste0.2-k2",
        "reg-nearest-frozen-ste0.2-k2",
        "reg-sine-ste0.2-k2",
    ]
    assert stages.method_name("nearest", False, 0.2) == "nearest + ste0.2"
    assert stages.stage_name("nearest", 4, False) == "reg-nearest-k4"


# ------------------------------------------------------------------------- normalize


@pytest.mark.parametrize("reg", ["nearest", "softmin", "sine"])
def test_normalized_penalty_is_divided_by_variance_or_squared_spacing(small_cnn, attached, reg):
    params = small_cnn[1]["params"]
    tree, plain = attached(params, k=3, regularizer=reg, lam=1.0, init="quantile", normalize=None)
    for how in ("variance", "spacing"):
        tree_n, specs = attached(
            params, k=3, regularizer=reg, lam=1.0, init="quantile", normalize=how
        )
        for path, spec in specs.items():
            w = np.asarray(q.paths.named_leaves(params)[path], np.float64)
            if how == "variance":
                want = w.var()
            else:
                c = np.sort(np.asarray(q.levels(tree_n, spec, path), np.float64))
                want = np.mean(np.diff(c)) ** 2
            assert spec.norm == pytest.approx(want, rel=1e-5)
            assert dataclasses.replace(spec, normalize=None, norm=None) == plain[path]
        ratio = jax.jit(lambda t, s=plain: q.layer_penalties(t, s))(tree)
        got = jax.jit(lambda t, s=specs: q.layer_penalties(t, s))(tree_n)
        for path in specs:
            np.testing.assert_allclose(got[path] * specs[path].norm, ratio[path], rtol=1e-5)
        g_plain = jax.jit(jax.grad(lambda t, s=plain: penalty(t, s)))(tree)
        g_norm = jax.jit(jax.grad(lambda t, s=specs: penalty(t, s)))(tree_n)
        for path, spec in specs.items():
            np.testing.assert_allclose(
                g_norm["model"][path.split("/")[0]]["kernel"] * spec.norm,
                g_plain["model"][path.split("/")[0]]["kernel"],
                rtol=1e-4,
                atol=1e-9,
            )


def test_penalty_normalize_reaches_the_specs(small_cnn):
    params = small_cnn[1]["params"]
    stage = pipeline.Stage("reg-nearest-k2", "regularizer", "nearest", 2, False)
    specs = stages._reg_specs(_ctx(penalty_normalize="spacing"), params, stage, 10)
    assert {s.normalize for s in specs.values()} == {"spacing"}
    default = stages._reg_specs(_ctx(), params, stage, 10)
    assert {s.normalize for s in default.values()} == {"unit"}
    plain = stages._reg_specs(_ctx(penalty_normalize=None), params, stage, 10)
    assert {s.normalize for s in plain.values()} == {None}


def test_unresolved_or_bad_normalize_is_refused(small_cnn):
    with pytest.raises(ValueError, match="normalize"):
        q.QuantSpec(normalize="std")
    with pytest.raises(ValueError, match="norm"):
        q.QuantSpec(normalize="variance", norm=-1.0)
    params = small_cnn[1]["params"]
    specs = q.make_specs(params, k=2, normalize="variance")
    tree, _ = q.attach(params, specs)
    with pytest.raises(ValueError, match="attach"):
        penalty(tree, specs)


# ---------------------------------------------------------------------------- errors


def test_reg_optimizer_replaces_pretraining_s_in_the_regularized_phases(small_cnn, attached):
    _, variables = small_cnn
    tree, _ = attached(variables["params"], k=2)
    grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), tree)
    cfg = pipeline.Config(optimizer="sgd", reg_optimizer="adam")
    adam = _one_update(make_optimizer(cfg, 1e-3, 10, name=cfg.reg_optimizer), tree, grads)
    sgd = _one_update(make_optimizer(cfg, 1e-3, 10), tree, grads)
    # Adam's first step is lr * sign(grad) whatever the scale; Nesterov SGD's lr * 1.9 grad.
    for a, s in zip(jax.tree.leaves(adam), jax.tree.leaves(sgd), strict=True):
        np.testing.assert_allclose(a, -1e-3, rtol=1e-3)
        np.testing.assert_allclose(s, -1.9e-5, rtol=1e-3)


@pytest.mark.parametrize(
    "changes, error, field",
    [
        (dict(lam_schedule="cosine"), ValueError, "lam_schedule"),
        (dict(lam_schedule=1), TypeError, "lam_schedule"),
        (dict(lam_exp_start=0.0), ValueError, "lam_exp_start"),
        (dict(lam_exp_start=2.0), ValueError, "lam_exp_start"),
        (dict(reps_lr=-1e-3), ValueError, "reps_lr"),
        (dict(reps_lr="fast"), TypeError, "reps_lr"),
        (dict(penalty_normalize="std"), ValueError, "penalty_normalize"),
        (dict(anneal=0.0), ValueError, "anneal"),
        (dict(anneal=4.0, regularizers=("nearest",)), ValueError, "anneal"),
        (dict(edge_layers_k=1), ValueError, "edge_layers_k"),
        (dict(edge_layers_k=4.0), TypeError, "edge_layers_k"),
        (dict(edge_layers_k=512, index_dtype="uint8"), ValueError, "K=512"),
        (dict(ste_last=1.0), ValueError, "ste_last=1"),
        (dict(ste_last=1.5, ste_keep_lam=True), ValueError, "ste_last"),
        (dict(ste_last=-0.1), ValueError, "ste_last"),
        (dict(ste_last="end"), TypeError, "ste_last"),
        (dict(ste_keep_lam=1), TypeError, "ste_keep_lam"),
        (dict(ste_keep_lam=True), ValueError, "ste_keep_lam"),
        (dict(reg_optimizer="rmsprop"), ValueError, "reg_optimizer"),
    ],
)
def test_bad_recipe_values_name_the_field(changes, error, field):
    with pytest.raises(error, match=field):
        pipeline.Config(**changes)


def test_defaults_are_off_but_the_unit_penalty():
    cfg = pipeline.Config()
    assert (cfg.lam_schedule, cfg.reps_lr, cfg.anneal) == ("ramp", None, None)
    assert (cfg.penalty_normalize, cfg.reduction) == ("unit", "sum")  # one lambda scale
    assert (cfg.edge_layers_k, cfg.ste_last, cfg.ste_keep_lam) == (None, 0.0, False)


# ------------------------------------------------------------------------ end to end

# 256 training images, batches of 64: 4 steps per epoch.
HYBRID = pipeline.Config(
    pretrain_epochs=1,
    reg_epochs=2,
    finetune_epochs=1,
    regularizers=("softmin",),
    baselines=(),
    ks=(2,),
    batch_size=64,
    train_subset=256,
    test_subset=200,
    log_every=2,
    checkpoint_every=100,
    lam_schedule="exp",
    reps_lr=1e-3,
    anneal=4.0,
    edge_layers_k=4,
    ste_last=0.5,
    penalty_normalize="variance",
)


@pytest.mark.slow
def test_tiny_hybrid_run_end_to_end(tmp_path):
    results = pipeline.train_and_evaluate(HYBRID, tmp_path, progress=False)
    (row,) = results["rows"]
    assert (row["stage"], row["method"], row["kind"]) == (
        "reg-softmin-ste0.5-k2", "softmin + ste0.5", "regularizer",
    )  # fmt: skip
    assert 0.1 < row["acc_pre"] <= 1 and 0 <= row["acc_reg"] <= 1
    _, quantized = compress.load(tmp_path / row["model_file"])
    ks = {p.removeprefix("params/"): cb.shape[0] for p, (cb, _) in quantized.items()}
    assert ks == dict(zip(KERNELS, (4, 2, 2, 4), strict=True))
    records = [json.loads(line) for line in (tmp_path / "metrics" / f"{row['stage']}.jsonl").open()]
    reg = [r for r in records if r.get("phase") == "reg"]
    assert reg and all(np.isfinite(r["task_loss"]) and r["penalty"] >= 0 for r in reg)


# 256 training images, batches of 64: 4 steps per epoch; every method at edge K = 8.
EDGE_ALL = pipeline.Config(
    pretrain_epochs=1,
    reg_epochs=1,
    finetune_epochs=1,
    regularizers=(),
    baselines=("kmeans", "binary"),
    qat=("dkm",),
    ks=(2,),
    batch_size=64,
    train_subset=256,
    test_subset=200,
    log_every=2,
    checkpoint_every=100,
    edge_layers_k=8,
)


def test_edge_layers_k_reaches_the_baselines_and_dkm_except_binary(tmp_path):
    results = pipeline.train_and_evaluate(EDGE_ALL, tmp_path, progress=False)
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {"kmeans", "binary", "dkm"}
    expected = {
        "kmeans": (8, 2, 2, 8),
        "dkm": (8, 2, 2, 8),
        "binary": (2, 2, 2, 2),  # a sign quantizer: K=2 on every layer
    }
    sizes = {}
    for method, row in rows.items():
        params, quantized = compress.load(tmp_path / row["model_file"])
        ks = {p.removeprefix("params/"): cb.shape[0] for p, (cb, _) in quantized.items()}
        assert ks == dict(zip(KERNELS, expected[method], strict=True)), method
        for codebook, assignments in quantized.values():
            assert int(assignments.max()) < codebook.shape[0]
        # The row's sizes are those of the packed file's per-layer K.
        report = compress.size_report(params, quantized)
        assert row["packed_bytes"] == pytest.approx(report.packed_bits / 8)
        sizes[method] = {p.removeprefix("params/"): a.size for p, (_, a) in quantized.items()}
    # Edge layers at 8 levels: 3 index bits instead of 1 per weight, 6 more float32 levels.
    extra_bits = sum(2 * sizes["kmeans"][p] + 6 * 32 for p in (KERNELS[0], KERNELS[-1]))
    assert rows["kmeans"]["packed_bytes"] - rows["binary"]["packed_bytes"] == pytest.approx(
        extra_bits / 8
    )
    assert rows["dkm"]["packed_bytes"] == rows["kmeans"]["packed_bytes"]


def test_finetune_lr_per_method_reaches_each_stage(tmp_path):
    # One method fine-tunes at a rate so small its levels cannot move; the other as usual.
    cfg = pipeline.Config(
        pretrain_epochs=1, reg_epochs=1, finetune_epochs=1, train_subset=256, batch_size=64,
        ks=(2,), regularizers=("nearest",), baselines=("kmeans",),
        finetune_lr={"kmeans": 1e-12},
    )  # fmt: skip
    assert (cfg.finetune_lr_for("kmeans"), cfg.finetune_lr_for("nearest")) == (1e-12, 1e-3)
    rows = {
        r["method"]: r for r in pipeline.train_and_evaluate(cfg, tmp_path, progress=False)["rows"]
    }
    assert rows["kmeans"]["acc_post"] == rows["kmeans"]["acc_pre"]
    with pytest.raises(ValueError, match="finetune_lr key"):
        pipeline.Config(finetune_lr={"kmean": 1e-4})
    with pytest.raises(ValueError, match=r"finetune_lr\['ste'\]"):
        pipeline.Config(finetune_lr={"ste": -1.0})
