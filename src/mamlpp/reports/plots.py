"""mamlpp-report's plots: validation curves per run and test accuracy per row (matplotlib is the
optional extra 'report'; without it the tables are still written)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from mamlpp.layout import RunLayout
from mamlpp.reports.grouping import Group


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only backend, or None (said once on stderr)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "mamlpp-report: matplotlib missing (pip install mamlpp[report]); no plots",
            file=sys.stderr,
        )
        return None
    return plt


def row_label(row: dict[str, Any], keys: list[str], sep: str = " ") -> str:
    """What tells a row apart: setting, variant and its values of the differing `keys`."""
    extra = [f"{k}={row[k]}" for k in keys if row.get(k, "") != ""]
    base = f"{row['experiment']}{sep}{row['ways']}w{row['shots']}s {row['algorithm']}"
    return " ".join([base, *extra])


def _val_curve(run_dir: Path, percent: bool) -> tuple[list[int], list[float]] | None:
    """The run's validation score per epoch: accuracy in %, or a regression run's MSE as is
    (metrics.csv keeps the column name val_acc for both)."""
    metrics = RunLayout(run_dir).metrics
    if not metrics.exists():
        return None
    with open(metrics) as f:
        hist = list(csv.DictReader(f))
    scale = 100.0 if percent else 1.0
    return [int(h["iteration"]) for h in hist], [scale * float(h["val_acc"]) for h in hist]


def write_plots(
    groups: list[Group], rows: list[dict[str, Any]], keys: list[str], out: Path
) -> list[Path]:
    """val_accuracy.png (each run's validation curve, a colour per row) and test_accuracy.png."""
    plt = pyplot()
    if plt is None:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (g, row) in enumerate(zip(groups, rows)):
        percent = "metric" not in row  # rows of regression runs name their metric (MSE)
        curves = [c for c in (_val_curve(d, percent) for d, _ in g.runs) if c is not None]
        for j, (xs, ys) in enumerate(curves):
            label = row_label(row, keys) if j == 0 else None
            ax.plot(xs, ys, label=label, color=f"C{i % 10}", alpha=0.8)
    ax.set(
        xlabel="iteration",
        ylabel="validation accuracy (%)"
        if all("metric" not in r for r in rows)
        else ("validation accuracy (%) or MSE"),
        title="Validation accuracy (seeds overlaid)",
    )
    if ax.get_legend_handles_labels()[1]:  # no metrics.csv anywhere: an empty plot, no legend
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(out / "val_accuracy.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.errorbar(
        range(len(rows)),
        [r["test_acc_mean"] for r in rows],
        yerr=[r["test_acc_std"] for r in rows],
        fmt="o",
        capsize=4,
    )
    ax.set_xticks(range(len(rows)), [row_label(r, keys, "\n") for r in rows], fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy per setting (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    paths.append(out / "test_accuracy.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths
