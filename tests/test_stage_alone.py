"""One row of a table run alone (``config_for_stage``, ``run_table --stage``): the config
plans that stage only, with every setting kept, and it trains to the row's numbers."""

from __future__ import annotations

import json
import shutil

import pytest

from experiments import run_table
from qareg_jax import pipeline, report
from qareg_jax.pipeline import config_for_stage, planned_stages, workdir

# Every kind of stage, a static and a dynamic penalty, the frozen ablation, two Ks, a budget.
WHOLE = pipeline.Config(
    regularizers=("sine", "nearest"),
    freeze_reps=(False, True),
    baselines=("kmeans", "binary"),
    qat=("ste", "dkm"),
    ks=(2, 4),
    budget="12x",
    lam=3.0,
)
# 320 digits images, batch 64: 5 steps per epoch.
SMALL = pipeline.Config(
    pretrain_epochs=1,
    reg_epochs=1,
    finetune_epochs=1,
    regularizers=("nearest",),
    freeze_reps=(False, True),
    baselines=("kmeans",),
    qat=("ste",),
    ks=(2,),
    train_subset=320,
    batch_size=64,
    log_every=2,
    lam=3.0,
)
KEEP = ("regularizers", "freeze_reps", "baselines", "qat", "ks", "budget")


@pytest.mark.parametrize("stage", [s.name for s in planned_stages(WHOLE)])
def test_every_stage_alone_is_the_only_one_planned_with_the_other_settings_kept(stage):
    alone = config_for_stage(WHOLE, stage)
    assert [s.name for s in planned_stages(alone)] == [stage]
    rest = {k: v for k, v in alone.to_dict().items() if k not in KEEP}
    assert rest == {k: v for k, v in WHOLE.to_dict().items() if k not in KEEP}


def test_a_stage_the_config_does_not_plan_is_refused_with_the_ones_it_does():
    with pytest.raises(ValueError, match="'reg-wells-k2' is not one of .*reg-sine-k2, "):
        config_for_stage(WHOLE, "reg-wells-k2")
    with pytest.raises(ValueError, match="'ptq-binary-k4'"):  # binary runs at K = 2 only
        config_for_stage(WHOLE, "ptq-binary-k4")


def _without_time(row):
    return {k: v for k, v in row.items() if k not in ("wall_s", "step_s", "step_rel")}


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole") / "run"
    return workdir, pipeline.train_and_evaluate(SMALL, workdir, progress=False)


@pytest.mark.parametrize("stage", ["reg-nearest-frozen-k2", "ptq-kmeans-k2", "qat-ste-k2"])
def test_a_stage_alone_gives_the_numbers_of_its_row_in_the_whole_run(tmp_path, whole_run, stage):
    workdir, whole = whole_run
    alone = pipeline.train_and_evaluate(
        config_for_stage(SMALL, stage), tmp_path / "alone", progress=False, pretrained_from=workdir
    )
    (row,) = alone["rows"]
    (same,) = [r for r in whole["rows"] if r["stage"] == stage]
    assert _without_time(row) == _without_time(same)


