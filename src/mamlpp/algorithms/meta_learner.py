"""MAML, first-order MAML and MAML++ as one meta-learner whose switches are the config keys.

The whole task batch adapts together (grouped layout, see mamlpp.nn.layers): the inner loop is
dict arithmetic over weights with a leading task dimension, and `impl="loop"` runs the very same
code one task at a time as the reference the batched path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlpp.algorithms.inner_lr import InnerLearningRates
from mamlpp.algorithms.schedules import (
    meta_lr_at,
    msl_weights,
    use_multi_step_loss,
    use_second_order,
)
from mamlpp.config import AlgorithmConfig, ModelConfig
from mamlpp.nn.conv4 import Conv4
from mamlpp.nn.layers import BatchStats, apply_batch_stats


@dataclass
class EpisodeBatch:
    """B tasks: support [B, N*K, C, H, W] / [B, N*K] and targets [B, N*T, C, H, W] / [B, N*T]."""

    xs: Tensor
    ys: Tensor
    xt: Tensor
    yt: Tensor

    def __len__(self) -> int:
        return self.xs.shape[0]

    def to(self, device: torch.device) -> EpisodeBatch:
        return EpisodeBatch(*(t.to(device, non_blocking=True) for t in vars(self).values()))

    def select(self, index: slice) -> EpisodeBatch:
        return EpisodeBatch(*(t[index] for t in vars(self).values()))


@dataclass
class StepResult:
    loss: float
    accuracy: float
    second_order: bool
    multi_step_loss: bool
    meta_lr: float


def task_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged within each task: logits [B, M, N], labels [B, M] -> [B]."""
    b, m, n = logits.shape
    return (
        F.cross_entropy(logits.reshape(b * m, n), labels.reshape(-1), reduction="none")
        .view(b, m)
        .mean(1)
    )


def task_accuracies(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).float().mean(1)


class MetaLearner(nn.Module):
    def __init__(
        self,
        algorithm: AlgorithmConfig,
        model: ModelConfig,
        in_channels: int,
        image_size: int,
        ways: int,
        total_iterations: int,
        impl: str = "batched",
    ) -> None:
        super().__init__()
        self.cfg = algorithm
        self.impl = impl
        self.total_iterations = total_iterations
        steps = algorithm.inner_steps
        self.net = Conv4(
            in_channels,
            image_size,
            ways,
            filters=model.filters,
            stages=model.stages,
            norm=model.norm,
            pooling=model.pooling,
            activation=model.activation,
            bn_weight_steps=steps if algorithm.per_step_bn_weights else 1,
            bn_stat_steps=steps if algorithm.per_step_bn_stats else 1,
            bn_momentum=model.bn_momentum,
        )
        self.adapted_names = [
            n
            for n, _ in self.net.named_parameters()
            if algorithm.inner_adapt_bn or not n.startswith("norms.")
        ]
        self.inner_lrs = InnerLearningRates(
            self.adapted_names, steps, algorithm.inner_lr, algorithm.learn_inner_lr
        )
        self.optimizer = torch.optim.Adam(
            [p for p in self.parameters() if p.requires_grad], lr=algorithm.meta_lr
        )

    # ----------------------------------------------------------------- inner loop
    def _initial_fast_weights(self, b: int, track_graph: bool) -> dict[str, Tensor]:
        params = dict(self.net.named_parameters())
        fast = {}
        for n in self.adapted_names:
            p = params[n]
            if track_graph:
                fast[n] = p.unsqueeze(0).expand(b, *p.shape)
            else:
                fast[n] = p.detach().unsqueeze(0).repeat(b, *([1] * p.dim())).requires_grad_()
        return fast

    def adapt_and_predict(
        self,
        batch: EpisodeBatch,
        num_steps: int,
        training: bool,
        second_order: bool = True,
        step_weights: list[float] | None = None,
        sink: list[BatchStats] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the inner loop on every task of the batch at once.

        Returns the per-task meta-loss [B] (the MSL-weighted sum of target losses when
        `step_weights` is given, else the final target loss) and the final target logits.
        With `training=False` no graph to the meta-parameters is kept and batch-norm may use
        the running statistics (algorithm.use_running_stats_eval).
        """
        use_running = not training and self.cfg.use_running_stats_eval
        create_graph = training and second_order
        fast = self._initial_fast_weights(len(batch), track_graph=training)
        losses: list[Tensor] = []
        logits_t = None
        for step in range(num_steps):
            with torch.enable_grad():
                logits_s = self.net(batch.xs, fast, step, use_running, sink)
                support_loss = task_losses(logits_s, batch.ys).sum()
                grads = torch.autograd.grad(
                    support_loss, list(fast.values()), create_graph=create_graph
                )
            fast = {
                n: w - self._rate(n, step, training) * g for (n, w), g in zip(fast.items(), grads)
            }
            if not training:
                fast = {n: w.detach().requires_grad_() for n, w in fast.items()}
            last = step == num_steps - 1
            if last or step_weights is not None:
                with torch.set_grad_enabled(training):
                    logits_t = self.net(batch.xt, fast, step, use_running, sink)
                    loss_t = task_losses(logits_t, batch.yt)
                losses.append(loss_t if step_weights is None else step_weights[step] * loss_t)
        return torch.stack(losses).sum(0), logits_t

    def _rate(self, name: str, step: int, training: bool) -> Tensor:
        rate = self.inner_lrs.rate(name, step)
        return rate if training else rate.detach()

    # ----------------------------------------------------------------- outer loop
    def train_step(self, batch: EpisodeBatch, epoch: int, iteration: int) -> StepResult:
        """One meta-update on a task batch; returns loss/accuracy and the switches in force."""
        cfg = self.cfg
        second = use_second_order(cfg.second_order, cfg.first_order_epochs, epoch)
        msl = use_multi_step_loss(cfg.multi_step_loss, cfg.msl_epochs, epoch)
        weights = msl_weights(cfg.inner_steps, cfg.msl_epochs, epoch) if msl else None
        lr = meta_lr_at(
            iteration, self.total_iterations, cfg.meta_lr, cfg.min_meta_lr, cfg.cosine_meta_lr
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        sink: list[BatchStats] = []
        b = len(batch)
        if self.impl == "loop":
            loss_sum, acc_sum = 0.0, 0.0
            for i in range(b):
                task = batch.select(slice(i, i + 1))
                loss, logits = self.adapt_and_predict(
                    task, cfg.inner_steps, True, second, weights, sink
                )
                (loss.sum() / b).backward()
                loss_sum += loss.item()
                acc_sum += task_accuracies(logits.detach(), task.yt).sum().item()
            mean_loss, mean_acc = loss_sum / b, acc_sum / b
        else:
            loss, logits = self.adapt_and_predict(
                batch, cfg.inner_steps, True, second, weights, sink
            )
            loss.mean().backward()
            mean_loss = loss.mean().item()
            mean_acc = task_accuracies(logits.detach(), batch.yt).mean().item()
        if cfg.grad_clip is not None:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.clamp_(-cfg.grad_clip, cfg.grad_clip)
        self.optimizer.step()
        apply_batch_stats(sink)
        return StepResult(mean_loss, mean_acc, second, msl, lr)

    def predict(self, batch: EpisodeBatch, num_steps: int | None = None) -> Tensor:
        """Adapt to each task's support set and return target logits [B, M, N] (no meta-update)."""
        self.eval()
        steps = num_steps or self.cfg.inner_steps_eval
        _, logits = self.adapt_and_predict(batch, steps, training=False)
        return logits.detach()
