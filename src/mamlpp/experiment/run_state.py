"""Saving and restoring the full training state of a run, with corruption and drift checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlpp.config import Config, experiment_keys
from mamlpp.errors import MamlppError
from mamlpp.experiment.checkpoints import load_checkpoint, save_checkpoint

FORMAT_VERSION = 1
LATEST, PREVIOUS = "latest.pt", "previous.pt"


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


def save_state(
    ckpt_dir: Path,
    learner_state: dict,
    optimizer_state: dict,
    progress: TrainingProgress,
    rng: dict,
    cfg: Config,
) -> None:
    """Write latest.pt atomically, keeping the one before as previous.pt (a corrupt-file fallback)."""
    state = {
        "format": FORMAT_VERSION,
        "learner": learner_state,
        "optimizer": optimizer_state,
        "progress": progress.to_dict(),
        "rng": rng,
        "experiment": experiment_keys(cfg),
        "saved_at": time.time(),
    }
    latest = ckpt_dir / LATEST
    tmp = ckpt_dir / f".{LATEST}.new"
    save_checkpoint(tmp, state)
    if latest.exists():
        latest.replace(ckpt_dir / PREVIOUS)
    tmp.replace(latest)


def load_latest_valid(ckpt_dir: Path, report: Any) -> dict | None:
    """Newest checkpoint that loads; unreadable ones are reported and moved aside, never deleted."""
    for name in (LATEST, PREVIOUS):
        path = ckpt_dir / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
            if state.get("format") != FORMAT_VERSION or "progress" not in state:
                raise ValueError(f"unknown checkpoint format {state.get('format')!r}")
            return state
        except Exception as exc:  # truncated, garbage, or not ours: all mean "unusable"
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.replace(aside)
            report(
                f"checkpoint {path} is unreadable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); "
                f"moved it to {aside.name} and trying the previous one"
            )
    return None


def check_drift(saved: dict[str, Any], cfg: Config) -> None:
    """Refuse to resume when keys that change the experiment differ (run.allow_config_change wins)."""
    current = experiment_keys(cfg)
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if keys and not cfg.run.allow_config_change:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys)
        raise ConfigDriftError(
            f"refusing to resume: config differs from the checkpoint in {diffs}; "
            "use a new run directory, or pass run.allow_config_change=true to resume anyway"
        )
