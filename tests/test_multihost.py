"""Multi-process training really run: two JAX processes on 127.0.0.1 (gloo CPU collectives).

``python -m experiments.multihost`` starts two workers with two CPU devices each (a
``data 2 x model 2`` mesh over both processes: each process feeds its half of the
global batch, the hidden kernel is split over ``"model"``). They run the pipeline's
train step with a ``Layout``, ``snap_sharded``, ``quantized_finetune`` steps, gather
with ``process_allgather`` and save from process 0. Compared with:

* the same run in one process over the same ``data 2 x model 2`` mesh (4 host
  devices): bitwise equal, file bytes included. The partitioned programs are the
  same; only the collectives differ (gloo between processes, in-process otherwise),
  and their sums have two operands, which IEEE addition adds identically in either
  order.
* the same run on one device (in this process): equal to float tolerance (a sum over
  2 shards is not the one-device sum order), assignments equal.

A worker that dies (SIGKILL before its first step) makes the launcher name it and
exit 1 within a bounded time. All runs start at once (the machine is small and
shared: they overlap their start-up and compilation) and every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import multihost
from qareg_jax import compress
from qareg_jax.paths import named_leaves

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 100.0  # hard bound for all runs together (about 40 s on 2 idle cores)
COMMON = ["--steps", "3", "--ft-steps", "2", "--global-batch", "16", "--seed", "0"]


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "experiments.multihost", *COMMON, *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen[str], deadline: float) -> tuple[int, str, float]:
    """``(returncode, stdout + stderr, seconds until it ended)``; killed at ``deadline``."""
    try:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.terminate()  # the launcher stops its workers on SIGTERM (they also watch it)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        pytest.fail(f"{proc.args} ran past the limit:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out + err, time.monotonic()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The launched runs and the in-process one-device reference, all started at once."""
    tmp = tmp_path_factory.mktemp("multihost")
    start = time.monotonic()
    deadline = start + LIMIT_S
    argv = {
        "two": ["--processes", "2", "--local-devices", "2", "--model", "2"],
        "one_process_4dev": ["--reference", "--local-devices", "4", "--model", "2"],
        "killed": ["--processes", "2", "--die", "1:0", "--heartbeat-timeout", "5"],
    }
    procs = {name: _start([*a, "--out", str(tmp / name)]) for name, a in argv.items()}
    try:
        one = argparse.Namespace(
            model=None, seed=0, global_batch=16, steps=3, ft_steps=2, die=None, out=str(tmp / "one")
        )
        Path(one.out).mkdir()
        multihost.run(one, lambda msg: None)  # in this process, on one device, no cluster
        out = {"one": {"rc": 0, "log": "", "seconds": time.monotonic() - start}}
        for name, proc in procs.items():
            rc, text, end = _finish(proc, deadline)
            out[name] = {"rc": rc, "log": text, "seconds": end - start}
    finally:
        for proc in procs.values():  # only after a failure above: never leave one running
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    for name in out:
        out[name]["dir"] = tmp / name
    return out


def _results(run: dict) -> dict[str, np.ndarray]:
    assert run["rc"] == 0, run["log"][-4000:]
    with np.load(run["dir"] / "result.npz") as f:
        return {k: f[k] for k in f.files}


def test_two_processes_equal_one_process_on_the_same_mesh_bitwise(runs):
    two, ref = _results(runs["two"]), _results(runs["one_process_4dev"])
    assert two.keys() == ref.keys() and len(two) == 25
    for name in two:
        np.testing.assert_array_equal(two[name], ref[name], err_msg=name)
    packed = (runs["two"]["dir"] / "model.qareg").read_bytes()
    assert packed == (runs["one_process_4dev"]["dir"] / "model.qareg").read_bytes()


def test_two_processes_match_one_device(runs):
    two, ref = _results(runs["two"]), _results(runs["one"])
    assert two.keys() == ref.keys()
    for name in two:
        if "assignments" in name:
            np.testing.assert_array_equal(two[name], ref[name], err_msg=name)
        else:
            np.testing.assert_allclose(two[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
    window = {k.split("/", 1)[1]: v for k, v in two.items() if k.startswith("window/")}
    assert int(window["count"]) == 3 and float(window["penalty"]) > 0.0


def test_each_process_fed_its_half_and_the_file_holds_the_tuned_model(runs):
    logs = sorted((runs["two"]["dir"]).glob("process-*.log"))
    assert [p.name for p in logs] == ["process-0.log", "process-1.log"]
    text = [p.read_text() for p in logs]
    assert "mesh {'data': 2, 'model': 2} over 4 devices; rows 0:8" in text[0]
    assert "mesh {'data': 2, 'model': 2} over 4 devices; rows 8:16" in text[1]
    assert "wrote" in text[0] and "wrote" not in text[1]  # one writer
    two = _results(runs["two"])
    params, quantized = compress.load(runs["two"]["dir"] / "model.qareg")
    loaded = named_leaves(params)
    for path, value in loaded.items():
        np.testing.assert_array_equal(value, two[f"tuned/model/{path}"], err_msg=path)
    for path in ("params/fc1/kernel", "params/fc2/kernel"):
        values = np.unique(two[f"tuned/model/{path}"])
        assert values.size <= 4 and np.isin(values, two[f"tuned/reps/{path}"]).all(), path


def test_a_killed_worker_fails_the_launcher_naming_it(runs):
    run = runs["killed"]
    assert run["rc"] == 1, run["log"][-4000:]
    assert "FAILED: process 1 died (killed by SIGKILL)" in run["log"], run["log"][-4000:]
    assert "--die: killing myself" in run["log"]  # the dead worker's log tail is shown
    assert not (run["dir"] / "result.npz").exists()
