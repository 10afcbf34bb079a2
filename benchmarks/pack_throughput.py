"""Quantize + bit-pack throughput, and save/load of the result, on the host CPU.

For N float32 weights (normal * 0.05) and each K: the codebook is the K
mid-quantiles of a 1M-weight subsample (not timed); then timed separately:
``assign_nearest`` (searchsorted on the K-1 midpoints), ``pack_indices`` (ceil(log2 K)
bits each), ``unpack_indices``, ``save`` (one checksummed file, fsync'd) and
``load`` (checksum + unpack + ``codebook[assignments]``). The loaded layer is
checked bit-exact against ``codebook[assignments]`` and the file size against the
accounted packed size (not timed). Target: quantize + pack < 5 s for 100M weights.

    python -m benchmarks.pack_throughput            # N = 100M, K in {2, 4, 16, 256}
    python -m benchmarks.pack_throughput --smoke    # N = 100k
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks import common
from qareg_jax import compress
from qareg_jax.quantizers import assign_nearest


def timed(fn: Any, cpu: dict[str, float], name: str) -> tuple[Any, float]:
    """(result, wall seconds); the process CPU seconds (all threads) go to ``cpu[name]``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    cpu[name] = time.process_time() - start_cpu
    return out, time.perf_counter() - start


def bench_k(w: np.ndarray, k: int, workdir: str) -> dict[str, Any]:
    sample = w[:: max(1, w.size // 1_000_000)].astype(np.float64)
    codebook = np.quantile(sample, (np.arange(k) + 0.5) / k).astype(np.float32)
    cpu: dict[str, float] = {}
    assignments, t_assign = timed(lambda: assign_nearest(w, codebook), cpu, "assign")
    packed, t_pack = timed(lambda: compress.pack_indices(assignments, k), cpu, "pack")
    unpacked, t_unpack = timed(lambda: compress.unpack_indices(packed, k, w.size), cpu, "unpack")
    assert np.array_equal(unpacked, assignments)
    del unpacked

    path = os.path.join(workdir, f"layer_k{k}.qz")
    params, quantized = {"layer": w}, {"layer": (codebook, assignments)}
    info, t_save = timed(
        lambda: compress.save(path, params, quantized, overwrite=True), cpu, "save"
    )
    (loaded, _), t_load = timed(lambda: compress.load(path), cpu, "load")
    exact = bool(
        np.array_equal(loaded["layer"].view(np.uint32), codebook[assignments].view(np.uint32))
    )
    report = compress.size_report(params, quantized)
    os.unlink(path)
    return {
        "k": k,
        "bits_per_index": compress.bits_per_index(k),
        "assign_seconds": t_assign,
        "pack_seconds": t_pack,
        "quantize_plus_pack_seconds": t_assign + t_pack,
        "weights_per_second_quantize_plus_pack": w.size / (t_assign + t_pack),
        "unpack_seconds": t_unpack,
        "save_seconds": t_save,
        "load_seconds": t_load,
        "packed_bytes": int(packed.size),
        "file_bytes": info.file_bytes,
        "file_overhead_bytes": info.overhead_bytes,
        "accounted_packed_bits": report.packed_bits,
        "inv_psi_packed": 1.0 / report.psi_packed,
        "load_bit_exact": exact,
        "cpu_seconds_all_threads": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000_000)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 16, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the files go (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="N = 100k")
    parser.add_argument("--out", default=str(common.RESULTS / "pack_throughput.json"))
    args = parser.parse_args()
    if args.smoke:
        args.n = 100_000

    w = np.random.default_rng(args.seed).standard_normal(args.n, dtype=np.float32)
    w *= np.float32(0.05)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for k in args.ks:
            row = bench_k(w, k, workdir)
            rows.append(row)
            print(json.dumps(row), flush=True)
    payload = {
        "benchmark": "pack_throughput",
        "machine": common.machine_info(),
        "config": {
            "n": args.n,
            "weights": "float32 standard normal * 0.05",
            "codebook": "K mid-quantiles of a <= 1M subsample (not timed)",
            "threads": "assign/pack/unpack run numpy in os.cpu_count() threads",
            "timing": "*_seconds: wall clock; cpu_seconds_all_threads: process CPU time "
            "(independent of other load on a shared machine)",
            "save": "single file, sha256, fsync, atomic rename",
            "smoke": args.smoke,
            "load_average_1_5_15min_at_end": list(os.getloadavg()),
        },
        "results": rows,
    }
    print(common.write_json(payload, args.out))


if __name__ == "__main__":
    main()
