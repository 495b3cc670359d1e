"""User-facing errors: one clear line, no traceback unless debugging."""


class MamlppError(Exception):
    """An error the user can fix (bad config, missing data); printed as one line."""


class ConfigError(MamlppError):
    """A config value is missing, mistyped or out of range."""


class DataError(MamlppError):
    """A dataset is missing, unreadable or does not have the expected structure."""
