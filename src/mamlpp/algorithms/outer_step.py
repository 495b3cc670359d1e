"""The outer step: one meta-update of a learner, owned by the training runtime.

It holds what is the same for every algorithm: the meta-optimizer, the meta learning-rate
schedule, derivative-order annealing and the multi-step-loss weights of the epoch, gradient
clipping, the non-finite check, distributed gradient averaging and batch-statistics gathering,
and CUDA-graph capture. The algorithm is the learner's `forward_backward`, which accumulates
the meta-gradient (or, for Reptile, the meta-update direction) into `.grad`.

Nothing in the learner imports this module: the runtime (mamlpp.experiment) builds one per run
with `build_outer_step`. It lives beside the learner because it depends only on the learner's
contract and the algorithm section of the config, so Python users with their own loop can use
it without the experiment runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from torch import Tensor, nn

from mamlpp.algorithms.cuda_graph import GraphedMetaStep
from mamlpp.algorithms.optimizer import build_optimizer
from mamlpp.algorithms.schedules import (
    meta_lr_at,
    msl_weights,
    use_multi_step_loss,
    use_second_order,
)
from mamlpp.config import AlgorithmConfig, Config
from mamlpp.nn.layers import BatchStats, apply_batch_stats
from mamlpp.tasks import EpisodeBatch

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class MetaStepSync(Protocol):
    """What a meta-step over several processes needs (mamlpp.experiment.distributed): each
    process holds `1/world_size` of the tasks."""

    world_size: int

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None: ...

    def gather_batch_stats(self, sink: list[BatchStats]) -> list[BatchStats]: ...

    def sum(self, *values: Tensor) -> list[Tensor]: ...


class MetaStepLearner(Protocol):
    """What the outer step drives (algorithms.learner.Learner, algorithms.reptile...)."""

    net: nn.Module

    def forward_backward(
        self,
        batch: EpisodeBatch,
        second_order: bool,
        step_weights: Tensor | None,
        sink: list[BatchStats],
    ) -> tuple[Tensor, Tensor]: ...

    def parameters(self) -> Iterable[nn.Parameter]: ...

    def train(self, mode: bool = True) -> nn.Module: ...


@dataclass
class StepResult:
    loss: float
    accuracy: float
    second_order: bool
    multi_step_loss: bool
    meta_lr: float
    # False: the loss or a meta-gradient was nan/inf, and the update was skipped.
    finite: bool = True


class OuterStep:
    """`train_step(batch, epoch, iteration)` on `learner`; `optimizer(params, lr)` builds the
    meta-optimizer (Adam when None) over the learner's trainable parameters. `cfg` (the
    algorithm section) is read at call time."""

    def __init__(
        self,
        learner: MetaStepLearner,
        cfg: AlgorithmConfig,
        total_iterations: int,
        iters_per_epoch: int = 0,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        self.learner = learner
        self.cfg = cfg
        self.total_iterations = total_iterations
        # Read by the per-epoch (staircase) cosine schedule only.
        self.iters_per_epoch = iters_per_epoch
        if cfg.cosine_per_epoch and iters_per_epoch < 1:
            raise ValueError("algorithm.cosine_per_epoch needs iters_per_epoch >= 1")
        make = optimizer or torch.optim.Adam
        self.optimizer = make([p for p in learner.parameters() if p.requires_grad], lr=cfg.meta_lr)
        # Set for a distributed run: this process's tasks are a share of the meta-batch.
        self.sync: MetaStepSync | None = None
        self.graphed_step: GraphedMetaStep | None = None

    def use_cuda_graphs(self) -> None:
        """Replay the batched forward+backward as a CUDA graph (see algorithms.cuda_graph)."""
        if getattr(self.learner, "impl", "batched") == "loop":
            raise ValueError("CUDA graphs capture the batched meta-step, not impl='loop'")
        # Looked up per call, so the learner's current forward_backward is what is captured.
        self.graphed_step = GraphedMetaStep(
            lambda *args: self.learner.forward_backward(*args), self.optimizer.zero_grad
        )

    def meta_lr(self, iteration: int) -> float:
        """The meta learning rate of `iteration` (algorithm.cosine_meta_lr, cosine_per_epoch,
        linear_meta_lr)."""
        cfg = self.cfg
        return meta_lr_at(
            iteration,
            self.total_iterations,
            cfg.meta_lr,
            cfg.min_meta_lr,
            cfg.cosine_meta_lr,
            self.iters_per_epoch if cfg.cosine_per_epoch else 0,
            linear=cfg.linear_meta_lr,
        )

    def train_step(self, batch: EpisodeBatch, epoch: int, iteration: int) -> StepResult:
        """One meta-update on a task batch; returns loss/accuracy and the switches in force."""
        cfg, learner = self.cfg, self.learner
        second = use_second_order(cfg.second_order, cfg.first_order_epochs, epoch)
        msl = use_multi_step_loss(cfg.multi_step_loss, cfg.msl_epochs, epoch)
        weights = None
        if msl:
            weights = torch.tensor(
                msl_weights(cfg.inner_steps, cfg.msl_epochs, epoch), device=batch.xs.device
            )
        lr = self.meta_lr(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        learner.train()
        if self.graphed_step is not None:
            # The graph writes the gradients into the .grad tensors it captured: never reset them.
            loss_sum, acc_sum, sink = self.graphed_step(batch, second, weights)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            sink = []
            loss_sum, acc_sum = learner.forward_backward(batch, second, weights, sink)
        b = len(batch)
        if self.sync is not None:
            self.sync.average_gradients([p for p in learner.parameters() if p.requires_grad])
            sink = self.sync.gather_batch_stats(sink)
            loss_sum, acc_sum = self.sync.sum(loss_sum, acc_sum)
            b *= self.sync.world_size
        finite = _all_finite(loss_sum, learner.parameters())
        if finite:  # before the clip, which would turn an inf into a finite gradient
            if cfg.grad_clip is not None:
                clipped = learner.net if cfg.grad_clip_network_only else learner
                nn.utils.clip_grad_value_(clipped.parameters(), cfg.grad_clip)
            self.optimizer.step()
            apply_batch_stats(sink)
        return StepResult(loss_sum.item() / b, acc_sum.item() / b, second, msl, lr, finite)


def build_outer_step(cfg: Config, learner: MetaStepLearner) -> OuterStep:
    """The outer step a config describes for `learner` (on the learner's device already)."""
    outer = OuterStep(
        learner,
        cfg.algorithm,
        total_iterations=cfg.train.epochs * cfg.train.iters_per_epoch,
        iters_per_epoch=cfg.train.iters_per_epoch,
        optimizer=partial(build_optimizer, cfg.optimizer),
    )
    if cfg.speed.cuda_graphs:
        outer.use_cuda_graphs()
    return outer


def _all_finite(loss: Tensor, params: Iterable[nn.Parameter]) -> bool:
    """Whether the loss and every meta-gradient are finite (one host synchronisation)."""
    checks = [loss.isfinite().all()]
    checks += [p.grad.isfinite().all() for p in params if p.grad is not None]
    return bool(torch.stack(checks).all())
