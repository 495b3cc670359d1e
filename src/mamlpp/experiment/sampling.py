"""The episode sampler of a run: tasks of `cfg.task` drawn from a loaded dataset, built on the
device that uses them (training, validation, the test phase and mamlpp-eval alike)."""

from __future__ import annotations

import numpy as np
import torch

from mamlpp.config import Config
from mamlpp.data.dataset import FewShotDataset
from mamlpp.data.episodes import EpisodeSampler
from mamlpp.data.registry import augmentation


def make_sampler(cfg: Config, data: FewShotDataset, device: torch.device) -> EpisodeSampler:
    """Episodes of `cfg.task` from `data`, built on `device` (training and evaluation alike)."""
    images = data.images
    if device.type != "cpu" or not isinstance(images.pixels, np.memmap):
        images = images.to(device)  # in memory: episodes are built where they are used
    t = cfg.task
    return EpisodeSampler(
        images,
        data.splits,
        t.ways,
        t.shots,
        t.targets,
        mean=data.mean,
        std=data.std,
        augmentation=augmentation(cfg.dataset),
        device=device,
    )
