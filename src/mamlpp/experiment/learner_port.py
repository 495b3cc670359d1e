"""The one place the runtime reaches into the learner it trains.

The loop, the checkpoint store and the callbacks see a learner only through `LearnerPort`:
a meta-step (`train_step(batch, epoch, iteration) -> StepResult`), the meta-optimizer, the
distributed gradient sync, the inner learning rates (for plotting) and the weights. Which
object does each (the learner today; an outer-step object that owns the meta-optimizer,
later) is decided here alone.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class Step(Protocol):
    """What one meta-step reports (mamlpp.algorithms.outer_step.StepResult)."""

    loss: float
    accuracy: float
    meta_lr: float
    second_order: bool
    multi_step_loss: bool
    finite: bool


class LearnerPort:
    """A learner as the runtime uses it: `model` is what evaluation adapts and predicts with
    and what member files hold; `step` runs the meta-steps."""

    def __init__(self, learner: nn.Module, step: Any = None) -> None:
        # Duck-typed: any learner class (MAML's, Reptile's, ProtoMAML's, a user's) and any object
        # that owns train_step, the meta-optimizer and the sync (an outer step, or the learner).
        self.model: Any = learner
        self.step: Any = step if step is not None else learner

    def train_step(self, batch: Any, epoch: int, iteration: int) -> Step:
        return self.step.train_step(batch, epoch, iteration)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    def set_sync(self, sync: Any) -> None:
        """Average gradients (and batch statistics) over the processes of a job."""
        self.step.sync = sync

    def inner_lrs(self) -> dict[str, torch.Tensor]:
        """The inner-loop learning rates by parameter name (one per inner step)."""
        return self.model.inner_lrs.as_dict()

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
