"""Check a user function's keyword arguments before calling it, naming what it takes.

Why: `dataset.kwargs` go to the user's lister as keywords; a misspelt key otherwise surfaces as
a TypeError traceback from deep inside the call (or, worse, from a call the lister makes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mamlpp.errors import ConfigError


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], key: str, target: str) -> None:
    """One line naming the first argument `fn` does not take, and the parameters it has.

    `key` is the config key the arguments come from (e.g. 'dataset.kwargs'). A function whose
    signature cannot be read (some builtins) is not checked.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for name in kwargs:
        if name not in named:
            where = "dataset.source" if name == "source" else f"{key}.{name}"
            raise ConfigError(
                f"config key '{where}': {target} takes no argument {name!r}; its parameters: "
                f"{', '.join(named) or 'none'}"
            )
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if missing:
        where = "dataset.source" if missing[0] == "source" else f"{key}.{missing[0]}"
        raise ConfigError(
            f"config key '{where}' is not set, but {target} needs the argument {missing[0]!r} "
            f"(its parameters: {', '.join(named)})"
        )
