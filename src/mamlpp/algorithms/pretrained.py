"""The MAML paper's pretrained baseline: one network trained on all tasks jointly.

It regresses (or classifies) the points of every training task with plain supervised learning,
no inner loop; at test time it is fine-tuned on each task's support set by the same gradient
steps a meta-learner takes (wrap it in a MetaLearner and call `predict`), which is what the
meta-learned initialisation is compared against (Finn et al. 2017, Figure 2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mamlpp.tasks import EpisodeBatch, Objective

BatchSource = Callable[[int], EpisodeBatch]


def pretrain_jointly(
    net: nn.Module,
    batches: BatchSource,
    objective: Objective,
    iterations: int,
    lr: float = 0.001,
) -> list[float]:
    """Adam on the mean loss of all points (support and target) of `batches(i)`, the training
    tasks of iteration i, for `iterations` steps; returns the loss of each step. `net` meets
    the MetaBackbone contract, so it takes its own weights per task."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history = []
    for i in range(iterations):
        batch = batches(i)
        x = torch.cat([batch.xs, batch.xt], 1)
        y = torch.cat([batch.ys, batch.yt], 1)
        loss = objective.loss(net(x, shared_weights(net, len(batch))), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


def shared_weights(net: nn.Module, tasks: int) -> dict[str, Tensor]:
    """Every task uses the network's own weights: views [tasks, *shape] with their graph."""
    return {n: p.unsqueeze(0).expand(tasks, *p.shape) for n, p in net.named_parameters()}
