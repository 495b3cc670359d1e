"""User-facing errors: one clear line, no traceback unless debugging."""

from __future__ import annotations

from typing import Any


class MamlppError(Exception):
    """An error the user can fix (bad config, missing data); printed as one line."""


class ConfigError(MamlppError):
    """A config value is missing, mistyped or out of range."""


class DataError(MamlppError):
    """A dataset is missing, unreadable or does not have the expected structure."""


def first_line(exc: BaseException) -> str:
    """An exception's message reduced to its first line (its type's name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def locate(target: str, key: str, hint: str = "") -> Any:
    """The object a config's `_target_` names (package.module.name); one line naming `key` when
    it cannot be imported (`hint` says what was expected)."""
    from mamlpp.targets import TargetError, import_target

    try:
        return import_target(target)
    except Exception as exc:
        cause = exc if isinstance(exc, TargetError) else f"{type(exc).__name__}: {first_line(exc)}"
        raise ConfigError(
            f"config key '{key}' = {target!r}: cannot import it: {cause}{hint}"
        ) from exc
