"""The training progress a checkpoint carries, and what a run *is* (its identity), with the
drift check a resume or a re-test makes against it (the files: experiment.checkpoint_store)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlpp.config import Config, comparable, experiment_keys
from mamlpp.data import content
from mamlpp.errors import MamlppError
from mamlpp.experiment.checkpoints import WriteError


class ConfigDriftError(MamlppError):
    """The resuming run's experiment keys differ from the checkpoint's."""


@dataclass
class TrainingProgress:
    """Everything besides model/optimizer that a resumed run needs to continue exactly."""

    next_iteration: int = 0
    epoch_loss_sum: float = 0.0
    epoch_acc_sum: float = 0.0
    epoch_iters: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    top_k: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def record_step(self, loss: float, accuracy: float, seconds: float) -> None:
        """Count one finished meta-step into the epoch's running means and the clocks."""
        self.next_iteration += 1
        self.epoch_loss_sum += loss
        self.epoch_acc_sum += accuracy
        self.epoch_iters += 1
        self.epoch_seconds += seconds
        self.train_seconds += seconds

    def close_epoch(self, row: dict[str, Any]) -> None:
        """Append the epoch's metrics.csv row and start the next epoch's sums."""
        self.history.append(row)
        self.epoch_loss_sum = self.epoch_acc_sum = self.epoch_seconds = 0.0
        self.epoch_iters = 0

    def kept_epochs(self) -> set[int]:
        """The epochs of the top-k table (their member files must exist)."""
        return {e["epoch"] for e in self.top_k}


def move_aside(path: Path, tag: str) -> Path:
    """Rename `path` to `<name>.<tag>-<time>[-n]` beside it (never overwriting) and return it."""
    stem = f"{path.name}.{tag}-{int(time.time())}"
    aside, n = path.with_name(stem), 1
    while aside.exists():
        aside, n = path.with_name(f"{stem}-{n}"), n + 1
    try:
        path.replace(aside)
    except OSError as exc:
        why = exc.strerror or exc
        raise WriteError(f"cannot move {path} aside to {aside.name}: {why}") from exc
    return aside


DATA_IDENTITY = "dataset.identity"


def run_identity(cfg: Config, data_identity: str | None = None) -> dict[str, Any]:
    """The experiment keys of `cfg` plus, for datasets that have one, what the data is."""
    keys = experiment_keys(cfg)
    if data_identity is not None:
        keys[DATA_IDENTITY] = data_identity
    return keys


def config_diffs(saved: dict[str, Any], cfg: Config, data_identity: str | None = None) -> str:
    """'key: old -> new' for every experiment key that differs ('' when none does).

    The data identity is compared only when both sides know it: checkpoints written before it
    existed still resume, and a finished run is reported without loading its data. A key the
    checkpoint lacks (added to the schema since) counts as its default, which the code of the
    time had built in (e.g. optimizer._target_ = Adam)."""
    current = comparable(run_identity(cfg, data_identity))
    saved = comparable({**experiment_keys(Config()), **saved})
    if DATA_IDENTITY in saved and DATA_IDENTITY in current:  # an older identity: its own check
        current[DATA_IDENTITY] = content.comparable(saved[DATA_IDENTITY], current[DATA_IDENTITY])
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if DATA_IDENTITY not in saved or DATA_IDENTITY not in current:
        keys = [k for k in keys if k != DATA_IDENTITY]
    diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys)
    if DATA_IDENTITY in keys:
        diffs += " (the images of dataset.source differ: classes, files or their contents)"
    return diffs


def check_drift(saved: dict[str, Any], cfg: Config, data_identity: str | None = None) -> None:
    """Refuse to resume when experiment keys differ; run.allow_config_change=true accepts."""
    diffs = config_diffs(saved, cfg, data_identity)
    if diffs and not cfg.run.allow_config_change:
        raise ConfigDriftError(
            f"refusing to resume: config differs from the checkpoint in {diffs}; "
            "use a new run directory, or pass run.allow_config_change=true to resume anyway"
        )
