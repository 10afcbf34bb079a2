"""Tables and plots of a run directory written by ``train.train_and_evaluate``.

``write_report(workdir)`` writes ``table.md`` and ``table.csv`` (one row per method and
K; with several seeds mean +- std over the seeds and their number, the per-seed rows in
``table_seeds.csv``) and PNG plots under ``plots/``:

- ``accuracy_vs_bits.png``: pre- and post-tuning accuracy against index bits per weight
  (``ceil(log2 K)``), one line per method (mean and std over seeds), the full-precision
  accuracy dotted;
- ``accuracy_vs_size.png``: the same accuracies against the packed model's size in kB
  (every K, budget rows ringed: the picture for comparisons at equal bytes);
- ``training_k<K>.png``: task loss, regularizer (lambda-weighted penalty) and mean
  distance of the weights to their levels over the regularized phase, per method (QAT
  methods: task loss only; the first seed's runs);
- ``hist_<stage>.png``: per quantized layer, the weight histogram before and after
  regularized (or QAT) training with the levels before (dashed) and after (solid).

Accuracies are on the test split; with a validation split (``val_fraction > 0``) the
table adds the validation accuracies and marks every accuracy column "(test)" or "(val)".
Rows of budget stages (``Config.budget``: one K per layer, ``k`` None) show "budget" as
their K; the table then adds the budget and the packed file's real size in bytes. They
have no single bit width, so the accuracy-vs-bits plot leaves them out (and is not drawn
for a run of budget rows only; the size plot rings them); their training curves are in
``training_budget.png``.

Figures are drawn with matplotlib's object API on Agg canvases: no pyplot, no global
backend switch, safe in threads and headless machines.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
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
    ("step_rel", "step / plain step"),
    ("wall_s", "wall s"),
    ("device", "device"),
)
_TEXT = ("model", "dataset", "method", "device")
# Validation accuracies, after the test ones, when the run has a validation split.
VAL_COLUMNS = (
    ("acc_val_fp", "acc FP % (val)"),
    ("acc_val_pre", "acc pre-tuning % (val)"),
    ("acc_val_post", "acc post-tuning % (val)"),
)
# With budget rows: the budget and the packed file's size, after the packed bytes.
BUDGET_COLUMNS = (("budget_bytes", "budget B"), ("file_bytes", "file B"))
# Aggregated over seeds: means and stds of these (the text columns come from the first).
NUMERIC = tuple(key for key, _ in COLUMNS + VAL_COLUMNS if key not in _TEXT and key != "k") + (
    "original_bytes",
    "file_bytes",
    "step_s",
    "budget_bytes",
)


def _fmt(key: str, value: Any, std: Any = None) -> str:
    if value is None:
        return "budget" if key == "k" else "-"
    if key.startswith("acc"):
        return f"{100 * value:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")
    if key.endswith("bytes"):
        return f"{value:,.0f}"
    if key == "step_rel":
        return f"{value:.2f}" + ("" if std is None else f" ± {std:.2f}")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def seed_count(rows: Sequence[dict[str, Any]]) -> int:
    """The number of distinct seeds among ``rows`` (rows without one count as one seed)."""
    return len({row.get("seed") for row in rows})


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, dataset, method, K, budget), in first-seen order: the first
    row's text fields, ``n_seeds``, and ``<key>_mean`` / ``<key>_std`` (``np.std``, ddof 0;
    None when no row has the key) / ``<key>_n`` (the rows that have it) of every
    ``NUMERIC`` key. (Budget rows have K None: two budgets of one method stay two rows.)"""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["model"], row["dataset"], row["method"], row["k"], row.get("budget_bytes"))
        groups.setdefault(key, []).append(row)
    out = []
    for group in groups.values():
        first = group[0]
        agg: dict[str, Any] = {key: first.get(key) for key in (*_TEXT, "kind", "k")}
        agg["n_seeds"] = len(group)
        agg["seeds"] = " ".join(str(r.get("seed")) for r in group)
        for key in NUMERIC:
            values = [r[key] for r in group if r.get(key) is not None]
            agg[f"{key}_mean"] = float(np.mean(values)) if values else None
            agg[f"{key}_std"] = float(np.std(values)) if values else None
            agg[f"{key}_n"] = len(values)
        out.append(agg)
    return out


