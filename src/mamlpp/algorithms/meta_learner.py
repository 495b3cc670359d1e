"""MAML, first-order MAML and MAML++ as one meta-learner whose switches are the config keys.

The whole task batch adapts together (grouped layout, see mamlpp.nn.layers): the inner loop is
dict arithmetic over weights with a leading task dimension, and `impl="loop"` runs the very same
code one task at a time as the reference the batched path is tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mamlpp.algorithms.adaptation import adapted_names
from mamlpp.algorithms.cuda_graph import GraphedMetaStep
from mamlpp.algorithms.inner_lr import InnerLearningRates
from mamlpp.algorithms.schedules import (
    meta_lr_at,
    msl_weights,
    use_multi_step_loss,
    use_second_order,
)
from mamlpp.config import PER_STEP_BN_KEYS, AlgorithmConfig, ComponentConfig, SpeedConfig
from mamlpp.errors import ConfigError
from mamlpp.nn.backbones import build_backbone
from mamlpp.nn.contract import MetaBackbone
from mamlpp.nn.layers import BatchStats, apply_batch_stats
from mamlpp.tasks import EpisodeBatch, task_accuracies, task_losses

__all__ = ["EpisodeBatch", "MetaLearner", "StepResult", "task_accuracies", "task_losses"]


OptimizerFactory = Callable[..., torch.optim.Optimizer]


class MetaStepSync(Protocol):
    """What a meta-step over several processes needs (mamlpp.experiment.distributed): each
    process holds `1/world_size` of the tasks."""

    world_size: int

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None: ...

    def gather_batch_stats(self, sink: list[BatchStats]) -> list[BatchStats]: ...

    def sum(self, *values: Tensor) -> list[Tensor]: ...


@dataclass
class StepResult:
    loss: float
    accuracy: float
    second_order: bool
    multi_step_loss: bool
    meta_lr: float
    # False: the loss or a meta-gradient was nan/inf, and the update was skipped.
    finite: bool = True


def _widen(logits: Tensor) -> Tensor:
    """Losses of autocast (bf16) logits are computed in fp32; other dtypes pass unchanged."""
    return logits.float() if logits.dtype == torch.bfloat16 else logits


class MetaLearner(nn.Module):
    def __init__(
        self,
        algorithm: AlgorithmConfig,
        model: ComponentConfig | MetaBackbone,
        in_channels: int,
        image_size: int,
        ways: int,
        total_iterations: int,
        impl: str = "batched",
        precision: str = "fp32",
        speed: SpeedConfig | None = None,
        iters_per_epoch: int = 0,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        """`model` is a config (nn.backbones builds it) or a network already built that meets
        the MetaBackbone contract (mamlpp.nn.contract). `optimizer(params, lr)` builds the
        meta-optimizer (algorithms.optimizer; Adam when None) over the meta-parameters: the
        network's and the learned inner rates."""
        super().__init__()
        speed = speed or SpeedConfig()
        self.cfg = algorithm
        self.impl = impl
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.checkpoint_inner_steps = speed.checkpoint_inner_steps
        self.graphed_step: GraphedMetaStep | None = None
        # Set for a distributed run: this process's tasks are a share of the meta-batch.
        self.sync: MetaStepSync | None = None
        self.total_iterations = total_iterations
        # Read by the per-epoch (staircase) cosine schedule only.
        self.iters_per_epoch = iters_per_epoch
        if algorithm.cosine_per_epoch and iters_per_epoch < 1:
            raise ValueError("algorithm.cosine_per_epoch needs iters_per_epoch >= 1")
        steps = algorithm.inner_steps
        if isinstance(model, ComponentConfig):
            model = build_backbone(
                model,
                in_channels,
                image_size,
                ways,
                bn_weight_steps=steps if algorithm.per_step_bn_weights else 1,
                bn_stat_steps=steps if algorithm.per_step_bn_stats else 1,
                channels_last=speed.channels_last,
            )
        wanted = [k for k in PER_STEP_BN_KEYS if getattr(algorithm, k)]
        if wanted and not model.supports_per_step_bn:
            raise ConfigError(
                f"config key 'algorithm.{wanted[0]}' = True: the backbone "
                f"{type(model).__name__} has no per-step batch norm (it declares "
                "supports_per_step_bn=False)"
            )
        self.net = model
        params = dict(self.net.named_parameters())
        # Weights the network takes per task (batch-norm affine ones only with inner_adapt_bn),
        # and the ones among them the inner loop changes (algorithm.adapt: ANIL, BOIL).
        norms = self.net.norm_names
        self.fast_names = [n for n in params if algorithm.inner_adapt_bn or n not in norms]
        self.adapted_names = adapted_names(algorithm.adapt, self.fast_names, self.net.head_names)
        self.inner_lrs = InnerLearningRates(
            {n: params[n].shape for n in self.adapted_names},
            steps,
            algorithm.inner_lr,
            algorithm.learn_inner_lr or algorithm.per_element_lr,
            per_element=algorithm.per_element_lr,
        )
        make = optimizer or torch.optim.Adam
        self.optimizer = make(
            [p for p in self.parameters() if p.requires_grad], lr=algorithm.meta_lr
        )

    def use_cuda_graphs(self) -> None:
        """Replay the batched forward+backward as a CUDA graph (see algorithms.cuda_graph)."""
        if self.impl == "loop":
            raise ValueError("CUDA graphs capture the batched meta-step, not impl='loop'")
        self.graphed_step = GraphedMetaStep(self.forward_backward, self.optimizer.zero_grad)

    # ----------------------------------------------------------------- inner loop
    def _initial_fast_weights(self, b: int, track_graph: bool) -> dict[str, Tensor]:
        """Per-task copies [B, *shape] of the weights the network takes. Weights the inner loop
        does not adapt stay views of the meta-parameters (with their graph in training)."""
        params = dict(self.net.named_parameters())
        adapted = set(self.adapted_names)
        fast = {}
        for n in self.fast_names:
            p = params[n]
            if track_graph:
                fast[n] = p.unsqueeze(0).expand(b, *p.shape)
            elif n in adapted:
                fast[n] = p.detach().unsqueeze(0).repeat(b, *([1] * p.dim())).requires_grad_()
            else:
                fast[n] = p.detach().unsqueeze(0).expand(b, *p.shape)
        return fast

    def adapt_and_predict(
        self,
        batch: EpisodeBatch,
        num_steps: int,
        training: bool,
        second_order: bool = True,
        step_weights: Sequence[float] | Tensor | None = None,
        sink: list[BatchStats] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the inner loop on every task of the batch at once.

        Returns the per-task meta-loss [B] (the MSL-weighted sum of target losses when
        `step_weights` is given, else the final target loss) and the final target logits.
        With `training=False` no graph to the meta-parameters is kept and batch-norm may use
        the running statistics (algorithm.use_running_stats_eval).
        """
        fast = self._initial_fast_weights(len(batch), track_graph=training)
        losses: list[Tensor] = []
        logits_t = None
        for step in range(num_steps):
            want_target = step == num_steps - 1 or step_weights is not None

            inner_step = partial(self._inner_step, batch, step, training, second_order, want_target)
            if training and self.checkpoint_inner_steps:
                fast, loss_t, logits = _checkpointed(inner_step, fast, sink)
            else:
                fast, loss_t, logits = inner_step(fast, sink)
            if want_target:
                logits_t = logits
                losses.append(loss_t if step_weights is None else step_weights[step] * loss_t)
        return torch.stack(losses).sum(0), logits_t

    def _inner_step(
        self,
        batch: EpisodeBatch,
        step: int,
        training: bool,
        second_order: bool,
        want_target: bool,
        fast: dict[str, Tensor],
        sink: list[BatchStats] | None,
    ) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
        """One SGD step on the support loss, then (if wanted) the target loss/logits after it."""
        use_running = not training and self.cfg.use_running_stats_eval
        with torch.enable_grad():
            with self._autocast(batch.xs.device):
                logits_s = self.net(batch.xs, fast, step, use_running, sink)
            support_loss = task_losses(_widen(logits_s), batch.ys).sum()
            grads = torch.autograd.grad(
                support_loss,
                [fast[n] for n in self.adapted_names],
                create_graph=training and second_order,
            )
        new = {
            n: fast[n] - self._rate(n, step, training) * g
            for n, g in zip(self.adapted_names, grads)
        }
        if not training:
            new = {n: w.detach().requires_grad_() for n, w in new.items()}
        fast = {n: new.get(n, w) for n, w in fast.items()}
        if not want_target:
            return fast, None, None
        with torch.set_grad_enabled(training):
            with self._autocast(batch.xt.device):
                logits_t = _widen(self.net(batch.xt, fast, step, use_running, sink))
            return fast, task_losses(logits_t, batch.yt), logits_t

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast of the network's forward (train.precision); the caller computes losses
        and inner gradients outside it, as autocast prescribes. The weight-cast cache stays off:
        fast weights change every step, and a CUDA graph cannot hold it."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _rate(self, name: str, step: int, training: bool) -> Tensor:
        rate = self.inner_lrs.rate(name, step)
        return rate if training else rate.detach()

    # ----------------------------------------------------------------- outer loop
    def train_step(self, batch: EpisodeBatch, epoch: int, iteration: int) -> StepResult:
        """One meta-update on a task batch; returns loss/accuracy and the switches in force."""
        cfg = self.cfg
        second = use_second_order(cfg.second_order, cfg.first_order_epochs, epoch)
        msl = use_multi_step_loss(cfg.multi_step_loss, cfg.msl_epochs, epoch)
        weights = None
        if msl:
            weights = torch.tensor(
                msl_weights(cfg.inner_steps, cfg.msl_epochs, epoch), device=batch.xs.device
            )
        lr = meta_lr_at(
            iteration,
            self.total_iterations,
            cfg.meta_lr,
            cfg.min_meta_lr,
            cfg.cosine_meta_lr,
            self.iters_per_epoch if cfg.cosine_per_epoch else 0,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train()
        if self.graphed_step is not None:
            # The graph writes the gradients into the .grad tensors it captured: never reset them.
            loss_sum, acc_sum, sink = self.graphed_step(batch, second, weights)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            sink = []
            loss_sum, acc_sum = self.forward_backward(batch, second, weights, sink)
        b = len(batch)
        if self.sync is not None:
            self.sync.average_gradients([p for p in self.parameters() if p.requires_grad])
            sink = self.sync.gather_batch_stats(sink)
            loss_sum, acc_sum = self.sync.sum(loss_sum, acc_sum)
            b *= self.sync.world_size
        finite = _all_finite(loss_sum, self.parameters())
        if finite:  # before the clip, which would turn an inf into a finite gradient
            if cfg.grad_clip is not None:
                clipped = self.net if cfg.grad_clip_network_only else self
                nn.utils.clip_grad_value_(clipped.parameters(), cfg.grad_clip)
            self.optimizer.step()
            apply_batch_stats(sink)
        return StepResult(loss_sum.item() / b, acc_sum.item() / b, second, msl, lr, finite)

    def forward_backward(
        self,
        batch: EpisodeBatch,
        second_order: bool,
        step_weights: Tensor | None,
        sink: list[BatchStats],
    ) -> tuple[Tensor, Tensor]:
        """Accumulate d mean-task-meta-loss / d parameters into .grad; return the summed task
        losses and accuracies as tensors (no host synchronisation, so it can be graph-captured)."""
        b = len(batch)
        steps = self.cfg.inner_steps
        if self.impl == "loop":
            loss_sum = acc_sum = torch.zeros((), device=batch.xs.device)
            for i in range(b):
                task = batch.select(slice(i, i + 1))
                loss, logits = self.adapt_and_predict(
                    task, steps, True, second_order, step_weights, sink
                )
                (loss.sum() / b).backward()
                loss_sum = loss_sum + loss.detach().sum()
                acc_sum = acc_sum + task_accuracies(logits.detach(), task.yt).sum()
            return loss_sum, acc_sum
        loss, logits = self.adapt_and_predict(batch, steps, True, second_order, step_weights, sink)
        loss.mean().backward()
        return loss.detach().sum(), task_accuracies(logits.detach(), batch.yt).sum()

    def adapt(self, xs: Tensor, ys: Tensor, num_steps: int) -> dict[str, Tensor]:
        """Fast weights after `num_steps` inner steps on support sets xs [B, M, C, H, W] / ys
        [B, M], as evaluation adapts (no graph to the meta-parameters). With `predict_adapted`
        this is `predict` split in two, for callers that bring their own query images."""
        self.eval()
        batch = EpisodeBatch(xs, ys, xs, ys)  # the targets are not read: want_target=False
        fast = self._initial_fast_weights(len(batch), track_graph=False)
        for step in range(num_steps):
            fast, _, _ = self._inner_step(batch, step, False, True, False, fast, None)
        return fast

    @torch.no_grad()
    def predict_adapted(self, fast: dict[str, Tensor], x: Tensor, num_steps: int) -> Tensor:
        """Logits [B, M, N] of images x [B, M, C, H, W] under fast weights from `adapt`: the
        forward of the last inner step, as `predict` makes it."""
        self.eval()
        with self._autocast(x.device):
            logits = self.net(x, fast, num_steps - 1, self.cfg.use_running_stats_eval, None)
        return _widen(logits)

    def predict(self, batch: EpisodeBatch, num_steps: int | None = None) -> Tensor:
        """Adapt to each task's support set and return target logits [B, M, N] (no meta-update)."""
        self.eval()
        steps = num_steps or self.cfg.inner_steps_eval
        _, logits = self.adapt_and_predict(batch, steps, training=False)
        return logits.detach()


def _all_finite(loss: Tensor, params: Iterable[nn.Parameter]) -> bool:
    """Whether the loss and every meta-gradient are finite (one host synchronisation)."""
    checks = [loss.isfinite().all()]
    checks += [p.grad.isfinite().all() for p in params if p.grad is not None]
    return bool(torch.stack(checks).all())


def _checkpointed(
    inner_step: Callable[..., tuple[dict[str, Tensor], Tensor | None, Tensor | None]],
    fast: dict[str, Tensor],
    sink: list[BatchStats] | None,
) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
    """Run one inner step under activation checkpointing: its graph (second-order terms
    included) is rebuilt during the meta-backward instead of being kept. The rebuild reports
    batch statistics again, also nested inside the first run (the inner autograd.grad unpacks
    the support forward's tensors); only the outermost first run's reach `sink`."""
    first = True

    def run(fast: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
        nonlocal first
        report, first = first, False
        local: list[BatchStats] | None = [] if sink is not None else None
        out = inner_step(fast, local)
        if report and sink is not None:
            sink.extend(local)
        return out

    return checkpoint(run, fast, use_reentrant=False, preserve_rng_state=False)
