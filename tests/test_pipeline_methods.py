"""The pipeline's QAT baselines (ste, dkm), seeds and validation split: end to end on a
tiny digits run, the STE snap on its levels, mean +- std over seeds, the split's rule,
config errors before any training, resume of an interrupted STE stage."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types

import numpy as np
import pytest

from qareg_jax import compress, data, pipeline, report
from qareg_jax.models import get_model
from qareg_jax.pipeline import loop
from qareg_jax.pipeline.stages import pretrain
from qareg_jax.qat import ste
from qareg_jax.snap import snap

# 1,437 digits training images, 20% validation: 1,150 training, 17 steps of 64 per epoch.
QAT = pipeline.Config(
    pretrain_epochs=1,
    reg_epochs=1,
    finetune_epochs=1,
    regularizers=(),
    baselines=(),
    qat=("ste", "dkm"),
    ks=(2,),
    batch_size=64,
    log_every=2,
    checkpoint_every=3,
    ste_recluster_every=4,
    val_fraction=0.2,
)


def _leaf(tree, path):
    return functools.reduce(lambda node, key: node[key], path.split("/"), tree)


def _without_time(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "step_s", "step_rel")} for r in rows]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qat") / "whole"
    return workdir, pipeline.train_and_evaluate(QAT, workdir, progress=False)


@pytest.mark.slow
def test_ste_and_dkm_rows_have_accuracies_sizes_and_step_times(qat_run):
    workdir, results = qat_run
    rows = results["rows"]
    assert [(r["stage"], r["method"], r["kind"]) for r in rows] == [
        ("qat-ste-k2", "ste", "qat"),
        ("qat-dkm-k2", "dkm", "qat"),
    ]
    fp = results["pretrain"]
    assert fp["step_s"] > 0 and 0 <= fp["acc_val_fp"] <= 1
    for row in rows:
        for key in ("acc_pre", "acc_post", "acc_val_pre", "acc_val_post"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        assert row["acc_pre"] > 0.3  # far above chance (0.1) from a pretrained start
        assert row["ratio"] > 10 and row["huffman_bytes"] <= row["packed_bytes"]
        assert row["step_s"] > 0 and row["step_rel"] == pytest.approx(row["step_s"] / fp["step_s"])
        _, quantized = compress.load(workdir / row["model_file"])
        for codebook, assignments in quantized.values():
            assert codebook.shape == (2,) and assignments.max() <= 1
        stored = json.loads((workdir / "stages" / f"{row['stage']}.json").read_text())
        assert set(stored["histograms"]) == {
            f"{p}/kernel" for p in ("conv1", "conv2", "fc1", "fc2")
        }
    table = (workdir / "table.md").read_text()
    assert "acc pre-tuning % (test)" in table and "acc pre-tuning % (val)" in table
    assert "| small | digits | ste | 2 |" in table and "| small | digits | dkm | 2 |" in table
    files = {p.name for p in report.write_report(workdir)["files"]}
    assert {"hist_qat-ste-k2.png", "hist_qat-dkm-k2.png", "training_k2.png"} <= files


@pytest.mark.slow
def test_ste_pre_tuning_model_is_on_its_levels(qat_run, digits_dataset):
    # A Context on the finished workdir: every phase restores its last checkpoint.
    workdir, results = qat_run
    ds = pipeline.seed_data(digits_dataset, QAT)
    ctx = pipeline.Context(QAT, workdir, get_model("small", 10), ds, progress=False)
    stage = next(s for s in pipeline.planned_stages(QAT) if s.kind == "ste")
    tree, model_state, specs, _ = pipeline.train_ste(ctx, pretrain(ctx), stage)
    snapped, _ = snap(tree, specs)
    forward = ste.quantize(tree, specs)
    for path in specs:
        w = np.asarray(_leaf(snapped["model"], path))
        levels = np.asarray(tree["reps"][path])
        assert np.isin(w, levels).all() and len(np.unique(w)) <= 2
        np.testing.assert_array_equal(w, _leaf(forward, path))
    assert ctx.accuracy(snapped["model"], model_state) == results["rows"][0]["acc_pre"]


@pytest.mark.slow
def test_resume_of_an_interrupted_ste_stage_gives_the_same_numbers(tmp_path, qat_run):
    whole_dir, whole = qat_run
    # 17 steps per phase: stop at STE step 10, after the re-clustering at step 8 and the
    # checkpoint at step 9; the resumed phase restores step 9 and re-clusters at 12, 16.
    with pytest.raises(pipeline.TrainingInterrupted, match="qat-ste-k2 ste"):
        pipeline.train_and_evaluate(QAT, tmp_path, progress=False, stop_after=27)
    assert pipeline.checkpoint_manager(tmp_path / "checkpoints/qat-ste-k2/ste").latest_step() == 9
    resumed = pipeline.train_and_evaluate(QAT, tmp_path, resume=True, progress=False)
    assert _without_time(resumed["rows"]) == _without_time(whole["rows"])
    for name in ("qat-ste-k2", "qat-dkm-k2"):
        a = (whole_dir / "models" / f"{name}.qareg").read_bytes()
        assert a == (tmp_path / "models" / f"{name}.qareg").read_bytes()


# ----------------------------------------------------------------------------- seeds

SEEDS = pipeline.Config(
    pretrain_epochs=1,
    finetune_epochs=1,
    regularizers=(),
    baselines=("kmeans",),
    ks=(2,),
    train_subset=320,
    batch_size=64,
    seeds=(0, 1),
)


@pytest.mark.slow
def test_two_seeds_give_mean_and_std_and_each_seed_its_own_run(tmp_path):
    results = pipeline.train_and_evaluate(SEEDS, tmp_path / "two", progress=False)
    rows = results["rows"]
    assert [(r["stage"], r["seed"]) for r in rows] == [
        ("seed-0/ptq-kmeans-k2", 0),
        ("seed-1/ptq-kmeans-k2", 1),
    ]
    assert set(results["pretrain_by_seed"]) == {"0", "1"}
    assert (tmp_path / "two/models/seed-1/ptq-kmeans-k2.qareg").exists()
    (agg,) = report.aggregate(rows)
    assert agg["n_seeds"] == 2
    for key in ("acc_fp", "acc_pre", "acc_post"):
        values = [r[key] for r in rows]
        assert agg[f"{key}_mean"] == np.mean(values) and agg[f"{key}_std"] == np.std(values)
    post = f"{100 * agg['acc_post_mean']:.2f} ± {100 * agg['acc_post_std']:.2f}"
    assert "| small | digits | kmeans | 2 | 2 |" in (tmp_path / "two/table.md").read_text()
    assert post in (tmp_path / "two/table.md").read_text()
    report.write_report(tmp_path / "two")
    assert len((tmp_path / "two/table_seeds.csv").read_text().splitlines()) == 3
    # Seed 1 of the two-seed run computes what a one-seed run with seed 1 does.
    single = pipeline.train_and_evaluate(
        SEEDS.replace(seeds=None, seed=1), tmp_path / "one", progress=False
    )
    assert single["rows"][0]["stage"] == "ptq-kmeans-k2"
    keep = ("acc_fp", "acc_pre", "acc_post", "packed_bytes")
    assert {k: single["rows"][0][k] for k in keep} == {k: rows[1][k] for k in keep}


# ------------------------------------------------------------------- validation split


def _ids_dataset(n_train: int, n_test: int) -> data.Dataset:
    """A dataset whose 1x1x1 images are their ids: training 0..n-1, test n.. ."""
    images = np.arange(n_train + n_test, dtype=np.float32).reshape(-1, 1, 1, 1)
    labels = np.zeros(n_train + n_test, np.int32)
    return data.Dataset(
        "ids", images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
        ("a",), np.zeros(1, np.float32), np.ones(1, np.float32),
    )  # fmt: skip


def test_validation_split_keeps_todays_training_indices_for_seed_0():
    n = 50_000
    train, val = pipeline.split_indices(n, 45_000, 0.1, seed=0)
    perm = np.random.default_rng([0, 0]).permutation(n)
    np.testing.assert_array_equal(train, np.sort(perm[:45_000]))  # the rule without val
    np.testing.assert_array_equal(train, pipeline.split_indices(n, 45_000, 0.0, seed=0)[0])
    np.testing.assert_array_equal(val, np.sort(perm[45_000:]))
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == n


def test_validation_split_is_disjoint_and_fixed_across_seeds():
    full = _ids_dataset(1_000, 200)
    config = pipeline.Config(val_fraction=0.25, train_subset=600, test_subset=150, seeds=(0, 1))
    splits = [pipeline.seed_data(full, config.replace(seed=s, seeds=None)) for s in (0, 1)]
    for ds in splits:
        train, val, test = (
            np.asarray(a).ravel() for a in (ds.train_images, ds.val_images, ds.test_images)
        )
        assert (len(train), len(val), len(test)) == (600, 250, 150)
        assert not set(val) & set(train) and not set(val) & set(test)
        assert val.max() < 1_000 <= test.min()  # validation comes from the training set
    for name in ("train_images", "val_images", "test_images"):
        np.testing.assert_array_equal(getattr(splits[0], name), getattr(splits[1], name))
    # Without validation each seed draws its own training subset, as before.
    plain = [pipeline.seed_data(full, config.replace(val_fraction=0.0, seed=s)) for s in (0, 1)]
    assert plain[0].val_labels is None
    assert not np.array_equal(plain[0].train_images, plain[1].train_images)


def test_validation_split_too_large_is_refused_before_any_work(tmp_path):
    config = QAT.replace(train_subset=1_400, val_fraction=0.5)
    with pytest.raises(ValueError, match="train_subset=1400 and val_fraction=0.5"):
        pipeline.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(qat=("foo",)), "unknown qat 'foo'; allowed: ste, dkm"),
        (dict(qat=("ste", "ste")), "qat has duplicates"),
        (dict(val_fraction=1.5), "val_fraction must be a number in [0, 1), got 1.5"),
        (dict(val_fraction=-0.1), "val_fraction must be"),
        (dict(seeds=()), "seeds must be None or a non-empty tuple of ints, got ()"),
        (dict(seeds=(0, 0)), "seeds has duplicates"),
        (dict(seeds=(0, -1)), "seeds entry must be an int >= 0"),
        (dict(ste_recluster_every=0), "ste_recluster_every must be a positive int, got 0"),
        (dict(dkm_iters=0), "dkm_iters must be a positive int"),
        (dict(dkm_tau_frac=0.0), "dkm_tau_frac must be a finite number > 0"),
        (dict(data_seed=-1), "data_seed must be an int >= 0"),
        (dict(regularizers=(), baselines=(), qat=()), "nothing to run"),
    ],
)
def test_bad_method_seed_and_split_values_name_the_field(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        QAT.replace(**changes)


def test_old_config_json_without_the_new_fields_resumes(tmp_path):
    plain = pipeline.Config()
    pipeline.prepare_workdir(tmp_path, plain)
    stored = json.loads((tmp_path / "config.json").read_text())
    new = ("qat", "seeds", "val_fraction", "data_seed", "ste_recluster_every", "dkm_tau_frac",
           "dkm_iters")  # fmt: skip
    for name in new:
        del stored["config"][name]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    pipeline.prepare_workdir(tmp_path, plain, resume=True)
    with pytest.raises(pipeline.WorkdirError, match="qat: \\[\\] -> \\['ste'\\]"):
        pipeline.prepare_workdir(tmp_path, plain.replace(qat=("ste",)), resume=True)


def test_stage_plan_and_old_rows_without_the_new_fields():
    config = QAT.replace(ks=(2, 4), regularizers=("nearest",), baselines=("kmeans",))
    assert [s.name for s in pipeline.planned_stages(config)] == [
        "reg-nearest-k2", "ptq-kmeans-k2", "qat-ste-k2", "qat-dkm-k2",
        "reg-nearest-k4", "ptq-kmeans-k4", "qat-ste-k4", "qat-dkm-k4",
    ]  # fmt: skip
    fields = {f.name for f in dataclasses.fields(pipeline.StageResult)}
    old = {name: 0 for name in fields} | {"histograms": None}
    for name in (
        "seed", "step_s", "step_rel", "acc_val_fp", "acc_val_pre", "acc_val_post", "fp_digest"
    ):  # fmt: skip
        del old[name]
    row = pipeline.StageResult.from_json(old)
    assert row.seed is None and row.acc_val_pre is None and row.fp_digest is None
    assert "(val)" not in report.markdown_table([row.to_json()])


def test_step_timer_skips_the_compiling_interval_and_the_host_work(monkeypatch):
    # perf_counter at: start, after sync 5's host work, sync 10, after its host work, sync 20.
    clock = iter([0.0, 100.0, 101.0, 150.0, 152.0])
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    timer = pipeline.StepTimer(0)
    timer.sync(5)  # steps 1-5 hold the compilation: not timed
    assert timer.median() is None
    timer.resume()
    timer.sync(10)  # 1 s for 5 steps
    timer.resume()  # 49 s of checkpointing, not counted
    timer.sync(20)  # 2 s for 10 steps
    assert timer.per_step == [0.2, 0.2] and timer.median() == 0.2


def test_run_phase_refuses_a_hook_without_hook_every():
    # Raised before anything is read or trained: the context and state are never touched.
    with pytest.raises(ValueError, match="a hook needs hook_every"):
        loop.run_phase(None, "s", "reg", None, None, 1, hook=lambda state: state)
