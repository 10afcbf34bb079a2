"""Cost of the element-wise patterns the penalties are built from, per weight, on this backend.

The regularizers' implementation choices rest on how XLA compiles a few patterns
over N weights: a fused reduction, an ``exp`` inside it (alone, or next to the
compare/select of a nearest-level chain, or with ``sign`` instead), a gather from a
small table, a scatter-add into K bins, and a multi-output reduction. This times
each one, jitted, and writes milliseconds and nanoseconds per weight to JSON, with
the ratio to a plain ``sum(w)``.

    python -m benchmarks.xla_patterns           # N = 16M (a 4096 x 4096 kernel)
    python -m benchmarks.xla_patterns --smoke   # N = 64k, for tests
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import common

BINS = 256
SCALE = 100.0  # exp(-SCALE w^2) with w ~ N(0, 0.02^2): terms of order 1


def patterns() -> dict[str, Callable[[jax.Array, jax.Array], Any]]:
    """Name -> ``f(w, table)``; ``w`` is ``(rows, 4096)`` float32, ``table`` ``(BINS,)``."""

    def bins(w):
        return jnp.clip(((w + 0.1) * (BINS / 0.2)).astype(jnp.int32), 0, BINS - 1)

    def near(w):  # a two-level compare chain, as nearest_index builds it for K = 2
        return jnp.where(w > 0, 0.01, -0.01)

    def two_sums(w, t):
        e = jnp.exp(-SCALE * w * w)
        return jnp.sum(e), jnp.sum(w * e)

    return {
        "sum(w)": lambda w, t: jnp.sum(w),
        "sum(exp)": lambda w, t: jnp.sum(jnp.exp(-SCALE * w * w)),
        "sum(exp) next to a select": lambda w, t: jnp.sum(jnp.exp(-SCALE * (w - near(w)) ** 2)),
        "sum(exp) next to sign": lambda w, t: jnp.sum(
            jnp.exp(-SCALE * (w - 0.01 * jnp.sign(w)) ** 2)
        ),
        "two sums sharing an exp": two_sums,
        "sum(table[bin(w)]) (gather)": lambda w, t: jnp.sum(t[bins(w)]),
        "scatter-add into 256 bins": lambda w, t: jnp.zeros(BINS).at[bins(w)].add(w),
        "exp, written out": lambda w, t: jnp.exp(-SCALE * w * w),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows_ = args.n // 4096
    w = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (rows_, 4096), jnp.float32)
    table = jnp.linspace(-1.0, 1.0, BINS, dtype=jnp.float32)
    n = int(w.size)
    rows = []
    base = None
    for name, fn in patterns().items():
        call = partial(jax.jit(fn), w, table)
        jax.block_until_ready(call())  # compile and warm up
        seconds = common.median([common.time_call(call) for _ in range(args.repeats)])
        base = base or seconds
        row = {
            "pattern": name,
            "ms": 1e3 * seconds,
            "ns_per_weight": 1e9 * seconds / n,
            "ratio_to_sum": seconds / base,
        }
        rows.append(row)
        print(f"{name:32s} {row['ms']:8.2f} ms  {row['ns_per_weight']:6.2f} ns/weight", flush=True)
    return {
        "benchmark": "xla_patterns",
        "machine": common.machine_info(),
        "config": {
            "n": n,
            "repeats": args.repeats,
            "timing": "median wall time of the jitted call after one warm-up",
        },
        "rows": rows,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=4096 * 4096, help="weights (a multiple of 4096)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(common.RESULTS / "xla_patterns.json"))
    p.add_argument("--smoke", action="store_true", help="N = 64k, 1 repeat")
    args = p.parse_args(argv)
    if args.n < 4096 or args.n % 4096:
        p.error(f"--n must be a positive multiple of 4096, got {args.n}")
    if args.smoke:
        args.n, args.repeats = 16 * 4096, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main(parse, run, argv)


if __name__ == "__main__":
    main()
