"""`hydra.sweeper._target_` of conf/hparams_search: the stock OptunaSweeper, continued.

Hydra instantiates sweepers only from the hydra_plugins package and imports every module in it
on each start, so optuna is imported only when the sweeper is built: without mamlpp[optuna]
this module still loads quietly. The logic is mamlpp.apps.optuna_sweeper.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# Hydra imports this module before it builds the sweeper, whose Optuna sampler imports alembic:
# its "setup plugin ..." INFO lines would be the first thing a search prints.
logging.getLogger("alembic").setLevel(logging.WARNING)


class ResumableOptunaSweeper(Sweeper):
    """OptunaSweeper whose `n_trials` counts the whole study; killed trials run again; one
    study per experiment and one search per study at a time; one line per trial."""

    def __init__(self, **kwargs: Any) -> None:
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

        self.optuna = OptunaSweeper(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.optuna.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        import sys

        from mamlpp.apps.optuna_sweeper import prepare, report_best
        from mamlpp.errors import MamlppError

        try:
            lock = prepare(self.optuna.sweeper, arguments)
        except MamlppError as err:  # a locked study, a config that cannot be a trial's
            print(f"mamlpp: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
        try:
            self.optuna.sweep(arguments)
            report_best(self.optuna.sweeper)
        finally:
            if lock is not None:
                lock.release()
