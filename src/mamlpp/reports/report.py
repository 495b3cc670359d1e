"""`mamlpp-report DIR... [--out DIR]`: one table and a few plots from every run under DIR.

A row is one experiment: the runs whose identity (every experiment key) is equal except `seed`
(mamlpp.reports.grouping). Over its seeds the table gives the mean test accuracy +- std, the mean
95% CI over tasks, the number of seeds, the best validation accuracy and training hours, with the
published number beside ours where the run is on the paper's protocol. Keys whose values differ
between rows of one experiment get a column each (results.csv has every key that differs).
Experiments that differ only in MAML++ switches also get an ablation table. Everything goes to
--out (./report by default), where no file that mamlpp-report did not write is replaced.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path
from typing import Any

from mamlpp.experiment.results import Results, shown
from mamlpp.reports.ablation import write_ablation
from mamlpp.reports.grouping import Group, differing_keys, format_value, group_runs, shown_keys
from mamlpp.reports.output import ReportError, write_report
from mamlpp.reports.paper import paper_number_of
from mamlpp.reports.plots import write_plots
from mamlpp.reports.runs import scan_runs

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


def find_runs(dirs: list[Path]) -> list[tuple[Path, Results]]:
    """Every run under `dirs`, each once (mamlpp.reports.runs); what was left out is said on
    stderr, one line each."""
    found = scan_runs(dirs)
    for note in found.notes:
        print(note, file=sys.stderr)
    return found.runs


def group_row(g: Group, extra: list[str]) -> dict[str, Any]:
    """A group's table row: its statistics over seeds, then its values of the `extra` keys."""
    c, rs = g.summary, g.results
    accs = g.test_accuracies()
    row = {
        "experiment": g.experiment,
        "dataset": c["dataset"],
        "ways": c["ways"],
        "shots": c["shots"],
        "algorithm": g.variant,
        "seeds": len(rs),
        "test_acc_mean": statistics.fmean(accs),
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "ci95_mean": statistics.fmean(shown(r, r.test_accuracy_ci95) for r in rs),
        "best_val_acc": statistics.fmean(shown(r, r.best_val_accuracy or 0.0) for r in rs),
        "train_hours": statistics.fmean(r.train_seconds or 0.0 for r in rs) / 3600,
        "paper": paper_number_of(rs[0], g.variant),
    }
    row.update({k: format_value(g.identity[k]) if k in g.identity else "" for k in extra})
    if g.metric != "accuracy":  # a regression run's scores are MSE (a key only its rows have)
        row["metric"] = g.metric
    return row


def summarize(runs: list[tuple[Path, Results]]) -> list[dict[str, Any]]:
    """One row per experiment (identity without seed), the keys that tell rows apart appended."""
    return rows_of(group_runs(runs))


def rows_of(groups: list[Group]) -> list[dict[str, Any]]:
    extra = differing_keys(groups)
    return [group_row(g, extra) for g in groups]


def old_format_note(runs: list[tuple[Path, Results]]) -> str | None:
    """A note when some results.json predate the identity: their rows rest on a summary."""
    old = sum(r.identity is None for _, r in runs)
    if not old:
        return None
    return (
        f"mamlpp-report: note: {old} results.json without an identity (written by an older "
        "mamlpp) are grouped by their config summary only; runs of theirs that differ in other "
        "keys (e.g. algorithm.inner_lr) share a row"
    )


def markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The printed table: the setting, the `keys` that tell rows apart, the results, and the
    paper's number only where a row is on the paper's protocol."""
    paper = any(r["paper"] for r in rows)
    head = ["experiment", "dataset", "way", "shot", "algorithm", *keys]
    regression = any("metric" in r for r in rows)
    score = "test acc % or MSE" if regression else "test acc %"
    head += [f"{score} (mean +- std over seeds)", "95% CI (mean)", "seeds", "best val"]
    head[-1] += " (% or MSE)" if regression else " %"
    head += ["train h"] + (["paper %"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        # One seed has no spread across seeds: say so instead of printing +- 0.00.
        f = "{:.4g}" if "metric" in r else "{:.2f}"
        spread = f"+- {f.format(r['test_acc_std'])}" if r["seeds"] > 1 else "(1 seed)"
        mse = " MSE" if "metric" in r else ""
        cells = [r["experiment"], r["dataset"], r["ways"], r["shots"], r["algorithm"]]
        cells += [r[k] for k in keys]
        cells += [f"{f.format(r['test_acc_mean'])}{mse} {spread}", f.format(r["ci95_mean"])]
        cells += [r["seeds"], f.format(r["best_val_acc"]), f"{r['train_hours']:.2f}"]
        cells += [r["paper"]] if paper else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    hidden = [k for k in rows[0] if k not in (*COLUMNS, "metric") and k not in keys]
    if hidden:
        lines += ["", f"{len(hidden)} more keys differ between experiments: see results.csv."]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], keys: list[str], out: Path) -> tuple[Path, Path]:
    """results.csv (every key that differs between rows) and results.md (`keys` only)."""
    extra = [k for k in rows[0] if k not in COLUMNS]
    extra += ["metric"] if any("metric" in r for r in rows) and "metric" not in extra else []
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, *extra], restval="")
        w.writeheader()
        w.writerows(rows)
    md_path.write_text(markdown(rows, keys))
    return csv_path, md_path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mamlpp-report", description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="directories searched for results.json")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("report"),
        help="where tables and plots go (default: ./report); files there that mamlpp-report "
        "did not write are never replaced",
    )
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        p.exit(2, f"mamlpp-report: error: not a directory: {', '.join(missing)}\n")
    runs = find_runs(args.dirs)
    if not runs:
        where = ", ".join(map(str, args.dirs))
        p.exit(2, f"mamlpp-report: error: no results.json of a mamlpp run under {where}\n")
    note = old_format_note(runs)
    if note:
        print(note, file=sys.stderr)
    groups = group_runs(runs)
    rows = rows_of(groups)
    keys = shown_keys(groups)

    def write(folder: Path) -> list[Path]:
        paths = [*write_tables(rows, keys, folder), *write_plots(groups, rows, keys, folder)]
        return paths + write_ablation(groups, folder)

    try:
        outputs = write_report(args.out, write)
    except ReportError as err:
        p.exit(2, f"mamlpp-report: error: {err}\n")
    print((args.out / "results.md").read_text())
    if any(o.name == "ablation.md" for o in outputs):
        print((args.out / "ablation.md").read_text())
    print("wrote " + ", ".join(str(o) for o in outputs))


if __name__ == "__main__":
    main()
