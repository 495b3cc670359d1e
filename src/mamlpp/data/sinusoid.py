"""The MAML paper's sinusoid regression tasks (Finn et al. 2017, section 5.1).

A task is y = amplitude * sin(x - phase) with amplitude and phase drawn uniformly from their
ranges; its K support and T target points have inputs uniform in `input_range`. Like the image
episodes (mamlpp.data.episodes), a task is a pure function of (seed, split, task index): one
NumPy generator per task, so a resumed run draws the very tasks it would have drawn, and the
validation/test tasks are fixed by eval.task_seed. The splits differ only in that index space
(the task distribution is continuous, so no task is shared by chance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mamlpp.config import SinusoidConfig
from mamlpp.data.splits import SPLITS
from mamlpp.tasks import REGRESSION, EpisodeBatch, Objective

# Tells these generators apart from the image episodes' (same seed, split and index).
_STREAM = 0x5151


def check_range(key: str, values: list[float]) -> str | None:
    """Why `values` is not a [low, high] range with low <= high, or None if it is."""
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[0] > values[1]:
        return f"config key '{key}' = {list(values)}: give [low, high] with low <= high"
    return None


@dataclass(frozen=True)
class SineTasks:
    """Amplitude and phase [B] of a batch of tasks, and their inputs [B, K+T]."""

    amplitude: np.ndarray
    phase: np.ndarray
    inputs: np.ndarray

    def values(self, x: np.ndarray) -> np.ndarray:
        """The tasks' curves at inputs x [B, P] (or [P], shared) -> [B, P]."""
        return self.amplitude[:, None] * np.sin(x - self.phase[:, None])


class SinusoidSampler:
    """K-shot sinusoid tasks as EpisodeBatch: x and y [B, points, 1] float32 on `device`."""

    in_features = 1
    out_features = 1
    objective: Objective = REGRESSION

    def __init__(
        self,
        cfg: SinusoidConfig,
        shots: int,
        targets: int,
        device: torch.device | str = "cpu",
    ) -> None:
        for key, values in (
            ("dataset.amplitude", cfg.amplitude),
            ("dataset.phase", cfg.phase),
            ("dataset.input_range", cfg.input_range),
        ):
            why = check_range(key, values)
            if why:
                raise ValueError(why)
        self.cfg = cfg
        self.shots, self.targets = shots, targets
        self.device = torch.device(device)

    def tasks(self, split: str, seed: int, start: int, count: int) -> SineTasks:
        """The draws of tasks start..start+count-1 of `split` under `seed`."""
        split_id = SPLITS.index(split)
        c, m = self.cfg, self.shots + self.targets
        amp, phase = np.empty(count), np.empty(count)
        inputs = np.empty((count, m))
        for b in range(count):
            rng = np.random.default_rng(
                np.random.SeedSequence([_STREAM, seed, split_id, start + b])
            )
            amp[b] = rng.uniform(c.amplitude[0], c.amplitude[1])
            phase[b] = rng.uniform(c.phase[0], c.phase[1])
            inputs[b] = rng.uniform(c.input_range[0], c.input_range[1], size=m)
        return SineTasks(amp, phase, inputs)

    def batch(self, split: str, seed: int, start: int, count: int) -> EpisodeBatch:
        """Tasks start..start+count-1 of `split` under `seed`: K support, T target points."""
        tasks = self.tasks(split, seed, start, count)
        x = torch.from_numpy(tasks.inputs).float()[..., None]
        y = torch.from_numpy(tasks.values(tasks.inputs)).float()[..., None]
        k = self.shots
        parts = (x[:, :k], y[:, :k], x[:, k:], y[:, k:])
        return EpisodeBatch(*(t.contiguous().to(self.device) for t in parts))


def sinusoid_sampler(dataset: Any, task: Any, device: torch.device | str) -> SinusoidSampler:
    """The sampler of a config's dataset (amplitude, phase, input_range) and task (shots,
    targets: support and target points per task) sections."""
    cfg = SinusoidConfig(
        amplitude=list(dataset.amplitude),
        phase=list(dataset.phase),
        input_range=list(dataset.input_range),
    )
    return SinusoidSampler(cfg, task.shots, task.targets, device)
