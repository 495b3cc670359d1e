"""The result table printed at the end of a run (and again when a finished run is re-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamlpp.experiment.results import metric_of, shown


def format_results(results: dict[str, Any]) -> str:
    """Markdown table: the top-k ensemble first, then each member alone (accuracies in %, or
    MSE for a regression run). A re-evaluation on another split (mamlpp-eval split=val) says so
    in the title and header."""
    c = results.get("config", {})
    best = results.get("best_val_accuracy")
    split = results.get("split", "test")
    title = (
        f"{c.get('dataset', '?')} {_ways(results)}{c.get('shots', '?')}-shot, "
        f"{c.get('algorithm_variant', c.get('algorithm', '?'))}, seed {c.get('seed', '?')}: "
        f"{results['num_test_tasks']} {split} tasks"
    )
    name, unit = ("acc", " (%)") if metric_of(results) == "accuracy" else (metric_of(results), "")
    column = f"test {name}{unit}" if split == "test" else f"{name} on {split} tasks{unit}"

    def num(value: float | None) -> str:
        """'-' where unknown (e.g. a lone older checkpoint); accuracy in % with two decimals,
        an MSE with four significant digits."""
        if value is None:
            return "-"
        return f"{shown(results, value):.2f}" if unit else f"{value:.4g}"

    lines = [
        title,
        "",
        f"| model | val {name}{unit} | {column} | 95% CI{unit} |",
        "|---|---|---|---|",
        f"| ensemble of top-{results['ensemble_size']} "
        f"| {num(best)} (best) "
        f"| {num(results['test_accuracy_mean'])} "
        f"| +- {num(results['test_accuracy_ci95'])} |",
    ]
    for m in results["per_model"]:
        lines.append(
            f"| {_model(m)} | {num(m['val_accuracy'])} | "
            f"{num(m['test_accuracy_mean'])} | +- {num(m['test_accuracy_ci95'])} |"
        )
    return "\n".join(lines)


def _ways(results: dict[str, Any]) -> str:
    """'N-way ' of a classification run; regression tasks have no classes."""
    return (
        f"{results.get('config', {}).get('ways', '?')}-way "
        if metric_of(results) == "accuracy"
        else ""
    )


def _model(member: dict[str, Any]) -> str:
    """'epoch N'; a training-state file (latest.pt) has no epoch: its name and iteration."""
    if member.get("epoch") is not None:
        return f"epoch {member['epoch']}"
    name = Path(str(member.get("checkpoint", "?"))).name
    iteration = member.get("iteration")
    return name if iteration is None else f"{name} after iteration {iteration}"
