"""Where and when a number came from: machine, device, git commit, date, command.

Every result file (experiment tables, benchmark JSON) records the same fields::

    from qareg_jax import provenance
    header = provenance.record()   # {"command", "date", "machine", "git_commit"}
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "device_name",
    "git_commit",
    "git_dirty_files",
    "machine",
    "record",
    "tree_digest",
    "utc_now",
]

# The repository holding this package (its checkout, when installed editable).
REPO_ROOT = Path(__file__).resolve().parents[1]


def device_name() -> str:
    """The first JAX device, e.g. ``"cpu: 2 cores, Intel(R) Xeon(R) ..."`` or
    ``"gpu: NVIDIA H100 80GB HBM3"``."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.platform}: {dev.device_kind}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass  # not Linux: keep platform's name
    return f"cpu: {os.cpu_count()} cores, {model}"


def machine() -> str:
    """OS, memory and the JAX device, e.g. ``"Linux x86_64, 24 GB RAM, cpu: 2 cores, ..."``."""
    try:
        ram = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM"
    except (ValueError, OSError, AttributeError):
        ram = "RAM unknown"
    return f"{platform.system()} {platform.machine()}, {ram}, {device_name()}"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def git_commit(root: str | os.PathLike[str] | None = None) -> str:
    """HEAD's hash in ``root`` (default: this package's repository), with ``+dirty``
    when tracked files differ from it; ``"unknown"`` outside a git checkout."""
    root = Path(root) if root is not None else REPO_ROOT
    try:
        head = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def git_dirty_files(*paths: str, root: str | os.PathLike[str] | None = None) -> list[str]:
    """Files under ``paths`` (all if none) that differ from HEAD, untracked ones included;
    ``[]`` outside a git checkout."""
    root = Path(root) if root is not None else REPO_ROOT
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line[3:] for line in out.splitlines()]


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second, e.g. ``"2025-01-31T12:00:00+00:00"``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record(command: str | None = None) -> dict[str, Any]:
    """``{"command", "date", "machine", "git_commit"}``; ``command`` defaults to this
    process's command line (``python -m x ...`` for a module run)."""
    if command is None:
        argv = list(sys.argv)
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:  # run with -m: argv[0] is the file path
            argv[:1] = ["-m", spec.name.removesuffix(".__main__")]
        command = shlex.join([Path(sys.executable).name, *argv])
    return {"command": command, "date": utc_now(), "machine": machine(), "git_commit": git_commit()}


def tree_digest(tree: Any) -> str:
    """A short hex digest of a pytree of arrays: its paths, dtypes, shapes and bytes.

    Two trees have the same digest iff (up to hash collisions) they hold the same values,
    bit for bit, at the same paths: a run records the digest of the full-precision model
    every stage started from, so that stages of two different models are never mixed.
    """
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
