"""Gradient l1 vs none at 4-bit uniform PTQ on digits: a setting where the ordering shows.

On the SmallCNN of ``related_methods.py`` 4-bit uniform PTQ costs neither model anything
(0.987 vs 0.989), so no ordering is visible there. This script uses a standard small
model trained in a standard way in which 4-bit PTQ does cost the plain model accuracy:

* an MLP 64-32-10 (ReLU) on the flattened 8x8 digits (1437 train / 360 test);
* cross-entropy with label smoothing 0.1, Adam lr 1e-2, batch 512, 2000 steps;
* "none" and "gradient_l1" share the init, the batches and the first 70% of the steps
  (plain loss); for the last 30% "gradient_l1" trains on ``gradient_l1(loss, lam)``
  (Alizadeh et al. 2020 fine-tune a trained model with the penalty the same way);
* PTQ: every dense kernel, per tensor, with ``quantizers.uq(symmetric=True)``: the
  symmetric max-abs signed-integer grid (15 levels at 4 bits) of the gradient-l1 paper,
  and with the default ``uq`` (smallest step with <= 2**b levels) for reference.

Without label smoothing the plain model's margins are large and 4-bit PTQ costs it
about 1% (no ordering either): the ``--ls 0`` ablation section shows it. Label
smoothing keeps the per-example gradients from vanishing at the end of training, which
is what the penalty acts on.

Protocol: the model/optimizer/label smoothing/quantizer were chosen by exploration on
seeds 0-7; lam is picked on ``--tune-seed`` (0) from ``--lams`` by 4-bit symmetric PTQ
test accuracy; the reported seeds (10-19) and the test in tests/test_gradient_l1.py
(seeds 10-14) were never used for either.

    python -m experiments.gradient_l1_4bit            # ~1 min on 2 shared CPU cores
    python -m experiments.gradient_l1_4bit --smoke    # seconds, no files written

Writes ``experiments/results/gradient_l1_4bit.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from qareg_jax import provenance, quantizers
from qareg_jax.codebook import select
from qareg_jax.contrib.gradient_l1 import gradient_l1
from qareg_jax.data import load_dataset
from qareg_jax.paths import named_leaves
from qareg_jax.pipeline import TrainState, empty_window, train_step_fn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
BITS = (8, 6, 4, 3)
QUANTS = {"sym": {"symmetric": True}, "uq": {}}  # name -> uq keyword arguments


class MLP(nn.Module):
    """Dense layers with ReLU between them; (B, 8, 8, 1) or (B, 64) -> logits."""

    widths: tuple[int, ...] = (32,)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for i, w in enumerate(self.widths):
            x = nn.relu(nn.Dense(w, name=f"fc{i + 1}")(x))
        return nn.Dense(self.num_classes, name=f"fc{len(self.widths) + 1}")(x)


def make_trainer(widths, *, lr, batch, steps, start_frac, ls):
    """``train(seeds, lam) -> (none params, gradient-l1 params)`` stacked over seeds.

    Both models of a seed start from ``PRNGKey(seed)`` and see the same batches; they
    are one model up to step ``int(start_frac * steps)``, then train apart.
    """
    ds = load_dataset("digits")  # ships inside scikit-learn: no download
    x = jnp.asarray(ds.normalize(ds.train_images)).reshape(-1, 64)
    y = jnp.asarray(ds.train_labels)
    model = MLP(tuple(widths), ds.num_classes)
    opt = optax.adam(lr)
    split = int(start_frac * steps)

    def loss(params, b):
        targets = optax.smooth_labels(jax.nn.one_hot(b[1], ds.num_classes), ls)
        return optax.softmax_cross_entropy(model.apply(params, b[0]), targets).mean()

    def run(params, state, idx, fn):
        """``fn(params, batch) -> loss`` through the pipeline's one train step, scanned."""
        step = train_step_fn(lambda p, ms, b, rng, i: (fn(p, b), ms), opt)
        ts = TrainState(
            params=params,
            opt_state=state,
            model_state={},
            key=jax.random.PRNGKey(0),  # no dropout here: the step's key is unused
            step=jnp.zeros((), jnp.int32),
            window=empty_window(),
            bad_step=jnp.full((), -1, jnp.int32),
        )
        ts = jax.lax.scan(lambda t, i: (step(t, (x[i], y[i]))[0], None), ts, idx)[0]
        return ts.params, ts.opt_state

    @jax.jit
    def prefix(keys, idx):
        def one(key, ix):
            params = model.init(key, x[:1])
            return run(params, opt.init(params), ix, loss)

        return jax.vmap(one)(keys, idx)

    @jax.jit
    def suffix(carry, idx, lam):
        gl1 = gradient_l1(loss, lam)
        return jax.vmap(lambda c, ix: run(*c, ix, lambda p, b: gl1(p, b)[0])[0])(carry, idx)

    def train(seeds, lam):
        seeds = [int(s) for s in seeds]
        keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
        idx = jnp.stack(
            [np.random.default_rng(s).integers(0, y.shape[0], (steps, batch)) for s in seeds]
        )
        carry = prefix(keys, idx[:, :split])
        none = suffix(carry, idx[:, split:], 0.0)  # lam 0: exactly the plain loss
        reg = suffix(carry, idx[:, split:], lam)
        return none, reg

    return model, ds, train, loss


