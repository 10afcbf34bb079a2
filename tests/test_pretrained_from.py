"""Starting a run from the full-precision models of an earlier one (``pretrained_from``):
the pretraining is reused, not repeated, and a source that cannot serve is refused
before any work."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from qareg_jax import pipeline
from qareg_jax.pipeline import WorkdirError
from qareg_jax.pipeline.workdir import check_pretrained_source

# 320 digits images, batch 64: 5 steps per epoch; the source pretrains two seeds.
SOURCE = pipeline.Config(
    pretrain_epochs=1,
    finetune_epochs=0,
    regularizers=(),
    baselines=("kmeans",),
    ks=(2,),
    train_subset=320,
    batch_size=64,
    seeds=(0, 1),
    log_every=2,
)
TARGET = SOURCE.replace(
    seeds=None, seed=1, regularizers=("nearest",), reg_epochs=1, baselines=(), lam=10.0
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp") / "run"
    return path, pipeline.train_and_evaluate(SOURCE, path, progress=False)


def test_the_target_starts_from_the_source_models_without_pretraining(tmp_path, source):
    path, results = source
    # 5 regularized steps; pretraining again would take 5 more and hit stop_after.
    out = pipeline.train_and_evaluate(
        TARGET, tmp_path / "t", progress=False, stop_after=6, pretrained_from=path
    )
    assert out["pretrain"]["acc_fp"] == results["pretrain_by_seed"]["1"]["acc_fp"]
    assert out["rows"][0]["acc_fp"] == out["pretrain"]["acc_fp"]
    assert out["pretrained_from"] == [str(path)]
    copied = (tmp_path / "t/metrics/pretrain.jsonl").read_text()
    assert copied == (path / "metrics/seed-1/pretrain.jsonl").read_text()
    assert len(list((tmp_path / "t/checkpoints/pretrain/train").iterdir())) == 1  # last only
    # Resuming copies nothing again and recomputes nothing.
    again = pipeline.train_and_evaluate(
        TARGET, tmp_path / "t", progress=False, resume=True, stop_after=1, pretrained_from=path
    )
    assert again["rows"] == out["rows"]


def test_seeds_the_source_lacks_pretrain_as_usual(tmp_path, source):
    path, _ = source
    said = []
    pipeline.train_and_evaluate(
        TARGET.replace(seeds=(1, 2), regularizers=(), baselines=("kmeans",)),
        tmp_path / "t",
        progress=False,
        say=said.append,
        pretrained_from=path,
    )
    text = "\n".join(said)
    assert "pretrained models of seeds [1] copied" in text
    # The plan counts pretraining for seed 2 only: 5 steps, plus 0-epoch fine-tuning.
    assert "copied for seeds [1], not trained again" in text and "5 optimizer steps in all" in text
    assert json.loads((tmp_path / "t/stages/seed-2/pretrain.json").read_text())["acc_fp"] > 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pretrain_lr": 1e-2}, "pretrained differently (pretrain_lr: 0.003 -> 0.01)"),
        ({"train_subset": 300}, "trained seed 1 on other examples (train_subset: 320 -> 300"),
        ({"val_fraction": 0.1}, "trained seed 1 on other examples (train_subset: 320 -> 320"),
        ({"seed": 5}, "holds no finished pretraining for seeds [5]"),
    ],
)
def test_a_source_that_cannot_serve_is_refused_before_any_work(tmp_path, source, changes, message):
    path, _ = source
    with pytest.raises(WorkdirError, match=re.escape(message)):
        pipeline.train_and_evaluate(
            TARGET.replace(**changes), tmp_path / "t", progress=False, pretrained_from=path
        )
    assert not (tmp_path / "t").exists()


def test_a_validation_split_that_leaves_the_same_training_examples_is_accepted(tmp_path, source):
    # Without a split seed 1 trains on the first 320 of permutation([1, 0]); with one, on
    # the first 320 of permutation([data_seed, 0]): the same examples for data_seed=1.
    path, results = source
    out = pipeline.train_and_evaluate(
        TARGET.replace(val_fraction=0.1, data_seed=1, regularizers=(), baselines=("kmeans",)),
        tmp_path / "t",
        progress=False,
        stop_after=1,  # PTQ only: no training step after the copied pretraining
        pretrained_from=path,
    )
    assert out["pretrain"]["acc_fp"] == results["pretrain_by_seed"]["1"]["acc_fp"]
    assert 0.0 < out["rows"][0]["acc_val_pre"] <= 1.0


def test_a_directory_without_a_run_is_refused(tmp_path):
    with pytest.raises(WorkdirError, match="holds no run"):
        pipeline.train_and_evaluate(
            TARGET, tmp_path / "t", progress=False, pretrained_from=tmp_path / "nothing"
        )


def test_several_sources_each_seed_from_the_first_that_holds_it(tmp_path, source):
    path, results = source
    said = []
    out = pipeline.train_and_evaluate(
        TARGET.replace(seeds=(0, 1), regularizers=(), baselines=("kmeans",)),
        tmp_path / "t",
        progress=False,
        say=said.append,
        pretrained_from=[path, str(path)],
    )
    assert [line for line in said if "copied from" in line] == [
        f"pretrained models of seeds [0, 1] copied from {str(path)!r}"
    ]
    assert out["pretrained_from"] == [str(path), str(path)]
    assert out["pretrain_by_seed"]["1"]["acc_fp"] == results["pretrain_by_seed"]["1"]["acc_fp"]


TIMINGS = ("wall_s", "step_s", "step_rel")  # measured, so they differ between two runs


def test_an_exported_source_serves_as_the_run_itself(tmp_path, source):
    path, _ = source
    assert pipeline.export_pretrained(path, tmp_path / "fp") == [0, 1]
    kept = sorted(p.relative_to(tmp_path / "fp").parts[:3] for p in (tmp_path / "fp").rglob("*"))
    assert {k[2] for k in kept if k[0] == "checkpoints" and len(k) == 3} == {"pretrain"}
    for seed in ("seed-0", "seed-1"):  # the last step only
        assert len(list((tmp_path / "fp/checkpoints" / seed / "pretrain/train").iterdir())) == 1
    runs = [
        pipeline.train_and_evaluate(
            TARGET, tmp_path / name, progress=False, stop_after=6, pretrained_from=src
        )
        for name, src in (("a", path), ("b", tmp_path / "fp"))
    ]
    untimed = [
        [{k: v for k, v in r.items() if k not in TIMINGS} for r in run["rows"]] for run in runs
    ]
    assert untimed[0] == untimed[1] and untimed[0][0]["acc_pre"] > 0
    assert runs[0]["pretrain"]["acc_fp"] == runs[1]["pretrain"]["acc_fp"]


def test_export_refuses_a_taken_destination_or_a_source_without_a_run(tmp_path, source):
    path, _ = source
    (tmp_path / "taken").mkdir()
    with pytest.raises(WorkdirError, match="exists; give a new directory"):
        pipeline.export_pretrained(path, tmp_path / "taken")
    assert not any((tmp_path / "taken").iterdir())
    with pytest.raises(WorkdirError, match="holds no run"):
        pipeline.export_pretrained(tmp_path / "nothing", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _stored_run(path, config):
    (path / "stages").mkdir(parents=True)
    (path / "stages" / "pretrain.json").write_text("{}")
    (path / "config.json").write_text(json.dumps({"format": 1, "config": config.to_dict()}))
    return path


def test_a_folder_dataset_is_known_by_its_file_name_not_its_directory(tmp_path):
    # An export committed with a repository must serve where the data lives elsewhere.
    here = pipeline.Config(dataset="folder:/data/a/cifar10-jpeg75.tar.gz", model="small")
    src = _stored_run(tmp_path / "run", here)
    moved = here.replace(dataset="folder:/mnt/b/cifar10-jpeg75.tar.gz")
    assert check_pretrained_source(src, moved) == {0: ""}
    other = here.replace(dataset="folder:/data/a/cifar100.tar.gz")
    with pytest.raises(WorkdirError, match="pretrained differently .*cifar100"):
        check_pretrained_source(src, other)
    with pytest.raises(WorkdirError, match="pretrained differently"):
        check_pretrained_source(src, here.replace(dataset="digits"))


def test_a_stage_record_of_another_full_precision_model_is_refused(tmp_path, source):
    # Two runs of TARGET from the source's seed 1 and seed 0 models: the same stages, but
    # another model under each; seed 1's record moved into seed 0's run must not be read.
    path, _ = source
    runs = {}
    for seed in (1, 0):
        runs[seed] = tmp_path / f"s{seed}"
        pipeline.train_and_evaluate(
            TARGET.replace(seed=seed), runs[seed], progress=False, pretrained_from=path
        )
    fp = {s: json.loads((runs[s] / "stages/pretrain.json").read_text()) for s in runs}
    assert fp[0]["digest"] != fp[1]["digest"]
    foreign = json.loads((runs[1] / "stages/reg-nearest-k2.json").read_text())
    assert foreign["fp_digest"] == fp[1]["digest"]
    stage = runs[0] / "stages/reg-nearest-k2.json"

    def resume():
        return pipeline.train_and_evaluate(
            TARGET.replace(seed=0), runs[0], progress=False, resume=True, stop_after=1
        )

    stage.write_text(json.dumps(foreign))
    with pytest.raises(WorkdirError, match=f"digest {foreign['fp_digest']} vs {fp[0]['digest']}"):
        resume()
    # A record written before digests is known by the full-precision accuracy it records.
    stage.write_text(json.dumps({**foreign, "fp_digest": None, "acc_fp": fp[0]["acc_fp"] + 0.01}))
    with pytest.raises(WorkdirError, match="another full-precision model .*test accuracy"):
        resume()
    stage.write_text(json.dumps({**foreign, "fp_digest": None, "acc_fp": fp[0]["acc_fp"]}))
    assert resume()["rows"][0]["acc_post"] == foreign["acc_post"]  # read back, not trained


def test_a_pretraining_record_of_another_checkpoint_is_refused(tmp_path, source):
    path, _ = source
    run = tmp_path / "t"
    pipeline.train_and_evaluate(TARGET, run, progress=False, pretrained_from=path)
    record = run / "stages/pretrain.json"
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in stored.items() if k != "digest"}))
    again = pipeline.train_and_evaluate(TARGET, run, progress=False, resume=True, stop_after=1)
    assert json.loads(record.read_text())["digest"] == stored["digest"]  # recorded anew
    assert again["rows"][0]["fp_digest"] == stored["digest"]
    record.write_text(json.dumps({**stored, "digest": "0" * 16}))
    with pytest.raises(WorkdirError, match="mixes two runs"):
        pipeline.train_and_evaluate(TARGET, run, progress=False, resume=True, stop_after=1)


def test_a_lost_run_is_rebuilt_from_its_model_and_its_stage_records(tmp_path, source):
    # The run's directory is lost; its stage records (as a results folder keeps them) and
    # the full-precision model rebuild it: recorded stages are read back, others train.
    path, _ = source
    config = TARGET.replace(baselines=("kmeans",))
    lost = pipeline.train_and_evaluate(
        config, tmp_path / "lost", progress=False, pretrained_from=path
    )
    kept = tmp_path / "results"
    (kept / "stages").mkdir(parents=True)
    for name in ("pretrain", "reg-nearest-k2"):  # ptq-kmeans-k2's record was not kept
        shutil.copy2(tmp_path / f"lost/stages/{name}.json", kept / "stages")
    shutil.rmtree(tmp_path / "lost")
    said = []
    rebuilt = pipeline.train_and_evaluate(
        config, tmp_path / "new", progress=False, say=said.append, stop_after=1,
        pretrained_from=path, stages_from=kept,
    )  # fmt: skip
    assert f"1 finished stages copied from {str(kept)!r}: reg-nearest-k2" in said
    plan = next(line for line in said if line.startswith("plan:")).splitlines()
    assert plan[0].endswith("0 optimizer steps left (1 recorded stages)")  # kmeans: no tuning
    assert (
        plan[2].endswith("(recorded: read back)")
        and plan[3] == "  ptq-kmeans-k2: finetune 0 (0 epochs)"
    )
    assert rebuilt["rows"][0] == lost["rows"][0]  # read back (timings included), not trained
    untimed = [{k: v for k, v in r.items() if k not in TIMINGS} for r in rebuilt["rows"]]
    assert untimed[1] == {k: v for k, v in lost["rows"][1].items() if k not in TIMINGS}


def test_stage_records_of_another_model_or_none_are_refused_before_any_work(tmp_path, source):
    path, _ = source
    kept = tmp_path / "results"
    (kept / "stages").mkdir(parents=True)
    (kept / "stages/pretrain.json").write_text(json.dumps({"acc_fp": 0.5, "digest": "0" * 16}))
    with pytest.raises(WorkdirError, match="records seed 1's full-precision model 0000"):
        pipeline.train_and_evaluate(
            TARGET, tmp_path / "t", progress=False, pretrained_from=path, stages_from=kept
        )
    with pytest.raises(WorkdirError, match="--stages-from: .* holds no stage records"):
        pipeline.train_and_evaluate(TARGET, tmp_path / "t", progress=False, stages_from=tmp_path)
    assert not (tmp_path / "t").exists()


def test_the_plan_counts_only_the_steps_left():
    # Two seeds (5 steps per epoch): seed 0 pretrained and both seeds' regularized stage
    # recorded; left: seed 1's pretraining (5) and its kmeans stage (no fine-tuning).
    config = SOURCE.replace(regularizers=("nearest",), reg_epochs=1, finetune_epochs=1)
    ds = pipeline.run.load_data(config)
    full = pipeline.run.plan(config, ds)
    assert full[1] == 2 * 5 + 2 * (5 + 5) + 2 * 5 and full[0].splitlines()[0].endswith(
        "40 optimizer steps in all"
    )
    recorded = {
        "seed-0/pretrain",
        "seed-0/reg-nearest-k2",
        "seed-1/reg-nearest-k2",
        "seed-0/ptq-kmeans-k2",
    }
    text, steps = pipeline.run.plan(config, ds, recorded=recorded)
    assert steps == 5 + 5  # seed 1: pretraining, then kmeans' one fine-tuning epoch
    lines = text.splitlines()
    assert lines[0].endswith("10 optimizer steps left (3 recorded stages)")
    assert lines[1].endswith("(finished: restored from its checkpoint)")
    assert lines[2].endswith("(recorded: read back)") and lines[3].endswith("(partly recorded)")


def test_several_stage_sources_each_stage_from_the_first_that_records_it(tmp_path, source):
    path, _ = source
    config = TARGET.replace(baselines=("kmeans",))
    pipeline.train_and_evaluate(config, tmp_path / "run", progress=False, pretrained_from=path)
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "run/stages").iterdir()}
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, names, wall in ((first, ["reg-nearest-k2"], 1.0), (second, list(records), 2.0)):
        (folder / "stages").mkdir(parents=True)
        for name in ["pretrain", *names]:
            record = records[name] if name == "pretrain" else {**records[name], "wall_s": wall}
            (folder / f"stages/{name}.json").write_text(json.dumps(record))
    out = pipeline.train_and_evaluate(
        config, tmp_path / "new", progress=False, stop_after=1, pretrained_from=path,
        stages_from=[first, second],
    )  # fmt: skip
    assert [(r["stage"], r["wall_s"]) for r in out["rows"]] == [
        ("reg-nearest-k2", 1.0), ("ptq-kmeans-k2", 2.0)
    ]  # fmt: skip
