"""A batch of few-shot tasks and the per-task loss and accuracy: the vocabulary that data,
algorithms and evaluation share. A leaf module, so that the data layer needs nothing above it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class EpisodeBatch:
    """B tasks: support [B, N*K, C, H, W] / [B, N*K] and targets [B, N*T, C, H, W] / [B, N*T]."""

    xs: Tensor
    ys: Tensor
    xt: Tensor
    yt: Tensor

    def __len__(self) -> int:
        return self.xs.shape[0]

    def to(self, device: torch.device) -> EpisodeBatch:
        return EpisodeBatch(*(t.to(device, non_blocking=True) for t in vars(self).values()))

    def select(self, index: slice) -> EpisodeBatch:
        return EpisodeBatch(*(t[index] for t in vars(self).values()))


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
