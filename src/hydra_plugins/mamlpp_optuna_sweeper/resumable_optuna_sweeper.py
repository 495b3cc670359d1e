"""`hydra.sweeper._target_` of conf/hparams_search: the stock OptunaSweeper, continued.

Hydra instantiates sweepers only from the hydra_plugins package and imports every module in it
on each start, so optuna is imported only when the sweeper is built: without mamlpp[optuna]
this module still loads quietly. The logic is mamlpp.experiment.optuna_sweeper.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ResumableOptunaSweeper(Sweeper):
    """OptunaSweeper whose `n_trials` counts the whole study; killed trials run again."""

    def __init__(self, **kwargs: Any) -> None:
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

        self.optuna = OptunaSweeper(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.optuna.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from mamlpp.experiment.optuna_sweeper import prepare

        prepare(self.optuna.sweeper)
        self.optuna.sweep(arguments)
