"""The pipeline's budget stages (``Config.budget``): a tiny digits run whose packed file
fits the budget at the planned K per layer, the plan read back on resume, the budget
checked before any work, the config's budget fields, stage names and the report."""

from __future__ import annotations

import json
import re
import shutil
from unittest import mock

import pytest

from experiments import run_table
from qareg_jax import budget, compress, pipeline, report
from qareg_jax.pipeline import budget_plan

# 128 training examples, 4 steps of 32 per epoch; only the k-means baseline at the budget.
BUDGET = pipeline.Config(
    pretrain_epochs=1,
    reg_epochs=1,
    finetune_epochs=1,
    regularizers=(),
    baselines=("kmeans",),
    ks=(),
    budget="16x",
    batch_size=32,
    train_subset=128,
    log_every=2,
    checkpoint_every=3,
)


def _without_time(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "step_s", "step_rel")} for r in rows]


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("budget") / "run"
    said: list[str] = []
    results = pipeline.train_and_evaluate(BUDGET, workdir, progress=False, say=said.append)
    return workdir, results, said


def test_packed_file_fits_the_budget_at_the_planned_k_per_layer(budget_run):
    workdir, results, said = budget_run
    record = json.loads((workdir / "budget" / "plan.json").read_text())
    plan = budget.Plan(**record["plan"])
    assert results["budget_plans"] == {"0": record}
    assert record["budget_bytes"] == plan.budget_bytes
    assert plan.budget_bytes == budget.parse_budget("16x", record["float32_bytes"])
    assert (record["split"], record["examples"]) == ("train", 128)  # no validation split
    assert len(set(plan.ks.values())) > 1  # 16x mixes Ks on SmallCNN
    (row,) = results["rows"]
    assert (row["stage"], row["method"], row["k"]) == ("ptq-kmeans-budget", "kmeans", None)
    assert row["budget_bytes"] == plan.budget_bytes and row["layer_ks"] == plan.ks
    file = workdir / row["model_file"]
    assert row["file_bytes"] == file.stat().st_size == plan.total_bytes <= plan.budget_bytes
    _, quantized = compress.load(file)
    assert {p: len(codebook) for p, (codebook, _) in quantized.items()} == plan.ks
    for codebook, assignments in quantized.values():
        assert assignments.max() < len(codebook)
    # The plan is printed before the budget stages, after the stage plan.
    assert "ptq-kmeans-budget: finetune 4 (1 epoch)" in said[0]
    shown = next(s for s in said if plan.table() in s)
    assert shown.startswith("budget '16x' = ") and "planned on the full-precision" in shown
    table = (workdir / "table.md").read_text()
    assert "| budget B | file B |" in table
    assert re.search(r"\| small \| digits \| kmeans \| budget \| .*\| [\d,]+ \| [\d,]+ \|", table)
    assert f"| {plan.budget_bytes:,} | {plan.total_bytes:,} |" in table
    files = {p.name for p in report.write_report(workdir)["files"]}
    # No bit widths to plot and no training: only the table and accuracy against size.
    assert files == {"table.md", "table.csv", "accuracy_vs_size.png"}


def test_run_table_writes_the_results_of_a_budget_only_config(budget_run, tmp_path):
    workdir, results, _ = budget_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "plots").mkdir(exist_ok=True)  # whether or not another test wrote the report
    for name in ("hist_seed-0_reg-nearest-budget.png", "hist_seed-0_reg-nearest-k2.png"):
        (copy / "plots" / name).write_bytes(b"png")
    dest = tmp_path / "results"
    table, _ = run_table.write_results(BUDGET, copy, results, dest, start=0.0, commit="abc")
    assert "| budget B | file B |" in table and (dest / "table.md").exists()
    hists = {p.name for p in dest.glob("hist_*.png")}
    assert hists == {"hist_seed-0_reg-nearest-budget.png"}  # ks=(): the budget stages'


def test_resume_of_a_finished_run_reads_the_plan_back(budget_run):
    workdir, results, _ = budget_run
    said: list[str] = []
    with mock.patch.object(budget, "layer_sensitivity", side_effect=AssertionError("measured")):
        same = pipeline.train_and_evaluate(
            BUDGET, workdir, resume=True, progress=False, say=said.append
        )
    assert _without_time(same["rows"]) == _without_time(results["rows"])
    assert same["budget_plans"] == results["budget_plans"]
    assert any("read back from the workdir" in s for s in said)


