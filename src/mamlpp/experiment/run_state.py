"""Saving and restoring the full training state of a run, with corruption and drift checks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mamlpp.config import Config, comparable, experiment_keys
from mamlpp.data import content
from mamlpp.errors import MamlppError
from mamlpp.experiment.checkpoints import (
    CheckpointError,
    WriteError,
    fsync_dir,
    load_checkpoint,
    save_checkpoint,
)
from mamlpp.experiment.run_dir import LATEST, NEW_LATEST, PREVIOUS, PREVIOUS_LINK

FORMAT_VERSION = 1


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
    data_identity: str | None = None,
) -> None:
    """Write latest.pt atomically, keeping the one before as previous.pt (a corrupt-file fallback).

    The new state is fully written (and fsynced) under a temporary name first. The old latest.pt
    is hard-linked to previous.pt before the new file replaces it, so at every instant latest.pt
    is a complete checkpoint: a kill at any point loses at most the state being written.
    """
    state = {
        "format": FORMAT_VERSION,
        "learner": learner_state,
        "optimizer": optimizer_state,
        "progress": progress.to_dict(),
        "rng": rng,
        "experiment": run_identity(cfg, data_identity),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
        "saved_at": time.time(),
    }
    latest = ckpt_dir / LATEST
    tmp = ckpt_dir / NEW_LATEST
    save_checkpoint(tmp, state)  # a full disk stops here, before latest.pt is touched
    try:
        if latest.exists():
            link = ckpt_dir / PREVIOUS_LINK
            link.unlink(missing_ok=True)
            try:
                os.link(latest, link)
                link.replace(ckpt_dir / PREVIOUS)
            except OSError:  # no hard links on this filesystem: a short window without latest
                latest.replace(ckpt_dir / PREVIOUS)
        tmp.replace(latest)
        fsync_dir(ckpt_dir)
    except OSError as exc:
        raise WriteError(f"cannot write {latest}: {exc.strerror or exc}") from exc


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


def load_latest_valid(ckpt_dir: Path, report: Callable[[str], None]) -> tuple[dict, Path] | None:
    """Newest checkpoint that loads, with its path; None if there is none.

    An unusable one (truncated, garbage, unknown format, or content that does not match its
    checksum) is reported in one line and moved aside as `<name>.corrupt-<time>` (never
    deleted), and the previous one is tried. One that cannot be read at all (permissions)
    stops the run in one line: it may be fine.
    """
    for name in (LATEST, PREVIOUS):
        path = ckpt_dir / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
                fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
                raise CheckpointError(
                    f"checkpoint {path} is unreadable (unknown checkpoint format {fmt!r})"
                )
            if "progress" not in state or "learner" not in state:
                raise CheckpointError(f"checkpoint {path} is unreadable (no training state in it)")
            return state, path
        except OSError as exc:
            raise MamlppError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
        except CheckpointError as exc:
            aside = move_aside(path, "corrupt")
            then = "trying previous.pt" if name == LATEST else "no older checkpoint to try"
            report(f"{exc}; moved it to {aside.name}, {then}")
    return None


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
