"""Reptile (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task adapts for `inner_steps` steps of the inner rule (plain SGD at inner_lr by default, or
algorithms.inner_lr.InnerAdam) on all its labelled images, support and target together; the
meta-update moves the initialisation toward the adapted weights:

    theta <- theta + epsilon * (mean over tasks of theta~_task - theta)

`forward_backward` writes the direction theta - mean theta~ into `.grad`, so the runtime's outer
step applies it like any meta-gradient: with SGD at learning rate epsilon it is the update above
(the paper anneals epsilon linearly to 0: algorithm.linear_meta_lr), with Adam it is the
paper's Adam variant. Tasks adapt together (batched) or one at a time (impl=loop), no graph is
kept, and the reported loss and accuracy are those of the last inner step's forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamlpp.algorithms.learner import Learner, RuleState, _widen
from mamlpp.config import ReptileConfig, register_algorithm
from mamlpp.nn.layers import BatchStats
from mamlpp.tasks import EpisodeBatch


@register_algorithm("reptile", config=ReptileConfig)
class Reptile(Learner):
    """A Learner whose forward_backward is Reptile's meta-update direction (see the module)."""

    def forward_backward(
        self,
        batch: EpisodeBatch,
        second_order: bool,
        step_weights: Tensor | None,
        sink: list[BatchStats],
    ) -> tuple[Tensor, Tensor]:
        """Accumulate theta - mean(adapted theta) into .grad; `second_order` and
        `step_weights` do not apply (Reptile is first order and has one loss per step)."""
        b = len(batch)
        if self.impl == "loop":
            loss_sum = acc_sum = torch.zeros((), device=batch.xs.device)
            for i in range(b):
                loss, acc = self._adapt_and_pull(batch.select(slice(i, i + 1)), b, sink)
                loss_sum, acc_sum = loss_sum + loss, acc_sum + acc
            return loss_sum, acc_sum
        return self._adapt_and_pull(batch, b, sink)

    def _adapt_and_pull(
        self, batch: EpisodeBatch, total: int, sink: list[BatchStats]
    ) -> tuple[Tensor, Tensor]:
        """Adapt `batch`'s tasks; add sum over them of (theta - theta~) / total to .grad."""
        x = torch.cat([batch.xs, batch.xt], dim=1)
        y = torch.cat([batch.ys, batch.yt], dim=1)
        fast = self._initial_fast_weights(len(batch), track_graph=False)
        state: RuleState = {}
        for step in range(self.cfg.inner_steps):
            with torch.enable_grad():
                with self._autocast(x.device):
                    logits = _widen(self.net(x, fast, step, False, sink))
                losses = self.loss_fn(logits, y)
                grads = torch.autograd.grad(losses.sum(), [fast[n] for n in self.adapted_names])
            with torch.no_grad():
                for n, g in zip(self.adapted_names, grads):
                    new, state[n] = self.inner_lrs.step(n, fast[n], g, step, state.get(n))
                    fast[n] = new.requires_grad_()
        params = dict(self.net.named_parameters())
        with torch.no_grad():
            for n in self.adapted_names:
                p = params[n]
                pull = (p - fast[n]).sum(0) / total
                if p.grad is None:
                    p.grad = pull
                else:
                    p.grad.add_(pull)
        return losses.detach().sum(), self.score_fn(logits.detach(), y).sum()
