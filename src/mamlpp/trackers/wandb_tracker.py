"""A Weights & Biases run per run directory (pip install 'mamlpp[wandb]'), offline by default.

WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE and WANDB_DIR are the defaults of the `logger.wandb`
keys (conf/logger/wandb.yaml); WANDB_RUN_GROUP and WANDB_NAME replace the group (the experiment)
and the name; wandb reads the others itself (WANDB_API_KEY, WANDB_BASE_URL, WANDB_TAGS, ...).
The run id is mamlpp's, one per run directory, so that a resume continues it: WANDB_RUN_ID and
WANDB_RESUME are not used.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlpp.config import WandbLoggerConfig
from mamlpp.layout import WANDB
from mamlpp.trackers.base import new_points
from mamlpp.trackers.ids import load_id, save_id
from mamlpp.trackers.wandb_files import written_steps


class WandbLogger:
    """Each process logs one segment of the same wandb run id (offline: one offline-run-*
    folder each; `wandb sync` joins them). A resume reads the earlier segments and does not log
    the steps they hold again; a restart from scratch takes a new run id."""

    def __init__(self, cfg: WandbLoggerConfig, run_dir: Path, experiment: str) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.root = Path(cfg.dir) if cfg.dir is not None else run_dir
        self.experiment = experiment
        self.written: dict[str, int] = {}
        self.run: Any = None

    def resume(self, step: int) -> None:
        import wandb

        old = load_id(self.run_dir, "wandb")
        if old is not None and step > 1:
            run_id = old["run_id"]
            self.written = written_steps(self.root / WANDB, run_id)
        else:
            run_id = uuid.uuid4().hex[:12]
            save_id(self.run_dir, "wandb", {"run_id": run_id})
        self.root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            mode=self.cfg.mode,  # type: ignore[arg-type]  # the schema checks the choice
            dir=str(self.root),
            id=run_id,
            resume="allow",
            name=os.environ.get("WANDB_NAME") or f"{self.experiment}/{self.run_dir.name}",
            group=os.environ.get("WANDB_RUN_GROUP") or self.experiment,
            reinit="create_new",
            settings=wandb.Settings(
                console="off",  # leave stdout/stderr to the run's own log
                silent=True,
                x_disable_stats=True,  # no system-metrics sampling thread
                disable_git=True,
                save_code=False,
            ),
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        assert self.run is not None, "resume() first"
        self.run.config.update({k: v for k, v in params.items() if k not in self.run.config})

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        points = new_points(scalars, step, self.written)
        if points:
            self.run.log(points, step=step)

    def flush(self) -> None:
        """Nothing to do: wandb's own service process writes the records as they come."""

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
