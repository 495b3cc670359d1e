"""An independent second-order MAML(++) meta-loss for the Conv4 backbone, written with
torch.func: a plain single-task functional Conv4 (F.conv2d, hand-written batch norm, F.linear)
whose inner loop takes torch.func.grad; the outer gradient is ordinary autograd through it.
It shares no code with mamlpp.nn beyond the parameter names and values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BN_EPS = 1e-5
# The inner learning rate of parameter `name` at inner step `step`.
Rate = Callable[[str, int], Tensor]


def conv4_forward(params: dict[str, Tensor], x: Tensor, step: int, stages: int) -> Tensor:
    """One task: x [M, C, H, W] -> logits [M, N]; batch norm with this batch's statistics and
    the affine row of inner step `step` (per-step weights) or the one row there is."""
    h = x
    for i in range(stages):
        h = F.conv2d(h, params[f"convs.{i}.weight"], params[f"convs.{i}.bias"], padding=1)
        if f"norms.{i}.weight" in params:
            gamma, beta = params[f"norms.{i}.weight"], params[f"norms.{i}.bias"]
            gamma = gamma[min(step, gamma.shape[0] - 1)]
            beta = beta[min(step, beta.shape[0] - 1)]
            mean = h.mean(dim=(0, 2, 3), keepdim=True)
            var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
            h = (h - mean) / torch.sqrt(var + BN_EPS)
            h = h * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
        h = F.leaky_relu(h)
        h = F.max_pool2d(h, 2)
    return F.linear(h.flatten(1), params["head.weight"], params["head.bias"])


def inner_step(
    params: dict[str, Tensor],
    fast: dict[str, Tensor],
    rate: Rate,
    xs: Tensor,
    ys: Tensor,
    step: int,
    stages: int,
) -> dict[str, Tensor]:
    """One inner SGD step of the adapted weights `fast` on one task's support loss, the
    gradient by torch.func.grad."""

    def support_loss(fw: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(conv4_forward({**params, **fw}, xs, step, stages), ys)

    grads = torch.func.grad(support_loss)(fast)
    return {n: fast[n] - rate(n, step) * grads[n] for n in fast}


def meta_loss(
    params: dict[str, Tensor],
    adapted: Sequence[str],
    rate: Rate,
    batch: Any,
    steps: int,
    stages: int,
    step_weights: Sequence[float] | None = None,
) -> Tensor:
    """Task-mean of the target loss after `steps` inner steps of the `adapted` weights (with
    `step_weights`: the weighted sum of the target losses after every step, MAML++'s MSL)."""
    total: Tensor | float = 0.0
    tasks = batch.xs.shape[0]
    for t in range(tasks):
        xs, ys, xt, yt = batch.xs[t], batch.ys[t], batch.xt[t], batch.yt[t]
        fast = {n: params[n] for n in adapted}
        for s in range(steps):
            fast = inner_step(params, fast, rate, xs, ys, s, stages)
            if s == steps - 1 or step_weights is not None:
                loss = F.cross_entropy(conv4_forward({**params, **fast}, xt, s, stages), yt)
                total = total + (loss if step_weights is None else step_weights[s] * loss)
    assert isinstance(total, Tensor)
    return total / tasks
