"""results.json: one dataclass, so every run writes the same fields and says what made it.

Besides the numbers, a result carries the experiment's identity (its experiment keys: every
config key but the neutral ones, plus the data fingerprint where a dataset has one) and the code
version, so that results from many runs can be grouped without guessing (mamlpp-report) and
traced back to the commit that produced them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mamlpp import __version__
from mamlpp.config import Config, algorithm_label
from mamlpp.errors import MamlppError, first_line

# Bumped when a field changes meaning; files without it were written before identity existed.
SCHEMA_VERSION = 1


def config_summary(cfg: Config) -> dict[str, Any]:
    """The experiment facts results.json (and mamlpp-report) name a result by."""
    a, t = cfg.algorithm, cfg.task
    return {
        "experiment": cfg.experiment_name,
        "dataset": cfg.dataset.name,
        # Omniglot's; other datasets have none and keep the value earlier files carried.
        "protocol": getattr(cfg.dataset, "protocol", "mamlpp"),
        "ways": t.ways,
        "shots": t.shots,
        "targets": t.targets,
        "algorithm": a.name,
        "algorithm_variant": algorithm_label(a),
        "second_order": a.second_order,
        "first_order_epochs": a.first_order_epochs,
        "multi_step_loss": a.multi_step_loss,
        "learn_inner_lr": a.learn_inner_lr,
        "per_step_bn_stats": a.per_step_bn_stats,
        "per_step_bn_weights": a.per_step_bn_weights,
        "use_running_stats_eval": a.use_running_stats_eval,
        "cosine_meta_lr": a.cosine_meta_lr,
        "inner_steps": a.inner_steps,
        "inner_steps_eval": a.inner_steps_eval,
        "meta_batch_size": cfg.train.meta_batch_size,
        "seed": cfg.seed,
    }


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the checkout holding this package (with '-dirty' for uncommitted changes);
    None for an installed wheel, without git, or on any git failure: a result is never lost
    for want of its provenance."""
    cwd = where if where is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = status.returncode == 0 and status.stdout.strip() != ""
    return head.stdout.strip() + ("-dirty" if dirty else "")


def code_version() -> dict[str, str | None]:
    return {"mamlpp": __version__, "git_commit": git_commit()}


@dataclass
class RunResults:
    """A finished run's test results (fractions; CI = 1.96 * std / sqrt(n) over tasks)."""

    test_accuracy_mean: float
    test_accuracy_ci95: float
    num_test_tasks: int
    ensemble_size: int
    per_model: list[dict[str, Any]]
    best_val_accuracy: float
    train_seconds: float
    test_seconds: float
    wall_time_s: float
    epochs: int
    iterations: int
    device: str
    # Kept for readers of older files (mamlpp-report, the results table): a short summary.
    config: dict[str, Any]
    # The experiment keys (mamlpp.experiment.run_state.run_identity): what the run *is*.
    identity: dict[str, Any]
    code: dict[str, str | None] = field(default_factory=code_version)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What the results table of a finished run reads (mamlpp.experiment.results_table).
TABLE_FIELDS = ("num_test_tasks", "ensemble_size", "test_accuracy_mean", "test_accuracy_ci95")


def read_results(path: Path) -> dict[str, Any]:
    """A finished run's results.json; one line when it is truncated or not a results file."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in (*TABLE_FIELDS, "per_model") if k not in results]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
    except (OSError, ValueError, TypeError) as exc:
        why = getattr(exc, "strerror", None) or first_line(exc)[:80]
        raise MamlppError(
            f"{path} is truncated or not a mamlpp results file ({why}); the finished run "
            "writes it again with the same command and run.retest=true (checkpoints are kept)"
        ) from exc
    return results


def finished_identity(done: Path, results: Path) -> dict[str, Any] | None:
    """The experiment keys a finished run was made with: its done marker's or, where that
    has none (older, or damaged), its results.json's; None for runs older than both."""
    for path, key in ((done, "experiment"), (results, "identity")):
        try:
            saved = json.loads(path.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            saved = None
        if isinstance(saved, dict):
            return saved
    return None
