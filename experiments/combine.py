"""One table from several finished ``run_table`` results (e.g. a comparison whose rows ran
as separate configs from the same full-precision models), with the provenance of each
source, an accuracy-vs-bits plot, and the per-step costs of one benchmark run:

    python -m experiments.combine cifar10_jpeg_vgg_qat_all \\
        experiments/results/cifar10_jpeg_vgg_qat experiments/results/cifar10_jpeg_vgg_qat_damp \\
        --method-cost benchmarks/results/method_cost_cifar_vgg.json

Writes ``experiments/results/<name>/table.md``, ``rows.json``, ``accuracy_vs_bits.png``
(rows with one K) and ``accuracy_vs_size.png`` (every row, against the packed size); with
``--claim MODEL`` also ``claim.md``, the paper's ratio claim tested on the combined rows.
Rows are taken as they are (per seed); a method and K (and budget) present in several
sources are aggregated together (combine only runs of the same setting), and the same
seed of a method and K in two sources is refused: ``--label SOURCE TEXT`` names one
source's rows apart (its methods become ``method [TEXT]``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
from typing import Any

from experiments import paper_table
from qareg_jax import provenance, report

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_KEYS = ("command", "git_commit", "date", "machine")


def load_sources(
    dirs: list[str], labels: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(rows, sources)`` of ``results.json`` files in ``dirs`` (each row tagged with its
    source directory; the methods of a source in ``labels`` get its label appended)."""
    labels = labels or {}
    unknown = sorted(set(labels) - set(dirs))
    if unknown:
        raise ValueError(f"--label names {unknown}, which are not among the sources {dirs}")
    rows, sources = [], []
    for d in dirs:
        file = pathlib.Path(d) / "results.json"
        if not file.exists():
            raise FileNotFoundError(f"{d!r} has no results.json (a finished run_table result)")
        results = json.loads(file.read_text())
        sources.append({"dir": d, **{k: results.get(k) for k in SOURCE_KEYS}})
        for row in results["rows"]:
            method = f"{row['method']} [{labels[d]}]" if d in labels else row["method"]
            rows.append({**row, "method": method, "source": d})
    models = {(r["model"], r["dataset"]) for r in rows}
    if len(models) > 1:
        raise ValueError(f"the sources hold different settings {sorted(models)}: combine one")
    seen: dict[tuple, str] = {}
    for row in rows:
        key = (row["method"], row.get("k"), row.get("seed"), row.get("budget_bytes"))
        if key in seen:
            raise ValueError(
                f"method {key[0]!r} at K = {key[1]}, seed {key[2]} is in both {seen[key]!r} "
                f"and {row['source']!r}: give one of them a --label"
            )
        seen[key] = row["source"]
    return rows, sources


def cost_table(path: str) -> str:
    """The method_cost benchmark's time and memory ratios (one run) as markdown."""
    bench = json.loads(pathlib.Path(path).read_text())
    lines = [
        f"Time per step relative to the plain step, all measured in one run "
        f"(`{path}`, {bench['machine']['date']}, {bench['machine']['machine']}, "
        f"commit `{bench['machine']['git_commit']}`):",
        "",
        "| method | K | time / plain | memory / plain |",
        "|---|---:|---:|---:|",
    ]
    for r in bench["rows"]:
        k, mem = r.get("k", "-"), r.get("memory_ratio")  # None where XLA gives no analysis
        mem = "-" if mem is None else f"{mem:.2f}"
        lines.append(f"| {r['method']} | {k} | {r['time_ratio']:.2f} | {mem} |")
    return "\n".join(lines)


def write_claim(
    rows: list[dict[str, Any]], model: str, provenance_lines: list[str], dest: pathlib.Path
) -> pathlib.Path:
    """``dest/claim.md``: the paper's statement (labelled as the paper's) and, per K, the
    ratios of the regularizers' pre-tuning accuracies to the baselines' over the combined
    rows (``paper_table.claim_lines``)."""
    head = paper_table.claim_head(
        f"{rows[0]['model']} on {rows[0]['dataset']} (combined)",
        provenance_lines,
        "the seeds each row ran",
        "the same full-precision model per seed",
    )
    path = dest / "claim.md"
    path.write_text("\n".join(head + paper_table.claim_lines(rows, model)).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="results name: experiments/results/<name>/")
    parser.add_argument("sources", nargs="+", help="experiments/results/<run> directories")
    parser.add_argument("--method-cost", help="a benchmarks/results/method_cost_*.json")
    parser.add_argument("--note", action="append", default=[], help="a line under the sources")
    parser.add_argument(
        "--label",
        nargs=2,
        action="append",
        default=[],
        metavar=("SOURCE", "TEXT"),
        help="append ' [TEXT]' to the methods of SOURCE (to tell two runs of a method apart)",
    )
    parser.add_argument(
        "--claim",
        choices=paper_table.MODELS,
        help="also write claim.md: the paper's ratio claim for this model, tested on the rows",
    )
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    rows, sources = load_sources(args.sources, dict(args.label))
    dest = pathlib.Path(args.results) / args.name
    dest.mkdir(parents=True, exist_ok=True)
    where = [
        f"- written: `{provenance.utc_now()}` by `python -m experiments.combine "
        f"{shlex.join(argv if argv is not None else sys.argv[1:])}`",
        "- sources (each row's numbers come from its source's run):",
        *(
            f"  - `{s['dir']}`: `{s['command']}` (commit `{s['git_commit']}`, "
            f"{s['date']}, {s['machine']})"
            for s in sources
        ),
        *(f"- note: {note}" for note in args.note),
    ]
    parts = [f"# {rows[0]['model']} on {rows[0]['dataset']}: combined table", "", *where, ""]
    parts.append(report.markdown_table(rows))
    if args.method_cost:
        parts += ["", cost_table(args.method_cost)]
    (dest / "table.md").write_text("\n".join(parts) + "\n")
    if args.claim:
        write_claim(rows, args.claim, where, dest)
    (dest / "rows.json").write_text(json.dumps({"sources": sources, "rows": rows}, indent=1))
    if any(r["k"] is not None for r in rows):
        report.plot_accuracy_vs_bits(rows, dest / "accuracy_vs_bits.png")
    report.plot_accuracy_vs_size(rows, dest / "accuracy_vs_size.png")
    print((dest / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
