"""Reptile: the float64 meta-update equals Nichol et al.'s rule computed independently here
(per-task SGD written with torch.func.grad, then theta + eps * (mean adapted - theta)), for the
batched and the one-task-at-a-time implementation; the outer step size anneals linearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mamlpp.algorithms.factory import build_network
from mamlpp.algorithms.inner_lr import InnerAdam
from mamlpp.algorithms.outer_step import OuterStep
from mamlpp.algorithms.reptile import Reptile
from mamlpp.algorithms.schedules import meta_lr_at
from mamlpp.config import AlgorithmConfig, model_config
from mamlpp.tasks import EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")

# Step sizes exact in binary: the rule stores its rate as a float32 tensor before .double().
STEPS, WAYS, SIZE, INNER_LR, EPS = 3, 3, 8, 0.25, 0.75


def _reptile(impl: str, rule=None) -> tuple[Reptile, OuterStep]:
    torch.manual_seed(2)
    cfg = AlgorithmConfig(
        name="reptile", inner_steps=STEPS, inner_lr=INNER_LR, second_order=False, meta_lr=EPS
    )
    net = build_network(cfg, model_config(filters=3, stages=2, norm="none"), 1, SIZE, WAYS)
    learner = Reptile(cfg, net, impl=impl, inner_rule=rule).double()
    return learner, OuterStep(learner, cfg, total_iterations=10, optimizer=torch.optim.SGD)


def _batch() -> EpisodeBatch:
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(3, WAYS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    xt = torch.randn(3, WAYS * 2, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    ys = torch.stack([torch.randperm(WAYS, generator=g) for _ in range(3)])
    return EpisodeBatch(xs, ys, xt, ys.repeat(1, 2))


def _forward(w: dict[str, Tensor], x: Tensor) -> Tensor:
    h = x
    for i in range(2):
        h = F.conv2d(h, w[f"convs.{i}.weight"], w[f"convs.{i}.bias"], padding=1)
        h = F.max_pool2d(F.leaky_relu(h), 2)
    return F.linear(h.flatten(1), w["head.weight"], w["head.bias"])


def _reference(theta: dict[str, Tensor], batch: EpisodeBatch) -> tuple[dict[str, Tensor], float]:
    """Nichol et al. 2018, serial version: SGD on each task's labelled images, then move."""
    adapted, last_losses = [], []
    for t in range(len(batch)):
        x = torch.cat([batch.xs[t], batch.xt[t]])
        y = torch.cat([batch.ys[t], batch.yt[t]])

        def loss(w: dict[str, Tensor], x: Tensor = x, y: Tensor = y) -> Tensor:
            return F.cross_entropy(_forward(w, x), y)

        w = dict(theta)
        for _ in range(STEPS):
            last_losses.append(loss(w).item())
            g = torch.func.grad(loss)(w)
            w = {n: w[n] - INNER_LR * g[n] for n in w}
        adapted.append(w)
    new = {
        n: theta[n] + EPS * (sum(a[n] for a in adapted) / len(adapted) - theta[n]) for n in theta
    }
    return new, sum(last_losses[STEPS - 1 :: STEPS]) / len(batch)


@pytest.mark.parametrize("impl", ["batched", "loop"])
def test_meta_update_is_the_reptile_rule(impl: str) -> None:
    learner, outer = _reptile(impl)
    batch = _batch()
    theta = {n: p.detach().clone() for n, p in learner.net.named_parameters()}
    want, want_loss = _reference(theta, batch)
    result = outer.train_step(batch, epoch=0, iteration=0)
    got = dict(learner.net.named_parameters())
    for n in want:
        assert not torch.equal(got[n], theta[n]), n
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-12, msg=n)
    assert result.loss == pytest.approx(want_loss, rel=1e-10)
    assert result.meta_lr == EPS and 0 <= result.accuracy <= 1


def test_inner_adam_carries_its_moments_across_steps() -> None:
    rule = InnerAdam({"w": torch.Size([2])}, STEPS, init_lr=0.1, betas=(0.5, 0.9))
    w, state = torch.zeros(1, 2, dtype=torch.float64), None
    m = v = torch.zeros(1, 2, dtype=torch.float64)
    for t, g in enumerate([torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]])], start=1):
        g = g.double()
        m, v = 0.5 * m + 0.5 * g, 0.9 * v + 0.1 * g * g
        want = w - 0.1 * (m / (1 - 0.5**t)) / ((v / (1 - 0.9**t)).sqrt() + 1e-8)
        w, state = rule.step("w", w, g, t - 1, state)
        torch.testing.assert_close(w, want, rtol=1e-12, atol=0)


def test_reptile_with_inner_adam_trains() -> None:
    from functools import partial

    learner, outer = _reptile("batched", partial(InnerAdam, init_lr=0.01))
    before = [p.detach().clone() for p in learner.parameters()]
    assert outer.train_step(_batch(), 0, 0).finite
    assert all(not torch.equal(a, b) for a, b in zip(before, learner.parameters()))


def test_outer_step_size_anneals_linearly() -> None:
    assert meta_lr_at(0, 100, 1.0, 0.0, False, linear=True) == 1.0
    assert meta_lr_at(25, 100, 1.0, 0.0, False, linear=True) == pytest.approx(0.75)
    assert meta_lr_at(100, 100, 1.0, 0.2, False, linear=True) == pytest.approx(0.2)
    learner, outer = _reptile("batched")
    outer.cfg.linear_meta_lr, outer.cfg.min_meta_lr = True, 0.0
    assert outer.train_step(_batch(), 0, 5).meta_lr == pytest.approx(EPS * 0.5)
