"""The pipeline (qareg_jax.pipeline): mock CIFAR-10 and digits end to end, the ordering
regularized > k-means PTQ at K=2, bit-exact resume, divergence, config and workdir checks."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import signal
from collections.abc import Iterator
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from qareg_jax import compress, data, pipeline, provenance
from qareg_jax.pipeline import loop, stages

# Tiny settings: one epoch per phase, one regularizer and one baseline at K=2.
TINY = pipeline.Config(
    pretrain_epochs=1,
    reg_epochs=1,
    finetune_epochs=1,
    regularizers=("nearest",),
    ks=(2,),
    baselines=("kmeans",),
    batch_size=16,
    log_every=2,
    checkpoint_every=3,
)


def _rows_without_time(results):
    timed = ("wall_s", "step_s", "step_rel")
    return [{k: v for k, v in row.items() if k not in timed} for row in results["rows"]]


def test_one_epoch_on_mock_cifar10(tmp_path):
    # mock_data fakes the records, not DatasetBuilder.is_prepared, which data.load_dataset
    # checks first so that it never downloads (see tests/test_data.py).
    with (
        tfds.testing.mock_data(num_examples=48),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        config = TINY.replace(dataset="cifar10", data_dir=str(tmp_path / "tfds"))
        results = pipeline.train_and_evaluate(config, tmp_path / "run", progress=False)
    rows = results["rows"]
    assert [(r["method"], r["k"]) for r in rows] == [("nearest", 2), ("kmeans", 2)]
    for row in rows:
        for key in ("acc_fp", "acc_pre", "acc_post"):
            assert 0.0 <= row[key] <= 1.0
        assert row["ratio"] > 10  # 1-bit indices instead of 32-bit floats
        assert row["huffman_bytes"] <= row["packed_bytes"] < row["original_bytes"]
        params, quantized = compress.load(tmp_path / "run" / row["model_file"])
        assert set(quantized) == {f"params/{p}/kernel" for p in ("conv1", "conv2", "fc1", "fc2")}
        for codebook, assignments in quantized.values():
            assert codebook.shape == (2,) and assignments.max() <= 1
    assert results["device"] == provenance.device_name()
    # Per-layer regularizer logs every log_every steps (3 steps per epoch: steps 2 and 3).
    records = [json.loads(line) for line in (tmp_path / "run/metrics/reg-nearest-k2.jsonl").open()]
    reg = [r for r in records if r["phase"] == "reg"]
    assert [r["step"] for r in reg] == [2, 3]
    layer = reg[-1]["layers"]["fc1/kernel"]
    assert set(layer) == {"penalty", "lambda", "distance"} and layer["distance"] >= 0
    assert (tmp_path / "run/table.md").read_text().count("| small | cifar10 |") == 2


# The ordering test's run; the resume test interrupts and resumes the same config.
ORDERING = pipeline.Config(
    finetune_epochs=2,
    regularizers=("nearest",),
    ks=(2,),
    baselines=("kmeans",),
    log_every=50,
    checkpoint_every=100,
)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits") / "whole"
    return workdir, pipeline.train_and_evaluate(ORDERING, workdir, progress=False)


def test_digits_regularized_beats_kmeans_ptq_at_k2(digits_run):
    # Library defaults: strong lambda (1e5 for nearest) ramped over half the phase.
    _, results = digits_run
    reg, ptq = results["rows"]
    fp = results["pretrain"]["acc_fp"]
    assert fp > 0.95
    assert reg["acc_pre"] > ptq["acc_pre"] + 0.02, (reg, ptq)
    assert reg["acc_post"] > fp - 0.05, (reg, fp)


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, digits_run):
    whole_dir, whole = digits_run
    # 44 steps per epoch: pretrain 660, reg 440, finetune 88 (twice).
    parts = tmp_path / "parts"
    with pytest.raises(pipeline.TrainingInterrupted):
        pipeline.train_and_evaluate(ORDERING, parts, progress=False, stop_after=250)
    # Resumes pretraining at its step-200 checkpoint, finishes it (460 steps), then stops
    # at reg step 290 (checkpoint at 200).
    with pytest.raises(pipeline.TrainingInterrupted):
        pipeline.train_and_evaluate(ORDERING, parts, resume=True, progress=False, stop_after=750)
    assert (
        pipeline.checkpoint_manager(parts / "checkpoints/reg-nearest-k2/reg").latest_step() == 200
    )
    resumed = pipeline.train_and_evaluate(ORDERING, parts, resume=True, progress=False)

    assert _rows_without_time(resumed) == _rows_without_time(whole)
    for name in ("reg-nearest-k2", "ptq-kmeans-k2"):
        # Final quantized models bit-identical, and the same metrics logged.
        a = (whole_dir / "models" / f"{name}.qareg").read_bytes()
        assert a == (parts / "models" / f"{name}.qareg").read_bytes()
        a = (whole_dir / "metrics" / f"{name}.jsonl").read_text()
        assert a == (parts / "metrics" / f"{name}.jsonl").read_text()
    # A finished run resumes to the same results without training again.
    again = pipeline.train_and_evaluate(ORDERING, parts, resume=True, progress=False, stop_after=1)
    assert _rows_without_time(again) == _rows_without_time(whole)


def test_nan_loss_stops_keeps_last_good_checkpoint_and_names_the_step(tmp_path):
    ds = data.load_dataset("digits")
    config = TINY.replace(batch_size=64, checkpoint_every=1, log_every=4)
    seed = pipeline.phase_seed(config.seed, "pretrain/train")
    # One NaN pixel poisons the loss of the step whose batch draws that image.
    for index in range(len(ds.train_labels)):
        images = ds.train_images.copy()
        images[index, 0, 0, 0] = np.nan
        poisoned = dataclasses.replace(ds, train_images=images)
        batches = data.train_batches(poisoned, 64, seed=seed)
        bad_step = next(s for s, b in enumerate(batches) if np.isnan(b["image"]).any())
        if bad_step >= 3:
            break
    with pytest.raises(pipeline.TrainingDivergedError, match=f"at step {bad_step} of pretrain"):
        pipeline.train_and_evaluate(config, tmp_path, progress=False, dataset=poisoned)
    manager = pipeline.checkpoint_manager(tmp_path / "checkpoints/pretrain/train")
    assert manager.latest_step() == bad_step  # steps 0 .. bad_step - 1, all finite
    restored = manager.restore(bad_step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored["params"]))


def test_nan_loss_before_any_checkpoint_says_there_is_none(tmp_path):
    ds = data.load_dataset("digits")
    config = TINY.replace(batch_size=64, checkpoint_every=1000, log_every=4)
    images = np.full_like(ds.train_images, np.nan, dtype=np.float32)  # step 0 diverges
    poisoned = dataclasses.replace(ds, train_images=images)
    with pytest.raises(
        pipeline.TrainingDivergedError, match="at step 0 of pretrain.*No checkpoint of pretrain"
    ):
        pipeline.train_and_evaluate(config, tmp_path, progress=False, dataset=poisoned)


def test_ctrl_c_during_a_checkpoint_save_lets_it_finish_then_stops(tmp_path, default_sigint):
    save = loop.save_state

    def save_interrupted(mngr, step, state):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the save starts (handled at once)
        save(mngr, step, state)

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    config = TINY.replace(train_subset=64)  # 4 steps per epoch, checkpoints at 3 and 4
    with (
        mock.patch.object(loop, "save_state", save_interrupted),
        loop.deferred_interrupts(),
        pytest.raises(KeyboardInterrupt),
    ):
        pipeline.train_and_evaluate(config, tmp_path, progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    manager = pipeline.checkpoint_manager(tmp_path / "checkpoints/pretrain/train")
    assert manager.all_steps() == [3]  # the save completed; no step ran after it
    assert not list(tmp_path.glob("checkpoints/**/*tmp*"))
    manager.restore(3)


def test_the_loop_keeps_at_most_two_steps_ahead_of_the_device(tmp_path):
    # Each step gets 20 chained 256 x 256 matmuls. Unbounded, the host would queue all steps
    # up to its next sync (log_every = 100) in microseconds, and a Ctrl-C would wait for them.
    # (Not a host callback as the slow part: JAX runs those programs synchronously on CPU.)
    ahead = []

    def slowed(run_phase):
        def wrapped(ctx, stage, phase, state, step_fn, *args, **kwargs):
            outputs = []

            @jax.jit  # does not donate, so every output can be asked whether it is ready
            def slow_step(state, batch):
                new = step_fn(state, batch)
                count = new.window["count"]
                x = jnp.full((256, 256), count, jnp.float32) / 256
                for _ in range(20):
                    x = jnp.tanh(x @ x)
                count = count + jnp.isnan(x[0, 0]).astype(count.dtype)  # depends on x
                return new.replace(window={**new.window, "count": count})

            def step(state, batch):
                ahead.append(sum(not out.window["count"].is_ready() for out in outputs))
                outputs.append(slow_step(state, batch))
                return outputs[-1]

            return run_phase(ctx, stage, phase, state, step, *args, **kwargs)

        return wrapped

    config = TINY.replace(train_subset=160, log_every=100, checkpoint_every=100)
    with mock.patch.object(stages, "run_phase", slowed(stages.run_phase)):
        pipeline.train_and_evaluate(config, tmp_path, progress=False)
    # 10 steps in each phase: pretrain, nearest (reg, finetune), k-means (finetune)
    assert len(ahead) == 40
    assert max(ahead) <= loop.MAX_STEPS_AHEAD, ahead


@contextlib.contextmanager
def _gc_disabled() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:  # as the runner had it
            gc.enable()


def test_a_second_ctrl_c_raises_at_once(default_sigint):
    # gc off: a handler that runs inside a gc callback (hypothesis registers one) has its
    # KeyboardInterrupt swallowed as unraisable, and the test would see no raise.
    with loop.deferred_interrupts(), _gc_disabled():
        os.kill(os.getpid(), signal.SIGINT)
        assert loop.interrupt_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            loop.check_interrupt()
    assert not loop.interrupt_requested()
    loop.check_interrupt()  # outside the block: no stale request


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(model="resnet"), "unknown model 'resnet'; allowed: alexnet, vgg16, cifar_vgg, small"),
        (dict(dataset="mnist"), "allowed: cifar10, digits, folder:PATH"),
        (dict(regularizers=("l2",)), "allowed: sine, cosine, nearest, softmin, product, wells"),
        (dict(baselines=("gptq",)), "allowed: kmeans, uniform, pws, ecsq, binary"),
        (dict(ks=(1,)), "integer >= 2"),
        (dict(ks=(300,), index_dtype="uint8"), "K=300 does not fit the index dtype uint8"),
        (dict(ks=(2**32 + 1,)), "K must be <= 2"),
        (dict(lam=-1.0), "lambda must be"),
        (dict(lam_warmup=2.0), "lam_warmup"),
        (dict(pretrain_epochs=0), "pretrain_epochs is 0"),
        (dict(freeze_reps=()), "freeze_reps"),
    ],
)
def test_bad_config_is_refused_with_allowed_values(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TINY.replace(**changes)


def test_workdir_holding_another_run_is_refused(tmp_path):
    pipeline.prepare_workdir(tmp_path / "a", TINY)
    with pytest.raises(pipeline.WorkdirError, match="--resume.*--overwrite"):
        pipeline.prepare_workdir(tmp_path / "a", TINY)
    with pytest.raises(pipeline.WorkdirError, match="different run.*ks: \\[2\\] -> \\[4\\]"):
        pipeline.prepare_workdir(tmp_path / "a", TINY.replace(ks=(4,)), resume=True)
    pipeline.prepare_workdir(tmp_path / "a", TINY.replace(ks=(4,)), overwrite=True)
    assert json.loads((tmp_path / "a/config.json").read_text())["config"]["ks"] == [4]
    (tmp_path / "b").mkdir()
    (tmp_path / "b/notes.txt").write_text("mine")
    with pytest.raises(pipeline.WorkdirError, match="not empty and holds no qareg run"):
        pipeline.prepare_workdir(tmp_path / "b", TINY, overwrite=True)
    assert (tmp_path / "b/notes.txt").exists()


def test_planned_stages_skip_frozen_static_and_binary_above_k2():
    config = TINY.replace(
        regularizers=("sine", "nearest"), ks=(2, 4), freeze_reps=(False, True),
        baselines=("binary", "kmeans"),
    )  # fmt: skip
    assert [s.name for s in pipeline.planned_stages(config)] == [
        "reg-sine-k2", "reg-nearest-k2", "reg-nearest-frozen-k2", "ptq-binary-k2",
        "ptq-kmeans-k2", "reg-sine-k4", "reg-nearest-k4", "reg-nearest-frozen-k4",
        "ptq-kmeans-k4",
    ]  # fmt: skip
    frozen_only = config.replace(ks=(2,), baselines=(), freeze_reps=(True,))
    assert [s.name for s in pipeline.planned_stages(frozen_only)] == [
        "reg-sine-k2", "reg-nearest-frozen-k2",
    ]  # fmt: skip


def test_frozen_reps_keep_their_values_and_lambda_ramps():
    tree = {"model": {"w": jax.numpy.ones((3, 2))}, "reps": {"w": jax.numpy.array([0.0, 2.0])}}
    tx = pipeline.make_optimizer(TINY, 0.1, 10, freeze_reps=True)
    grads = jax.tree.map(jax.numpy.ones_like, tree)
    updates, _ = jax.jit(tx.update)(grads, tx.init(tree), tree)
    assert np.all(np.asarray(updates["reps"]["w"]) == 0)
    assert np.all(np.asarray(updates["model"]["w"]) != 0)
    ramp = pipeline.lam_schedule(100.0, 0.5, 10)
    assert [float(ramp(s)) for s in (0, 1, 5, 9)] == [0.0, 20.0, 100.0, 100.0]
    assert pipeline.lam_schedule(100.0, 0.0, 10) == 100.0


def test_load_config_from_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "from qareg_jax.train import Config\n\ndef get_config():\n    return Config(ks=[2, 8])\n"
    )
    assert pipeline.load_config(path).ks == (2, 8)
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        pipeline.load_config(tmp_path / "bad.py")


def test_load_config_through_the_train_alias(tmp_path):
    # Experiment configs import Config from qareg_jax.train; it is the pipeline's Config.
    from qareg_jax import train

    path = tmp_path / "cfg.py"
    path.write_text(
        "from qareg_jax.train import Config\n\ndef get_config():\n    return Config()\n"
    )
    assert train.Config is pipeline.Config
    assert isinstance(pipeline.load_config(path), pipeline.Config)


def test_checkpoint_of_the_dict_state_restores_into_train_state(tmp_path):
    # Format-1 workdirs (written before TrainState) hold the state as this plain dict.
    import orbax.checkpoint as ocp

    tx = pipeline.make_optimizer(TINY, 0.1, 10)
    params = {"model": {"fc": {"kernel": jax.numpy.arange(6.0).reshape(3, 2)}}, "reps": {}}
    state = pipeline.make_init_fn(tx)(params, {}, np.uint32(7))
    old = {
        "params": state.params,
        "opt_state": state.opt_state,
        "model_state": {},
        "key": state.key,
        "step": state.step + 5,
        "window": pipeline.empty_window(),
        "bad_step": state.bad_step,
    }
    manager = pipeline.checkpoint_manager(tmp_path / "ckpt")
    manager.save(5, args=ocp.args.StandardSave(old))
    restored = pipeline.restore_state(manager, 5, state)
    manager.close()
    assert isinstance(restored, pipeline.TrainState) and int(restored.step) == 5
    for a, b in zip(jax.tree.leaves(restored.as_dict()), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(restored) == jax.tree.structure(state)


def test_config_json_without_newer_fields_resumes(tmp_path):
    # A field added later (with its default) must not make an older run "a different run".
    pipeline.prepare_workdir(tmp_path, TINY)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["config"]["codebook_dtype"]  # as if written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(stored))
    pipeline.prepare_workdir(tmp_path, TINY, resume=True)
    with pytest.raises(pipeline.WorkdirError, match="codebook_dtype: 'float32' -> 'float16'"):
        pipeline.prepare_workdir(tmp_path, TINY.replace(codebook_dtype="float16"), resume=True)


def test_stage_kinds_registry_and_result_round_trip(digits_run):
    workdir, results = digits_run
    assert list(pipeline.STAGE_KINDS) == ["regularizer", "ptq", "ste", "dkm"]
    stages = pipeline.planned_stages(ORDERING)
    assert [(s.kind, s.method, s.k) for s in stages] == [
        ("regularizer", "nearest", 2),
        ("ptq", "kmeans", 2),
    ]
    for stage, row in zip(stages, results["rows"], strict=True):
        stored = json.loads((workdir / "stages" / f"{stage.name}.json").read_text())
        result = pipeline.StageResult.from_json(stored)
        assert result.to_json() == stored
        assert result.to_json(histograms=False) == row
        assert list(row)[:5] == ["model", "dataset", "device", "stage", "acc_fp"]
    assert results["rows"][1]["acc_reg"] is None and results["rows"][1]["kind"] == "baseline"
