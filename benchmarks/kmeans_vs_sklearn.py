"""1-D k-means: ``qareg_jax.quantizers.kmeans_1d`` vs scikit-learn ``KMeans`` and ``kmeans1d``.

All cluster the same float32 weights (student-t with 5 degrees of freedom times
0.05 by default: bell-shaped with tails, like trained layers). scikit-learn runs
``KMeans(n_clusters=k, n_init=1, init="k-means++", algorithm="lloyd", max_iter=300,
tol=1e-4, random_state=0)`` on the (N, 1) reshape; the optional ``kmeans1d`` package
(exact 1-D k-means by an O(k N) dynamic programme, as used by coremltools; ``pip
install kmeans1d`` or the ``bench`` extra) runs ``kmeans1d.cluster(w, k)`` on the
float32 array. Each runs in a child process killed after ``--max-sklearn-seconds`` /
``--max-kmeans1d-seconds`` (recorded as timed out); kmeans1d cells with ``k * N``
above ``--kmeans1d-max-work`` are skipped, and without the package its columns are
null with the reason. All inertias are recomputed the same way (float64 sum of
squared errors to the returned centroids).

    python -m benchmarks.kmeans_vs_sklearn                # N in {1M, 10M}, K in {4, 16, 256}
    python -m benchmarks.kmeans_vs_sklearn --smoke        # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from benchmarks import common
from qareg_jax.quantizers import inertia, kmeans_1d

SKLEARN_MAX_ITER = 300
SKLEARN_TOL = 1e-4


def make_weights(n: int, seed: int, dist: str) -> np.ndarray:
    """(n,) float32 weights; deterministic in (n, seed, dist)."""
    rng = np.random.default_rng(seed)
    if dist == "student_t":
        return (rng.standard_t(5, n) * 0.05).astype(np.float32)
    return (rng.standard_normal(n) * 0.05).astype(np.float32)


def fit_child(lib: str, n: int, k: int, seed: int, dist: str) -> None:
    """Runs in the child process: fit with ``lib``, print one JSON line."""
    w = make_weights(n, seed, dist)
    if lib == "sklearn":
        from sklearn.cluster import KMeans

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
        centroids, labels = km.cluster_centers_.ravel(), km.labels_
        extra = {"inertia_reported": float(km.inertia_), "n_iter": int(km.n_iter_)}
    else:
        import kmeans1d

        start = time.perf_counter()
        clustered = kmeans1d.cluster(w, k)
        seconds = time.perf_counter() - start
        centroids, labels = np.asarray(clustered.centroids), np.asarray(clustered.clusters)
        extra = {}
    result = {"seconds": seconds, "inertia": inertia(w, centroids, labels), **extra}
    print(json.dumps(result))


def run_child(lib: str, n: int, k: int, seed: int, dist: str, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.kmeans_vs_sklearn", "--child", lib, str(n), str(k)]
    cmd += [str(seed), dist]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit, check=True, cwd=common.REPO
        )
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "limit_seconds": limit}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kmeans1d_version() -> tuple[str | None, str | None]:
    """(version, None) when kmeans1d imports, else (None, the reason)."""
    try:
        import kmeans1d
    except ImportError as err:
        return None, f"kmeans1d not installed ({err}); pip install kmeans1d"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kmeans1d"), None
    except PackageNotFoundError:
        return getattr(kmeans1d, "__version__", "unknown"), None


def compare(row: dict[str, Any], name: str, theirs: dict[str, Any], ours: Any) -> None:
    """Adds ``theirs`` and our speedup / inertia ratio against it (null when it has none)."""
    row[name] = theirs
    done = "seconds" in theirs
    row[f"speedup_{name}_over_ours"] = theirs["seconds"] / row["ours_seconds"] if done else None
    row[f"inertia_ratio_ours_over_{name}"] = ours.inertia / theirs["inertia"] if done else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 16, 256])
    parser.add_argument("--dist", choices=["student_t", "normal"], default="student_t")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-sklearn-seconds", type=float, default=600.0)
    parser.add_argument("--max-kmeans1d-seconds", type=float, default=300.0)
    parser.add_argument(
        "--kmeans1d-max-work", type=float, default=5e8, help="skip kmeans1d when k * N is above"
    )
    parser.add_argument("--smoke", action="store_true", help="N in {20k, 50k}, K in {4, 16}")
    parser.add_argument("--out", default=str(common.RESULTS / "kmeans_vs_sklearn.json"))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        lib, n, k, seed, dist = args.child
        fit_child(lib, int(n), int(k), int(seed), dist)
        return
    if args.smoke:
        args.sizes, args.ks = [20_000, 50_000], [4, 16]

    import sklearn

    k1d_version, k1d_missing = kmeans1d_version()
    rows = []
    for n in args.sizes:
        w = make_weights(n, args.seed, args.dist)
        for k in args.ks:
            start = time.perf_counter()
            ours = kmeans_1d(w, k)
            ours_s = time.perf_counter() - start
            row: dict[str, Any] = {
                "n": n,
                "k": k,
                "ours_seconds": ours_s,
                "ours_inertia": ours.inertia,
                "ours_lloyd_iterations_all_starts": ours.n_iter,
            }
            sk = run_child("sklearn", n, k, args.seed, args.dist, args.max_sklearn_seconds)
            compare(row, "sklearn", sk, ours)
            if k1d_missing:
                k1d: dict[str, Any] = {"skipped": k1d_missing}
            elif k * n > args.kmeans1d_max_work:
                k1d = {"skipped": f"k * N = {k * n:.3g} > --kmeans1d-max-work (O(k N) time)"}
            else:
                k1d = run_child("kmeans1d", n, k, args.seed, args.dist, args.max_kmeans1d_seconds)
            compare(row, "kmeans1d", k1d, ours)
            rows.append(row)
            print(json.dumps(row), flush=True)

    info = common.machine_info()
    info["versions"]["sklearn"] = sklearn.__version__
    info["versions"]["kmeans1d"] = k1d_version
    payload = {
        "benchmark": "kmeans_vs_sklearn",
        "machine": info,
        "config": {
            "dist": f"{args.dist} * 0.05 (student_t: 5 degrees of freedom), float32",
            "seed": args.seed,
            "ours": "kmeans_1d(w, k) defaults: init='auto' (dp, quantile, uniform, "
            "kmeans++ starts; best kept), max_iter=1000 per start, tol=0; first call "
            "in the process for each (n, k), timed once",
            "sklearn": f"KMeans(n_init=1, init='k-means++', algorithm='lloyd', "
            f"max_iter={SKLEARN_MAX_ITER}, tol={SKLEARN_TOL}, random_state=0) on (N, 1) "
            "float32, all cores (OpenMP); timing covers fit only",
            "kmeans1d": "kmeans1d.cluster(w, k) on the float32 array (exact 1-D k-means, "
            "O(k N) dynamic programme, single thread); timing covers the call, including "
            "its conversion to a C double array and back to lists"
            + (f"; not run: {k1d_missing}" if k1d_missing else ""),
            "max_sklearn_seconds": args.max_sklearn_seconds,
            "max_kmeans1d_seconds": args.max_kmeans1d_seconds,
            "kmeans1d_max_work": args.kmeans1d_max_work,
            "inertia": "float64 sum of squared errors to the returned centroids, all",
            "smoke": args.smoke,
            "load_average_1_5_15min_at_end": list(os.getloadavg()),
        },
        "results": rows,
    }
    print(common.write_json(payload, args.out))


if __name__ == "__main__":
    main()
