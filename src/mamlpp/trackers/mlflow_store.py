"""Where a run's MLflow records go, and how runs share that store safely.

The store is `logger.mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI (MLflow's and Lightning's
convention), else one SQLite file per runs root, `<runs root>/mlflow/mlflow.db`, so that the
runs of a sweep sit side by side in one MLflow UI. The runs root is `paths.runs_dir` for a run
inside it, else the run directory's parent (a sweep's `hydra.sweep.dir`). Processes that share a
SQLite store take turns through a lock file beside it: MLflow creates its tables without one,
and SQLite refuses a writer while another one writes.

A server is probed before training (a TCP connection, a few seconds), so an unreachable one is
one line instead of minutes of MLflow's HTTP retries.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mamlpp.config import MlflowLoggerConfig
from mamlpp.errors import ConfigError
from mamlpp.layout import MLFLOW
from mamlpp.trackers.reachable import unreachable

ENV = "MLFLOW_TRACKING_URI"
# MLflow's HTTP settings while a run opens its MLflow run (the user's own values win): a server
# that answers but fails gives up in seconds, not after MLflow's ~4 minutes of retries.
FIRST_CONTACT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def chosen_uri(cfg: MlflowLoggerConfig) -> tuple[str | None, str]:
    """The store the user named and where (None: the default store)."""
    if cfg.tracking_uri:
        return cfg.tracking_uri, "logger.mlflow.tracking_uri"
    if os.environ.get(ENV):
        return os.environ[ENV], ENV
    return None, ""


def runs_root(run_dir: Path, runs_dir: Path) -> Path:
    """`runs_dir` for a run inside it, else the run directory's parent."""
    run, runs = run_dir.resolve(), runs_dir.resolve()
    return runs if run != runs and run.is_relative_to(runs) else run.parent


def tracking_uri(cfg: MlflowLoggerConfig, run_dir: Path, runs_dir: Path) -> str:
    uri, _ = chosen_uri(cfg)
    if uri is not None:
        return uri
    db_dir = runs_root(run_dir, runs_dir) / MLFLOW
    db_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db_dir / 'mlflow.db'}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None: not SQLite, or in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive use of a SQLite store among processes (nothing for other stores)."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def first_contact() -> Iterator[None]:
    """FIRST_CONTACT's HTTP settings where the user has not set them, then the old ones."""
    added = [k for k in FIRST_CONTACT if k not in os.environ]
    os.environ.update({k: FIRST_CONTACT[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def check_reachable(cfg: MlflowLoggerConfig) -> None:
    """Refuse, in one line, an http(s) tracking server that cannot be connected to."""
    uri, source = chosen_uri(cfg)
    if uri is None:
        return
    why = unreachable(uri)
    if why is not None:
        raise ConfigError(
            f"MLflow tracking server {uri} (from {source}) is unreachable ({why}): start it, "
            "or choose another with logger.mlflow.tracking_uri or MLFLOW_TRACKING_URI (neither "
            "set: a SQLite store in the runs folder)"
        )
