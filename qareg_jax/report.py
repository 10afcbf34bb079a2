"""Tables and plots of a run directory written by ``train.train_and_evaluate``.

``write_report(workdir)`` writes ``table.md`` and ``table.csv`` (one row per method and
K) and PNG plots under ``plots/``:

- ``accuracy_vs_bits.png``: pre- and post-tuning accuracy against index bits per weight
  (``ceil(log2 K)``), one line per method, the full-precision accuracy dashed;
- ``training_k<K>.png``: task loss, regularizer (lambda-weighted penalty) and mean
  distance of the weights to their levels over the regularized phase, per method;
- ``hist_<stage>.png``: per quantized layer, the weight histogram before and after
  regularized training with the levels before (dashed) and after (solid).

Figures are drawn with matplotlib's object API on Agg canvases: no pyplot, no global
backend switch, safe in threads and headless machines.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLUMNS = (
    ("model", "model"),
    ("dataset", "dataset"),
    ("method", "method"),
    ("k", "K"),
    ("acc_fp", "acc FP %"),
    ("acc_reg", "acc reg (unsnapped) %"),
    ("acc_pre", "acc pre-tuning %"),
    ("acc_post", "acc post-tuning %"),
    ("packed_bytes", "packed B"),
    ("ratio", "1/psi"),
    ("huffman_bytes", "Huffman B"),
    ("huffman_ratio", "1/psi Huffman"),
    ("wall_s", "wall s"),
    ("device", "device"),
)
_TEXT = ("model", "dataset", "method", "device")


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.startswith("acc"):
        return f"{100 * value:.2f}"
    if key.endswith("bytes"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table, one line per result row (accuracies in percent)."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in _TEXT else "---:" for key, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(key, row.get(key)) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """All fields of the rows (accuracies as fractions), one line each."""
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields and key != "histograms"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def load_rows(workdir: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, results)`` of a run: from ``results.json``, or from the finished stages of
    an unfinished run (then ``results`` is ``{}``).

    Raises:
      FileNotFoundError: ``workdir`` holds no run.
    """
    path = pathlib.Path(workdir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{str(path)!r} holds no qareg run (no config.json)")
    if (path / "results.json").exists():
        results = json.loads((path / "results.json").read_text())
        return results["rows"], results
    rows = []
    for file in sorted((path / "stages").glob("*.json")):
        if file.stem != "pretrain":
            rows.append(json.loads(file.read_text()))
    for row in rows:
        row.pop("histograms", None)
    return rows, {}


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def plot_accuracy_vs_bits(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Pre- and post-tuning accuracy (%) vs ``ceil(log2 K)`` bits, one line per method."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for ax, key, title in zip(
        axes, ("acc_pre", "acc_post"), ("pre-tuning", "post-tuning"), strict=True
    ):
        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["k"])
            bits = [math.ceil(math.log2(r["k"])) for r in mine]
            style = "--" if mine[0].get("kind") == "baseline" else "-"
            ax.plot(bits, [100 * r[key] for r in mine], style, marker="o", label=method)
        if rows:
            ax.axhline(100 * rows[0]["acc_fp"], color="k", ls=":", lw=1, label="full precision")
        ax.set_title(f"{title} accuracy")
        ax.set_xlabel("bits per weight index (ceil log2 K)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    if rows:
        fig.suptitle(f"{rows[0]['model']} on {rows[0]['dataset']}")
    return _save(fig, path)


def _read_metrics(path: pathlib.Path, phase: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in records if r["phase"] == phase]


def plot_training(
    workdir: pathlib.Path, rows: Sequence[dict[str, Any]], k: int, path: pathlib.Path
) -> pathlib.Path:
    """Regularized phase at ``k``: task loss, regularizer and mean distance to the levels."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for row in rows:
        if row.get("kind") != "regularizer" or row["k"] != k:
            continue
        records = _read_metrics(workdir / "metrics" / f"{row['stage']}.jsonl", "reg")
        if not records:
            continue
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["task_loss"] for r in records], label=row["method"])
        axes[1].plot(steps, [max(r["penalty"], 1e-12) for r in records], label=row["method"])
        dist = [np.mean([s["distance"] for s in r["layers"].values()]) for r in records]
        axes[2].plot(steps, dist, label=row["method"])
    titles = ("task loss", "regularizer (lambda-weighted)", "mean |w - nearest level|")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step of the regularized phase")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"regularized training, K={k}")
    return _save(fig, path)


def plot_histograms(stage_row: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
    """Per layer: weights before/after regularizing, levels before (dashed) and after."""
    hists = stage_row["histograms"]
    n = len(hists)
    cols = min(n, 4)
    rows_ = -(-n // cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows_), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows_, cols)).ravel()
    for ax, (layer, h) in zip(axes, hists.items(), strict=False):
        edges = np.asarray(h["edges"])
        ax.stairs(h["before"], edges, color="0.55", label="before", fill=True, alpha=0.5)
        ax.stairs(h["after"], edges, color="C0", label="after", lw=1.2)
        for c in h["levels_before"]:
            ax.axvline(c, color="0.3", ls="--", lw=0.8)
        for c in h["levels_after"]:
            ax.axvline(c, color="C3", lw=1.0)
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{stage_row['method']}, K={stage_row['k']}: weights before/after regularizing; "
        "levels before (dashed) and after (red)",
        fontsize=9,
    )
    return _save(fig, path)


def write_report(workdir: str | os.PathLike) -> dict[str, Any]:
    """Write ``table.md``, ``table.csv`` and ``plots/*.png`` for the run in ``workdir``.

    Returns ``{"table": markdown text, "files": [paths written]}``.

    Raises:
      FileNotFoundError: ``workdir`` holds no run. ValueError: it has no finished stage.
    """
    path = pathlib.Path(workdir)
    rows, _ = load_rows(path)
    if not rows:
        raise ValueError(f"{str(path)!r} has no finished stage yet; nothing to report")
    table = markdown_table(rows)
    (path / "table.md").write_text(table + "\n")
    write_csv(rows, path / "table.csv")
    plots = path / "plots"
    plots.mkdir(exist_ok=True)
    files = [path / "table.md", path / "table.csv"]
    files.append(plot_accuracy_vs_bits(rows, plots / "accuracy_vs_bits.png"))
    for k in sorted({r["k"] for r in rows if r.get("kind") == "regularizer"}):
        files.append(plot_training(path, rows, k, plots / f"training_k{k}.png"))
    for row in rows:
        if row.get("kind") == "regularizer":
            full = json.loads((path / "stages" / f"{row['stage']}.json").read_text())
            files.append(plot_histograms(full, plots / f"hist_{row['stage']}.png"))
    return {"table": table, "files": files}