def _columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The table's columns: with validation accuracies, each accuracy names its split; with
    budget rows, the budget and file sizes follow the packed bytes."""
    cols = list(COLUMNS)
    if any(row.get("budget_bytes") is not None for row in rows):
        at = [k for k, _ in cols].index("packed_bytes") + 1
        cols = cols[:at] + list(BUDGET_COLUMNS) + cols[at:]
    if not any(row.get("acc_val_pre") is not None for row in rows):
        return cols
    cols = [(k, f"{t} (test)" if k.startswith("acc") else t) for k, t in cols]
    at = [k for k, _ in cols].index("acc_post") + 1
    return cols[:at] + list(VAL_COLUMNS) + cols[at:]


def _mean_cell(agg: dict[str, Any], key: str) -> str:
    """``mean ± std`` of ``key`` in an :func:`aggregate` row; a single value has no spread
    to show, and a key some seeds lack says how many have it."""
    n = agg[f"{key}_n"]
    text = _fmt(key, agg[f"{key}_mean"], agg[f"{key}_std"] if n > 1 else None)
    return text if n in (0, agg["n_seeds"]) else f"{text} (n={n})"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table (accuracies in percent): one line per result row, or with rows of
    several seeds one line per method and K with mean ± std over the seeds."""
    cols = _columns(rows)
    several = seed_count(rows) > 1
    if several:
        at = [k for k, _ in cols].index("k") + 1
        cols = cols[:at] + [("n_seeds", "seeds")] + cols[at:]
    head = "| " + " | ".join(title for _, title in cols) + " |"
    rule = "|" + "|".join("---" if key in _TEXT else "---:" for key, _ in cols) + "|"
    if not several:
        body = [
            "| " + " | ".join(_fmt(key, row.get(key)) for key, _ in cols) + " |" for row in rows
        ]
        return "\n".join([head, rule, *body])
    body, aggs = [], aggregate(rows)
    for agg in aggs:
        cells = [_mean_cell(agg, key) if f"{key}_mean" in agg else _fmt(key, agg.get(key))
                 for key, _ in cols]  # fmt: skip
        body.append("| " + " | ".join(cells) + " |")
    note = f"Mean ± std (numpy, ddof 0) over {seed_count(rows)} seeds."
    if {agg["n_seeds"] for agg in aggs} != {seed_count(rows)}:
        note = (
            "Mean ± std (numpy, ddof 0) over each row's seeds (the seeds column); a row "
            "of one seed shows its value."
        )
    if any(0 < agg[f"{key}_n"] < agg["n_seeds"] for agg in aggs for key in NUMERIC):
        note += " A cell marked (n=…) holds the value of only that many of its row's seeds."
    return "\n".join([head, rule, *body, "", note])


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
    return stage_rows(path), {}


