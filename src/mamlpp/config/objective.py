"""What a run reports to a Hydra sweeper (`optimized_metric`)."""

from __future__ import annotations

from typing import Any

# What the entry point returns to a Hydra sweeper: a name -> the results.json field. The test
# accuracy is there only for a sweep that asks for it by name.
OPTIMIZED_METRICS = {"val/best_acc": "best_val_accuracy", "test/acc": "test_accuracy_mean"}


def objective(results: dict[str, Any], metric: str) -> float:
    """The `optimized_metric` of a run's results (what a sweeper optimises)."""
    return float(results[OPTIMIZED_METRICS[metric]])
