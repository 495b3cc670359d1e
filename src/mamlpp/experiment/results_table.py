"""The result table printed at the end of a run (and again when a finished run is re-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_results(results: dict[str, Any]) -> str:
    """Markdown table: the top-k ensemble first, then each member alone (accuracies in %).
    A re-evaluation on another split (mamlpp-eval split=val) says so in the title and header."""
    c = results.get("config", {})
    best = results.get("best_val_accuracy")
    split = results.get("split", "test")
    title = (
        f"{c.get('dataset', '?')} {c.get('ways', '?')}-way {c.get('shots', '?')}-shot, "
        f"{c.get('algorithm_variant', c.get('algorithm', '?'))}, seed {c.get('seed', '?')}: "
        f"{results['num_test_tasks']} {split} tasks"
    )
    column = "test acc (%)" if split == "test" else f"acc on {split} tasks (%)"
    lines = [
        title,
        "",
        f"| model | val acc (%) | {column} | 95% CI (%) |",
        "|---|---|---|---|",
        f"| ensemble of top-{results['ensemble_size']} "
        f"| {_pct(best)} (best) "
        f"| {100 * results['test_accuracy_mean']:.2f} "
        f"| +- {100 * results['test_accuracy_ci95']:.2f} |",
    ]
    for m in results["per_model"]:
        lines.append(
            f"| {_model(m)} | {_pct(m['val_accuracy'])} | "
            f"{100 * m['test_accuracy_mean']:.2f} | +- {100 * m['test_accuracy_ci95']:.2f} |"
        )
    return "\n".join(lines)


def _model(member: dict[str, Any]) -> str:
    """'epoch N'; a training-state file (latest.pt) has no epoch: its name and iteration."""
    if member.get("epoch") is not None:
        return f"epoch {member['epoch']}"
    name = Path(str(member.get("checkpoint", "?"))).name
    iteration = member.get("iteration")
    return name if iteration is None else f"{name} after iteration {iteration}"


def _pct(value: float | None) -> str:
    """A fraction as a percentage; '-' where it is unknown (e.g. a lone older checkpoint)."""
    return "-" if value is None else f"{100 * value:.2f}"