@pytest.mark.slow
def test_a_stage_resumed_after_the_plan_uses_the_stored_plan(budget_run, tmp_path):
    workdir, _, _ = budget_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    # A different plan in the workdir (every layer at K=2) and the stage not started yet
    # (the plan is written before any budget stage): the stage must use the stored plan.
    plan_file = copy / "budget" / "plan.json"
    record = json.loads(plan_file.read_text())
    record["plan"]["ks"] = dict.fromkeys(record["plan"]["ks"], 2)
    plan_file.write_text(json.dumps(record))
    (copy / "stages" / "ptq-kmeans-budget.json").unlink()
    shutil.rmtree(copy / "checkpoints" / "ptq-kmeans-budget")
    with mock.patch.object(budget, "layer_sensitivity", side_effect=AssertionError("measured")):
        again = pipeline.train_and_evaluate(BUDGET, copy, resume=True, progress=False)
    (row,) = again["rows"]
    assert row["layer_ks"] == record["plan"]["ks"] and again["budget_plans"]["0"] == record
    _, quantized = compress.load(copy / row["model_file"])
    assert {len(codebook) for codebook, _ in quantized.values()} == {2}


@pytest.mark.slow
def test_every_method_beside_uniform_k_fits_the_budget_with_a_validation_split(tmp_path):
    config = BUDGET.replace(
        ks=(2,), regularizers=("nearest",), qat=("ste", "dkm"), val_fraction=0.2, budget="12x"
    )
    results = pipeline.train_and_evaluate(config, tmp_path / "run", progress=False)
    record = results["budget_plans"]["0"]
    assert (record["split"], record["examples"]) == ("val", 287)  # 20 % of 1,437 digits
    plan = budget.Plan(**record["plan"])
    by_k: dict = {}
    for row in results["rows"]:
        by_k.setdefault(row["k"], []).append(row["method"])
        if row["k"] is None:
            assert row["layer_ks"] == plan.ks and row["file_bytes"] == plan.total_bytes
            assert plan.total_bytes <= row["budget_bytes"] == plan.budget_bytes
            _, quantized = compress.load(tmp_path / "run" / row["model_file"])
            assert {p: len(cb) for p, (cb, _) in quantized.items()} == plan.ks, row["method"]
        else:
            assert row["budget_bytes"] is None and row["layer_ks"] is None
    assert by_k == {
        2: ["nearest", "kmeans", "ste", "dkm"],
        None: ["nearest", "kmeans", "ste", "dkm"],
    }
    files = {p.name for p in report.write_report(tmp_path / "run")["files"]}
    assert {"training_k2.png", "training_budget.png", "hist_reg-nearest-budget.png"} <= files


def test_budget_below_the_smallest_model_is_refused_before_any_work(tmp_path, small_cnn):
    _, variables = small_cnn
    sizes = budget_plan.layer_bytes(BUDGET, variables)
    smallest = sizes.file_bytes({p: 2 for p in sizes.choices})  # every layer at K=2
    tiny = BUDGET.replace(budget="1kB")
    with mock.patch.object(pipeline.run, "pretrain", side_effect=AssertionError("trained")):
        with pytest.raises(ValueError) as e:
            pipeline.train_and_evaluate(tiny, tmp_path / "r", progress=False)
    assert str(e.value).startswith(
        f"budget '1kB' (1,000 bytes) is below the smallest packed small model: {smallest:,} "
        "bytes (every quantized layer at its smallest K of budget_ks [2, 4, 8, 16, 32]"
    )
    assert not (tmp_path / "r").exists()
    # Exactly the smallest model fits; a byte less does not.
    assert budget_plan.check_budget(BUDGET.replace(budget=smallest), sizes) == smallest
    with pytest.raises(ValueError, match="below the smallest"):
        budget_plan.check_budget(BUDGET.replace(budget=smallest - 1), sizes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(budget="1XB"), "cannot parse budget '1XB': give bytes ('250000', '500kB', '1MB'"),
        (dict(budget="-1MB"), "cannot parse budget '-1MB'"),
        (dict(budget="0x"), "budget '0x' must be > 0"),
        (dict(budget=0), "budget must be > 0 bytes, got 0"),
        (dict(budget=1.5), "budget must be a str like '1MB' or '16x', or an int, got 1.5"),
        (dict(budget=True), "budget must be a str like '1MB' or '16x', or an int, got True"),
        (dict(budget_ks=()), "budget_ks is empty"),
        (dict(budget_ks=(2, 4, 2)), "budget_ks has duplicates: [2, 4, 2]"),
        (dict(budget_ks=(1, 2)), "each K in budget_ks must be an integer >= 2"),
        (dict(budget_batches=0), "budget_batches must be a positive int, got 0"),
        (dict(budget=None), "ks is empty: give at least one number of levels K, or a budget"),
        (dict(baselines=("binary",)), "nothing to run at the budget: the 'binary' baseline"),
        (
            dict(pretrain_epochs=0, baselines=(), regularizers=("nearest",), from_pretrained=False),
            "pretrain_epochs is 0 but the baselines, from_pretrained or budget need a pretrained",
        ),
    ],
)
def test_bad_budget_fields_name_the_field_and_the_accepted_forms(changes, message):
    with pytest.raises((ValueError, TypeError)) as e:
        BUDGET.replace(**changes)
    assert message in str(e.value)


