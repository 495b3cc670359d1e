"""Code that a saved file names is imported only when the user names it too.

A checkpoint or a run's config.yaml records import paths: `model._target_` (model=module or a
user's backbone), `algorithm._target_` (a user's algorithm), `algorithm.inner_rule._target_` (a
user's inner rule) and `dataset._target_` (dataset=custom or a user's dataset). Importing one
runs its module, and calling it runs more, so a downloaded file could run anything.
`mamlpp-eval` and `mamlpp.load` therefore import such a path only when this command line or
call names the same value (`model._target_=pkg.Net`), or with the opt-in `--trust-code` /
`trust_code=True`, which logs what it imports. The saved meta-optimizer (`optimizer._target_`)
is not needed to evaluate a model and is never imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mamlpp.config import Config, OptimizerConfig
from mamlpp.errors import ConfigError
from mamlpp.experiment.console import log

TARGET = "_target_"
# The import paths a trained model's learner is built from, and those evaluating or loading a
# model may need (the data's lister too).
MODEL_CODE_KEYS = ("model._target_", "algorithm._target_", "algorithm.inner_rule._target_")
CODE_KEYS = (*MODEL_CODE_KEYS, "dataset._target_")


def code_value(node: Any, key: str) -> str | None:
    """The import path `key` (dotted) holds in a Config or a saved config mapping; None when
    unset (an empty inner_rule._target_ is the built-in rule)."""
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
        if node is None:
            return None
    return str(node) or None


@dataclass
class CodePolicy:
    """What may be imported from a config read from `source`: the `_target_` values the user
    named (`key -> value`), or everything when `trust_code` (each said once)."""

    source: str
    named: Mapping[str, str] = field(default_factory=dict)
    trust_code: bool = False
    _said: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def allow(self, key: str, value: str | None) -> None:
        """Return when `value` of `key` may be imported; else one line naming how to allow it."""
        if value is None or self.named.get(key) == value:
            return
        if self.trust_code:
            if (key, value) not in self._said:
                self._said.add((key, value))
                log(f"warning: trust_code: importing {key}={value}, named by {self.source}")
            return
        raise ConfigError(
            f"config key '{key}' = {value!r} is read from {self.source}, and mamlpp imports "
            f"no code a file names: name it yourself ({key}={value}) or opt in with "
            "--trust-code (trust_code=True in Python)"
        )

    def model_config(self, cfg: Config) -> Config:
        """`cfg` to build the members from: its model's code (backbone, algorithm, inner rule)
        allowed, its optimizer the default (evaluation takes no meta-step, and the saved one is
        not imported)."""
        for key in MODEL_CODE_KEYS:
            self.allow(key, code_value(cfg, key))
        return replace(cfg, optimizer=OptimizerConfig())

    def dataset_config(self, cfg: Config) -> None:
        """Return when `cfg.dataset` may be loaded (its lister, if any, allowed)."""
        self.allow("dataset._target_", cfg.dataset._target_)


def named_targets(overrides: Iterable[str]) -> dict[str, str]:
    """The `_target_` values among `key=value` overrides (the code the user names)."""
    named = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.endswith(TARGET):
            named[key] = value
    return named


def check_literal(saved: Any, source: str, where: str = "") -> None:
    """Refuse `${...}` in a saved config: mamlpp writes its configs resolved, and a file's
    interpolation would otherwise be resolved (environment variables, resolvers) on reading."""
    if isinstance(saved, Mapping):
        for key, value in saved.items():
            check_literal(value, source, f"{where}.{key}" if where else str(key))
    elif isinstance(saved, list | tuple):
        for i, value in enumerate(saved):
            check_literal(value, source, f"{where}[{i}]")
    elif isinstance(saved, str) and "${" in saved:
        raise ConfigError(
            f"config key '{where}' = {saved!r} in {source} is an interpolation: a saved config "
            "holds plain values only (mamlpp writes them resolved)"
        )
