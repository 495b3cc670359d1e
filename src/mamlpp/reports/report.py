"""`mamlpp-report DIR... [--out DIR]`: one table and a few plots from every run under DIR.

Rows are (experiment, dataset, ways, shots, algorithm variant); over the seeds of a row the
table gives the mean
test accuracy +- std, the mean 95% CI over tasks, the number of seeds, the best validation
accuracy and training hours, with the published number beside ours where one exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

# Published test accuracies (%) from reference.md: (dataset, ways, shots, algorithm) -> number.
PAPER = {
    ("omniglot", 5, 1, "maml"): "98.7 +- 0.4",
    ("omniglot", 5, 5, "maml"): "99.9 +- 0.1",
    ("omniglot", 20, 1, "maml"): "95.8 +- 0.3",
    ("omniglot", 20, 5, "maml"): "98.9 +- 0.2",
    ("omniglot", 5, 1, "mamlpp"): "99.47",
    ("omniglot", 5, 5, "mamlpp"): "99.93",
    ("omniglot", 20, 1, "mamlpp"): "97.65",
    ("omniglot", 20, 5, "mamlpp"): "99.33",
    ("miniimagenet", 5, 1, "maml"): "48.70 +- 1.84",
    ("miniimagenet", 5, 5, "maml"): "63.11 +- 0.92",
    ("miniimagenet", 5, 1, "mamlpp"): "52.15 +- 0.26",
    ("miniimagenet", 5, 5, "mamlpp"): "68.32 +- 0.44",
}
COLUMNS = (
    "experiment",
    "dataset",
    "ways",
    "shots",
    "algorithm",
    "seeds",
    "test_acc_mean",
    "test_acc_std",
    "ci95_mean",
    "best_val_acc",
    "train_hours",
    "paper",
)


def find_runs(dirs: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for d in dirs:
        for path in sorted(d.rglob("results.json")):
            if path.parent.parent.name == "eval":
                continue  # mamlpp-eval's re-evaluations (<run>/eval/<name>/) are not runs
            try:
                runs.append((path.parent, json.loads(path.read_text())))
            except (OSError, json.JSONDecodeError) as exc:
                print(f"mamlpp-report: skipping unreadable {path}: {exc}", file=sys.stderr)
    return runs


def summarize(runs: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for _, r in runs:
        c = r["config"]
        # The variant (e.g. maml+DA) says what ran; results without it name only the group.
        algorithm = c.get("algorithm_variant", c["algorithm"])
        experiment = c.get("experiment", "?")
        groups[(experiment, c["dataset"], c["ways"], c["shots"], algorithm)].append(r)
    rows = []
    for key in sorted(groups):
        rs = groups[key]
        accs = [100 * r["test_accuracy_mean"] for r in rs]
        rows.append(
            dict(
                zip(COLUMNS[:5], key),
                seeds=len(rs),
                test_acc_mean=statistics.fmean(accs),
                test_acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                ci95_mean=statistics.fmean(100 * r["test_accuracy_ci95"] for r in rs),
                best_val_acc=statistics.fmean(100 * r["best_val_accuracy"] for r in rs),
                train_hours=statistics.fmean(r.get("train_seconds", 0.0) for r in rs) / 3600,
                paper=PAPER.get(key[1:], ""),
            )
        )
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    lines = [
        "| experiment | dataset | way | shot | algorithm | test acc % (mean +- std over seeds) "
        "| 95% CI (mean) | seeds | best val % | train h | paper % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        # One seed has no spread across seeds: say so instead of printing +- 0.00.
        spread = f"+- {r['test_acc_std']:.2f}" if r["seeds"] > 1 else "(1 seed)"
        lines.append(
            f"| {r['experiment']} | {r['dataset']} | {r['ways']} | {r['shots']} "
            f"| {r['algorithm']} | "
            f"{r['test_acc_mean']:.2f} {spread} | {r['ci95_mean']:.2f} | "
            f"{r['seeds']} | {r['best_val_acc']:.2f} | {r['train_hours']:.2f} | {r['paper']} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_plots(runs: list[tuple[Path, dict[str, Any]]], rows: list[dict], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "mamlpp-report: matplotlib missing (pip install mamlpp[report]); no plots",
            file=sys.stderr,
        )
        return []
    curves: dict[str, list[tuple[str, list[int], list[float]]]] = defaultdict(list)
    for run_dir, r in runs:
        metrics = run_dir / "metrics.csv"
        if not metrics.exists():
            continue
        with open(metrics) as f:
            hist = list(csv.DictReader(f))
        c = r["config"]
        label = f"{c['dataset']} {c['ways']}w{c['shots']}s {c['algorithm']}"
        curves[label].append(
            (
                f"seed {c['seed']}",
                [int(h["iteration"]) for h in hist],
                [100 * float(h["val_acc"]) for h in hist],
            )
        )
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, seeds in sorted(curves.items()):
        for i, (_seed, xs, ys) in enumerate(seeds):
            ax.plot(
                xs,
                ys,
                label=label if i == 0 else None,
                color=f"C{sorted(curves).index(label) % 10}",
                alpha=0.8,
            )
    ax.set(
        xlabel="iteration",
        ylabel="validation accuracy (%)",
        title="Validation accuracy (seeds overlaid)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(out / "val_accuracy.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = [f"{r['dataset']}\n{r['ways']}w{r['shots']}s {r['algorithm']}" for r in rows]
    ax.errorbar(
        range(len(rows)),
        [r["test_acc_mean"] for r in rows],
        yerr=[r["test_acc_std"] for r in rows],
        fmt="o",
        capsize=4,
    )
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy per setting (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    paths.append(out / "test_accuracy.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mamlpp-report", description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="directories searched for results.json")
    p.add_argument("--out", type=Path, default=Path("."), help="where tables and plots go")
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        p.exit(2, f"mamlpp-report: error: not a directory: {', '.join(missing)}\n")
    runs = find_runs(args.dirs)
    if not runs:
        p.exit(2, f"mamlpp-report: error: no results.json under {', '.join(map(str, args.dirs))}\n")
    rows = summarize(runs)
    outputs = [*write_tables(rows, args.out), *write_plots(runs, rows, args.out)]
    print((args.out / "results.md").read_text())
    print("wrote " + ", ".join(str(o) for o in outputs))


if __name__ == "__main__":
    main()
