"""Shared pieces of the benchmark scripts: machine info, timing, JSON output.

Run the scripts as modules from the repository root: ``python -m benchmarks.NAME``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from qareg_jax import provenance

RESULTS = Path(__file__).resolve().parent / "results"
# The repository root: child processes run ``python -m benchmarks.NAME`` from there.
REPO = Path(__file__).resolve().parents[1]


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran: date, git commit and machine (as in
    :mod:`qareg_jax.provenance`), plus platform, CPU count, device and library versions."""
    import flax
    import numpy as np
    import optax

    dev = jax.devices()[0]
    return {
        "date": provenance.utc_now(),
        "git_commit": provenance.git_commit(),
        "machine": provenance.machine(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "device_count": jax.device_count(),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "numpy": np.__version__,
        },
    }


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds for one call of ``fn``, waiting for its device results."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def compiled_bytes(compiled: Any) -> int | None:
    """Peak-memory estimate of a compiled XLA executable: arguments + outputs + temps - aliases."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def write_json(payload: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def main(
    parse: Callable[[list[str] | None], Any],
    run: Callable[[Any], dict[str, Any]],
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """A benchmark's command line: parse ``argv``, run, write the JSON to ``args.out``."""
    args = parse(argv)
    result = run(args)
    print(f"wrote {write_json(result, args.out)}")
    return result
