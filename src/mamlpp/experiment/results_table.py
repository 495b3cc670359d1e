"""The result table printed at the end of a run (and again when a finished run is re-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamlpp.experiment.results import Results, metric_of, shown


def format_results(results: Results | dict[str, Any]) -> str:
    """Markdown table: the top-k ensemble first, then each member alone (accuracies in %, or
    MSE for a regression run). A re-evaluation on another split (mamlpp-eval split=val) says so
    in the title and header."""
    r = results if isinstance(results, Results) else Results.from_dict(results)
    c, split = r.config, r.split or "test"
    title = (
        f"{c.get('dataset', '?')} {_ways(r)}{c.get('shots', '?')}-shot, "
        f"{c.get('algorithm_variant', c.get('algorithm', '?'))}, seed {c.get('seed', '?')}: "
        f"{r.num_test_tasks} {split} tasks"
    )
    name, unit = ("acc", " (%)") if metric_of(r) == "accuracy" else (metric_of(r), "")
    column = f"test {name}{unit}" if split == "test" else f"{name} on {split} tasks{unit}"

    def num(value: float | None) -> str:
        """'-' where unknown (e.g. a lone older checkpoint); accuracy in % with two decimals,
        an MSE with four significant digits."""
        if value is None:
            return "-"
        return f"{shown(r, value):.2f}" if unit else f"{value:.4g}"

    lines = [
        title,
        "",
        f"| model | val {name}{unit} | {column} | 95% CI{unit} |",
        "|---|---|---|---|",
        f"| ensemble of top-{r.ensemble_size} "
        f"| {num(r.best_val_accuracy)} (best) "
        f"| {num(r.test_accuracy_mean)} "
        f"| +- {num(r.test_accuracy_ci95)} |",
    ]
    for m in r.per_model:
        lines.append(
            f"| {_model(m)} | {num(m['val_accuracy'])} | "
            f"{num(m['test_accuracy_mean'])} | +- {num(m['test_accuracy_ci95'])} |"
        )
    return "\n".join(lines)


def _ways(r: Results) -> str:
    """'N-way ' of a classification run; regression tasks have no classes."""
    return f"{r.config.get('ways', '?')}-way " if metric_of(r) == "accuracy" else ""


def _model(member: dict[str, Any]) -> str:
    """'epoch N'; a training-state file (latest.pt) has no epoch: its name and iteration."""
    if member.get("epoch") is not None:
        return f"epoch {member['epoch']}"
    name = Path(str(member.get("checkpoint", "?"))).name
    iteration = member.get("iteration")
    return name if iteration is None else f"{name} after iteration {iteration}"
