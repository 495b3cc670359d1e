"""The Python API: compose a config as the command line would, train it, load what it made.

cfg = mamlpp.compose("experiment=smoke", "seed=3")   # validated; cfg.run.dir is set
results = mamlpp.train(cfg)                           # in-process, same as mamlpp-train
model = mamlpp.load(cfg.run.dir)                      # see mamlpp.inference
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import open_dict

from mamlpp.config import (
    Config,
    check_unread_overrides,
    conf_dir,
    register_configs,
    to_config,
    validate,
)
from mamlpp.errors import ConfigError
from mamlpp.trackers.factory import check_installed


def compose(*overrides: str) -> Config:
    """The validated config `mamlpp-train <overrides>` runs, with `run.dir` set to the
    directory that command would use (relative to the current directory)."""
    register_configs()
    try:
        with initialize_config_dir(conf_dir(), version_base="1.3"):
            dcfg = hydra_compose("config", list(overrides), return_hydra_config=True)
            run_dir = str(dcfg.hydra.run.dir)  # its name composes the preset: inside Hydra
    except HydraException as exc:
        raise ConfigError(f"compose: {str(exc).splitlines()[0]}") from exc
    with open_dict(dcfg):
        del dcfg["hydra"]
    cfg = to_config(dcfg)
    check_unread_overrides(cfg, list(overrides))
    if cfg.run.dir is None:
        cfg.run.dir = run_dir
    return cfg


def train(cfg: Config, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume, or report a finished) run of `cfg` in `run_dir` (default: cfg.run.dir)
    and return its results (results.json). A stop signal raises StopRequested after the
    checkpoint, as the command line's exit code 75."""
    where = run_dir if run_dir is not None else cfg.run.dir
    if where is None:
        raise ConfigError("no run directory: pass run_dir, or build cfg with mamlpp.compose")
    validate(cfg)
    check_installed(cfg.logger)  # before the data and the model are built
    from mamlpp.experiment.builder import ExperimentBuilder

    cfg.run.dir = str(where)
    return ExperimentBuilder(cfg, Path(where)).run()
