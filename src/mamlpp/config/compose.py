"""From Hydra's composed DictConfig (or a saved config) to a validated `Config`: the ConfigStore
entry and resolvers, the components' sections checked against their own config dataclasses, and
refusal of keys nothing would read.

The component sections (`model`, `dataset`, `algorithm`, `logger`) are open in the Hydra
schema: a preset may set keys of a backbone or dataset other than the one finally chosen (a
preset's `model.filters` does not stop `model=resnet12` on top of it). `to_config` keeps the
keys the chosen component has and drops those another registered component has; a key no
component has is an error, and so is a key the command line names that the chosen component
lacks (`check_unread_overrides`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import field as dataclass_field
from dataclasses import fields, is_dataclass, make_dataclass
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mamlpp.config.identity import is_module_argument
from mamlpp.config.naming import run_name
from mamlpp.config.registry import (
    NAMED_SECTIONS,
    SECTIONS,
    Component,
    ComponentConfig,
    component,
    known_keys,
    names,
)
from mamlpp.config.registry import components as registered
from mamlpp.config.schema import Config
from mamlpp.config.trackers import logger_config
from mamlpp.config.validation import validate
from mamlpp.errors import ConfigError, first_line, locate

# Called with (key, value) before the code a `_target_` names is imported: raises to refuse.
Allow = Callable[[str, str], None]

# Config's fixed sections (dataclasses), read off its (postponed, so string) annotations.
_HINTS = get_type_hints(Config)
_SECTIONS: dict[str, Any] = {
    n: h for n, h in _HINTS.items() if is_dataclass(h) and n not in SECTIONS
}
_TOP_KEYS = tuple(f.name for f in fields(Config))


def _schema_class() -> type:
    """Config with the component sections as open mappings: what Hydra composes into."""
    entries: list[tuple[str, Any, Any]] = []
    for f in fields(Config):
        if f.name in SECTIONS:
            open_section: Any = dataclass_field(default_factory=dict)
            entries.append((f.name, dict[str, Any], open_section))
        else:
            entries.append((f.name, _HINTS[f.name], f))
    return make_dataclass("ConfigSchema", entries)


def schema_node() -> DictConfig:
    """The schema Hydra checks `conf/config.yaml` against (names and types of the fixed
    sections); also the base a saved config is read back onto."""
    node = OmegaConf.structured(_schema_class())
    for section in SECTIONS:
        OmegaConf.set_struct(node[section], False)
    return node


def register_configs() -> None:
    """Register the schema so `conf/config.yaml` is type-checked against it, and the resolver
    that names run directories. Safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=schema_node())
    if not OmegaConf.has_resolver("path_join"):
        OmegaConf.register_new_resolver(
            "path_join", lambda *parts: os.path.normpath(os.path.join(*map(str, parts)))
        )
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)


def _run_name(*, _root_: DictConfig) -> str:
    return run_name(_root_)


def _resolve(section: str, name: Any, target: Any, key: str, allow: Allow | None) -> Component:
    """The registered component `name`; a component outside mamlpp is registered by importing
    the module its `_target_` names (after `allow` agreed to it)."""
    if name not in names(section) and isinstance(target, str) and "." in target:
        if allow is not None:
            allow(key, target)
        locate(target, key, f"; it should register {section}={name}")
    if not isinstance(name, str):
        raise ConfigError(f"config key '{section}.name' = {name!r} is invalid: a name is needed")
    return component(section, name)


def _build(comp: Component, data: Mapping[str, Any], where: str) -> ComponentConfig:
    """The component's config from the keys of `data` it has (the others were checked)."""
    own = {k: v for k, v in data.items() if k in comp.own_keys()}
    try:
        built = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(comp.config), own))
        assert isinstance(built, ComponentConfig)
        return built
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        named = f"config key '{where}.{key}'" if key else f"config section '{where}'"
        raise ConfigError(f"{named}: {first_line(exc)}") from exc


def _unknown(section: str, data: Mapping[str, Any], where: str, known: set[str]) -> None:
    for key in data:
        if key not in known:
            _refuse_unknown(f"{where}.{key}")


def section_config(section: str, data: Mapping[str, Any], allow: Allow | None = None) -> Any:
    """A component section (`model`, `dataset`, `algorithm` or `logger`) as its components'
    configs. Keys of other registered components are dropped (a preset's, or those a config
    saved by an earlier mamlpp held); a key no registered component has is refused."""
    if section == "logger":
        entries = {}
        known = {c.name for c in registered("logger")}
        for name, entry in data.items():
            entry = entry or {}
            if name not in known and not entry.get("enabled"):
                # A tracker the run did not use, registered by the process that saved the
                # config (its section says enabled: false): nothing here would read it.
                continue
            comp = _resolve(section, name, entry.get("_target_"), f"logger.{name}._target_", allow)
            _unknown(section, entry, f"logger.{name}", set(comp.own_keys()))
            entries[name] = _build(comp, entry, f"logger.{name}")
        return logger_config(entries)
    comp = _resolve(section, data.get("name"), data.get("_target_"), f"{section}._target_", allow)
    _unknown(section, data, section, known_keys(section))
    return _build(comp, data, section)


