"""Components that register themselves with their own config dataclass, in the style of timm's
`@register_model`: a backbone (`model` section), a dataset (`dataset`) or a tracker (`logger`).

    @register_backbone("tiny_mlp", config=TinyMlpConfig)
    def tiny_mlp(cfg, *, in_channels, image_size, ways, bn_weight_steps, bn_stat_steps,
                 channels_last): ...

The config dataclass derives from `ComponentConfig`; its fields are the keys of the section
(`model.hidden`), a key it lacks is refused, and its `validate(cfg)` checks them against the
rest of the config. A component outside mamlpp names its module in `_target_` (its YAML:
`_target_: my_package.tiny_mlp`); importing it registers the component. This module imports
nothing of mamlpp's higher layers: the built-in builders attach themselves where they live.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from mamlpp.errors import ConfigError

if TYPE_CHECKING:
    from mamlpp.config.schema import Config

# The config sections whose `name` chooses a registered component, and what each one is.
SECTIONS = {
    "model": "backbone",
    "dataset": "dataset",
    "logger": "tracker",
    "algorithm": "algorithm",
}
# The sections whose `name` chooses one component (a logger section holds several trackers,
# each under its own name).
NAMED_SECTIONS = tuple(s for s in SECTIONS if s != "logger")


@dataclass
class ComponentConfig:
    """What every component's config has: the code that registers it when it is not part of
    mamlpp (for model=module and dataset=custom: the user's class or function, see their
    configs). Backbone and dataset configs add `name` (which one); a tracker's name is its key
    under `logger`."""

    _target_: str | None = None

    def validate(self, cfg: Config) -> None:
        """Ranges and cross-section checks of this component's keys (one-line ConfigError)."""


@dataclass
class TrackerConfig(ComponentConfig):
    # The optional modules the tracker needs, and the pip extra that installs them (checked
    # before a run starts: mamlpp.trackers.factory.check_installed).
    packages: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    # Set by choosing the tracker in the `logger` group (logger=[tensorboard,mlflow]).
    enabled: bool = False


@dataclass
class Component:
    section: str
    name: str
    config: type[ComponentConfig]
    build: Callable[..., Any] | None = None

    def own_keys(self) -> tuple[str, ...]:
        """The keys of its section."""
        return tuple(f.name for f in fields(self.config))


_REGISTRY: dict[str, dict[str, Component]] = {section: {} for section in SECTIONS}


def register(section: str, name: str, config: type[ComponentConfig], build: Any = None) -> None:
    """Register `name` in `section` with its config dataclass (and, once it is known, what
    builds it). Registering the same config again only attaches `build`."""
    if not (isinstance(config, type) and issubclass(config, ComponentConfig)):
        raise TypeError(f"{name}: config {config!r} is not a ComponentConfig dataclass")
    if section in NAMED_SECTIONS and "name" not in {f.name for f in fields(config)}:
        raise TypeError(f"{name}: {config.__name__} needs a `name` field")
    known = _REGISTRY[section].get(name)
    if known is not None and known.config is not config:
        raise ConfigError(
            f"{section}={name} is registered twice, with {known.config.__name__} and "
            f"{config.__name__}: choose another name"
        )
    built = build or (known.build if known is not None else None)
    _REGISTRY[section][name] = Component(section, name, config, built)


def _decorator(section: str) -> Callable[..., Callable[[Any], Any]]:
    def register_in(name: str, *, config: type[ComponentConfig]) -> Callable[[Any], Any]:
        def decorate(build: Any) -> Any:
            register(section, name, config, build)
            return build

        return decorate

    register_in.__doc__ = (
        f"Register a {SECTIONS[section]}: @register_{SECTIONS[section]}(name, config=...)"
    )
    return register_in


register_backbone = _decorator("model")
register_dataset = _decorator("dataset")
register_tracker = _decorator("logger")
register_algorithm = _decorator("algorithm")


def names(section: str) -> list[str]:
    return sorted(_REGISTRY[section])


def components(section: str) -> list[Component]:
    """The registered components of `section`, in registration order (built-ins first)."""
    return list(_REGISTRY[section].values())


def known_keys(section: str) -> set[str]:
    """Every key some registered component of `section` has."""
    return {k for c in components(section) for k in c.own_keys()}


def component(section: str, name: str) -> Component:
    """The registered component, or one line naming the registered ones."""
    found = _REGISTRY[section].get(name)
    if found is None:
        close = difflib.get_close_matches(name, names(section), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"config key '{section}.name' = {name!r} is not a registered {SECTIONS[section]}"
            f"{hint}: allowed one of {tuple(names(section))}, or one of your own whose YAML "
            f"names its module in {section}._target_"
        )
    return found


def builder(section: str, name: str) -> Callable[..., Any]:
    """What builds the component (attached when the module that implements it is imported)."""
    build = component(section, name).build
    if build is None:
        raise ConfigError(f"{section}={name} has a config but nothing that builds it")
    return build


def model_config(name: str = "conv4", **keys: Any) -> ComponentConfig:
    """The config of the registered backbone `name` with `keys` set (for use in Python)."""
    config: Any = component("model", name).config  # a backbone's config has `name`
    return config(name=name, **keys)


def dataset_config(name: str = "omniglot", **keys: Any) -> ComponentConfig:
    """The config of the registered dataset `name` with `keys` set (for use in Python)."""
    config: Any = component("dataset", name).config  # a dataset's config has `name`
    return config(name=name, **keys)
