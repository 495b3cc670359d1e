"""The result table printed at the end of a run (and again when a finished run is re-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamlpp.experiment.results import Results


def format_results(results: Results | dict[str, Any]) -> str:
    """Markdown table: the top-k ensemble first, then each member alone (accuracies in %).
    A re-evaluation on another split (mamlpp-eval split=val) says so in the title and header."""
    r = results if isinstance(results, Results) else Results.from_dict(results)
    c, split = r.config, r.split or "test"
    title = (
        f"{c.get('dataset', '?')} {c.get('ways', '?')}-way {c.get('shots', '?')}-shot, "
        f"{c.get('algorithm_variant', c.get('algorithm', '?'))}, seed {c.get('seed', '?')}: "
        f"{r.num_test_tasks} {split} tasks"
    )
    column = "test acc (%)" if split == "test" else f"acc on {split} tasks (%)"
    lines = [
        title,
        "",
        f"| model | val acc (%) | {column} | 95% CI (%) |",
        "|---|---|---|---|",
        f"| ensemble of top-{r.ensemble_size} "
        f"| {_pct(r.best_val_accuracy)} (best) "
        f"| {100 * r.test_accuracy_mean:.2f} "
        f"| +- {100 * r.test_accuracy_ci95:.2f} |",
    ]
    for m in r.per_model:
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
