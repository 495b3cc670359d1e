"""`mamlpp-train` / `python -m mamlpp.train`: the Hydra entry point of one experiment.

A thin wrapper over `mamlpp.apps.api.train`, which runs a validated config in-process. This
module (also named `mamlpp.train`) is callable, `mamlpp.train(cfg)` or
`mamlpp.train("experiment=smoke")` (see `mamlpp.apps.api.train`), so that the API name works
whether or not it was imported.

Exit codes: 0 done (or already finished), 2 a user error (or a file-system fault: a full disk,
a read-only place) printed as one `mamlpp: error:` line (a full traceback with debug=true), 3 the
run went non-finite (nan/inf loss or gradient; one line, the last good checkpoint kept),
75 (EXIT_RESUMABLE) stopped by SIGTERM/SIGUSR1/SIGUSR2/SIGINT
after a checkpoint: run the same command again to resume; 130 aborted by a second Ctrl-C (the
checkpoints written before it are kept). Hydra's own composition errors
(unknown key or config group option) exit with 1. In a hydra-submitit-launcher job, SIGUSR2
(submitit's timeout/preemption signal) is then passed on to submitit, which requeues the job
and exits itself; the requeued job resumes from the checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mamlpp.apps.run_dir_hook import existing_before
from mamlpp.apps.sweep import record_failure
from mamlpp.config import (
    check_unread_overrides,
    conf_dir,
    objective,
    register_configs,
    to_config,
)
from mamlpp.errors import ConfigError, MamlppError, first_line
from mamlpp.experiment.console import setup_console
from mamlpp.experiment.run_dir import discard_new_run, is_new
from mamlpp.experiment.signals import EXIT_RESUMABLE, StopRequested, pass_on

EXIT_ABORTED = 130  # a second Ctrl-C, as a shell reports an interrupted command

register_configs()


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def _run(dcfg: DictConfig) -> float:
    debug = bool(dcfg.get("debug", False))
    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    new = False
    try:
        new = is_new(Path(output_dir))  # a sweep's job folder: not checked before Hydra
        cfg = to_config(dcfg)  # before the slow torch import: config errors come back at once
        from mamlpp.apps.api import train

        check_unread_overrides(cfg, list(hydra_cfg.overrides.task))
        if hydra_cfg.mode == RunMode.MULTIRUN:  # parallel jobs' lines must be told apart
            setup_console(f"#{hydra_cfg.job.num} {Path(output_dir).name[:40]}")
        if cfg.run.dir is not None and Path(cfg.run.dir).resolve() != Path(output_dir).resolve():
            raise ConfigError(
                f"config key 'run.dir' = {cfg.run.dir!r} is set by mamlpp.compose; on the "
                "command line move the run with hydra.run.dir=DIR"
            )
        cfg.run.dir = output_dir
        results = train(cfg)
    except StopRequested as stop:  # the run has said so in its log
        pass_on(stop.signal_name)  # e.g. to submitit, which requeues the job and exits
        sys.exit(EXIT_RESUMABLE)
    except KeyboardInterrupt:  # a second Ctrl-C: the run has said so in its log
        sys.exit(EXIT_ABORTED)
    except (MamlppError, OSError) as err:  # OSError: a file-system fault not said more exactly
        if new:
            _discard(Path(output_dir))
        if debug:
            raise
        message = str(err) if isinstance(err, MamlppError) else _os_error(err)
        # A config error is the same on every process of a torchrun job: rank 0 says it.
        if not (isinstance(err, ConfigError) and os.environ.get("RANK", "0") != "0"):
            print(f"mamlpp: error: {message}", file=sys.stderr, flush=True)
        if hydra_cfg.mode == RunMode.MULTIRUN and record_failure(
            hydra_cfg.job.num, hydra_cfg.job.override_dirname or "base", message
        ):
            return float("nan")  # the other jobs of the sweep still run; it ends with a summary
        sys.exit(getattr(err, "exit_code", 2))  # 3: NonFiniteError
    except Exception:
        if new:
            _discard(Path(output_dir))
        raise
    return objective(results, cfg.optimized_metric)  # validation, unless a sweep asks for test


def _os_error(err: OSError) -> str:
    """One line for a file-system fault: the file, and what the system said."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or first_line(err)}"


def _discard(run_dir: Path) -> None:
    """A new run failed before its first checkpoint: remove what this command created there,
    and the folders it made for it."""
    if os.environ.get("RANK", "0") != "0":
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a job folder of the sweep's
        stop_at: Path | None = Path(hydra_cfg.sweep.dir)
    else:
        stop_at = existing_before(run_dir)
    made = stop_at is not None and stop_at.resolve() != run_dir.resolve()
    discard_new_run(run_dir, remove_dir=made, stop_at=stop_at)


# Hydra plugins that come from a pip extra: (config group, choice) -> the plugin module and the
# extra that installs it. Every hparams_search preset picks the Optuna sweeper.
_JOBLIB = ("hydra_plugins.hydra_joblib_launcher", "sweep")
_SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "sweep")
PLUGINS = {
    ("hydra/launcher", "local_parallel"): _JOBLIB,
    ("hydra/launcher", "joblib"): _JOBLIB,
    ("hydra/launcher", "slurm"): _SUBMITIT,
    ("hydra/launcher", "submitit_slurm"): _SUBMITIT,
    ("hydra/launcher", "submitit_local"): _SUBMITIT,
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}
HPARAMS_SEARCH_PLUGIN = PLUGINS[("hydra/sweeper", "optuna")]


def missing_plugin(argv: list[str]) -> str | None:
    """One line naming the pip extra of a chosen launcher or sweeper that is not installed
    (Hydra itself would only say that the config group option does not exist)."""
    for arg in argv:
        key, _, choice = arg.partition("=")
        group = key.lstrip("+")
        plugin: tuple[str, str] | None
        if group == "hparams_search" and choice not in ("", "null"):
            plugin = HPARAMS_SEARCH_PLUGIN
        else:
            plugin = PLUGINS.get((group, choice))
        if plugin is None:
            continue
        module, extra = plugin
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (
                f"{group}={choice} needs {module.split('.')[1].replace('_', '-')}, "
                f"which is not installed: pip install 'mamlpp[{extra}]'"
            )
    return None


def main() -> None:
    if any(a.split("=")[0] == "--experimental-rerun" for a in sys.argv[1:]):
        # Hydra's rerun unpickles the named file, and a pickle can run code.
        print(
            "mamlpp: error: --experimental-rerun is not supported (it unpickles a file, which "
            "can run code): re-run the run's command (overrides: <run>/.hydra/overrides.yaml)",
            file=sys.stderr,
        )
        sys.exit(2)
    problem = missing_plugin(sys.argv[1:])
    if problem is not None:
        print(f"mamlpp: error: {problem}", file=sys.stderr)
        sys.exit(2)
    _run()


class _CallableModule(types.ModuleType):
    def __call__(
        self, cfg: Any, *overrides: str, run_dir: str | Path | None = None
    ) -> dict[str, Any]:
        from mamlpp.apps.api import train

        return train(cfg, *overrides, run_dir=run_dir)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
