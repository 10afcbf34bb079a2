"""qareg_jax.provenance: the fields every result file records."""

from __future__ import annotations

import datetime
import re

import jax
import numpy as np

from qareg_jax import provenance


def test_record_names_command_date_machine_and_commit():
    rec = provenance.record("python -m experiments.x --smoke")
    assert list(rec) == ["command", "date", "machine", "git_commit"]
    assert rec["command"] == "python -m experiments.x --smoke"
    assert datetime.datetime.fromisoformat(rec["date"]).utcoffset() == datetime.timedelta(0)
    assert rec["machine"].endswith(provenance.device_name())
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", rec["git_commit"])
    assert provenance.record()["command"]  # this process's command line


def test_device_name_and_git_outside_a_checkout(tmp_path):
    dev = jax.devices()[0]
    assert provenance.device_name().startswith(f"{dev.platform}: ")
    assert provenance.git_commit(tmp_path) == "unknown"
    assert provenance.git_dirty_files(root=tmp_path) == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", provenance.utc_now())


def test_tree_digest_tells_apart_one_ulp_a_dtype_and_a_path():
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    tree = {"conv": {"kernel": w, "bias": np.zeros(4, np.float32)}}
    digest = provenance.tree_digest(tree)
    assert len(digest) == 16 and digest == provenance.tree_digest(jax.device_put(tree))
    nudged = w.copy()
    nudged[1, 2] = np.nextafter(nudged[1, 2], np.float32(2))
    others = [
        {"conv": {"kernel": nudged, "bias": tree["conv"]["bias"]}},
        {"conv": {"kernel": w.astype(np.float64), "bias": tree["conv"]["bias"]}},
        {"conv": {"kernel": tree["conv"]["bias"], "bias": w}},
        {"conv": {"kernel": w.reshape(4, 3), "bias": tree["conv"]["bias"]}},
    ]
    assert len({digest, *map(provenance.tree_digest, others)}) == 5
