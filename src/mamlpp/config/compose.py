"""From Hydra's composed DictConfig to a validated `Config`: the ConfigStore entry and resolvers,
refusal of keys the schema does not know or the chosen component does not read."""

from __future__ import annotations

import difflib
import os
from dataclasses import fields, is_dataclass
from typing import get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mamlpp.config.identity import is_module_argument
from mamlpp.config.naming import run_name
from mamlpp.config.schema import Config, ModelConfig
from mamlpp.config.validation import validate
from mamlpp.errors import ConfigError, first_line

# Config's sections, read off its (postponed, so string) annotations.
_SECTIONS: dict[str, type] = {
    name: hint for name, hint in get_type_hints(Config).items() if is_dataclass(hint)
}
_TOP_KEYS = tuple(f.name for f in fields(Config))


def register_configs() -> None:
    """Register the schema so `conf/config.yaml` is type-checked against it, and the resolver
    that names run directories. Safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    if not OmegaConf.has_resolver("path_join"):
        OmegaConf.register_new_resolver(
            "path_join", lambda *parts: os.path.normpath(os.path.join(*map(str, parts)))
        )
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)


def _run_name(*, _root_: DictConfig) -> str:
    return run_name(_root_)


# The keys each dataset loader and backbone reads, beyond `name`: a key given on the command
# line that the chosen one does not read would be silently ignored, so it is refused.
_DATASET_COMMON = (
    "source",
    "data_dir",
    "image_size",
    "normalization",
    "augment_crop_padding",
    "augment_flip",
)
DATASET_READS = {
    "omniglot": (*_DATASET_COMMON, "protocol", "split_sizes", "split_seed", "train_rotation"),
    "image_folder": (*_DATASET_COMMON, "layout", "split_ratios", "split_seed"),
    "miniimagenet": _DATASET_COMMON,
    "tiny_imagenet": _DATASET_COMMON,
    "custom": (*_DATASET_COMMON, "_target_", "kwargs", "split_ratios", "split_seed"),
}
MODEL_READS = {
    "conv4": ("filters", "stages", "norm", "pooling", "activation", "bn_momentum"),
    "resnet12": (
        "channels",
        "bn_momentum",
        "norm",
        "drop_rate",
        "dropblock_size",
        "dropblock_ramp",
    ),
    "module": ("_target_", "kwargs", "vectorize", "head", "norm_layers"),
}


def check_unread_overrides(cfg: Config, overrides: list[str]) -> None:
    """Refuse a dataset.* or model.* key given on the command line that the chosen loader or
    backbone does not read (it would be ignored). Presets may set keys for other components:
    a preset's `model.filters` does not stop `model=resnet12` on top of it."""
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        section, _, name = key.partition(".")
        tracker = name.partition(".")[0]
        if section == "logger" and tracker in cfg.logger.chosen():
            continue
        if section == "logger" and name and not name.endswith(".enabled"):
            raise ConfigError(
                f"config key '{key}' is for a tracker that is not chosen, so it would be "
                f"ignored: add it to the logger list, e.g. logger=[tensorboard,{tracker}]"
            )
        name = name.partition(".")[0]
        node = {"dataset": cfg.dataset, "model": cfg.model}.get(section)
        if node is None or not name or name == "name":
            continue
        read = (DATASET_READS if section == "dataset" else MODEL_READS).get(node.name)
        if node.name == "module" and name in node.kwargs:
            continue  # a constructor argument of the module (+model.width=32)
        if read is not None and name not in read:
            raise ConfigError(
                f"config key '{key}' is not read by {section}={node.name}, so it would be "
                f"ignored: {section}={node.name} reads {', '.join(read)}"
            )


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys of a composed config that the schema does not declare (added with + or ++)."""
    found = []
    for key in cfg:
        if key not in _TOP_KEYS:
            found.append(str(key))
        elif key in _SECTIONS and isinstance(cfg[key], DictConfig):
            known = {f.name for f in fields(_SECTIONS[key])}
            found += [f"{key}.{k}" for k in cfg[key] if k not in known]
    return found


def all_keys() -> list[str]:
    """Every dotted key the schema declares."""
    keys = [k for k in _TOP_KEYS if k not in _SECTIONS]
    return keys + [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)]


def check_known_keys(cfg: DictConfig) -> None:
    """One line naming a key the schema does not know, and the key probably meant."""
    unknown = unknown_keys(cfg)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"config key '{key}' is not a mamlpp setting{hint}; keys added with + or ++ are "
            "refused too, since nothing would read them"
        )


def _fold_module_kwargs(cfg: DictConfig) -> None:
    """model=module: keys the schema does not know (`+model.width=32`) are the module's
    constructor arguments, as if given as model.kwargs.<key>."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or model.get("name") != "module":
        return
    extra = [str(k) for k in model if is_module_argument(str(k))]
    if extra:
        data = OmegaConf.to_container(model, resolve=False)
        data["kwargs"] = {**data.get("kwargs", {}), **{k: data.pop(k) for k in extra}}
        cfg.model = OmegaConf.merge(OmegaConf.structured(ModelConfig), data)


def to_config(cfg: DictConfig | Config) -> Config:
    """Turn a composed DictConfig into validated dataclasses."""
    if isinstance(cfg, DictConfig):
        _fold_module_kwargs(cfg)
        check_known_keys(cfg)
        try:
            obj = OmegaConf.to_object(cfg)
        except Exception as exc:  # omegaconf reports missing/mistyped values here
            raise ConfigError(f"config: {first_line(exc)}") from exc
    else:
        obj = cfg
    return validate(obj)
