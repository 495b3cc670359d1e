"""MetaLearner: a Learner with its own OuterStep, the one-object API from before the split.

Training builds the two apart (algorithms.factory.build_learner, then the runtime's
algorithms.outer_step.build_outer_step); this class keeps scripts, notebooks and tests that
construct `MetaLearner(...)` and call `train_step` working. It adds nothing to either part.
"""

from __future__ import annotations

from typing import Any

from mamlpp.algorithms.factory import build_network
from mamlpp.algorithms.inner_lr import InnerRuleFactory
from mamlpp.algorithms.learner import Learner
from mamlpp.algorithms.outer_step import (
    MetaStepSync,
    OptimizerFactory,
    OuterStep,
    StepResult,
)
from mamlpp.config import AlgorithmConfig, ComponentConfig, SpeedConfig
from mamlpp.nn.contract import MetaBackbone
from mamlpp.tasks import EpisodeBatch, task_accuracies, task_losses

__all__ = [
    "EpisodeBatch",
    "Learner",
    "MetaLearner",
    "StepResult",
    "build_network",
    "task_accuracies",
    "task_losses",
]


class MetaLearner(Learner):
    def __init__(
        self,
        algorithm: AlgorithmConfig,
        model: ComponentConfig | MetaBackbone,
        in_channels: int,
        image_size: int,
        ways: int,
        total_iterations: int,
        impl: str = "batched",
        precision: str = "fp32",
        speed: SpeedConfig | None = None,
        iters_per_epoch: int = 0,
        optimizer: OptimizerFactory | None = None,
        inner_rule: InnerRuleFactory | None = None,
    ) -> None:
        """`model` is a config (nn.backbones builds it) or a network already built that meets
        the MetaBackbone contract (mamlpp.nn.contract). `optimizer(params, lr)` builds the
        meta-optimizer (algorithms.optimizer; Adam when None)."""
        speed = speed or SpeedConfig()
        net = build_network(algorithm, model, in_channels, image_size, ways, speed.channels_last)
        super().__init__(algorithm, net, impl, precision, speed.checkpoint_inner_steps, inner_rule)
        self.outer = OuterStep(self, algorithm, total_iterations, iters_per_epoch, optimizer)

    @property
    def cfg(self) -> AlgorithmConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, value: AlgorithmConfig) -> None:
        """One config for both parts: a copy given another one changes how both behave."""
        self._cfg = value
        if "outer" in self.__dict__:
            self.outer.cfg = value

    @property
    def optimizer(self) -> Any:
        return self.outer.optimizer

    @property
    def sync(self) -> MetaStepSync | None:
        return self.outer.sync

    @sync.setter
    def sync(self, value: MetaStepSync | None) -> None:
        self.outer.sync = value

    @property
    def graphed_step(self) -> Any:
        return self.outer.graphed_step

    @property
    def total_iterations(self) -> int:
        return self.outer.total_iterations

    def use_cuda_graphs(self) -> None:
        self.outer.use_cuda_graphs()

    def train_step(self, batch: EpisodeBatch, epoch: int, iteration: int) -> StepResult:
        return self.outer.train_step(batch, epoch, iteration)
