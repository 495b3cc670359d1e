"""results.json: one dataclass, so every run writes the same fields and says what made it.

Besides the numbers, a result carries the experiment's identity (its experiment keys: every
config key but the neutral ones, plus the data fingerprint where a dataset has one) and the code
version, so that results from many runs can be grouped without guessing (mamlpp-report) and
traced back to the commit that produced them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field, fields
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
class Results:
    """One results.json: a training run's test phase (`<run>/results.json`, written by
    mamlpp-train) or an evaluation (`<run>/eval/<name>/results.json`, mamlpp-eval); read back
    by re-runs, mamlpp-report and the results table. Accuracies are fractions; CI =
    1.96 * std / sqrt(n) over tasks.

    The fields every file has come first. The others are None where a writer does not know
    them (an evaluation has no training time; files of older versions lack identity, code and
    schema_version) and are then left out of the file. Keys this version does not know are
    kept in `extra` and written back unchanged."""

    test_accuracy_mean: float
    test_accuracy_ci95: float
    num_test_tasks: int
    ensemble_size: int
    per_model: list[dict[str, Any]]
    best_val_accuracy: float | None
    # Training's: its clocks and length.
    train_seconds: float | None = None
    test_seconds: float | None = None
    wall_time_s: float | None = None
    epochs: int | None = None
    iterations: int | None = None
    device: str | None = None
    # A short summary of the experiment (readers of older files, the results table).
    config: dict[str, Any] = field(default_factory=dict)
    # The experiment keys (mamlpp.experiment.run_state.run_identity): what the run *is*.
    identity: dict[str, Any] | None = None
    # What the score fields hold where it is not accuracy (None): "mse" for a regression run,
    # whose test_accuracy_*, best_val_accuracy and per_model scores are mean squared errors.
    metric: str | None = None
    # mamlpp-eval's: which split and members were evaluated, from what, with which overrides.
    split: str | None = None
    members: str | None = None
    channels_converted: str | None = None
    preprocessing: dict[str, Any] | None = None
    source: str | None = None
    overrides: list[str] | None = None
    mamlpp_version: str | None = None
    code: dict[str, str | None] | None = field(default_factory=code_version)
    schema_version: int | None = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_evaluation(self) -> bool:
        """Written by mamlpp-eval (on any split), not by a training run's test phase."""
        return self.split is not None

    def to_dict(self) -> dict[str, Any]:
        """The file's content: the fields every file has, those of its writer (an
        evaluation's even when None), any other field that is set, then the kept unknown keys."""
        always = REQUIRED + (EVALUATION_FIELDS if self.is_evaluation else ())
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and (f.name in always or value is not None):
                out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """A results.json's content, of this version or an older one; ValueError (naming the
        missing fields) for one that lacks what every results file has."""
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("code", None)  # an older file's provenance is unknown, not ours
        values.setdefault("schema_version", None)
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)


# Kept for older imports: training's results are Results.
RunResults = Results
# What every results file has (mamlpp-eval's of an old lone checkpoint: best_val_accuracy None).
REQUIRED = (
    "test_accuracy_mean",
    "test_accuracy_ci95",
    "num_test_tasks",
    "ensemble_size",
    "per_model",
    "best_val_accuracy",
)
# mamlpp-eval's own fields, written whenever a file is an evaluation's.
EVALUATION_FIELDS = (
    "split",
    "members",
    "channels_converted",
    "preprocessing",
    "source",
    "overrides",
    "mamlpp_version",
)
# How a score is shown: accuracy in %, MSE as it is.
METRIC_SCALE = {"accuracy": 100.0, "mse": 1.0}


def metric_of(results: Results | dict[str, Any]) -> str:
    """What the scores of a result are (files without `metric` hold accuracy)."""
    value = results.get("metric") if isinstance(results, dict) else results.metric
    return str(value or "accuracy")


def shown(results: Results | dict[str, Any], value: float) -> float:
    """A score of `results` as tables show it (accuracy in %, MSE unscaled)."""
    return METRIC_SCALE.get(metric_of(results), 1.0) * value


# What the results table of a finished run reads (mamlpp.experiment.results_table).
TABLE_FIELDS = ("num_test_tasks", "ensemble_size", "test_accuracy_mean", "test_accuracy_ci95")


def read_results(path: Path) -> Results:
    """A finished run's results.json; one line when it is truncated or not a results file."""
    try:
        results = Results.from_dict(json.loads(path.read_text(encoding="utf-8")))
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
