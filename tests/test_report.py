"""qareg_jax.report: the accuracy-vs-bits plot's ticks and method styles."""

from __future__ import annotations

import json
from unittest import mock

from qareg_jax import report


def _row(method: str, k: int) -> dict:
    return {
        "model": "small", "dataset": "digits", "method": method, "k": k, "kind": "regularized",
        "acc_fp": 0.9, "acc_pre": 0.5, "acc_post": 0.8, "device": "cpu",
    }  # fmt: skip


def test_one_k_gives_integer_bit_ticks():
    fig = report.accuracy_vs_bits_figure([_row("nearest", 4), _row("sine", 4)])
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [2]


def test_many_methods_get_distinct_colours_and_markers():
    methods = [f"m{i}" for i in range(13)]
    fig = report.accuracy_vs_bits_figure([_row(m, k) for m in methods for k in (2, 4)])
    # errorbar: the container carries the label, its first line the data line.
    lines = [c.lines[0] for c in fig.axes[0].containers if c.get_label() in methods]
    looks = {(tuple(line.get_color()), line.get_marker()) for line in lines}
    colours = {tuple(line.get_color()) for line in lines}
    assert len(lines) == 13 and len(looks) == 13 and len(colours) == 13
    assert list(fig.axes[0].get_xticks()) == [1, 2]


def test_a_long_legend_goes_beside_the_panels_a_short_one_inside():
    many = report.accuracy_vs_bits_figure([_row(f"m{i}", 2) for i in range(13)])
    (legend,) = many.legends  # a figure legend, none inside the axes
    assert all(ax.get_legend() is None for ax in many.axes)
    assert len(legend.get_texts()) == 14  # the methods and full precision
    many.canvas.draw()
    box = legend.get_window_extent()
    assert all(box.x0 >= ax.get_window_extent().x1 for ax in many.axes)
    few = report.accuracy_vs_bits_figure([_row("ste", 2), _row("kmeans", 2)])
    assert not few.legends and few.axes[1].get_legend() is not None


def test_size_plot_puts_each_method_at_its_file_sizes_and_rings_budget_rows():
    rows = [
        {**_row("ste", 2), "file_bytes": 48_000},
        {**_row("ste", 4), "file_bytes": 85_000, "acc_pre": 0.7},
        {**_row("ste", None), "file_bytes": 66_000, "budget_bytes": 66_500},
        {**_row("kmeans", 2), "packed_bytes": 44_000, "kind": "baseline"},  # no file size
    ]
    fig = report.accuracy_vs_size_figure(rows)
    ax = fig.axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert list(lines["ste"].get_xdata()) == [48.0, 66.0, 85.0]  # kB, in size order
    assert list(lines["ste"].get_ydata()) == [50.0, 50.0, 70.0]
    assert list(lines["kmeans"].get_xdata()) == [44.0]
    rings = [c for c in ax.collections if len(c.get_offsets())]
    assert [list(map(tuple, c.get_offsets())) for c in rings] == [[(66.0, 50.0)]]


def test_size_plot_joins_the_sparsities_of_a_pruned_method_on_one_labelled_line():
    rows = [
        {**_row("nearest + prune 50%", 4), "file_bytes": 80_000},
        {**_row("nearest + prune 90%", 4), "file_bytes": 40_000},
        {**_row("prune 50% then kmeans", 4), "file_bytes": 80_000, "kind": "baseline"},
    ]
    ax = report.accuracy_vs_size_figure(rows).axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert set(lines) == {"nearest + prune", "prune then kmeans"}
    assert list(lines["nearest + prune"].get_xdata()) == [40.0, 80.0]
    assert sorted(t.get_text() for t in ax.texts) == ["50%", "50%", "90%"]


def test_histograms_of_grouped_codebooks_draw_one_group(tmp_path):
    # Levels of shape (G, K): a grouped spec; the plot draws group 0's and says so.
    h = {"edges": [-1.0, 0.0, 1.0], "before": [3, 4], "after": [1, 6],
         "levels_before": [[-0.5, 0.5], [-0.4, 0.4]],
         "levels_after": [[-0.6, 0.6], [-0.3, 0.3]]}  # fmt: skip
    row = {"histograms": {"fc1": h}, "method": "nearest", "k": 2}
    figures = []
    with mock.patch.object(report, "_save", side_effect=lambda fig, path: figures.append(fig)):
        report.plot_histograms(row, tmp_path / "h.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "fc1 (levels of group 0 of 2)"
    # Group 0's levels only: dashed before, solid after.
    drawn = sorted((line.get_linestyle(), line.get_xdata()[0]) for line in ax.lines)
    assert drawn == [("-", -0.6), ("-", 0.6), ("--", -0.5), ("--", 0.5)]
    out = report.plot_histograms(row, tmp_path / "h.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_plot_is_left_out_when_no_stage_has_its_metrics(tmp_path):
    rows = [{**_row("ste", 2), "kind": "qat", "stage": "qat-ste-k2", "seed": 0}]
    out = tmp_path / "training_k2.png"
    assert report.plot_training(tmp_path, rows, 2, out) is None and not out.exists()
    (tmp_path / "metrics").mkdir()
    lines = [{"phase": "ste", "step": s, "task_loss": 2.0 - s / 10} for s in (1, 2, 3)]
    (tmp_path / "metrics/qat-ste-k2.jsonl").write_text("\n".join(map(json.dumps, lines)))
    assert report.plot_training(tmp_path, rows, 2, out) == out and out.stat().st_size > 0
