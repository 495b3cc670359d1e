"""What a run draws its tasks from, built from the dataset section: the task source, the input
channels, the preprocessing each member records, and the data's fingerprint.

Image datasets are decoded (rank 0 first in a distributed job, which may write the cache the
other ranks then read) and sampled by experiment.sampling; the regression family's tasks are
drawn on the fly (data.sinusoid), with no files and so no fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mamlpp.algorithms.factory import REGRESSION_DATASETS
from mamlpp.config import Config
from mamlpp.data.preprocessing import Preprocessing
from mamlpp.data.registry import load_dataset
from mamlpp.data.sinusoid import sinusoid_sampler
from mamlpp.experiment.distributed import Distributed
from mamlpp.experiment.sampling import make_sampler
from mamlpp.tasks import TaskSource


@dataclass
class TaskData:
    sampler: TaskSource
    # Image channels, or a vector task's input dimension.
    in_channels: int
    # Recorded with each member, so evaluation prepares new inputs as training did.
    preprocessing: Preprocessing
    # The data's content fingerprint (run identity); None for generated tasks.
    identity: str | None


def build_task_data(cfg: Config, device: torch.device, dist: Distributed) -> TaskData:
    if cfg.dataset.name in REGRESSION_DATASETS:
        return _regression(cfg, device)
    return _images(cfg, device, dist)


def _images(cfg: Config, device: torch.device, dist: Distributed) -> TaskData:
    if not dist.is_main:
        dist.barrier()
    data = load_dataset(cfg.dataset)
    if dist.is_main:
        dist.barrier()
    t = cfg.task
    data.check_task_fits(t.ways, t.shots, t.targets)
    return TaskData(
        sampler=make_sampler(cfg, data, device),
        in_channels=data.images.channels,
        preprocessing=Preprocessing.of(data),
        identity=data.identity,
    )


def _regression(cfg: Config, device: torch.device) -> TaskData:
    """Members record vector inputs as a 1x1 'image' of in_features channels."""
    sampler = sinusoid_sampler(cfg.dataset, cfg.task, device)
    features = sampler.in_features
    return TaskData(sampler, features, Preprocessing(image_size=1, channels=features), None)
