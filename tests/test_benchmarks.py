"""Every benchmark script's --smoke mode runs and writes a JSON report (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import regularizer_overhead  # noqa: E402
import run_all  # noqa: E402


@pytest.mark.parametrize("name", run_all.discover())
def test_smoke_run_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    res = run_all.run_script(name, out, smoke=True, timeout=300)
    assert res["status"] == "ok", res["tail"]
    payload = json.loads(out.read_text())
    assert isinstance(payload, dict) and payload
    lines = run_all.summary_lines(name, payload)
    assert lines and all(line[0] == name for line in lines)
    assert name in run_all.table([res], tmp_path)
    if name == "regularizer_overhead_vgg16":  # the variant's arguments reached the script
        assert payload["config"]["model"] == "vgg16" and payload["config"]["batch"] == 2


def test_regularizer_overhead_names_its_output_after_the_model():
    results = regularizer_overhead.common.RESULTS
    assert regularizer_overhead.parse([]).out == str(results / "regularizer_overhead.json")
    args = regularizer_overhead.parse(["--model", "vgg16", "--batch", "32"])
    assert (args.model, args.batch) == ("vgg16", 32)
    assert args.out == str(results / "regularizer_overhead_vgg16.json")
    assert regularizer_overhead.parse(["--smoke"]).model == "small"


def test_run_all_lists_the_scripts_and_rejects_unknown_names():
    names = run_all.discover()
    assert "scaling" in names and "common" not in names and "run_all" not in names
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--smoke", "--only", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "unknown benchmarks ['nope']" in proc.stderr
