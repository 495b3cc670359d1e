"""The meta-optimizer from config (`optimizer._target_`, `optimizer.kwargs`), outside the learner.

Contract: a `torch.optim.Optimizer` class constructed as `cls(params, lr=..., **kwargs)`. The
learning rate is then set on every param group each iteration from a pure function of the
iteration (algorithms.schedules), so a resumed run follows the same schedule.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mamlpp.config import OptimizerConfig
from mamlpp.errors import ConfigError, locate


def build_optimizer(
    cfg: OptimizerConfig, params: Iterable[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    cls = locate(cfg._target_, "optimizer._target_")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"config key 'optimizer._target_' = {cfg._target_!r} is not a torch.optim.Optimizer"
        )
    try:
        return cls(list(params), lr=lr, **dict(cfg.kwargs))  # type: ignore[call-arg]  # a subclass
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"config key 'optimizer.kwargs' = {dict(cfg.kwargs)!r}: {cfg._target_}: {exc}"
        ) from exc
