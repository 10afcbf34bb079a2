"""Peak memory, time and float32 accuracy of a DKM forward+backward: ``dkm_layer`` (blocked,
hand-written backward pass) vs the O(NK) reference.

For each layer size N and cluster count K it jit-compiles ``value_and_grad`` of
``0.5 * sum(W~^2)`` with ``W~ = dkm_layer(w, c, tau, iters)`` and with
``dkm_layer_reference`` (the straightforward N x K version under autodiff), reads the
compiled memory analysis (arguments + outputs + temps - aliases; no allocation needed,
so it is reported even where the run is skipped) and times the compiled call. A run
whose compiled footprint exceeds ``--max-gb`` is not executed (said so in the JSON).
Accuracy: the relative error of the loss and of its gradient against the same
computation in float64 (``dkm_layer``'s blocks, x64 enabled).

    python -m benchmarks.dkm_memory            # N in {1M, 8M}, K in {16, 256}
    python -m benchmarks.dkm_memory --smoke    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from qareg_jax.contrib import dkm

IMPLS = {"blocked": dkm.dkm_layer, "reference": dkm.dkm_layer_reference}


def compile_case(impl: str, n: int, k: int, iters: int, dtype: Any = jnp.float32):
    """The compiled forward+backward for one case and its inputs."""
    w = jnp.asarray(np.random.default_rng(0).normal(0.0, 0.05, n), dtype)
    c = jnp.linspace(-0.15, 0.15, k, dtype=dtype)
    tau = float((0.3 / (k - 1) / 2) ** 2)  # (half the centroid spacing)^2
    fn = IMPLS[impl]

    def loss(w):
        return 0.5 * jnp.sum(jnp.square(fn(w, c, tau, iters)[0]))

    compiled = jax.jit(jax.value_and_grad(loss)).lower(w).compile()
    return compiled, w


def exact_case(n: int, k: int, iters: int) -> tuple[float, np.ndarray]:
    """The loss and its gradient in float64 (blocked sums, x64 enabled)."""
    with jax.enable_x64(True):
        compiled, w = compile_case("blocked", n, k, iters, jnp.float64)
        value, grad = compiled(w)
        return float(value), np.asarray(grad)


def errors(out: Any, exact: tuple[float, np.ndarray]) -> dict[str, float]:
    """Relative errors of a float32 ``(loss, grad)`` against ``exact``."""
    value, grad = float(out[0]), np.asarray(out[1], np.float64)
    scale = np.abs(exact[1]).max()
    return {
        "loss_rel_error_vs_float64": abs(value - exact[0]) / abs(exact[0]),
        "grad_rel_error_vs_float64": float(np.abs(grad - exact[1]).max() / scale),
    }


def time_case(compiled: Any, w: jax.Array, repeats: int) -> list[float]:
    """Seconds per call of ``compiled(w)`` after one warm-up call."""
    jax.block_until_ready(compiled(w))
    return [common.time_call(lambda: compiled(w)) for _ in range(repeats)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in (int(s) for s in args.ns.split(",")):
        for k in (int(s) for s in args.ks.split(",")):
            exact = exact_case(n, k, args.iters)
            for impl in IMPLS:
                compiled, w = compile_case(impl, n, k, args.iters)
                stats = compiled.memory_analysis()
                total = common.compiled_bytes(compiled)
                row: dict[str, Any] = {
                    "impl": impl,
                    "n": n,
                    "k": k,
                    "peak_bytes": total,
                    "temp_bytes": int(stats.temp_size_in_bytes),
                    "n_times_k_float32_bytes": 4 * n * k,
                }
                if total is not None and total > args.max_gb * 2**30:
                    row["skipped"] = (
                        f"compiled footprint {total / 2**30:.1f} GiB > {args.max_gb} GiB"
                    )
                else:
                    times = time_case(compiled, w, args.repeats)
                    row["time_s"] = common.median(times)
                    row["times_s"] = times
                    row.update(errors(compiled(w), exact))
                del compiled, w
                rows.append(row)
                t = f"{row['time_s']:8.3f} s" if "time_s" in row else "  skipped"
                err = row.get("grad_rel_error_vs_float64", float("nan"))
                print(
                    f"N={n:>9d} K={k:<4d} {impl:9s} {t}  peak {(total or 0) / 2**20:10.1f} MiB"
                    f"  grad error {err:.1e}",
                    flush=True,
                )
    for row in rows:
        if row["impl"] == "blocked":
            ref = next(
                r
                for r in rows
                if r["impl"] == "reference" and r["n"] == row["n"] and r["k"] == row["k"]
            )
            if row["peak_bytes"] and ref["peak_bytes"]:
                row["memory_ratio_reference_over_blocked"] = ref["peak_bytes"] / row["peak_bytes"]
            if "time_s" in ref and "time_s" in row:
                row["time_ratio_blocked_over_reference"] = row["time_s"] / ref["time_s"]
    return {
        "benchmark": "dkm_memory",
        "command": "python -m benchmarks.dkm_memory " + " ".join(args.argv),
        "machine": common.machine_info(),
        "config": {
            "ns": args.ns,
            "ks": args.ks,
            "iters": args.iters,
            "repeats": args.repeats,
            "max_gb": args.max_gb,
            "computation": "jit(value_and_grad(0.5 * sum(dkm(w)^2))), float32, 1-D weights",
            "block_size": "2**19 // K weights per block (dkm_layer's default)",
            "accuracy": "relative error vs the same loss in float64 (max over the gradient)",
            "memory": "compiled memory_analysis: arguments + outputs + temps - aliases",
            "timing": "median of repeats after one warm-up call",
        },
        "rows": rows,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ns", default=f"{2**20},{2**23}")
    p.add_argument("--ks", default="16,256")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-gb", type=float, default=8.0, help="skip running larger references")
    p.add_argument("--out", default=str(common.RESULTS / "dkm_memory.json"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.ns, args.ks, args.repeats = "4096,20000", "4,32", 1
        if "--out" not in args.argv:
            args.out = str(common.RESULTS / "dkm_memory_smoke.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main(parse, run, argv)


if __name__ == "__main__":
    main()
