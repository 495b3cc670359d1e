"""A researcher's own algorithm, added without editing mamlpp: MAML whose inner and outer
losses use label smoothing (one key of its own, `algorithm.label_smoothing`). It registers a
Learner subclass with its config dataclass; conf/algorithm/smoothed_maml.yaml chooses it and
names this module in `_target_`, which mamlpp imports to register it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from mamlpp.algorithms.learner import Learner
from mamlpp.config import AlgorithmConfig, Config, register_algorithm
from mamlpp.config.checks import check


@dataclass
class SmoothedMamlConfig(AlgorithmConfig):
    label_smoothing: float = 0.1

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        check(
            0 <= self.label_smoothing < 1,
            "algorithm.label_smoothing",
            self.label_smoothing,
            "0 <= label_smoothing < 1",
        )


def smoothed_task_losses(smoothing: float) -> Any:
    def losses(logits: Tensor, labels: Tensor) -> Tensor:
        b, m, n = logits.shape
        flat = F.cross_entropy(
            logits.reshape(b * m, n),
            labels.reshape(-1),
            reduction="none",
            label_smoothing=smoothing,
        )
        return flat.view(b, m).mean(1)

    return losses


@register_algorithm("smoothed_maml", config=SmoothedMamlConfig)
class SmoothedMaml(Learner):
    cfg: SmoothedMamlConfig

    def __init__(self, cfg: SmoothedMamlConfig, net: Any, **kwargs: Any) -> None:
        super().__init__(
            cfg, net, **{**kwargs, "loss_fn": smoothed_task_losses(cfg.label_smoothing)}
        )
