"""A user's own inner update rule (algorithm.inner_rule._target_=user_rules.MomentumSGD): it
knows only torch and the InnerRule contract written in mamlpp.algorithms.inner_lr."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class MomentumSGD(nn.Module):
    """Heavy-ball SGD whose velocity carries across inner steps:
    v_s = momentum * v_{s-1} + g_s, w_{s+1} = w_s - lr * v_s, with one learned lr per tensor."""

    def __init__(
        self, shapes: Mapping[str, torch.Size], num_steps: int, init_lr: float, momentum: float
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.lrs = nn.ParameterDict(
            {n.replace(".", "__"): nn.Parameter(torch.tensor(float(init_lr))) for n in shapes}
        )

    def step(
        self, name: str, weight: Tensor, grad: Tensor, step: int, state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        velocity = grad if state is None else self.momentum * state + grad
        return weight - self.lrs[name.replace(".", "__")] * velocity, velocity
