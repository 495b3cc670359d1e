"""The built-in experiment trackers' configs (the `logger` section) and the section itself.

`logger` holds one entry per registered tracker; choosing a tracker in the `logger` group
(logger=[tensorboard,mlflow]) switches its `enabled` on. mamlpp.trackers.factory attaches what
opens each tracker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, make_dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mamlpp.config.checks import check
from mamlpp.config.registry import TrackerConfig, components, register

if TYPE_CHECKING:
    from mamlpp.config.schema import Config

WANDB_MODES = ("offline", "online", "disabled")
# What conf/config.yaml's `logger` default chooses.
DEFAULT_TRACKERS = ("tensorboard",)


@dataclass
class TensorboardLoggerConfig(TrackerConfig):
    """TensorBoard event files (the default tracker)."""

    # Relative to the run directory.
    dir: str = "tb"


@dataclass
class CsvLoggerConfig(TrackerConfig):
    """Every scalar as a (step, name, value) row; metrics.csv (one row per epoch) is written
    whichever trackers are chosen."""

    # Relative to the run directory.
    file: str = "scalars.csv"


@dataclass
class MlflowLoggerConfig(TrackerConfig):
    """An MLflow run (pip install 'mamlpp[mlflow]')."""

    packages: ClassVar[tuple[str, ...]] = ("mlflow", "sqlalchemy", "alembic")
    extra: ClassVar[str] = "mlflow"

    # None: $MLFLOW_TRACKING_URI, else <runs root>/mlflow/mlflow.db (mamlpp.trackers.mlflow_store).
    tracking_uri: str | None = None
    # The MLflow experiment; None: experiment_name.
    experiment: str | None = None


@dataclass
class WandbLoggerConfig(TrackerConfig):
    """A Weights & Biases run (pip install 'mamlpp[wandb]'); offline unless told otherwise."""

    packages: ClassVar[tuple[str, ...]] = ("wandb",)
    extra: ClassVar[str] = "wandb"

    project: str = "mamlpp"
    entity: str | None = None
    # offline (files only; `wandb sync` uploads them later) | online | disabled
    mode: str = "offline"
    # Where wandb/ is made; None: the run directory. conf/logger/wandb.yaml takes the defaults
    # of project, entity, mode and dir from WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE, WANDB_DIR.
    dir: str | None = None

    def validate(self, cfg: Config) -> None:
        check(self.mode in WANDB_MODES, "logger.wandb.mode", self.mode, f"one of {WANDB_MODES}")


register("logger", "tensorboard", TensorboardLoggerConfig)
register("logger", "csv", CsvLoggerConfig)
register("logger", "mlflow", MlflowLoggerConfig)
register("logger", "wandb", WandbLoggerConfig)


@dataclass
class LoggerConfig:
    """The experiment trackers: one field per registered tracker (see `logger_config`)."""

    if TYPE_CHECKING:  # the fields are made per registry state (logger.mlflow, ...)

        def __getattr__(self, name: str) -> Any: ...

    def chosen(self) -> list[str]:
        """The names of the trackers switched on, in registration order."""
        return [f.name for f in fields(self) if getattr(self, f.name).enabled]

    def validate(self, cfg: Config) -> None:
        for f in fields(self):
            getattr(self, f.name).validate(cfg)


@functools.cache
def _logger_class(trackers: tuple[tuple[str, type], ...]) -> type:
    entries = [(name, config, field(default_factory=config)) for name, config in trackers]
    return make_dataclass("LoggerConfig", entries, bases=(LoggerConfig,))


def logger_config(entries: dict[str, Any] | None = None) -> LoggerConfig:
    """The `logger` section of the registered trackers: `entries` (name -> its config) as
    given, the others at their defaults (not chosen)."""
    entries = dict(entries or {})
    trackers = tuple((c.name, c.config) for c in components("logger"))
    return _logger_class(trackers)(**entries)


def default_logger() -> LoggerConfig:
    """What conf/config.yaml's logger default gives: DEFAULT_TRACKERS switched on."""
    return logger_config({name: _enabled(name) for name in DEFAULT_TRACKERS})


def _enabled(name: str) -> TrackerConfig:
    config: Any = {c.name: c.config for c in components("logger")}[name]  # a TrackerConfig
    return config(enabled=True)
