"""Build the learner a config describes: the one place that turns config into a learner.

Training, evaluation and the Python API all call `build_learner`, so a checkpoint's state dict
always meets the module layout it was saved from. The runtime adds the outer step
(algorithms.outer_step.build_outer_step) for training.
"""

from __future__ import annotations

from typing import cast

import torch

# Importing these modules attaches the built-in learners to their registered algorithms.
import mamlpp.algorithms.finetune_baseline
import mamlpp.algorithms.protomaml
import mamlpp.algorithms.reptile
import mamlpp.algorithms.variants  # noqa: F401
from mamlpp.algorithms.inner_lr import inner_rule_factory
from mamlpp.algorithms.learner import Learner
from mamlpp.config import PER_STEP_BN_KEYS, AlgorithmConfig, ComponentConfig, Config, builder
from mamlpp.errors import ConfigError
from mamlpp.nn.backbones import build_backbone
from mamlpp.nn.contract import MetaBackbone
from mamlpp.tasks import CLASSIFICATION, REGRESSION, Objective

# Datasets of the regression task family (MSE loss and score); the others classify.
REGRESSION_DATASETS = ("sinusoid",)


def objective_of(cfg: Config) -> Objective:
    """The task family's per-task loss and score, chosen by the dataset."""
    return REGRESSION if cfg.dataset.name in REGRESSION_DATASETS else CLASSIFICATION


def build_learner(cfg: Config, in_channels: int, device: torch.device | str = "cpu") -> Learner:
    """The configured learner on `device` (weights freshly initialised from torch's RNG): the
    class registered for algorithm.name (mamlpp.config.register_algorithm), built as
    `cls(cfg.algorithm, net, impl=, precision=, checkpoint_inner_steps=, inner_rule=,
    loss_fn=, score_fn=)`, which is Learner's signature."""
    a = cfg.algorithm
    impl = "batched" if cfg.train.impl == "auto" else cfg.train.impl
    learner_class = cast(type[Learner], builder("algorithm", a.name))
    ways = cfg.task.ways
    if learner_class.one_output_per_training_class:  # Omniglot's split gives the count
        ways = cfg.dataset.class_counts()[0]
    # Vector data (model=mlp) has no image size; in_channels is then the input dimension.
    image_size = getattr(cfg.dataset, "image_size", 1)
    net = build_network(a, cfg.model, in_channels, image_size, ways, cfg.speed.channels_last)
    objective = objective_of(cfg)
    rule = inner_rule_factory(
        a.inner_rule._target_, a.inner_rule.kwargs, a.inner_lr, a.learn_inner_lr, a.per_element_lr
    )
    learner = learner_class(
        a,
        net,
        impl=impl,
        precision=cfg.train.precision,
        checkpoint_inner_steps=cfg.speed.checkpoint_inner_steps,
        inner_rule=rule,
        loss_fn=objective.loss,
        score_fn=objective.score,
    )
    return learner.to(device)


def build_network(
    algorithm: AlgorithmConfig,
    model: ComponentConfig | MetaBackbone,
    in_channels: int,
    image_size: int,
    ways: int,
    channels_last: bool = False,
) -> MetaBackbone:
    """The backbone `model` describes with the per-step batch norm the algorithm asks for (or
    `model` itself when already built); a backbone without per-step batch norm asked for one
    is a one-line error."""
    steps = algorithm.inner_steps
    if isinstance(model, ComponentConfig):
        net = build_backbone(
            model,
            in_channels,
            image_size,
            ways,
            bn_weight_steps=steps if algorithm.per_step_bn_weights else 1,
            bn_stat_steps=steps if algorithm.per_step_bn_stats else 1,
            channels_last=channels_last,
        )
    else:
        net = model
    wanted = [k for k in PER_STEP_BN_KEYS if getattr(algorithm, k)]
    if wanted and not net.supports_per_step_bn:
        raise ConfigError(
            f"config key 'algorithm.{wanted[0]}' = True: the backbone "
            f"{type(net).__name__} has no per-step batch norm (it declares "
            "supports_per_step_bn=False)"
        )
    return net
