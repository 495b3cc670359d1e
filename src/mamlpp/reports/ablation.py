"""The MAML++ ablation table: MAML, each MAML++ feature added to it alone, and all of them.

An ablation is found, not declared: the rows of one experiment that differ only in the MAML++
switches (FEATURE_KEYS), e.g. the `omniglot_5w1s_ablation` sweep. Each variant gets mean +- std
over its seeds and, where ../shared/docs/reference.md has one and the runs follow the paper's
protocol (mamlpp.reports.paper), the paper's number. reference.md gives MAML's and MAML++'s
numbers only, so the single-feature rows have no paper column value.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from mamlpp.reports.grouping import Group
from mamlpp.reports.output import safe_name
from mamlpp.reports.paper import paper_number_of
from mamlpp.reports.plots import pyplot

# The experiment keys an ablation varies (algorithm.name: MAML++ with all of them is 'mamlpp').
FEATURE_KEYS = (
    "algorithm.name",
    "algorithm.multi_step_loss",
    "algorithm.first_order_epochs",
    "algorithm.per_step_bn_stats",
    "algorithm.per_step_bn_weights",
    "algorithm.learn_inner_lr",
    "algorithm.cosine_meta_lr",
)
# The paper's order of rows (mamlpp.config.algorithm_label names); other variants follow.
ORDER = ("maml", "maml+MSL", "maml+DA", "maml+BNRS+BNWB", "maml+LSLR", "maml+CA", "mamlpp")
CSV_COLUMNS: tuple[str, ...] = ("experiment", "dataset", "ways", "shots", "variant", "seeds")
CSV_COLUMNS += ("test_acc_mean", "test_acc_std", "paper")


def ablation_sets(groups: list[Group]) -> list[list[Group]]:
    """Sets of two or more groups of one experiment whose identities differ only in FEATURE_KEYS,
    each in the paper's row order."""
    sets: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        rest = {k: v for k, v in g.identity.items() if k not in FEATURE_KEYS}
        key = (g.experiment, json.dumps(rest, sort_keys=True, default=str))
        sets.setdefault(key, []).append(g)

    def order(g: Group) -> tuple[int, str]:
        return (ORDER.index(g.variant) if g.variant in ORDER else len(ORDER), g.variant)

    return [sorted(s, key=order) for _, s in sorted(sets.items()) if len(s) > 1]


def ablation_rows(members: list[Group]) -> list[dict[str, Any]]:
    rows = []
    for g in members:
        c, accs = g.summary, g.test_accuracies()
        rows.append(
            {
                "experiment": g.experiment,
                "dataset": c["dataset"],
                "ways": c["ways"],
                "shots": c["shots"],
                "variant": g.variant,
                "seeds": len(accs),
                "test_acc_mean": statistics.fmean(accs),
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "paper": paper_number_of(g.results[0], g.variant),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table; its paper column only where a row is on the paper's protocol."""
    r0 = rows[0]
    paper = any(r["paper"] for r in rows)
    head = ["variant", "test acc % (mean +- std over seeds)", "seeds"]
    head += ["paper %"] if paper else []
    lines = [
        f"### Ablation: {r0['experiment']} ({r0['dataset']} {r0['ways']}-way {r0['shots']}-shot)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        spread = f"+- {r['test_acc_std']:.2f}" if r["seeds"] > 1 else "(1 seed)"
        cells = [r["variant"], f"{r['test_acc_mean']:.2f} {spread}", r["seeds"]]
        cells += [r["paper"]] if paper else []
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict[str, Any]], path: Path) -> bool:
    """Bars of mean +- std over seeds, the paper's number as a marker where there is one."""
    plt = pyplot()
    if plt is None:
        return False
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4.5))
    means = [r["test_acc_mean"] for r in rows]
    ax.bar(xs, means, yerr=[r["test_acc_std"] for r in rows], capsize=4, label="ours")
    paper = [(x, float(r["paper"].split()[0])) for x, r in zip(xs, rows) if r["paper"]]
    if paper:
        ax.plot(*zip(*paper), "k_", markersize=24, mew=2, label="paper")
    low = min(means + [p for _, p in paper])
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_xticks(list(xs), [r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
    r0 = rows[0]
    ax.set(
        ylabel="test accuracy (%)",
        title=f"Ablation {r0['experiment']} (mean +- std over seeds)",
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def write_ablation(groups: list[Group], out: Path) -> list[Path]:
    """ablation.md and ablation.csv (every ablation found) and ablation_<experiment>.png each;
    nothing when no ablation is among the runs."""
    tables = [ablation_rows(s) for s in ablation_sets(groups)]
    if not tables:
        return []
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / "ablation.md", out / "ablation.csv"
    md.write_text("\n".join(markdown(rows) for rows in tables))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for rows in tables:
            w.writerows(rows)
    paths = [md, csv_path]
    for i, rows in enumerate(tables):
        suffix = f"_{i}" if len(tables) > 1 else ""
        png = out / f"ablation_{safe_name(rows[0]['experiment'])}{suffix}.png"
        if bar_chart(rows, png):
            paths.append(png)
    return paths
