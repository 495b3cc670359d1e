"""An MLflow run per run directory (pip install 'mamlpp[mlflow]'), in a store shared by the
runs of a runs root (mamlpp.trackers.mlflow_store)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlpp.config import MlflowLoggerConfig
from mamlpp.trackers.base import new_points
from mamlpp.trackers.ids import load_id, save_id
from mamlpp.trackers.mlflow_store import first_contact, sqlite_file, store_lock, tracking_uri

METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


class MlflowLogger:
    """Scalars are buffered and sent in batches at each flush (every checkpoint).

    MLflow cannot delete single points, so a resume keeps those a killed process wrote past the
    checkpoint and does not send those steps again (on CPU they are the same numbers); a
    restart from scratch deletes the old MLflow run and opens a new one."""

    def __init__(
        self, cfg: MlflowLoggerConfig, run_dir: Path, experiment: str, runs_dir: Path
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.uri = tracking_uri(cfg, run_dir, runs_dir)
        self.experiment = cfg.experiment or experiment
        self.buffer: list[Any] = []
        self.written: dict[str, int] = {}
        self.run_id: str | None = None

    def resume(self, step: int) -> None:
        for name in ("mlflow", "alembic"):  # schema migrations and store notices
            logging.getLogger(name).setLevel(logging.WARNING)
        with store_lock(self.uri), first_contact():
            self._open(step)

    def _open(self, step: int) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.uri
        self.client = MlflowClient(tracking_uri=uri)
        old = load_id(self.run_dir, "mlflow")
        old_run = self._active_run(old["run_id"]) if old and old["uri"] == uri else None
        if old_run is not None and step > 1:
            self.run_id = old_run.info.run_id
            self.written = self._written_steps(old_run)
            self.client.update_run(self.run_id, status="RUNNING")
            return
        if old_run is not None:
            self.client.delete_run(old_run.info.run_id)
        self.run_id = self._new_run()
        save_id(self.run_dir, "mlflow", {"uri": uri, "run_id": self.run_id})

    def _active_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:  # another store, or removed from it
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _written_steps(self, run: Any) -> dict[str, int]:
        return {
            key: max(m.step for m in self.client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics
        }

    def _experiment_id(self) -> str:
        """The MLflow experiment's id, created if missing (by this run or, on a server shared
        by parallel runs, by another one at the same moment)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        db = sqlite_file(self.uri)  # artifacts beside the store, not in ./mlruns
        where = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
        try:
            return self.client.create_experiment(self.experiment, where)
        except MlflowException:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _new_run(self) -> str:
        experiment_id = self._experiment_id()
        name = f"{self.run_dir.resolve().parent.name}/{self.run_dir.name}"
        tags = {"mamlpp.run_dir": str(self.run_dir.resolve())}
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        assert self.run_id is not None, "resume() first"
        with store_lock(self.uri):
            logged = self.client.get_run(self.run_id).data.params  # values cannot change
            new = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if k not in logged]
            for i in range(0, len(new), PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_BATCH])

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in new_points(scalars, step, self.written).items():
            self.buffer.append(Metric(key, float(value), now, step))

    def flush(self) -> None:
        if self.run_id is None or not self.buffer:
            return
        with store_lock(self.uri):
            for i in range(0, len(self.buffer), METRICS_PER_BATCH):
                batch = self.buffer[i : i + METRICS_PER_BATCH]
                self.client.log_batch(self.run_id, metrics=batch)
        self.buffer = []

    def close(self) -> None:
        if self.run_id is not None:
            self.flush()
            with store_lock(self.uri):
                self.client.set_terminated(self.run_id)
