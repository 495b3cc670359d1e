"""Multirun sweeps that survive a bad job: the others run, and the sweep ends with a summary.

A job that fails with a user error (a `MamlppError`, e.g. `task.ways` too large for its split)
records the one-line reason in a folder the sweep announces through the environment, and
returns; `SweepSummary`, a Hydra callback, lists those jobs when every job has returned and
exits with code 2. Records are files, so jobs of the joblib and Slurm launchers (other
processes, other nodes on a shared file system) report the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILURES_ENV = "MAMLPP_SWEEP_FAILURES"
EXIT_SWEEP_FAILED = 2


def record_failure(job_num: int, name: str, message: str) -> bool:
    """Note a failed job for the sweep's summary; False outside a summarised sweep."""
    folder = os.environ.get(FAILURES_ENV)
    if not folder or not Path(folder).is_dir():
        return False
    record = {"job": job_num, "name": name, "error": message}
    (Path(folder) / f"{job_num:06d}.json").write_text(json.dumps(record))
    return True


class SweepSummary(Callback):
    """Announces the failure folder before the jobs start; summarises after they end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        os.environ[FAILURES_ENV] = tempfile.mkdtemp(prefix=".failed-jobs-", dir=sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(os.environ.pop(FAILURES_ENV, "") or "/nonexistent")
        if not folder.is_dir():
            return
        failed = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        shutil.rmtree(folder, ignore_errors=True)
        if not failed:
            return
        lines = [f"[mamlpp] sweep finished with {len(failed)} failed job(s):"]
        lines += [f"[mamlpp]   #{f['job']} {f['name']}: {f['error']}" for f in failed]
        print("\n".join(lines), file=sys.stderr, flush=True)
        sys.exit(EXIT_SWEEP_FAILED)
