"""The one-line refusal every config check raises."""

from __future__ import annotations

from typing import Any

from mamlpp.errors import ConfigError


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: allowed {allowed}")
