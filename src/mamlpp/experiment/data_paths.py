"""Where the data is for a config read back from a run: as mamlpp-train would place it now.

Training resolves `paths.*` from MAMLPP_ROOT / MAMLPP_DATA_DIR (conf/config.yaml) and derives each
dataset's `data_dir` from `paths.data_dir` (conf/dataset/<name>.yaml). A saved config holds the
result. Evaluating it from elsewhere, with the variables set, derives those paths again, so the
data is found where the user keeps it now instead of being downloaded again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mamlpp.config import conf_dir, register_configs
from mamlpp.config.registry import names

DATA_ENV = ("MAMLPP_ROOT", "MAMLPP_DATA_DIR")


def current_paths() -> dict[str, str]:
    """`paths.*` as mamlpp-train resolves them in this process."""
    register_configs()  # the path_join resolver
    raw = OmegaConf.to_container(OmegaConf.load(Path(conf_dir()) / "config.yaml").paths)
    resolved = OmegaConf.to_container(OmegaConf.create({"paths": raw}), resolve=True)
    assert isinstance(resolved, dict)
    return resolved["paths"]


def default_data_dir(name: str, paths: Mapping[str, Any]) -> str | None:
    """`dataset.data_dir` as conf/dataset/<name>.yaml derives it from `paths` (None: it has
    no such default)."""
    group = Path(conf_dir()) / "dataset" / f"{name}.yaml"
    if name not in names("dataset") or not group.is_file():
        return None
    options = OmegaConf.to_container(OmegaConf.load(group))
    raw = options.get("data_dir") if isinstance(options, dict) else None
    if not isinstance(raw, str):
        return None
    register_configs()
    return str(OmegaConf.create({"paths": dict(paths), "data_dir": raw}).data_dir)


def relocated_data_dir(saved: Mapping[str, Any], now: Mapping[str, str]) -> str | None:
    """The saved run's dataset.data_dir derived from `now` instead, when MAMLPP_ROOT or
    MAMLPP_DATA_DIR is set and training derived it from its own paths.data_dir (a data_dir
    given explicitly is kept: None)."""
    if not any(os.environ.get(k) for k in DATA_ENV):
        return None
    dataset, paths = saved.get("dataset", {}), saved.get("paths")
    if not isinstance(paths, Mapping) or "name" not in dataset:
        return None
    if dataset.get("data_dir") != default_data_dir(dataset["name"], paths):
        return None
    return default_data_dir(dataset["name"], now)
