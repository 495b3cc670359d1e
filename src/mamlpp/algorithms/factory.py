"""Build the meta-learner a config describes: the one place that turns config into a learner.

Training, evaluation and the Python API all call `build_learner`, so a checkpoint's state dict
always meets the module layout it was saved from.
"""

from __future__ import annotations

from functools import partial

import torch

from mamlpp.algorithms.finetune_baseline import FineTuneBaseline
from mamlpp.algorithms.meta_learner import MetaLearner
from mamlpp.algorithms.optimizer import build_optimizer
from mamlpp.config import Config
from mamlpp.data.omniglot import split_class_counts
from mamlpp.tasks import CLASSIFICATION, REGRESSION, Objective

# Chen et al.'s pre-train then fine-tune baselines (algorithms.finetune_baseline).
FINETUNE_BASELINES = ("baseline", "baseline_pp")
# Datasets of the regression task family (MSE loss and score); the others classify.
REGRESSION_DATASETS = ("sinusoid",)


def build_learner(cfg: Config, in_channels: int, device: torch.device | str = "cpu") -> MetaLearner:
    """The configured learner on `device` (weights freshly initialised from torch's RNG).
    For vector data (model=mlp) `in_channels` is the input dimension."""
    impl = "batched" if cfg.train.impl == "auto" else cfg.train.impl
    kind, extra, ways = MetaLearner, {}, cfg.task.ways
    if cfg.algorithm.name in FINETUNE_BASELINES:  # a classifier of every training class
        kind, extra = FineTuneBaseline, {"cosine": cfg.algorithm.name == "baseline_pp"}
        ways = split_class_counts(cfg.dataset.protocol, cfg.dataset.split_sizes)[0]
    learner = kind(
        cfg.algorithm,
        cfg.model,
        in_channels=in_channels,
        image_size=cfg.dataset.image_size,
        ways=ways,
        total_iterations=cfg.train.epochs * cfg.train.iters_per_epoch,
        impl=impl,
        precision=cfg.train.precision,
        speed=cfg.speed,
        optimizer=partial(build_optimizer, cfg.optimizer),
        iters_per_epoch=cfg.train.iters_per_epoch,
        objective=objective_of(cfg),
        **extra,
    ).to(device)
    if cfg.speed.cuda_graphs:
        learner.use_cuda_graphs()
    return learner


def objective_of(cfg: Config) -> Objective:
    """The task family's per-task loss and score, chosen by the dataset."""
    return REGRESSION if cfg.dataset.name in REGRESSION_DATASETS else CLASSIFICATION
