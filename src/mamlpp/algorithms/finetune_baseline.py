"""The fine-tuning baselines of Chen et al. 2019 ("A Closer Look at Few-shot Classification").

Baseline: pre-train the backbone as a standard classifier of all training classes; for each test
task, freeze it and fine-tune a new linear head on the support set. Baseline++: the same with a
cosine classifier (scaled cosine similarity between features and class weights) both in
pre-training and in fine-tuning.

It trains and evaluates through the meta-learner's interface: the same episodes (each image
labelled with its class among all of the split's, `EpisodeBatch.classes`, so pre-training sees
exactly the images a meta-learner sees), the same validation and test tasks, ensemble and
results. Fine-tuning follows the paper: SGD with momentum 0.9 and weight decay 0.001 at
`algorithm.finetune_lr` (0.01) for `algorithm.finetune_steps` (100) steps, full batch (the
support set), the head initialised alike for every task, so a task's prediction depends on
nothing but the task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlpp.algorithms.learner import Learner
from mamlpp.config import FineTuneConfig, register_algorithm
from mamlpp.nn.layers import BatchStats
from mamlpp.tasks import EpisodeBatch

MOMENTUM = 0.9
WEIGHT_DECAY = 0.001
HEAD_SEED = 0


def cosine_scale(classes: int) -> float:
    """Baseline++'s logit scale: 2 up to 200 classes, else 10 (the paper's released code)."""
    return 2.0 if classes <= 200 else 10.0


def head_logits(features: Tensor, weight: Tensor, bias: Tensor | None, cosine: bool) -> Tensor:
    """features [B, M, F], class weights [B, N, F] (and bias [B, N]) -> logits [B, M, N]."""
    if cosine:
        cos = F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(1, 2)
        return cosine_scale(weight.shape[1]) * cos
    assert bias is not None  # a linear head has one
    return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))


@register_algorithm("baseline_pp", config=FineTuneConfig)
@register_algorithm("baseline", config=FineTuneConfig)
class FineTuneBaseline(Learner):
    """algorithm=baseline (linear head) or baseline_pp (cosine head, Baseline++). The
    backbone's head has one output per training class (algorithms.factory builds it so)."""

    cfg: FineTuneConfig
    one_output_per_training_class = True

    @property
    def cosine(self) -> bool:
        return self.cfg.name == "baseline_pp"

    # ----------------------------------------------------------------- pre-training
    def features(self, x: Tensor, sink: list[BatchStats] | None = None) -> Tensor:
        """Backbone features [B, M, F] of images x [B, M, C, H, W] (batch norm with each
        task's batch statistics, as the meta-learners use): the head replaced by identity."""
        b = x.shape[0]
        dim = self.net.head.weight.shape[1]
        params = {
            n: p.unsqueeze(0).expand(b, *p.shape)
            for n, p in self.net.named_parameters()
            if n in self.fast_names
        }
        eye = torch.eye(dim, device=x.device, dtype=self.net.head.weight.dtype)
        params["head.weight"] = eye.expand(b, dim, dim)
        params["head.bias"] = torch.zeros(b, dim, device=x.device, dtype=eye.dtype)
        return self.net(x, params, 0, False, sink)

    def forward_backward(
        self,
        batch: EpisodeBatch,
        second_order: bool,
        step_weights: Tensor | None,
        sink: list[BatchStats],
    ) -> tuple[Tensor, Tensor]:
        """Standard classification of every image of the batch (support and targets) among
        all training classes; per task the mean cross-entropy and accuracy (summed)."""
        if batch.classes is None:
            raise ValueError("the fine-tuning baseline needs EpisodeBatch.classes")
        x = torch.cat([batch.xs, batch.xt], 1)
        local = torch.cat([batch.ys, batch.yt], 1)
        labels = torch.gather(batch.classes, 1, local)
        feats = self.features(x, sink)
        b = len(batch)
        w = self.net.head.weight.unsqueeze(0).expand(b, *self.net.head.weight.shape)
        bias = self.net.head.bias.unsqueeze(0).expand(b, -1)
        logits = head_logits(feats, w, bias, self.cosine)
        losses = self.loss_fn(logits, labels)
        losses.mean().backward()
        return losses.detach().sum(), self.score_fn(logits.detach(), labels).sum()

    # ----------------------------------------------------------------- fine-tuning
    def initial_head(self, b: int, ways: int, dim: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """A new head [B, N, F] / [B, N]: one draw (torch.nn.Linear's uniform init, from a
        fixed seed) shared by every task, so no task's result depends on its batch."""
        gen = torch.Generator().manual_seed(HEAD_SEED)
        bound = 1.0 / math.sqrt(dim)
        w = (torch.rand(ways, dim, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        w = w.to(like.device, like.dtype).unsqueeze(0).repeat(b, 1, 1)
        return w, torch.zeros(b, ways, device=like.device, dtype=like.dtype)

    def fine_tune(
        self, feats_s: Tensor, ys: Tensor, ways: int, steps: int
    ) -> tuple[Tensor, Tensor]:
        """SGD with momentum and weight decay on each task's support loss (features fixed)."""
        lr = self.cfg.finetune_lr
        w, bias = self.initial_head(feats_s.shape[0], ways, feats_s.shape[-1], feats_s)
        params = [w, bias]
        velocity = [torch.zeros_like(p) for p in params]
        for _ in range(steps):
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_() for p in params]
                logits = head_logits(feats_s, leaves[0], leaves[1], self.cosine)
                loss = self.loss_fn(logits, ys).sum()
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            for i, (p, g) in enumerate(zip(params, grads)):
                if g is None:  # Baseline++'s cosine head has no bias
                    continue
                g = g + WEIGHT_DECAY * p
                velocity[i] = MOMENTUM * velocity[i] + g
                params[i] = p - lr * velocity[i]
        return params[0], params[1]

    @torch.no_grad()
    def predict(self, batch: EpisodeBatch, num_steps: int | None = None) -> Tensor:
        """Fine-tune a new head on each task's support features; target logits [B, M, N]."""
        self.eval()
        steps = num_steps or self.cfg.finetune_steps
        ways = int(batch.ys.max().item()) + 1
        feats = self.features(torch.cat([batch.xs, batch.xt], 1))
        k = batch.xs.shape[1]
        w, bias = self.fine_tune(feats[:, :k], batch.ys, ways, steps)
        return head_logits(feats[:, k:], w, bias, self.cosine)

    def adapt_and_predict(
        self,
        batch: EpisodeBatch,
        num_steps: int,
        training: bool,
        second_order: bool = True,
        step_weights: Sequence[float] | Tensor | None = None,
        sink: list[BatchStats] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Evaluation's view (no meta-gradient exists): target losses and logits."""
        logits = self.predict(batch, num_steps)
        return self.loss_fn(logits, batch.yt), logits
