"""Run every benchmark script in this folder and print one summary table of their JSON.

Each script ``benchmarks/NAME.py`` (all but ``common.py`` and this file) runs in its own
process as ``python -m benchmarks.NAME [--smoke] --out OUT_DIR/NAME.json`` (from the
repository root), and each entry of
``VARIANTS`` (a script with other arguments, e.g. ``regularizer_overhead_vgg16``) likewise;
a failing run is reported and the others still run. The table has one line per result
row: the case (e.g. regularizer and K) and its headline numbers.

    python -m benchmarks.run_all --smoke          # seconds per script, JSON to a temp dir
    python -m benchmarks.run_all                  # full runs, JSON to benchmarks/results/
    python -m benchmarks.run_all --only scaling,dkm_memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NOT_BENCHMARKS = {"__init__", "common", "run_all"}
# Per benchmark: the row fields naming the case, then the headline numbers.
HEADLINES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "regularizer_overhead": (("regularizer", "k"), ("time_ratio", "memory_ratio")),
    "kmeans_vs_sklearn": (
        ("n", "k"),
        (
            "ours_seconds",
            "speedup_sklearn_over_ours",
            "inertia_ratio_ours_over_sklearn",
            "speedup_kmeans1d_over_ours",
            "inertia_ratio_ours_over_kmeans1d",
        ),
    ),
    "pack_throughput": (
        ("k",),
        ("quantize_plus_pack_seconds", "weights_per_second_quantize_plus_pack", "load_seconds"),
    ),
    "dkm_memory": (("impl", "n", "k"), ("peak_bytes", "time_s")),
    "scaling": (("devices", "global_batch"), ("step_ms", "weak_scaling_efficiency")),
    "method_cost": (("method", "k"), ("time_ratio", "memory_ratio")),
    "grouped_penalty": (("case", "groups"), ("median_ms", "time_ratio", "memory_ratio")),
    "input_pipeline": (("case",), ("ms", "fraction_of_step")),
}
# Further runs of a script with other arguments: run name -> (script, arguments).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "regularizer_overhead_vgg16": (
        "regularizer_overhead",
        ("--model", "vgg16", "--batch", "32", "--repeats", "3"),
    ),
}


def discover() -> list[str]:
    """Names of the runs: the known scripts here in order, then any others, each followed
    by its ``VARIANTS``."""
    found = {p.stem for p in HERE.glob("*.py")} - NOT_BENCHMARKS
    names = []
    for script in [n for n in HEADLINES if n in found] + sorted(found - set(HEADLINES)):
        names += [script] + [v for v, (base, _) in VARIANTS.items() if base == script]
    return names


def run_script(name: str, out: Path, smoke: bool, timeout: float | None) -> dict[str, Any]:
    """Runs one script or variant; returns its status, wall time and the tail of its output."""
    script, extra = VARIANTS.get(name, (name, ()))
    module = f"{HERE.name}.{script}"
    cmd = [sys.executable, "-m", module, *extra, "--out", str(Path(out).resolve())]
    cmd += ["--smoke"] * smoke
    start = time.perf_counter()
    try:  # from the repository root, where the benchmarks package is importable
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=HERE.parent
        )
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        tail = (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        status, tail = f"timeout after {timeout:.0f} s", ""
    return {"name": name, "status": status, "seconds": time.perf_counter() - start, "tail": tail}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}"


def _rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    rows = payload.get("rows", payload.get("results", []))
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def summary_lines(name: str, payload: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(benchmark, case, numbers)`` per result row of one JSON payload.

    Benchmarks without an entry in ``HEADLINES`` show their text/integer fields as the
    case and their float fields as the numbers.
    """
    script = VARIANTS.get(name, (name, ()))[0]
    lines = []
    for row in _rows(payload):
        if script in HEADLINES:
            case_keys, value_keys = HEADLINES[script]
        else:
            case_keys = tuple(k for k, v in row.items() if isinstance(v, str | int))
            value_keys = tuple(k for k, v in row.items() if isinstance(v, float))
        case = " ".join(f"{k}={_fmt(row[k])}" for k in case_keys if k in row)
        values = " ".join(f"{k}={_fmt(row[k])}" for k in value_keys if k in row)
        lines.append((name, case, values))
    return lines or [(name, "-", "no result rows")]


def load(path: Path) -> dict[str, Any]:
    payload = json.loads(path.read_text())
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    return payload


def table(results: list[dict[str, Any]], out_dir: Path) -> str:
    """A markdown table over the scripts' statuses and JSON rows."""
    out = ["| benchmark | status | case | headline numbers |", "|---|---|---|---|"]
    for res in results:
        path = out_dir / f"{res['name']}.json"
        status = f"{res['status']} ({res['seconds']:.0f} s)"
        if res["status"] != "ok" or not path.exists():
            out.append(f"| {res['name']} | {status} | - | - |")
            continue
        for i, (name, case, values) in enumerate(summary_lines(res["name"], load(path))):
            out.append(f"| {name} | {status if i == 0 else ''} | {case} | {values} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="each script's --smoke mode")
    p.add_argument("--out-dir", help="where the JSON goes (default: results/, temp dir in smoke)")
    p.add_argument("--only", help="comma-separated script names (default: all)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per script")
    args = p.parse_args(argv)
    names = discover()
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            p.error(f"unknown benchmarks {sorted(unknown)}; found {names}")
        names = [n for n in names if n in args.only.split(",")]
    out_dir = Path(
        args.out_dir or (tempfile.mkdtemp(prefix="qareg-bench-") if args.smoke else RESULTS)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        print(f"running {name} ...", flush=True)
        res = run_script(name, out_dir / f"{name}.json", args.smoke, args.timeout)
        if res["status"] != "ok":
            print(f"{name}: {res['status']}\n{res['tail']}", flush=True)
        results.append(res)
    print(f"\nJSON in {out_dir}\n")
    print(table(results, out_dir))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
