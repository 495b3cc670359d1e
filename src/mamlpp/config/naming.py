"""Run directory names: one experiment, one directory, however the command spells it.

The name lists the overrides that change the experiment relative to the chosen preset (or the
defaults): group choices other than the preset's, and keys whose value differs from what the
preset and those groups give. Spelling out a default (`seed=0`, `algorithm=mamlpp` under a
MAML++ preset) or setting a neutral key (NEUTRAL_KEYS: device, run.*, paths, ...) names nothing.
For datasets whose source *is* the data (image folders, Mini-/Tiny-ImageNet; Omniglot sources
are mirrors), the source is part of the name, so another folder is another run.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from mamlpp.config.identity import is_module_argument, is_neutral
from mamlpp.config.paths import conf_dir

GROUPS = ("dataset", "task", "model", "algorithm", "ablation")
_MISSING = object()


def run_name(root: DictConfig) -> str:
    """The run directory's last component for the job whose full config (hydra node included)
    is `root`: sorted `key=value` overrides that matter, or "base"."""
    choices = root.hydra.runtime.choices
    parsed = OverridesParser.create().parse_overrides([str(o) for o in root.hydra.overrides.task])
    preset = [f"experiment={choices['experiment']}"] if choices.get("experiment") else []
    preset = _searchpath(root) + preset
    preset_choices = compose("config", preset, return_hydra_config=True).hydra.runtime.choices
    groups = [
        str(o.input_line)
        for o in parsed
        if o.key_or_group in GROUPS
        and choices.get(o.key_or_group) != preset_choices.get(o.key_or_group)
    ]
    reference = compose("config", preset + groups)
    kept = list(groups)
    for o in parsed:
        key = o.key_or_group
        if key in GROUPS or key == "experiment" or key.startswith("hydra") or "/" in key:
            continue
        if is_neutral(key) or key == "dataset.source":
            continue
        if _value(root, key) != _value(reference, key):
            kept.append(_canonical(str(o.input_line), root))
    source = root.dataset.get("source")
    if root.dataset.name != "omniglot" and source:
        kept.append(f"dataset.source={source_tag(str(source))}")
    return ",".join(sorted(kept)) or "base"


def _searchpath(root: DictConfig) -> list[str]:
    """The run's hydra.searchpath (a researcher's conf dir of own components), as an override
    for composing the reference configs with the same group options."""
    paths = list(root.hydra.get("searchpath") or [])
    quoted = ",".join("'" + str(p).replace("\\", "\\\\").replace("'", "\\'") + "'" for p in paths)
    return [f"hydra.searchpath=[{quoted}]"] if paths else []


def _canonical(line: str, root: DictConfig) -> str:
    """One spelling per key: without the `+` that adding a key needs, and a model=module
    constructor argument as model.kwargs.<name> however it was given (`+model.width=32`)."""
    key, _, value = line.lstrip("+").partition("=")
    parts = key.split(".")
    module = parts[0] == "model" and root.model.get("name") == "module"
    if module and len(parts) == 2 and is_module_argument(parts[1]):
        key = f"model.kwargs.{parts[1]}"
    return f"{key}={value}"


def source_tag(source: str) -> str:
    """A folder-name-safe tag of a data source: its last path part and a hash of its path."""
    absolute = os.path.abspath(os.path.expanduser(source))
    digest = hashlib.sha1(absolute.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{os.path.basename(absolute.rstrip(os.sep)) or 'root'}-{digest}"


def compose(name: str, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """Hydra's compose inside the running app (or mamlpp.compose), else with our conf/."""
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(name, overrides, return_hydra_config=return_hydra_config)
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        return hydra_compose(name, overrides, return_hydra_config=return_hydra_config)


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_MISSING)
