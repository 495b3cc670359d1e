"""mamlpp-train's check of its run directory before Hydra creates it or writes `.hydra/` there.

A Hydra callback (conf/config.yaml, hydra.callbacks): `on_run_start` runs before the job's
folder exists, so an empty `hydra.run.dir` (the current directory), a file, a folder that is
not a run directory, an unwritable place and `run.resume=must` without a run are refused in one
line (exit code 2) with nothing created. It also records which folders existed, so that a new
run that fails before its first checkpoint removes only the folders this command made.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mamlpp.errors import MamlppError
from mamlpp.experiment.run_dir import RunDirError, is_new, require_checkpoint
from mamlpp.layout import RunLayout

EXIT_REFUSED = 2
_existing: dict[str, Path] = {}


def existing_before(run_dir: Path) -> Path | None:
    """The nearest folder at or above `run_dir` that existed before this command (None: not
    checked by this process)."""
    return _existing.get(os.path.abspath(run_dir))


def check_run_dir(raw: str, resume: str) -> Path:
    """The run directory `raw` (hydra.run.dir) names, if it may be one; else RunDirError."""
    if not raw.strip():
        raise RunDirError(
            "hydra.run.dir is empty, which would put the run into the current directory: "
            "give a folder, or leave it out for runs/<experiment>/<name>"
        )
    run_dir = Path(os.path.abspath(raw))
    is_new(run_dir)  # a file, or a folder that is not a run directory: refused
    nearest = run_dir
    while not nearest.exists():
        nearest = nearest.parent
    _existing[str(run_dir)] = nearest
    if not nearest.is_dir():
        raise RunDirError(f"cannot make run directory {run_dir}: {nearest} is a file")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir} is not writable ({nearest}: read-only)")
    if resume == "must" and not RunLayout(run_dir).done.exists():
        require_checkpoint(run_dir)
    return run_dir


class RunDirCheck(Callback):
    """Refuses a run directory that must not be one, before Hydra touches it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 checks, the others follow
            return
        try:
            raw = str(config.hydra.run.dir)
            resume = str(config.run.resume)
        except OmegaConfBaseException:  # Hydra reports a broken interpolation itself
            return
        try:
            check_run_dir(raw, resume)
        except MamlppError as err:
            if config.get("debug"):
                raise
            print(f"mamlpp: error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_REFUSED)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            raw = str(config.hydra.sweep.dir)
        except OmegaConfBaseException:
            return
        if not raw.strip():
            print(
                "mamlpp: error: hydra.sweep.dir is empty, which would put the sweep into the "
                "current directory: give a folder, or leave it out for runs/<experiment>/",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(EXIT_REFUSED)
