"""Evaluation on fixed tasks: per-task outputs, the task family's score (accuracy, or MSE for
regression) with a 95% CI, top-k ensembles (averaged outputs)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mamlpp.algorithms.learner import Learner
from mamlpp.experiment.distributed import SINGLE, Distributed
from mamlpp.experiment.nonfinite import check_eval
from mamlpp.tasks import TaskSource, task_accuracies, task_losses


@dataclass
class TaskPredictions:
    logits: Tensor  # [tasks, M, N] on CPU (regression: predictions [tasks, M, D])
    labels: Tensor  # [tasks, M] (regression: [tasks, M, D])
    # The learner's per-task loss and score (accuracy; MSE for regression).
    loss_fn: Callable[[Tensor, Tensor], Tensor] = task_losses
    score_fn: Callable[[Tensor, Tensor], Tensor] = task_accuracies

    def accuracies(self) -> Tensor:
        """The per-task score: accuracy, or MSE for a regression learner."""
        return self.score_fn(self.logits, self.labels)

    def losses(self) -> Tensor:
        return self.loss_fn(self.logits, self.labels)


def predict_tasks(
    learner: Learner,
    sampler: TaskSource,
    split: str,
    seed: int,
    num_tasks: int,
    batch_size: int,
    dist: Distributed = SINGLE,
    between: Callable[[], None] | None = None,
) -> TaskPredictions:
    """Adapt to tasks 0..num_tasks-1 of `split` (fixed by `seed`) and keep their target logits.

    In a distributed run the batches are dealt round-robin to the ranks and gathered, so every
    rank gets what one process computes, batch for batch. `between()` runs before each round of
    batches on every rank alike (the test phase checks for a stop signal there)."""
    starts = range(0, num_tasks, batch_size)
    mine = {}
    for first in range(0, len(starts), dist.world_size):
        if between is not None:
            between()
        j = first + dist.rank
        if j >= len(starts):
            continue
        start = starts[j]
        batch = sampler.batch(split, seed, start, min(batch_size, num_tasks - start))
        mine[j] = (learner.predict(batch).cpu(), batch.yt.cpu())
    if dist.enabled:
        mine = {j: out for part in dist.gather(mine) for j, out in part.items()}
    logits = [mine[j][0] for j in range(len(starts))]
    labels = [mine[j][1] for j in range(len(starts))]
    cat = torch.cat
    return TaskPredictions(cat(logits), cat(labels), learner.loss_fn, learner.score_fn)


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (population std, as the MAML++ code reports)."""
    v = values.double()
    n = v.numel()
    std = v.std(unbiased=False).item() if n > 1 else 0.0
    return v.mean().item(), 1.96 * std / math.sqrt(n)


def ensemble(predictions: list[TaskPredictions]) -> TaskPredictions:
    """Average the logits of several models on the same tasks."""
    stacked = torch.stack([p.logits for p in predictions])
    first = predictions[0]
    return TaskPredictions(stacked.mean(0), first.labels, first.loss_fn, first.score_fn)


def evaluate_ensemble(
    members: Iterable[tuple[dict[str, Any], Learner]],
    sampler: TaskSource,
    split: str,
    seed: int,
    num_tasks: int,
    batch_size: int,
    dist: Distributed = SINGLE,
    between: Callable[[], None] | None = None,
    check: Callable[[dict[str, Any], TaskPredictions], None] | None = None,
) -> dict[str, Any]:
    """Test each member on the same fixed tasks, then their ensemble (averaged logits).

    `members` yields (info, learner) pairs one at a time, so only one model need be in memory;
    each `per_model` entry is the member's info plus its test accuracy and CI. `between` goes
    to `predict_tasks`; `check(info, predictions)` vets each member's predictions (default:
    non-finite losses raise NonFiniteError instead of scoring exactly chance).
    """
    check = check or _refuse_nonfinite(split)
    predictions, per_model = [], []
    for info, learner in members:
        preds = predict_tasks(learner, sampler, split, seed, num_tasks, batch_size, dist, between)
        check(info, preds)
        mean, ci = mean_ci95(preds.accuracies())
        predictions.append(preds)
        per_model.append({**info, "test_accuracy_mean": mean, "test_accuracy_ci95": ci})
    mean, ci = mean_ci95(ensemble(predictions).accuracies())
    return {
        "test_accuracy_mean": mean,
        "test_accuracy_ci95": ci,
        "ensemble_size": len(predictions),
        "per_model": per_model,
    }


def _refuse_nonfinite(split: str) -> Callable[[dict[str, Any], TaskPredictions], None]:
    def check(info: dict[str, Any], preds: TaskPredictions) -> None:
        where = f"for the member of epoch {info.get('epoch')}"
        check_eval(preds.losses(), f"{split} split's", where)

    return check
