"""The trackers of a config: checked for their packages up front, then opened together.

The built-in trackers attach their openers to their registered configs here (each imports its
module only when chosen); a tracker of one's own registers itself the same way
(mamlpp.config.registry.register_tracker): `open(tracker_cfg, run_dir, cfg) -> MetricLogger`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from mamlpp.config import (
    Config,
    CsvLoggerConfig,
    LoggerConfig,
    MlflowLoggerConfig,
    TensorboardLoggerConfig,
    WandbLoggerConfig,
    builder,
    register_tracker,
)
from mamlpp.errors import ConfigError
from mamlpp.trackers.base import FanOut, MetricLogger
from mamlpp.trackers.mlflow_store import check_reachable
from mamlpp.trackers.reachable import unreachable

WANDB_CLOUD = "https://api.wandb.ai"  # wandb's server unless WANDB_BASE_URL says otherwise


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a stub in sys.modules
        return False


def check_installed(cfg: LoggerConfig) -> None:
    """Refuse, in one line, a chosen tracker that cannot work: its package missing (naming the
    pip extra) or its tracking server unreachable."""
    for name in cfg.chosen():
        tracker = getattr(cfg, name)  # its config says what it needs
        missing = [m for m in tracker.packages if not _installed(m)]
        if missing:
            raise ConfigError(
                f"config key 'logger' chooses {name}, but {', '.join(missing)} is not "
                f"installed: pip install 'mamlpp[{tracker.extra}]'"
            )
    # LoggerConfig's fields are the registered trackers, made when they register.
    mlflow: Any = cfg.mlflow
    wandb: Any = cfg.wandb
    if mlflow.enabled:
        check_reachable(mlflow)
    if wandb.enabled and wandb.mode == "online":
        url = os.environ.get("WANDB_BASE_URL") or WANDB_CLOUD
        why = unreachable(url)
        if why is not None:
            raise ConfigError(
                f"wandb server {url} is unreachable ({why}) and logger.wandb.mode is online: "
                "set logger.wandb.mode=offline (then `wandb sync`), or WANDB_BASE_URL"
            )


def open_trackers(cfg: Config, run_dir: Path) -> MetricLogger:
    """The chosen trackers behind one logger (call its `resume` before logging)."""
    loggers = [
        builder("logger", name)(getattr(cfg.logger, name), run_dir, cfg)
        for name in cfg.logger.chosen()
    ]
    return FanOut(loggers)


@register_tracker("tensorboard", config=TensorboardLoggerConfig)
def _tensorboard(c: TensorboardLoggerConfig, run_dir: Path, cfg: Config) -> MetricLogger:
    from mamlpp.trackers.tensorboard import TensorboardLogger

    return TensorboardLogger(run_dir / c.dir)


@register_tracker("csv", config=CsvLoggerConfig)
def _csv(c: CsvLoggerConfig, run_dir: Path, cfg: Config) -> MetricLogger:
    from mamlpp.trackers.csv_file import CsvLogger

    return CsvLogger(run_dir / c.file)


@register_tracker("mlflow", config=MlflowLoggerConfig)
def _mlflow(c: MlflowLoggerConfig, run_dir: Path, cfg: Config) -> MetricLogger:
    from mamlpp.trackers.mlflow_tracker import MlflowLogger

    return MlflowLogger(c, run_dir, cfg.experiment_name, Path(cfg.paths.runs_dir))


@register_tracker("wandb", config=WandbLoggerConfig)
def _wandb(c: WandbLoggerConfig, run_dir: Path, cfg: Config) -> MetricLogger:
    from mamlpp.trackers.wandb_tracker import WandbLogger

    return WandbLogger(c, run_dir, cfg.experiment_name)
