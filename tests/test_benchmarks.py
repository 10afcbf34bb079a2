"""Every benchmark script's --smoke mode runs and writes a JSON report (no timing checks)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import method_cost, regularizer_overhead, run_all

REPO = Path(__file__).resolve().parents[1]


# method_cost runs in its own test below (in-process); the VGG16 variant is the same
# script with other arguments, checked without compiling VGG16 in the next test.
SEPARATELY = ("method_cost", "regularizer_overhead_vgg16")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in run_all.discover() if n not in SEPARATELY])
def test_smoke_run_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    res = run_all.run_script(name, out, smoke=True, timeout=300)
    assert res["status"] == "ok", res["tail"]
    payload = json.loads(out.read_text())
    assert isinstance(payload, dict) and payload
    lines = run_all.summary_lines(name, payload)
    assert lines and all(line[0] == name for line in lines)
    assert name in run_all.table([res], tmp_path)
    if name == "regularizer_overhead":  # the O(N K) penalties carry their lower bound
        for row in payload["rows"]:
            floor = row.get("pairwise_floor_ratio")
            assert (floor is not None) == (row["regularizer"] in ("softmin", "product"))
            assert floor is None or (floor > 1 and row["pairwise_pass_ms"] > 0)


def test_the_vgg16_variant_passes_its_arguments_to_the_script():
    script, extra = run_all.VARIANTS["regularizer_overhead_vgg16"]
    assert script == "regularizer_overhead"
    args = regularizer_overhead.parse(extra)
    assert (args.model, args.batch) == ("vgg16", 32)
    smoke = regularizer_overhead.parse([*extra, "--smoke"])  # what the smoke run would use
    assert (smoke.model, smoke.batch) == ("vgg16", 2)


def test_regularizer_overhead_names_its_output_after_the_model():
    results = regularizer_overhead.common.RESULTS
    assert regularizer_overhead.parse([]).out == str(results / "regularizer_overhead.json")
    args = regularizer_overhead.parse(["--model", "vgg16", "--batch", "32"])
    assert (args.model, args.batch) == ("vgg16", 32)
    assert args.out == str(results / "regularizer_overhead_vgg16.json")
    assert regularizer_overhead.parse(["--smoke"]).model == "small"


@pytest.mark.slow
def test_method_cost_smoke_gives_every_method_a_finite_positive_ratio(tmp_path):
    out = tmp_path / "method_cost.json"
    payload = method_cost.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == payload["rows"]
    lines = run_all.summary_lines("method_cost", payload)
    assert lines and all(line[0] == "method_cost" for line in lines)
    rows = {(r["method"], r.get("k")): r for r in payload["rows"]}
    assert set(rows) == {
        ("plain", None),
        ("nearest (sum, spacing)", 2),
        ("nearest (sum, spacing) + ste0.2", 2),
        ("nearest (sum, spacing) + ste1 (penalty kept)", 2),
        ("nearest", 2),
        ("softmin", 2),
        ("ste", 2),
        ("dkm", 2),
    }
    assert rows["plain", None]["time_ratio"] == 1.0
    for row in rows.values():
        assert math.isfinite(row["time_ratio"]) and row["time_ratio"] > 0, row
        assert row["step_ms"] > 0
    assert payload["machine"]["git_commit"] and payload["config"]["ks"] == [2]
    assert method_cost.parse([]).out == str(
        method_cost.common.RESULTS / "method_cost_cifar_vgg.json"
    )


@pytest.mark.slow
def test_method_cost_table_recipe_times_every_penalty_beside_ste_only(tmp_path):
    argv = ["--smoke", "--table-recipe", "--regularizers", "sine:sum:unit,nearest:sum:unit"]
    payload = method_cost.main([*argv, "--out", str(tmp_path / "m.json")])
    methods = {r["method"] for r in payload["rows"]}
    assert methods == {
        "plain",
        "sine (sum, unit) + ste1 (penalty kept)",
        "nearest (sum, unit) + ste1 (penalty kept)",
        "ste",
        "dkm",
    }
    assert payload["config"]["damped ste"].startswith("every regularizer entry")


def test_run_all_lists_the_scripts_and_rejects_unknown_names():
    names = run_all.discover()
    assert "scaling" in names and "common" not in names and "run_all" not in names
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--smoke", "--only", "nope"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "unknown benchmarks ['nope']" in proc.stderr


def _kmeans_bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    out = tmp_path / "kmeans.json"
    cmd = [sys.executable, "-m", "benchmarks.kmeans_vs_sklearn", "--sizes", "20000"]
    proc = subprocess.run(
        [*cmd, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_kmeans_benchmark_without_kmeans1d_records_null_with_a_reason(tmp_path):
    shadow = tmp_path / "shadow" / "kmeans1d"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    path = os.pathsep.join(p for p in [str(shadow.parent), os.environ.get("PYTHONPATH")] if p)
    payload = _kmeans_bench(tmp_path, "--ks", "4", env={**os.environ, "PYTHONPATH": path})
    (row,) = payload["results"]
    assert "not installed" in row["kmeans1d"]["skipped"]
    assert row["speedup_kmeans1d_over_ours"] is None
    assert row["inertia_ratio_ours_over_kmeans1d"] is None
    assert (
        row["speedup_sklearn_over_ours"] > 0 and payload["machine"]["versions"]["kmeans1d"] is None
    )


@pytest.mark.slow
def test_kmeans_benchmark_with_kmeans1d_is_near_its_optimum_and_skips_large_work(tmp_path):
    pytest.importorskip("kmeans1d")
    payload = _kmeans_bench(tmp_path, "--ks", "2", "4", "--kmeans1d-max-work", "50000")
    ran, skipped = payload["results"]
    assert ran["kmeans1d"]["seconds"] > 0
    # kmeans1d is exact k-means: ours can only match it (up to float32 levels).
    assert 1 - 1e-9 <= ran["inertia_ratio_ours_over_kmeans1d"] <= 1 + 1e-3
    assert "kmeans1d-max-work" in skipped["kmeans1d"]["skipped"]
    assert skipped["speedup_kmeans1d_over_ours"] is None


def test_method_cost_table_regularizers_match_the_paper_table_config():
    """``--table-recipe``'s default list times what ``paper_alexnet.py`` trains: the same
    regularizers, reduction and penalty normalization (the benchmark repeats them because it
    cannot import the configs' sibling modules)."""
    from qareg_jax.pipeline import load_config

    table = load_config(REPO / "experiments" / "configs" / "paper_alexnet.py")
    expected = ",".join(
        f"{r}:{table.reduction}:{table.penalty_normalize}" for r in table.regularizers
    )
    assert method_cost.TABLE_REGULARIZERS == expected


@pytest.mark.parametrize("flag", ["--repeats", "--calls"])
def test_method_cost_rejects_a_count_below_one(flag, capsys):
    with pytest.raises(SystemExit):
        method_cost.parse([flag, "0"])
    assert f"{flag} must be >= 1" in capsys.readouterr().err