def test_budget_forms_and_stage_names():
    for spec in ("1MB", "500kB", "1.5MiB", "16x", "16X", 250_000, "250000"):
        assert BUDGET.replace(budget=spec).budget == spec
    config = BUDGET.replace(
        ks=(2,), regularizers=("nearest",), baselines=("kmeans", "binary"), qat=("ste", "dkm")
    )
    assert [(s.name, s.k) for s in pipeline.planned_stages(config)] == [
        ("reg-nearest-k2", 2),
        ("ptq-kmeans-k2", 2),
        ("ptq-binary-k2", 2),
        ("qat-ste-k2", 2),
        ("qat-dkm-k2", 2),
        ("reg-nearest-budget", None),
        ("ptq-kmeans-budget", None),  # binary: K=2 on every layer, never at a budget
        ("qat-ste-budget", None),
        ("qat-dkm-budget", None),
    ]
    hybrid = config.replace(ste_last=0.2, freeze_reps=(False, True))
    names = [s.name for s in pipeline.planned_stages(hybrid) if s.kind == "regularizer"]
    assert names[2:] == ["reg-nearest-ste0.2-budget", "reg-nearest-frozen-ste0.2-budget"]
    assert list(pipeline.planned_stages(BUDGET.replace(budget=None, ks=(2,)))) == [
        pipeline.Stage("ptq-kmeans-k2", "ptq", "kmeans", 2)
    ]


def test_edge_layers_k_is_pinned_in_the_plan(small_cnn):
    _, variables = small_cnn
    ks = budget_plan.candidate_ks(BUDGET.replace(edge_layers_k=8), variables["params"])
    assert ks == {
        "params/conv1/kernel": (8,),
        "params/conv2/kernel": budget.DEFAULT_KS,
        "params/fc1/kernel": budget.DEFAULT_KS,
        "params/fc2/kernel": (8,),
    }


def test_report_of_budget_and_uniform_rows():
    row = dict(model="small", dataset="digits", method="nearest", kind="regularizer", seed=0)
    sizes = dict(packed_bytes=800.0, file_bytes=900, acc_fp=0.9, acc_pre=0.8, acc_post=0.85)
    rows = [
        {**row, **sizes, "k": 2, "budget_bytes": None},
        {**row, **sizes, "k": None, "budget_bytes": 1000},
        {**row, **sizes, "k": None, "budget_bytes": 1000, "seed": 1},
    ]
    table = report.markdown_table(rows)
    assert "| packed B | budget B | file B |" in table
    assert "| nearest | budget | 2 |" in table  # two seeds of the budget row
    assert "| 800 | 1,000 | 900 |" in table
    assert report.markdown_table(rows[:1]).count("budget") == 0
    report.accuracy_vs_bits_figure(rows)  # budget rows have no bit width: left out
    # A second budget of the same method is a row of its own, not averaged with the first.
    other = {**row, **sizes, "k": None, "budget_bytes": 2000, "acc_pre": 0.6}
    aggs = report.aggregate([*rows, other])
    assert [(a["budget_bytes_mean"], a["n_seeds"]) for a in aggs] == [
        (None, 1),
        (1000, 2),
        (2000, 1),
    ]


@pytest.mark.slow
def test_every_seed_plans_on_its_own_model(tmp_path):
    said: list[str] = []
    config = BUDGET.replace(seeds=(0, 1))
    results = pipeline.train_and_evaluate(config, tmp_path / "run", progress=False, say=said.append)
    plans = results["budget_plans"]
    assert set(plans) == {"0", "1"}
    for seed, record in plans.items():
        stored = json.loads(
            (tmp_path / "run" / "budget" / f"seed-{seed}" / "plan.json").read_text()
        )
        assert stored == record
    assert plans["0"]["sensitivity"] != plans["1"]["sensitivity"]  # two pretrained models
    assert sum(s.startswith("seed-1/budget '16x' = ") for s in said) == 1
    rows = {r["stage"]: r for r in results["rows"]}
    assert set(rows) == {"seed-0/ptq-kmeans-budget", "seed-1/ptq-kmeans-budget"}
    for seed in ("0", "1"):
        row = rows[f"seed-{seed}/ptq-kmeans-budget"]
        assert row["layer_ks"] == plans[seed]["plan"]["ks"]
        assert row["file_bytes"] == plans[seed]["plan"]["total_bytes"] <= row["budget_bytes"]
    assert "| small | digits | kmeans | budget | 2 |" in (tmp_path / "run" / "table.md").read_text()
