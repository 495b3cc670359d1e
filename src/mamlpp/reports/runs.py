"""The runs under mamlpp-report's folders: each results.json read, checked and counted once.

A results.json mamlpp did not write (`{}`, `[]`, truncated, another tool's) is skipped with a
one-line note instead of ending the report. The same run reached twice (a folder given twice, a
folder inside another one given too, a copied run directory) would be two seeds with a spread of
0.00: runs are told apart by experiment, identity and seed, and a duplicate is named and
counted once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlpp.errors import first_line
from mamlpp.experiment.results import Results
from mamlpp.layout import RESULTS, RunLayout

PREFIX = "mamlpp-report"
# What the report reads from every results.json.
CONFIG_FIELDS = ("dataset", "ways", "shots", "algorithm")
NUMBER_FIELDS = ("test_accuracy_mean", "test_accuracy_ci95", "best_val_accuracy")


@dataclass
class Found:
    """The runs to report (run directory, results) and one-line notes on what was left out."""

    runs: list[tuple[Path, Results]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def problem(result: Any) -> str | None:
    """Why `result` is not a results.json of a mamlpp run (None: it is one)."""
    if not isinstance(result, dict):
        return f"a JSON {type(result).__name__}, not an object"
    config = result.get("config")
    if not isinstance(config, dict):
        return "no 'config' object"
    missing = [k for k in CONFIG_FIELDS if k not in config]
    if missing:
        return f"'config' lacks {', '.join(missing)}"
    bad = [k for k in NUMBER_FIELDS if not _is_number(result.get(k))]
    if bad:
        return f"no number {', '.join(bad)}"
    if "identity" in result and not isinstance(result["identity"], dict):
        return "'identity' is not an object"
    if not all(math.isfinite(result[k]) for k in NUMBER_FIELDS):
        return "a non-finite accuracy (the run diverged)"
    return None


def run_key(result: Results) -> str:
    """Experiment, identity and seed: equal for two copies of one run. Files without an
    identity have only a summary, so their numbers must be equal too."""
    if result.identity is not None:
        key: Any = [result.config.get("experiment"), result.identity, result.config.get("seed")]
    else:
        key = [result.config, [getattr(result, k) for k in NUMBER_FIELDS]]
    return json.dumps(key, sort_keys=True, default=str)


def _read(path: Path) -> tuple[Results | None, str | None]:
    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        return None, f"cannot read it ({exc.strerror or exc})"
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"not JSON ({first_line(exc)})"
    why = problem(result)
    if why is None:
        try:
            return Results.from_dict(result), None
        except ValueError as exc:  # a field every results file has is missing
            why = str(exc)
    return None, f"not a mamlpp run's results.json ({why})"


def _overlap(d: Path, earlier: list[Path]) -> str | None:
    """How folder `d` overlaps a folder given before it, if it does."""
    for o in earlier:
        if o.resolve() == d.resolve():
            return "is given twice"
        if d.resolve().is_relative_to(o.resolve()):
            return f"is inside {o}"
        if o.resolve().is_relative_to(d.resolve()):
            return f"holds {o}"
    return None


def scan_runs(dirs: list[Path]) -> Found:
    """Every run's results.json under `dirs` (mamlpp-eval's <run>/eval/<name>/ are not runs),
    each run once."""
    found = Found()
    by_path: dict[Path, Path] = {}
    by_key: dict[str, tuple[Path, Results]] = {}
    for i, d in enumerate(dirs):
        overlap = _overlap(d, dirs[:i])
        if overlap:
            found.notes.append(f"{PREFIX}: note: {d} {overlap}; its runs are counted once")
        for path in sorted(d.rglob(RESULTS)):
            if RunLayout.is_eval_results(path):
                continue
            real = path.resolve()
            if real in by_path:
                if by_path[real] != path:
                    found.notes.append(
                        f"{PREFIX}: note: {path} is {by_path[real]} reached again; counted once"
                    )
                continue
            by_path[real] = path
            result, why = _read(path)
            if result is None:
                found.notes.append(f"{PREFIX}: skipping {path}: {why}")
                continue
            key = run_key(result)
            if key in by_key:
                first, kept = by_key[key]
                differ = kept.test_accuracy_mean != result.test_accuracy_mean
                found.notes.append(
                    f"{PREFIX}: note: {path.parent} is the same run as {first} (experiment "
                    f"{result.config.get('experiment', '?')}, seed "
                    f"{result.config.get('seed', '?')}); counted once"
                    + (", the first one's results kept" if differ else "")
                )
                continue
            by_key[key] = (path.parent, result)
            found.runs.append((path.parent, result))
    return found