def stage_rows(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of the stages a run has finished, from their records (``stages/**.json``,
    the pretraining's left out): current even where a stage was trained again after the
    run's ``results.json`` was written."""
    rows = []
    for file in sorted((pathlib.Path(workdir) / "stages").rglob("*.json")):
        if file.stem != "pretrain":
            row = json.loads(file.read_text())
            row.pop("histograms", None)
            rows.append(row)
    return rows


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


# Distinct (colour, marker) pairs: matplotlib's default cycle repeats its colours after 10
# lines, so methods beyond the 10th would be indistinguishable.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def method_styles(methods: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """``{method: (colour, marker)}``, all pairs distinct: tab10 up to 10 methods, tab20
    beyond, markers cycling independently of the colours."""
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: (cmap(i % cmap.N), _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}


_LINE_STYLES = {"baseline": "--", "qat": "-."}  # other kinds: solid
_LEGEND_INSIDE = 6  # most methods whose legend fits inside the post-tuning panel


def _accuracy_figure(
    aggs: list[dict[str, Any]],
    x: Callable[[dict[str, Any]], float],
    xlabel: str,
    mark: Callable[..., None] | None = None,
) -> Figure:
    """Pre- and post-tuning panels of aggregated rows: per method a line of accuracy (%,
    mean and std over seeds) against ``x(agg)``, the full-precision accuracy dotted;
    ``mark(ax, mine, key, color)`` adds to each method's line (``mine``: its rows in x
    order, ``key``: "acc_pre" or "acc_post")."""
    methods = list(dict.fromkeys(agg["method"] for agg in aggs))
    # Beyond a few methods a legend inside the panel hides points: it goes beside them.
    outside = len(methods) > _LEGEND_INSIDE
    fig = Figure(figsize=(13.5 if outside else 11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    look = method_styles(methods)
    for ax, key, title in zip(
        axes, ("acc_pre", "acc_post"), ("pre-tuning", "post-tuning"), strict=True
    ):
        for method in methods:
            mine = sorted(
                (a for a in aggs if a["method"] == method), key=lambda a: (x(a), a["k"] or 0)
            )
            mean = [100 * a[f"{key}_mean"] for a in mine]
            std = [100 * a[f"{key}_std"] for a in mine] if mine[0]["n_seeds"] > 1 else None
            style = _LINE_STYLES.get(mine[0].get("kind"), "-")
            color, marker = look[method]
            ax.errorbar(
                [x(a) for a in mine], mean, std, fmt=style, color=color, marker=marker,
                capsize=3, label=method,
            )  # fmt: skip
            if mark:
                mark(ax, mine, key, color)
        if aggs:
            fp = 100 * aggs[0]["acc_fp_mean"]
            ax.axhline(fp, color="k", ls=":", lw=1, label="full precision")
        ax.set_title(f"{title} accuracy")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    if outside:
        fig.legend(*axes[1].get_legend_handles_labels(), fontsize=7, loc="outside right center")
    else:
        axes[1].legend(fontsize=7, loc="lower right")
    return fig


def _bits(agg: dict[str, Any]) -> int:
    return math.ceil(math.log2(agg["k"]))


def accuracy_vs_bits_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """The figure of :func:`plot_accuracy_vs_bits` (x ticks: the integer bit widths run)."""
    aggs = [a for a in aggregate(rows) if a["k"] is not None]  # budget rows: no single K
    fig = _accuracy_figure(aggs, _bits, "bits per weight index (ceil log2 K)")
    # Bit widths are integers; with one K matplotlib's default ticks would be fractions.
    for ax in fig.axes:
        ax.set_xticks(sorted({_bits(a) for a in aggs}))
    if rows:
        fig.suptitle(f"{rows[0]['model']} on {rows[0]['dataset']}")
    return fig


def plot_accuracy_vs_bits(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Pre- and post-tuning accuracy (%) vs ``ceil(log2 K)`` bits, one line per method."""
    return _save(accuracy_vs_bits_figure(rows), path)


def _size_kb(agg: dict[str, Any]) -> float | None:
    """An aggregated row's packed size in kB: the real file when measured, else the
    packed bytes of the size report."""
    size = agg.get("file_bytes_mean") or agg.get("packed_bytes_mean")
    return None if size is None else size / 1000


# "nearest + prune 75%", "prune 75% then kmeans": the pipeline's names of pruned methods.
_SPARSITY = re.compile(r"prune (\d+%)")


def _series(method: str) -> str:
    """The line a method is drawn on: methods that differ only in sparsity share one."""
    return _SPARSITY.sub("prune", method)


def _mark_sparsity_and_budget(ax: Any, mine: list[dict[str, Any]], key: str, color: Any) -> None:
    """Label each pruned point with its sparsity; ring budget rows (K per layer)."""
    for a in mine:
        if a["sparsity"]:
            xy = (_size_kb(a), 100 * a[f"{key}_mean"])
            ax.annotate(a["sparsity"][1], xy, xytext=(4, 4), textcoords="offset points")
    budget = [a for a in mine if a["k"] is None]
    ax.scatter(
        [_size_kb(a) for a in budget],
        [100 * a[f"{key}_mean"] for a in budget],
        s=90,
        facecolors="none",
        edgecolors=[color],
    )


def accuracy_vs_size_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """The figure of :func:`plot_accuracy_vs_size`."""
    aggs = [
        {**a, "method": _series(a["method"]), "sparsity": _SPARSITY.search(a["method"])}
        for a in aggregate(rows)
        if _size_kb(a) is not None
    ]
    xlabel = "packed model (kB; codebooks and unquantized leaves counted)"
    fig = _accuracy_figure(aggs, _size_kb, xlabel, _mark_sparsity_and_budget)
    if rows:
        fig.suptitle(f"{rows[0]['model']} on {rows[0]['dataset']}: accuracy vs size")
    return fig


def plot_accuracy_vs_size(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Pre- and post-tuning accuracy (%, mean and std over seeds) against the packed
    model's size in kB (the real file when the run measured it), one line per method
    through its K values (pruned methods: through their sparsities, each point labelled);
    budget rows (one K per layer) ringed."""
    return _save(accuracy_vs_size_figure(rows), path)


def _read_metrics(path: pathlib.Path, phase: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in records if r["phase"] == phase]


def plot_training(
    workdir: pathlib.Path, rows: Sequence[dict[str, Any]], k: int | None, path: pathlib.Path
) -> pathlib.Path | None:
    """Regularized phase at ``k`` (None: the budget stages): task loss, regularizer and mean
    distance to the levels (QAT phases: their task loss), the first seed's runs. None, and
    no file, when no such stage has its metrics in ``workdir`` (e.g. stage records copied
    without them)."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    first_seed = rows[0].get("seed") if rows else None
    plotted = False
    for row in rows:
        if row.get("kind") not in ("regularizer", "qat") or row["k"] != k:
            continue
        if row.get("seed") != first_seed:
            continue
        phase = "reg" if row["kind"] == "regularizer" else row["method"]
        records = _read_metrics(workdir / "metrics" / f"{row['stage']}.jsonl", phase)
        if not records:
            continue
        plotted = True
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["task_loss"] for r in records], label=row["method"])
        if "layers" not in records[0]:  # QAT: no penalty
            continue
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
    if not plotted:
        return None
    axes[0].legend(fontsize=7)
    fig.suptitle(f"regularized training, {'budget (K per layer)' if k is None else f'K={k}'}")
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
        before, after = np.asarray(h["levels_before"]), np.asarray(h["levels_after"])
        title = layer
        if after.ndim > 1:  # one codebook per group (G, K): draw the first group's levels
            title = f"{layer} (levels of group 0 of {after.shape[0]})"
            before, after = before.reshape(-1, after.shape[-1])[:1], after[:1]
        for c in before.ravel():
            ax.axvline(c, color="0.3", ls="--", lw=0.8)
        for c in after.ravel():
            ax.axvline(c, color="C3", lw=1.0)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{stage_row['method']}, K={_fmt('k', stage_row['k'])}: weights before/after regularizing; "
        "levels before (dashed) and after (red)",
        fontsize=9,
    )
    return _save(fig, path)


def write_report(
    workdir: str | os.PathLike, rows: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Write ``table.md``, ``table.csv`` and ``plots/*.png`` for the run in ``workdir``:
    of ``rows`` (default: the run's, :func:`load_rows`).

    Returns ``{"table": markdown text, "files": [paths written]}``.

    Raises:
      FileNotFoundError: ``workdir`` holds no run. ValueError: it has no finished stage.
    """
    path = pathlib.Path(workdir)
    if rows is None:
        rows, _ = load_rows(path)
    if not rows:
        raise ValueError(f"{str(path)!r} has no finished stage yet; nothing to report")
    table = markdown_table(rows)
    (path / "table.md").write_text(table + "\n")
    files = [path / "table.md", path / "table.csv"]
    if seed_count(rows) > 1:
        write_csv(aggregate(rows), path / "table.csv")
        write_csv(rows, path / "table_seeds.csv")
        files.append(path / "table_seeds.csv")
    else:
        write_csv(rows, path / "table.csv")
    plots = path / "plots"
    plots.mkdir(exist_ok=True)
    if any(r["k"] is not None for r in rows):  # budget rows alone have no bit widths
        files.append(plot_accuracy_vs_bits(rows, plots / "accuracy_vs_bits.png"))
    files.append(plot_accuracy_vs_size(rows, plots / "accuracy_vs_size.png"))
    trained = [r for r in rows if r.get("kind") in ("regularizer", "qat")]
    ks = {r["k"] for r in trained}
    for k in sorted(ks - {None}) + ([None] if None in ks else []):
        name = "training_budget.png" if k is None else f"training_k{k}.png"
        if (png := plot_training(path, rows, k, plots / name)) is not None:
            files.append(png)
    for row in trained:
        full = json.loads((path / "stages" / f"{row['stage']}.json").read_text())
        if full.get("histograms"):
            name = row["stage"].replace("/", "_")
            files.append(plot_histograms(full, plots / f"hist_{name}.png"))
    return {"table": table, "files": files}