def evaluate(model, ds, loss, params: Any, bits=BITS) -> dict[str, Any]:
    x = jnp.asarray(ds.normalize(ds.test_images))
    y = jnp.asarray(ds.test_labels)
    xtr = jnp.asarray(ds.normalize(ds.train_images))
    ytr = jnp.asarray(ds.train_labels)

    def acc(p):
        return float(jnp.mean(jnp.argmax(model.apply(p, x), -1) == y))

    paths = select(params)
    leaves = named_leaves(params)
    row = {
        "fp": acc(params),
        "train_loss": float(loss(params, (xtr, ytr))),
        "max_over_std": {p: float(jnp.max(jnp.abs(leaves[p])) / jnp.std(leaves[p])) for p in paths},
    }
    for name, kw in QUANTS.items():
        row[name] = {}
        for b in bits:
            quantized, _ = quantizers.quantize_tree(params, paths, 2**b, "uq", **kw)
            row[name][str(b)] = acc(quantized)
    return row


def one_setting(args, ls: float, seeds: list[int], lam: float) -> list[dict[str, Any]]:
    model, ds, train, loss = make_trainer(
        args.widths, lr=args.lr, batch=args.batch, steps=args.steps,
        start_frac=args.start_frac, ls=ls,
    )  # fmt: skip
    t0 = time.perf_counter()
    none, reg = train(seeds, lam)
    jax.block_until_ready(reg)
    secs = time.perf_counter() - t0
    rows = []
    for j, seed in enumerate(seeds):
        for method, stacked in (("none", none), ("gradient_l1", reg)):
            params = jax.tree.map(lambda a, j=j: a[j], stacked)
            row = {"seed": seed, "method": method, "lam": lam if method != "none" else 0.0}
            rows.append(row | evaluate(model, ds, loss, params))
        n, g = rows[-2], rows[-1]
        print(
            f"  ls={ls} seed {seed}: fp {n['fp']:.3f}/{g['fp']:.3f} sym4 "
            f"{n['sym']['4']:.3f}/{g['sym']['4']:.3f} uq4 {n['uq']['4']:.3f}/{g['uq']['4']:.3f}",
            flush=True,
        )
    for r in rows:
        r["train_s_all_seeds"] = secs
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info() | {
        "uncommitted_at_start": provenance.git_dirty_files(
            "qareg_jax", "experiments/gradient_l1_4bit.py"
        )
    }
    lams = [float(s) for s in args.lams.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"tuning lam on seed {args.tune_seed}", flush=True)
    tuning = []
    for lam in lams:
        rows = one_setting(args, args.ls, [args.tune_seed], lam)
        tuning.append({"lam": lam, "none": rows[0], "gradient_l1": rows[1]})
    # Highest 4-bit symmetric accuracy; ties -> the smaller lam (the first one).
    best = max(tuning, key=lambda t: (t["gradient_l1"]["sym"]["4"], -t["lam"]))
    lam = best["lam"]
    print(f"picked lam {lam}; reported seeds {seeds}", flush=True)
    main_rows = one_setting(args, args.ls, seeds, lam)
    ablation = one_setting(args, 0.0, seeds, lam) if args.ls > 0 else []
    return {
        "experiment": "gradient_l1_4bit",
        "command": " ".join(["python -m experiments.gradient_l1_4bit", *args.argv]),
        "machine": machine,
        "config": {k: v for k, v in vars(args).items() if k not in ("argv", "out_dir", "smoke")}
        | {
            "dataset": "sklearn digits 8x8 (qareg_jax.data, 1437 train / 360 test)",
            "model": f"MLP 64-{'-'.join(map(str, args.widths))}-10, ReLU",
            "quantized": "all dense kernels (codebook.select default), per tensor; biases float",
            "sym": "quantizers.uq(symmetric=True): delta = max|w| / 7 at 4 bits, 15 levels",
            "uq": "quantizers.uq default: smallest step with <= 2**b levels",
            "picked_lam": lam,
            "protocol": "setting chosen by exploration on seeds 0-7; lam picked on the tune "
            "seed by 4-bit symmetric PTQ test accuracy; reported seeds never used for either",
        },
        "tuning": tuning,
        "results": main_rows,
        "ablation_no_label_smoothing": ablation,
    }


# ----------------------------------------------------------------------------- report