def check_unread_overrides(cfg: Config, overrides: list[str]) -> None:
    """Refuse a dataset.*, model.* or algorithm.* key given on the command line that the
    chosen loader, backbone or algorithm does not have (it would be ignored), and a
    logger.<tracker>.* key of a tracker not chosen. Presets may set keys for other components:
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
        if section not in NAMED_SECTIONS or not name or name == "name":
            continue
        node = getattr(cfg, section)
        if node.name == "module" and name in node.kwargs:
            continue  # a constructor argument of the module (+model.width=32)
        has = [k for k in component(section, node.name).own_keys() if k != "name"]
        if name not in has:
            close = difflib.get_close_matches(name, has, n=1)
            hint = f" (did you mean {section}.{close[0]}?)" if close else ""
            raise ConfigError(
                f"config key '{key}' is not read by {section}={node.name}, so it would be "
                f"ignored{hint}: {section}={node.name} reads "
                f"{', '.join(k for k in has if k != '_target_')}"
            )


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys of a composed config that neither the schema nor any registered component declares
    (added with + or ++)."""
    found = []
    for key in cfg:
        if key not in _TOP_KEYS:
            found.append(str(key))
        elif key in _SECTIONS and isinstance(cfg[key], DictConfig):
            known = {f.name for f in fields(_SECTIONS[key])}
            found += [f"{key}.{k}" for k in cfg[key] if k not in known]
        elif key in NAMED_SECTIONS and isinstance(cfg[key], DictConfig):
            found += [f"{key}.{k}" for k in cfg[key] if k not in known_keys(key)]
    return found


def all_keys() -> list[str]:
    """Every dotted key the schema and the registered components declare."""
    keys = [k for k in _TOP_KEYS if k not in _SECTIONS and k not in SECTIONS]
    keys += [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)]
    keys += [f"{s}.{k}" for s in NAMED_SECTIONS for k in sorted(known_keys(s))]
    return keys + [f"logger.{c.name}.{k}" for c in registered("logger") for k in c.own_keys()]


def _refuse_unknown(key: str) -> None:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(
        f"config key '{key}' is not a mamlpp setting{hint}; keys added with + or ++ are "
        "refused too, since nothing would read them"
    )


def check_known_keys(cfg: DictConfig) -> None:
    """One line naming a key the schema does not know, and the key probably meant."""
    unknown = unknown_keys(cfg)
    if unknown:
        _refuse_unknown(unknown[0])


def _fold_module_kwargs(cfg: DictConfig) -> None:
    """model=module: keys no backbone has (`+model.width=32`) are the module's constructor
    arguments, as if given as model.kwargs.<key>."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or model.get("name") != "module":
        return
    extra = [str(k) for k in model if is_module_argument(str(k))]
    if extra:
        data = OmegaConf.to_container(model, resolve=False)
        assert isinstance(data, dict)
        data["kwargs"] = {**data.get("kwargs", {}), **{k: data.pop(k) for k in extra}}
        cfg.model = data


def to_config(cfg: DictConfig | Config, allow: Allow | None = None) -> Config:
    """Turn a composed (or saved) DictConfig into validated dataclasses. `allow(key, value)` is
    asked before a `_target_` is imported to register a component outside mamlpp (a saved
    config's code, see mamlpp.experiment.trust); None: the config is the user's own."""
    if isinstance(cfg, DictConfig):
        _fold_module_kwargs(cfg)
        try:
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
            assert isinstance(plain, dict)
        except Exception as exc:  # omegaconf reports missing/mistyped values here
            raise ConfigError(f"config: {first_line(exc)}") from exc
        assert isinstance(plain, dict)
        parts = {s: section_config(s, plain.get(s) or {}, allow) for s in SECTIONS}
        check_known_keys(cfg)
        try:
            rest = OmegaConf.merge(
                schema_node(), {k: v for k, v in plain.items() if k not in parts}
            )
            obj = OmegaConf.to_object(rest)
        except Exception as exc:
            raise ConfigError(f"config: {first_line(exc)}") from exc
        values = {f.name: getattr(obj, f.name) for f in fields(Config) if f.name not in parts}
        obj = Config(**values, **parts)
    else:
        obj = cfg
    return validate(obj)


def saved_config(saved: Mapping[str, Any], allow: Allow | None = None) -> Config:
    """A config read back from a run (its config.yaml or a checkpoint's), written by this or an
    earlier mamlpp: a flat model or dataset section with keys of other components still loads."""
    try:
        merged = OmegaConf.merge(schema_node(), saved)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"the saved config: {first_line(exc)}") from exc
    assert isinstance(merged, DictConfig)  # merged onto the schema, a mapping
    return to_config(merged, allow)
