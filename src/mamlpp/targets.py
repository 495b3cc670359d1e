"""Import what a config's `_target_` names, with the real cause in one line when it fails.

Hydra's `get_object` logs ERROR lines and puts the cause on the second line of its message, so
a typo (`torch.optim.Adm`) read as "Error loading 'torch.optim.Adm':" and nothing else. This
resolves the dotted name itself and says which part is missing, and what it probably meant.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from mamlpp.errors import first_line


class TargetError(ImportError):
    """A `_target_` that cannot be imported; its message is one line naming the cause."""


def import_target(target: str) -> Any:
    """The object `package.module.Name` names, importing modules as needed (as Hydra does)."""
    parts = target.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise TargetError("not a dotted name package.module.Name")
    obj: Any = _import(parts[0], None)
    for i, part in enumerate(parts[1:], start=1):
        parent, dotted = obj, ".".join(parts[: i + 1])
        try:
            obj = getattr(parent, part)
            continue
        except AttributeError:
            pass
        is_package = isinstance(parent, ModuleType) and hasattr(parent, "__path__")
        if is_package and importlib.util.find_spec(dotted) is not None:
            obj = _import(dotted, parent)
            continue
        names = [n for n in dir(parent) if not n.startswith("_")]
        if is_package:
            names += [m.name for m in pkgutil.iter_modules(parent.__path__)]
        kind = "module" if isinstance(parent, ModuleType) else type(parent).__name__
        raise TargetError(
            f"AttributeError: {kind} '{'.'.join(parts[:i])}' has no attribute '{part}'"
            + _did_you_mean(part, names, ".".join(parts[:i]) + ".")
        )
    return obj


def _import(name: str, parent: ModuleType | None) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the module exists but something it imports does not
            raise TargetError(f"importing {name}: ModuleNotFoundError: {exc}") from exc
        if parent is None:
            hint = _did_you_mean(name, (m.name for m in pkgutil.iter_modules()), "") or (
                " (is its folder on the Python path? e.g. PYTHONPATH=.)"
            )
        else:
            hint = _did_you_mean(name.rpartition(".")[2], dir(parent), parent.__name__ + ".")
        raise TargetError(f"ModuleNotFoundError: no module named '{name}'{hint}") from exc
    except Exception as exc:  # a module that fails while it is imported
        raise TargetError(f"importing {name}: {type(exc).__name__}: {first_line(exc)}") from exc


def _did_you_mean(word: str, names: Iterable[str], prefix: str) -> str:
    close = difflib.get_close_matches(word, sorted(set(names)), n=1, cutoff=0.7)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