def _ms(values) -> str:
    a = np.asarray(values, np.float64)
    return f"{a.mean():.3f} ± {a.std():.3f}" if a.size > 1 else f"{a.mean():.3f}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| method | lam | fp | "
        + " | ".join(f"sym {b} bit" for b in BITS)
        + " | "
        + " | ".join(f"uq {b} bit" for b in BITS)
        + " | train loss | max abs w / std (mean over layers) |",
        "|---|---|---|" + "---|" * (2 * len(BITS)) + "---|---|",
    ]
    for method in ("none", "gradient_l1"):
        rs = [r for r in rows if r["method"] == method]
        lines.append(
            f"| {method} | {rs[0]['lam']} | {_ms([r['fp'] for r in rs])} | "
            + " | ".join(_ms([r["sym"][str(b)] for r in rs]) for b in BITS)
            + " | "
            + " | ".join(_ms([r["uq"][str(b)] for r in rs]) for b in BITS)
            + f" | {np.mean([r['train_loss'] for r in rs]):.3f}"
            + f" | {np.mean([np.mean(list(r['max_over_std'].values())) for r in rs]):.2f} |"
        )
    return lines


def _drops(rows: list[dict[str, Any]], quant: str, bits: int = 4) -> list[str]:
    by = {(r["seed"], r["method"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})

    def drop(s, m):
        return by[s, m]["fp"] - by[s, m][quant][str(bits)]

    dn = np.array([drop(s, "none") for s in seeds])
    dg = np.array([drop(s, "gradient_l1") for s in seeds])
    return [
        f"| {quant} {bits} bit | {_ms(dn)} | {_ms(dg)} | {_ms(dn - dg)} | "
        f"{int(np.sum(dg < dn))}/{len(seeds)} | "
        + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(dn, dg, strict=True))
        + " |"
    ]


def _drop_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| PTQ | drop none | drop gradient-l1 | none - gl1 (paired) | seeds gl1 < none | "
        "per seed none/gl1 |",
        "|---|---|---|---|---|---|",
    ]
    for quant in QUANTS:
        for b in (4, 3):
            lines += _drops(rows, quant, b)
    return lines


def markdown(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    seeds = cfg["seeds"]
    lines = [
        "# Gradient l1 vs none at 4-bit uniform PTQ (digits, MLP 64-32-10)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {m['date']}, commit {m['git_commit']} (files differing from it at the start: "
        f"{', '.join(m['uncommitted_at_start']) or 'none'}), {m['platform']}, "
        f"{m['cpu_count']} CPUs (shared), jax {m['versions']['jax']}.  ",
        f"{cfg['model']}; Adam lr {cfg['lr']}, batch {cfg['batch']}, {cfg['steps']} steps, "
        f"label smoothing {cfg['ls']}; gradient-l1 (lam {cfg['picked_lam']}) for the last "
        f"{1 - cfg['start_frac']:.0%} of the steps, the first {cfg['start_frac']:.0%} shared "
        "with 'none' (same init, same batches). PTQ of all dense kernels per tensor: "
        f"**sym** = {cfg['sym']}; **uq** = {cfg['uq']}. Test accuracy, mean ± std over "
        f"seeds {seeds}.",
        "",
        f"Protocol: {cfg['protocol']}.",
        "",
        f"## Lam tuning (seed {cfg['tune_seed']} only)",
        "",
        "| lam | fp none | fp gl1 | sym 4 bit none | sym 4 bit gl1 |",
        "|---|---|---|---|---|",
    ]
    for t in result["tuning"]:
        n, g = t["none"], t["gradient_l1"]
        lines.append(
            f"| {t['lam']} | {n['fp']:.3f} | {g['fp']:.3f} | {n['sym']['4']:.3f} | "
            f"{g['sym']['4']:.3f} |"
        )
    lines += [
        "",
        f"## Label smoothing {cfg['ls']} (the setting of tests/test_gradient_l1.py)",
        "",
        *_table(result["results"]),
        "",
        "Accuracy lost to PTQ (fp - quantized), paired by seed:",
        "",
        *_drop_table(result["results"]),
    ]
    if result["ablation_no_label_smoothing"]:
        lines += [
            "",
            "## Ablation: no label smoothing (same seeds, same lam)",
            "",
            *_table(result["ablation_no_label_smoothing"]),
            "",
            *_drop_table(result["ablation_no_label_smoothing"]),
        ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default=",".join(map(str, range(10, 20))))
    p.add_argument("--tune-seed", type=int, default=0)
    p.add_argument("--lams", default="0.03,0.1,0.3,1.0")
    p.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=[32])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--start-frac", type=float, default=0.7)
    p.add_argument("--ls", type=float, default=0.1, help="label smoothing")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--smoke", action="store_true", help="two seeds, few steps, no files")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.seeds, args.steps, args.lams = "10,11", 50, "0.1"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    result = run(args)
    if args.smoke:
        print(markdown(result))
        return result
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradient_l1_4bit.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gradient_l1_4bit.md").write_text(markdown(result))
    print(f"wrote {out / 'gradient_l1_4bit.json'} and .md")
    return result


if __name__ == "__main__":
    main()
