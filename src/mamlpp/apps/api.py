"""The Python API: compose a config as the command line would, train it, load what it made.

cfg = mamlpp.compose("experiment=smoke", "seed=3")   # validated; cfg.run.dir is set
results = mamlpp.train(cfg)                           # in-process, same as mamlpp-train
model = mamlpp.load(cfg.run.dir)                      # see mamlpp.inference
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import open_dict

from mamlpp.config import (
    Config,
    all_keys,
    check_unread_overrides,
    conf_dir,
    register_configs,
    to_config,
    validate,
)
from mamlpp.errors import ConfigError, first_line
from mamlpp.trackers.factory import check_installed


def compose(*overrides: str | Sequence[str]) -> Config:
    """The validated config `mamlpp-train <overrides>` runs, with `run.dir` set to the
    directory that command would use (relative to the current directory). Overrides are
    strings, `compose("experiment=smoke", "seed=3")`, or lists of them."""
    items = override_list(overrides)
    register_configs()
    try:
        with initialize_config_dir(conf_dir(), version_base="1.3"):
            dcfg = hydra_compose("config", items, return_hydra_config=True)
            run_dir = str(dcfg.hydra.run.dir)  # its name composes the preset: inside Hydra
    except HydraException as exc:
        raise composition_error(exc) from exc
    with open_dict(dcfg):
        del dcfg["hydra"]
    cfg = to_config(dcfg)
    check_unread_overrides(cfg, items)
    if cfg.run.dir is None:
        cfg.run.dir = run_dir
    return cfg


def override_list(args: Sequence[object]) -> list[str]:
    """Override strings given one by one or in lists; one line saying what is taken otherwise."""
    items: list[object] = []
    for arg in args:
        items += list(arg) if isinstance(arg, (list, tuple)) else [arg]
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(
                f"overrides are strings key=value ('experiment=smoke', 'seed=3') or lists of "
                f"them, not {type(item).__name__}"
            )
    return [str(item) for item in items]


def composition_error(exc: Exception) -> ConfigError:
    """Hydra's composition error as one line, naming the key or config option probably meant
    (Hydra's own message spans lines and suggests `+key`, which mamlpp refuses)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    unknown = re.match(r"Could not (?:override|delete from config)\W+'([^']+)'", first)
    if unknown:
        key = unknown.group(1)
        groups = [p.name for p in Path(conf_dir()).iterdir() if p.is_dir()]
        close = difflib.get_close_matches(key, [*all_keys(), *groups], n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        if not close and key.startswith("model."):
            hint = f" (an argument of a model=module constructor is given as +{key}=VALUE)"
        return ConfigError(f"config key '{key}' is not a mamlpp setting{hint}")
    missing = re.search(r"Could not find '(.+)/([^/']+)'", first)
    if missing:
        group, name = missing.groups()
        options: list[str] = []  # Hydra lists them one a line after "Available options in"
        listed = [i for i, line in enumerate(lines) if line.startswith("Available options")]
        for line in lines[listed[0] + 1 :] if listed else []:
            if not re.fullmatch(r"[\w.-]+", line):
                break
            options.append(line)
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        allowed = f": allowed one of {', '.join(options)}" if options else ""
        return ConfigError(f"{group}={name} is not a config option{hint}{allowed}")
    cause = exc.__cause__
    detail = f": {first_line(cause)}" if cause is not None else ""
    return ConfigError(f"compose: {first}{detail}")


def train(
    cfg: Config | str | Sequence[str], *overrides: str, run_dir: str | Path | None = None
) -> dict[str, Any]:
    """Train (or resume, or report a finished) run and return its results (results.json).

    `cfg` is a Config (from `compose`) or override strings, as `compose` takes them:
    `train("experiment=smoke", "seed=3")` or `train(["experiment=smoke", "seed=3"])`. The run
    goes to `run_dir` (default: cfg.run.dir, the directory mamlpp-train would use); after a
    Config it may also come second, as before (`train(cfg, "runs/x")`). A stop signal raises
    StopRequested after the checkpoint, as the command line's exit code 75."""
    if isinstance(cfg, Config) and len(overrides) == 1 and run_dir is None:
        second = overrides[0]
        if isinstance(second, Path) or (isinstance(second, str) and "=" not in second):
            run_dir, overrides = second, ()
    cfg = _config_of(cfg, overrides)
    where = run_dir if run_dir is not None else cfg.run.dir
    if where is None:
        raise ConfigError("no run directory: pass run_dir, or build cfg with mamlpp.compose")
    validate(cfg)
    check_installed(cfg.logger)  # before the data and the model are built
    from mamlpp.experiment.builder import ExperimentBuilder

    cfg.run.dir = str(where)
    return ExperimentBuilder(cfg, Path(where)).run()


def _config_of(cfg: object, overrides: tuple[str, ...]) -> Config:
    """train's first arguments as a Config; one line saying what it takes otherwise."""
    if isinstance(cfg, Config) and not overrides:
        return cfg
    items = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
    items += overrides
    if items and all(isinstance(item, str) for item in items) and not isinstance(cfg, Config):
        return compose([str(item) for item in items])
    what = type(cfg).__name__ if not isinstance(cfg, Config) else "Config and strings"
    raise ConfigError(
        "mamlpp.train takes a Config from mamlpp.compose, or override strings as compose "
        f"does (mamlpp.train('experiment=smoke', 'seed=3') or a list of them), not {what}; "
        "the run directory is the keyword run_dir=DIR"
    )