def test_run_table_stage_errors_come_before_any_work(tmp_path, capsys):
    base = ["experiments/configs/digits_small.py", "--workdir", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        run_table.main([*base, "--stage", "reg-nearest-k3"])
    err = capsys.readouterr().err
    assert "--stage: stage 'reg-nearest-k3' is not one of" in err and "reg-nearest-k2" in err
    with pytest.raises(SystemExit):
        run_table.main([*base, "--stage", "reg-nearest-k2", "--ks", "2"])
    assert "--stage runs one stage" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_row_commands_name_each_rows_stage_and_seed():
    rows = [
        dict(stage="seed-1/reg-nearest-k4", method="nearest", k=4, seed=1),
        dict(stage="seed-1/ptq-kmeans-budget", method="kmeans", k=None, seed=1),
    ]
    text = run_table.row_commands(rows, "experiments/configs/x.py", SMALL.replace(seeds=(1, 2)))
    lines = [x for x in text.splitlines() if x.startswith("| nearest") or x.startswith("| kmeans")]
    assert lines == [
        "| nearest | 4 | 1 | `python -m experiments.run_table experiments/configs/x.py "
        "--stage reg-nearest-k4 --seeds 1 --pretrained-from RUNDIR` |",
        "| kmeans | budget | 1 | `python -m experiments.run_table experiments/configs/x.py "
        "--stage ptq-kmeans-budget --seeds 1 --pretrained-from RUNDIR` |",
    ]
    single = run_table.row_commands(rows[:1], "x.py", SMALL)
    assert "--seeds" not in single and "--stage reg-nearest-k4 --pretrained-from" in single


def test_partial_reads_the_records_not_a_stale_results_json(tmp_path, whole_run):
    # A finished run whose stage is trained again (its record replaced, results.json left
    # from the first end): --partial reports the new record.
    workdir, whole = whole_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    record = run / "stages/qat-ste-k2.json"
    row = json.loads(record.read_text())
    row["acc_pre"] = 0.123
    record.write_text(json.dumps(row))
    assert (run / "results.json").is_file()
    rows = run_table.partial_results(SMALL, run)["rows"]
    assert [r["acc_pre"] for r in rows if r["stage"] == "qat-ste-k2"] == [0.123]
    assert len(rows) == len(whole["rows"])
    results = tmp_path / "results"
    run_table.write_results(SMALL, run, {"rows": rows, "partial": "4 of 4"}, results, None)
    (line,) = [x for x in (results / "table.md").read_text().splitlines() if "| ste |" in x]
    assert "| 12.30 |" in line


def test_a_resumed_run_drops_its_earlier_results_until_it_ends_again(tmp_path, whole_run):
    # A finished run whose stage is trained again: while it trains, its readers see the
    # records, not the first end's results.json; its end writes results.json again.
    workdir, whole = whole_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    (run / "stages/qat-ste-k2.json").unlink()
    shutil.rmtree(run / "checkpoints/qat-ste-k2")  # trained again from its first step
    with pytest.raises(pipeline.TrainingInterrupted):
        pipeline.train_and_evaluate(SMALL, run, resume=True, progress=False, stop_after=1)
    assert not (run / "results.json").exists() and not (run / "table.md").exists()
    rows, results = report.load_rows(run)
    assert results == {} and "qat-ste-k2" not in [r["stage"] for r in rows]
    again = pipeline.train_and_evaluate(SMALL, run, resume=True, progress=False)
    assert json.loads((run / "results.json").read_text())["rows"] == again["rows"]
    assert "| ste | 2 |" in (run / "table.md").read_text()
    assert [r["stage"] for r in again["rows"]] == [r["stage"] for r in whole["rows"]]


def test_run_table_partial_then_a_lost_run_rebuilt_from_the_results(tmp_path, whole_run, capsys):
    # The whole run with one stage unfinished: --partial reports the others and keeps their
    # records; the run directory lost, --stages-from those records and --pretrained-from
    # the model rebuild it, training the unfinished stage only.
    workdir, whole = whole_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    (run / "stages/qat-ste-k2.json").unlink()
    (run / "results.json").unlink()  # written when a run ends
    config = tmp_path / "small.py"  # SMALL as a config file
    body = f"    return pipeline.Config(**{SMALL.to_dict()!r})\n"
    config.write_text(f"from qareg_jax import pipeline\n\n\ndef get_config():\n{body}")
    results = tmp_path / "results"
    argv = [str(config), "--workdir", str(run), "--results", str(results), "--name", "t"]
    assert run_table.main([*argv, "--partial"]) == 0
    assert (results / "t/table.md").read_text().startswith("# Partial: 3 of 4 stages finished")
    kept = sorted(p.name for p in (results / "t/stages").iterdir())
    assert kept == [
        "pretrain.json",
        "ptq-kmeans-k2.json",
        "reg-nearest-frozen-k2.json",
        "reg-nearest-k2.json",
    ]
    kept_metrics = sorted(p.name for p in (results / "t/metrics").iterdir())
    assert kept_metrics == [n.replace(".json", ".jsonl") for n in kept]
    argv = [str(config), "--workdir", str(tmp_path / "new"), "--results", str(tmp_path / "r2")]
    argv += ["--pretrained-from", str(workdir), "--stages-from", str(results / "t")]
    capsys.readouterr()
    assert run_table.main(argv) == 0
    assert f"3 finished stages copied from {str(results / 't')!r}" in capsys.readouterr().out
    # The training curves of the stages read back come with them (the plots keep them).
    for name in ("reg-nearest-k2", "reg-nearest-frozen-k2"):
        got = (tmp_path / "new/metrics" / f"{name}.jsonl").read_text()
        assert got == (workdir / "metrics" / f"{name}.jsonl").read_text()
    rebuilt = json.loads((tmp_path / "r2/small/results.json").read_text())["rows"]
    assert [_without_time(r) for r in rebuilt] == [_without_time(r) for r in whole["rows"]]
    read_back = [r for r in rebuilt if r["stage"] != "qat-ste-k2"]
    assert read_back == [r for r in whole["rows"] if r["stage"] != "qat-ste-k2"]  # timings too
    err_argv = [str(config), "--workdir", str(tmp_path / "none"), "--partial"]
    with pytest.raises(SystemExit):
        run_table.main(err_argv)
    assert "--partial: workdir" in capsys.readouterr().err


def test_stage_ids_name_records_as_the_run_writes_them():
    names = [s.name for s in planned_stages(SMALL)]
    assert workdir.stage_ids(SMALL, names) == names  # one seed: no subdirectory
    two = workdir.stage_ids(SMALL.replace(seeds=(1, 2)), names)
    assert two == [f"seed-{s}/{n}" for s in (1, 2) for n in names]
    assert workdir.stage_id("", "pretrain") == "pretrain"
