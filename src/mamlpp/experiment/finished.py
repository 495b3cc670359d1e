"""A finished run: its results.json and done marker, written last, and what re-running it does
(print its results, test again with run.retest=true, or start over with run.resume=never)."""

from __future__ import annotations

import json
import time
from typing import Any

from mamlpp.config import Config
from mamlpp.experiment.checkpoints import WriteError, atomic_write_text
from mamlpp.experiment.console import log, log_file_only
from mamlpp.experiment.results import Results, finished_identity, read_results
from mamlpp.experiment.results_table import format_results
from mamlpp.experiment.run_state import ConfigDriftError, config_diffs, move_aside, run_identity
from mamlpp.layout import RunLayout


def show_results(results: Results | dict[str, Any]) -> None:
    """The results table on stdout and in train.log."""
    table = format_results(results)
    print(table, flush=True)
    log_file_only(table)


def finished_results(cfg: Config, run: RunLayout) -> dict[str, Any] | None:
    """The results of a finished run that is not to be re-tested or restarted, else None."""
    done, results_path = run.done, run.results
    if not (done.exists() and results_path.exists()):
        return None
    if cfg.run.resume == "never":
        aside = move_aside(done, "old")
        log(f"run.resume=never: starting again; moved the done marker to {aside.name}")
        return None
    saved = finished_identity(done, results_path)
    diffs = config_diffs(saved, cfg) if saved is not None else ""
    if cfg.run.retest:
        # A re-test rewrites results.json and done: only with the run's own settings, so
        # that the command that made the run keeps finding it.
        if diffs:
            raise ConfigDriftError(
                f"run.retest=true re-tests a finished run with its own settings only, but "
                f"the config differs in {diffs}; to evaluate with other settings, run "
                f"mamlpp-eval {run.root} <key=value ...> (writes eval/, keeps results.json)"
            )
        log("run.retest=true: testing the finished run again")
        return None
    # Its results are those of its own config: run.allow_config_change does not apply here.
    if diffs:
        raise ConfigDriftError(
            f"run {run.root} has finished with another config, which differs in {diffs} "
            "(also with run.allow_config_change=true: its results are not this config's); "
            f"use a new run directory, or evaluate it: mamlpp-eval {run.root} <key=value>"
        )
    results = read_results(results_path).to_dict()
    log(f"run already finished: {results_path} (run.retest=true tests again)")
    show_results(results)
    return results


def write_finished(
    run: RunLayout, results: dict[str, Any], cfg: Config, data_identity: str | None
) -> None:
    """results.json, then the done marker (which names the run's identity), then the table."""
    try:
        atomic_write_text(run.results, json.dumps(results, indent=2))
    except WriteError:
        show_results(results)  # the numbers are not lost; the test phase can be re-run
        raise
    done: dict[str, Any] = {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # Checked when the run is re-run.
        "experiment": run_identity(cfg, data_identity),
    }
    atomic_write_text(run.done, json.dumps(done, indent=1))
    show_results(results)
