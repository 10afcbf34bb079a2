"""1-D k-means: ``qareg_jax.quantizers.kmeans_1d`` vs scikit-learn ``KMeans``.

Both cluster the same float32 weights (student-t with 5 degrees of freedom times
0.05 by default: bell-shaped with tails, like trained layers). scikit-learn runs
``KMeans(n_clusters=k, n_init=1, init="k-means++", algorithm="lloyd", max_iter=300,
tol=1e-4, random_state=0)`` on the (N, 1) reshape, in a child process killed after
``--max-sklearn-seconds`` (recorded as timed out). Both inertias are recomputed
the same way (float64 sum of squared errors to the returned centroids).

    python benchmarks/kmeans_vs_sklearn.py                # N in {1M, 10M}, K in {4, 16, 256}
    python benchmarks/kmeans_vs_sklearn.py --smoke        # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from qareg_jax.quantizers import inertia, kmeans_1d  # noqa: E402

SKLEARN_MAX_ITER = 300
SKLEARN_TOL = 1e-4


def make_weights(n: int, seed: int, dist: str) -> np.ndarray:
    """(n,) float32 weights; deterministic in (n, seed, dist)."""
    rng = np.random.default_rng(seed)
    if dist == "student_t":
        return (rng.standard_t(5, n) * 0.05).astype(np.float32)
    return (rng.standard_normal(n) * 0.05).astype(np.float32)


def sklearn_child(n: int, k: int, seed: int, dist: str) -> None:
    """Runs in the child process: fit, print one JSON line."""
    from sklearn.cluster import KMeans

    w = make_weights(n, seed, dist)
    km = KMeans(
        n_clusters=k,
        n_init=1,
        init="k-means++",
        algorithm="lloyd",
        max_iter=SKLEARN_MAX_ITER,
        tol=SKLEARN_TOL,
        random_state=0,
    )
    start = time.perf_counter()
    km.fit(w.reshape(-1, 1))
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "inertia": inertia(w, km.cluster_centers_.ravel(), km.labels_),
        "inertia_reported": float(km.inertia_),
        "n_iter": int(km.n_iter_),
    }
    print(json.dumps(result))


def run_sklearn(n: int, k: int, seed: int, dist: str, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(n), str(k), str(seed), dist]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=True)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "limit_seconds": limit}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 16, 256])
    parser.add_argument("--dist", choices=["student_t", "normal"], default="student_t")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-sklearn-seconds", type=float, default=600.0)
    parser.add_argument("--smoke", action="store_true", help="N in {20k, 50k}, K in {4, 16}")
    parser.add_argument("--out", default=str(common.RESULTS / "kmeans_vs_sklearn.json"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, k, seed, dist = args.child
        sklearn_child(int(n), int(k), int(seed), dist)
        return
    if args.smoke:
        args.sizes, args.ks = [20_000, 50_000], [4, 16]

    import sklearn

    rows = []
    for n in args.sizes:
        w = make_weights(n, args.seed, args.dist)
        for k in args.ks:
            start = time.perf_counter()
            ours = kmeans_1d(w, k)
            ours_s = time.perf_counter() - start
            theirs = run_sklearn(n, k, args.seed, args.dist, args.max_sklearn_seconds)
            row: dict[str, Any] = {
                "n": n,
                "k": k,
                "ours_seconds": ours_s,
                "ours_inertia": ours.inertia,
                "ours_lloyd_iterations_all_starts": ours.n_iter,
                "sklearn": theirs,
            }
            if not theirs.get("timed_out"):
                row["speedup_sklearn_over_ours"] = theirs["seconds"] / ours_s
                row["inertia_ratio_ours_over_sklearn"] = ours.inertia / theirs["inertia"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    info = common.machine_info()
    info["versions"]["sklearn"] = sklearn.__version__
    payload = {
        "benchmark": "kmeans_vs_sklearn",
        "machine": info,
        "config": {
            "dist": f"{args.dist} * 0.05 (student_t: 5 degrees of freedom), float32",
            "seed": args.seed,
            "ours": "kmeans_1d(w, k) defaults: init='auto' (dp, quantile, uniform, "
            "kmeans++ starts; best kept), max_iter=1000 per start, tol=0",
            "sklearn": f"KMeans(n_init=1, init='k-means++', algorithm='lloyd', "
            f"max_iter={SKLEARN_MAX_ITER}, tol={SKLEARN_TOL}, random_state=0) on (N, 1) "
            "float32, all cores (OpenMP); timing covers fit only",
            "max_sklearn_seconds": args.max_sklearn_seconds,
            "inertia": "float64 sum of squared errors to the returned centroids, both",
            "smoke": args.smoke,
            "load_average_1_5_15min_at_end": list(os.getloadavg()),
        },
        "results": rows,
    }
    print(common.write_json(payload, args.out))


if __name__ == "__main__":
    main()
