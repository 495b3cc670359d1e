"""A batch of few-shot tasks and the per-task loss and score: the vocabulary that data,
algorithms and evaluation share. A leaf module, so that the data layer needs nothing above it.

A task family (classification, regression) is an `Objective`: the loss the inner and outer
loops minimise and the score evaluation reports, both per task. The dataset chooses it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class EpisodeBatch:
    """B tasks: support [B, N*K, C, H, W] / [B, N*K] and targets [B, N*T, C, H, W] / [B, N*T].
    `classes` [B, N]: each task's classes as indices into its split's class list (label j of
    task b is class classes[b, j]), for learners that classify all classes of a split (the
    fine-tuning baseline's pre-training); None where tasks have no classes (regression)."""

    xs: Tensor
    ys: Tensor
    xt: Tensor
    yt: Tensor
    classes: Tensor | None = None

    def __len__(self) -> int:
        return self.xs.shape[0]

    def to(self, device: torch.device) -> EpisodeBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def select(self, index: slice) -> EpisodeBatch:
        return self._map(lambda t: t[index])

    def _map(self, f: Callable[[Tensor], Tensor]) -> EpisodeBatch:
        classes = None if self.classes is None else f(self.classes)
        return EpisodeBatch(f(self.xs), f(self.ys), f(self.xt), f(self.yt), classes)


class TaskSource(Protocol):
    """Where episodes come from, a pure function of (split, seed, index): the image sampler
    (mamlpp.data.episodes) or the sinusoid one (mamlpp.data.sinusoid)."""

    def batch(self, split: str, seed: int, start: int, count: int) -> EpisodeBatch: ...


def task_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged within each task: logits [B, M, N], labels [B, M] -> [B]."""
    b, m, n = logits.shape
    return (
        F.cross_entropy(logits.reshape(b * m, n), labels.reshape(-1), reduction="none")
        .view(b, m)
        .mean(1)
    )


def task_accuracies(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).float().mean(1)


def task_mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error within each task: predictions/targets [B, M, D] -> [B]."""
    return (predictions - targets).pow(2).flatten(1).mean(1)


@dataclass(frozen=True)
class Objective:
    """What a task family minimises and reports, each per task ([B] from outputs and labels).

    `metric` names the score in results and reports; `higher_is_better` orders the top-k
    validation checkpoints (accuracy: higher; MSE: lower)."""

    loss: Callable[[Tensor, Tensor], Tensor]
    score: Callable[[Tensor, Tensor], Tensor]
    metric: str
    higher_is_better: bool


CLASSIFICATION = Objective(task_losses, task_accuracies, "accuracy", True)
REGRESSION = Objective(task_mse, task_mse, "mse", False)
OBJECTIVES = {o.metric: o for o in (CLASSIFICATION, REGRESSION)}
