"""Evaluation on fixed tasks: per-task logits, accuracy with a 95% CI, top-k ensembles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mamlpp.algorithms.meta_learner import MetaLearner, task_accuracies, task_losses
from mamlpp.data.episodes import EpisodeSampler


@dataclass
class TaskPredictions:
    logits: Tensor  # [tasks, M, N] on CPU
    labels: Tensor  # [tasks, M]

    def accuracies(self) -> Tensor:
        return task_accuracies(self.logits, self.labels)

    def losses(self) -> Tensor:
        return task_losses(self.logits, self.labels)


def predict_tasks(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    split: str,
    seed: int,
    num_tasks: int,
    batch_size: int,
) -> TaskPredictions:
    """Adapt to tasks 0..num_tasks-1 of `split` (fixed by `seed`) and keep their target logits."""
    logits, labels = [], []
    for start in range(0, num_tasks, batch_size):
        batch = sampler.batch(split, seed, start, min(batch_size, num_tasks - start))
        logits.append(learner.predict(batch).cpu())
        labels.append(batch.yt.cpu())
    return TaskPredictions(torch.cat(logits), torch.cat(labels))


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (population std, as the MAML++ code reports)."""
    v = values.double()
    n = v.numel()
    std = v.std(unbiased=False).item() if n > 1 else 0.0
    return v.mean().item(), 1.96 * std / math.sqrt(n)


def ensemble(predictions: list[TaskPredictions]) -> TaskPredictions:
    """Average the logits of several models on the same tasks."""
    stacked = torch.stack([p.logits for p in predictions])
    return TaskPredictions(stacked.mean(0), predictions[0].labels)
