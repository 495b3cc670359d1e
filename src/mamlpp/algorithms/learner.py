"""The learner: adapt a built backbone to each task, return the per-task meta-loss.

A `Learner` is a backbone (mamlpp.nn.contract.MetaBackbone), an adaptation policy (which of its
weights the inner loop changes: algorithms.adaptation) and an inner rule (how one inner step
changes them: algorithms.inner_lr). It knows nothing of the meta-optimizer, the learning-rate
schedule, clipping, distributed sync or CUDA graphs: the runtime's outer step
(algorithms.outer_step) drives `forward_backward` and owns those.

The whole task batch adapts together (grouped layout, see mamlpp.nn.layers): the inner loop is
dict arithmetic over weights with a leading task dimension, and `impl="loop"` runs the very same
code one task at a time as the reference the batched path is tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mamlpp.algorithms.adaptation import adapted_names
from mamlpp.algorithms.inner_lr import InnerRuleFactory, inner_rule_factory
from mamlpp.config import AlgorithmConfig
from mamlpp.nn.contract import MetaBackbone
from mamlpp.nn.layers import BatchStats
from mamlpp.tasks import EpisodeBatch, task_accuracies, task_losses

# (outputs [B, M, ...], labels [B, M]) -> one value per task [B].
TaskMetric = Callable[[Tensor, Tensor], Tensor]
# Per-name inner-rule state, threaded through the inner steps of one adaptation.
RuleState = dict[str, Any]


def _widen(logits: Tensor) -> Tensor:
    """Losses of autocast (bf16) logits are computed in fp32; other dtypes pass unchanged."""
    return logits.float() if logits.dtype == torch.bfloat16 else logits


class Learner(nn.Module):
    """`cfg` gives the inner loop's switches (inner_steps, inner_steps_eval, adapt,
    inner_adapt_bn, use_running_stats_eval, and the built-in rule's inner_lr, learn_inner_lr,
    per_element_lr); it is read at call time. `inner_rule(shapes, steps)` builds the rule
    (algorithms.inner_lr; the built-in one of cfg when None). `loss_fn` and `score_fn` give
    per-task losses and scores of the outputs (classification by default)."""

    # Duck-typed: any meta-backbone module (nn.contract) and any inner rule (algorithms.inner_lr).
    net: Any
    inner_lrs: Any

    # True when initial_fast_weights builds a graph of its own (ProtoMAML).
    initial_weights_have_graph = False
    # True for a classifier of every training class (the fine-tuning baselines): the factory
    # builds the backbone's head with that many outputs instead of task.ways.
    one_output_per_training_class = False

    def __init__(
        self,
        cfg: AlgorithmConfig,
        net: MetaBackbone,
        impl: str = "batched",
        precision: str = "fp32",
        checkpoint_inner_steps: bool = False,
        inner_rule: InnerRuleFactory | None = None,
        loss_fn: TaskMetric = task_losses,
        score_fn: TaskMetric = task_accuracies,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.impl = impl
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.checkpoint_inner_steps = checkpoint_inner_steps
        self.loss_fn = loss_fn
        self.score_fn = score_fn
        self.net = net
        params = dict(self.net.named_parameters())
        # Weights the network takes per task (batch-norm affine ones only with inner_adapt_bn),
        # and the ones among them the inner loop changes (algorithm.adapt: ANIL, BOIL).
        norms = self.net.norm_names
        self.fast_names = [n for n in params if cfg.inner_adapt_bn or n not in norms]
        self.adapted_names = adapted_names(cfg.adapt, self.fast_names, self.net.head_names)
        make = inner_rule or inner_rule_factory(
            None, {}, cfg.inner_lr, cfg.learn_inner_lr, cfg.per_element_lr
        )
        # The inner rule; named `inner_lrs` so state dicts keep their `inner_lrs.rates.*` keys.
        self.inner_lrs = make({n: params[n].shape for n in self.adapted_names}, cfg.inner_steps)

    # ----------------------------------------------------------------- inner loop
    def initial_fast_weights(self, batch: EpisodeBatch, track_graph: bool) -> dict[str, Tensor]:
        """The weights each task's inner loop starts from: the meta-parameters (ProtoMAML
        overrides it to start the head from the support prototypes)."""
        return self._initial_fast_weights(len(batch), track_graph)

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
        fast = self.initial_fast_weights(batch, track_graph=training)
        state: RuleState = {}
        losses: list[Tensor] = []
        logits_t = None
        for step in range(num_steps):
            want_target = step == num_steps - 1 or step_weights is not None

            inner_step = partial(self._inner_step, batch, step, training, second_order, want_target)
            if training and self.checkpoint_inner_steps:
                fast, state, loss_t, logits = _checkpointed(inner_step, fast, state, sink)
            else:
                fast, state, loss_t, logits = inner_step(fast, state, sink)
            if want_target:
                assert loss_t is not None  # the inner step scores the targets when asked
                logits_t = logits
                losses.append(loss_t if step_weights is None else step_weights[step] * loss_t)
        assert logits_t is not None  # the last step always scores the targets
        return torch.stack(losses).sum(0), logits_t

    def _inner_step(
        self,
        batch: EpisodeBatch,
        step: int,
        training: bool,
        second_order: bool,
        want_target: bool,
        fast: dict[str, Tensor],
        state: RuleState,
        sink: list[BatchStats] | None,
    ) -> tuple[dict[str, Tensor], RuleState, Tensor | None, Tensor | None]:
        """One inner-rule step on the support loss, then (if wanted) the target loss/logits."""
        use_running = not training and self.cfg.use_running_stats_eval
        with torch.enable_grad():
            with self._autocast(batch.xs.device):
                logits_s = self.net(batch.xs, fast, step, use_running, sink)
            support_loss = self.loss_fn(_widen(logits_s), batch.ys).sum()
            grads = torch.autograd.grad(
                support_loss,
                [fast[n] for n in self.adapted_names],
                create_graph=training and second_order,
                # First order frees the support graph, unless the initial weights' graph
                # runs through it (ProtoMAML's prototypes are needed by the meta-backward).
                retain_graph=training and (second_order or self.initial_weights_have_graph),
            )
        new: dict[str, Tensor] = {}
        state = dict(state)
        # Evaluation keeps no graph to the meta-parameters (the rule's included).
        with contextlib.nullcontext() if training else torch.no_grad():
            for n, g in zip(self.adapted_names, grads):
                new[n], state[n] = self.inner_lrs.step(n, fast[n], g, step, state.get(n))
        if not training:
            new = {n: w.requires_grad_() for n, w in new.items()}
        fast = {n: new.get(n, w) for n, w in fast.items()}
        if not want_target:
            return fast, state, None, None
        with torch.set_grad_enabled(training):
            with self._autocast(batch.xt.device):
                logits_t = _widen(self.net(batch.xt, fast, step, use_running, sink))
            return fast, state, self.loss_fn(logits_t, batch.yt), logits_t

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast of the network's forward (train.precision); the caller computes losses
        and inner gradients outside it, as autocast prescribes. The weight-cast cache stays off:
        fast weights change every step, and a CUDA graph cannot hold it."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype, cache_enabled=False)

    # ----------------------------------------------------------------- what the outer step calls
    def forward_backward(
        self,
        batch: EpisodeBatch,
        second_order: bool,
        step_weights: Tensor | None,
        sink: list[BatchStats],
    ) -> tuple[Tensor, Tensor]:
        """Accumulate d mean-task-meta-loss / d parameters into .grad; return the summed task
        losses and scores as tensors (no host synchronisation, so it can be graph-captured)."""
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
                acc_sum = acc_sum + self.score_fn(logits.detach(), task.yt).sum()
            return loss_sum, acc_sum
        loss, logits = self.adapt_and_predict(batch, steps, True, second_order, step_weights, sink)
        loss.mean().backward()
        return loss.detach().sum(), self.score_fn(logits.detach(), batch.yt).sum()

    # ----------------------------------------------------------------- evaluation and inference
    def adapt(self, xs: Tensor, ys: Tensor, num_steps: int) -> dict[str, Tensor]:
        """Fast weights after `num_steps` inner steps on support sets xs [B, M, C, H, W] / ys
        [B, M], as evaluation adapts (no graph to the meta-parameters). With `predict_adapted`
        this is `predict` split in two, for callers that bring their own query images."""
        self.eval()
        batch = EpisodeBatch(xs, ys, xs, ys)  # the targets are not read: want_target=False
        fast = self.initial_fast_weights(batch, track_graph=False)
        state: RuleState = {}
        for step in range(num_steps):
            fast, state, _, _ = self._inner_step(batch, step, False, True, False, fast, state, None)
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


def _checkpointed(
    inner_step: Callable[..., tuple[dict[str, Tensor], RuleState, Tensor | None, Tensor | None]],
    fast: dict[str, Tensor],
    state: RuleState,
    sink: list[BatchStats] | None,
) -> tuple[dict[str, Tensor], RuleState, Tensor | None, Tensor | None]:
    """Run one inner step under activation checkpointing: its graph (second-order terms
    included) is rebuilt during the meta-backward instead of being kept. The rebuild reports
    batch statistics again, also nested inside the first run (the inner autograd.grad unpacks
    the support forward's tensors); only the outermost first run's reach `sink`."""
    first = True

    def run(
        fast: dict[str, Tensor], state: RuleState
    ) -> tuple[dict[str, Tensor], RuleState, Tensor | None, Tensor | None]:
        nonlocal first
        report, first = first, False
        local: list[BatchStats] | None = [] if sink is not None else None
        out = inner_step(fast, state, local)
        if report and sink is not None and local is not None:
            sink.extend(local)
        return out

    return checkpoint(run, fast, state, use_reentrant=False, preserve_rng_state=False)
