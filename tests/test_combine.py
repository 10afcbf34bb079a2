"""experiments/combine.py: one table from several run_table results."""

import json
import pathlib

import pytest

from experiments import combine


def _result(path, method, seeds, acc, model="cifar_vgg"):
    rows = [
        {"model": model, "dataset": "d", "method": method, "kind": "qat", "k": 2, "seed": s,
         "acc_fp": 0.8, "acc_pre": acc + 0.01 * s, "acc_post": acc, "packed_bytes": 100}
        for s in seeds
    ]  # fmt: skip
    path.mkdir()
    provenance = {"command": f"run {method}", "git_commit": "abc", "date": "today", "machine": "m"}
    (path / "results.json").write_text(json.dumps({**provenance, "rows": rows}))
    return str(path)


def test_combined_table_aggregates_each_method_over_its_seeds(tmp_path):
    a = _result(tmp_path / "a", "ste", [0, 1], 0.70)
    b = _result(tmp_path / "b", "nearest + ste1", [0, 1, 2], 0.60)
    bench = tmp_path / "bench.json"
    machine = {"date": "today", "machine": "m", "git_commit": "abc"}
    rows = [{"method": "plain", "time_ratio": 1.0, "memory_ratio": 1.0},
            {"method": "ste", "k": 2, "time_ratio": 1.07, "memory_ratio": 1.02}]  # fmt: skip
    bench.write_text(json.dumps({"machine": machine, "rows": rows}))
    out = tmp_path / "results"
    argv = ["both", a, b, "--method-cost", str(bench), "--results", str(out), "--note", "n1"]
    assert combine.main(argv) == 0
    table = (out / "both" / "table.md").read_text()
    assert "- note: n1\n" in table
    assert "`run ste`" in table and "`run nearest + ste1`" in table
    ste = next(line for line in table.splitlines() if line.startswith("| cifar_vgg | d | ste |"))
    assert "| 2 | 2 |" in ste and "70.50 ± 0.50" in ste  # K 2, 2 seeds, pre mean ± std
    assert "| ste | 2 | 1.07 | 1.02 |" in table
    assert (out / "both" / "accuracy_vs_bits.png").stat().st_size > 0
    assert (out / "both" / "accuracy_vs_size.png").stat().st_size > 0


def test_combine_refuses_other_settings_and_unfinished_runs(tmp_path):
    a = _result(tmp_path / "a", "ste", [0], 0.7)
    b = _result(tmp_path / "b", "ste", [0], 0.7, model="alexnet")
    with pytest.raises(ValueError, match="different settings"):
        combine.load_sources([a, b])
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.json"):
        combine.load_sources([a, str(tmp_path / "c")])


def test_combine_refuses_a_seed_twice_unless_a_source_is_labelled(tmp_path):
    a = _result(tmp_path / "a", "nearest + ste1", [0, 1], 0.7)
    b = _result(tmp_path / "b", "nearest + ste1", [1, 2], 0.6)
    with pytest.raises(ValueError, match="seed 1 is in both .* --label"):
        combine.load_sources([a, b])
    with pytest.raises(ValueError, match="not among the sources"):
        combine.load_sources([a, b], {str(tmp_path / "z"): "x"})
    rows, _ = combine.load_sources([a, b], {b: "lam 10"})
    assert {r["method"] for r in rows} == {"nearest + ste1", "nearest + ste1 [lam 10]"}
    c = _result(tmp_path / "c", "nearest + ste1", [2], 0.7)  # another seed: merged
    rows, _ = combine.load_sources([a, c])
    assert sorted(r["seed"] for r in rows if r["method"] == "nearest + ste1") == [0, 1, 2]
    out = tmp_path / "results"
    assert combine.main(["t", a, b, "--label", b, "lam 10", "--results", str(out)]) == 0
    assert "| nearest + ste1 [lam 10] | 2 | 2 |" in (out / "t" / "table.md").read_text()


def test_a_one_seed_row_beside_three_seed_rows_shows_no_spread(tmp_path):
    a = _result(tmp_path / "a", "ste", [0, 1, 2], 0.7)
    b = _result(tmp_path / "b", "sine", [0], 0.5)
    out = tmp_path / "results"
    assert combine.main(["t", a, b, "--results", str(out)]) == 0
    table = (out / "t" / "table.md").read_text()
    sine = next(line for line in table.splitlines() if "| sine |" in line)
    ste = next(line for line in table.splitlines() if "| ste |" in line)
    assert "±" not in sine and "| 1 | 80.00 | - | 50.00 | 50.00 |" in sine  # FP, reg, pre, post
    assert "71.00 ± 0.82" in ste  # pre over 3 seeds
    assert "over each row's seeds" in table


def test_a_column_only_some_seeds_have_shows_their_count_and_no_false_spread(tmp_path):
    # Seed 0 of the paper table has a validation split, the seed rows have none: its
    # validation accuracy is one seed's value, not a mean with zero spread.
    a = _result(tmp_path / "a", "ste", [0], 0.7)
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    result["rows"][0]["acc_val_pre"] = 0.65
    (tmp_path / "a" / "results.json").write_text(json.dumps(result))
    b = _result(tmp_path / "b", "ste", [1, 2], 0.7)
    out = tmp_path / "results"
    assert combine.main(["t", a, b, "--results", str(out)]) == 0
    table = (out / "t" / "table.md").read_text()
    ste = next(line for line in table.splitlines() if "| ste |" in line)
    assert "| 65.00 (n=1) |" in ste and "65.00 ±" not in ste
    assert "71.00 ± 0.82" in ste  # test pre-tuning: all three seeds
    assert "(n=…)" in table  # the note explains the count


def test_claim_of_combined_rows_names_each_methods_seeds(tmp_path):
    reg = _result(tmp_path / "reg", "softmin + ste1", [0, 1, 2], 0.7)
    base = _result(tmp_path / "base", "kmeans", [0], 0.1)
    for path, kind in ((reg, "regularizer"), (base, "baseline")):
        file = pathlib.Path(path) / "results.json"
        result = json.loads(file.read_text())
        result["rows"] = [{**r, "kind": kind} for r in result["rows"]]
        file.write_text(json.dumps(result))
    out = tmp_path / "results"
    assert combine.main(["t", reg, base, "--results", str(out), "--claim", "alexnet"]) == 0
    claim = (out / "t" / "claim.md").read_text()
    assert "The paper's statement" in claim and f"`{reg}`" in claim
    # softmin's pre-tuning: 0.71 mean of 3 seeds; kmeans's: 0.10 of seed 0
    assert "| 2 | softmin + ste1 (3 seeds) | kmeans (1 seed) | 71.00 | 10.00 | 7.10x |" in claim
    assert "reaches the paper's 3x for alexnet" in claim
    with pytest.raises(SystemExit):
        combine.main(["t", reg, "--results", str(out), "--claim", "resnet"])
