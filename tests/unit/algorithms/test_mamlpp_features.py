"""Each MAML++ switch changes what it should and nothing else; config validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from mamlpp.algorithms.meta_learner import EpisodeBatch, MetaLearner
from mamlpp.algorithms.schedules import meta_lr_at, msl_weights, use_multi_step_loss
from mamlpp.config import (
    AlgorithmConfig,
    Config,
    TaskConfig,
    algorithm_config,
    dataset_config,
    validate,
)
from mamlpp.config.registry import names
from mamlpp.errors import ConfigError
from mamlpp.nn.layers import BatchStats, MetaBatchNorm2d, apply_batch_stats

pytestmark = pytest.mark.usefixtures("single_thread")


def grads_of(learner: MetaLearner, batch: EpisodeBatch, second_order: bool) -> dict[str, Tensor]:
    """Meta-gradient of the mean final-step target loss, without touching .grad."""
    named = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]
    loss, _ = learner.adapt_and_predict(batch, learner.cfg.inner_steps, True, second_order)
    grads = torch.autograd.grad(loss.mean(), [p for _, p in named], allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads)}


def stored_grads(learner: MetaLearner) -> dict[str, Tensor]:
    return {
        n: torch.zeros_like(p) if p.grad is None else p.grad
        for n, p in learner.named_parameters()
        if p.requires_grad
    }


def flat(d: dict[str, Tensor]) -> Tensor:
    return torch.cat([d[n].flatten() for n in sorted(d)])


def train(learner: MetaLearner, make_batch, steps: int, epoch: int = 0) -> None:
    for i in range(steps):
        learner.train_step(make_batch(tasks=2, seed=100 + i), epoch=epoch, iteration=i)


# --------------------------------------------------------------------------- multi-step loss


def reference_msl(s: int, e_total: int, e: int) -> list[float]:
    """The MAML++ paper's importance vector, written out from docs/reference.md."""
    out = [max(1 / s - e / (s * e_total), 0.03 / s) for _ in range(s - 1)]
    out.append(min(1 / s + e * (s - 1) / (s * e_total), 1 - (s - 1) * 0.03 / s))
    return out


@pytest.mark.parametrize("steps,anneal", [(5, 10), (3, 15), (2, 4)])
def test_msl_weights_follow_the_paper(steps: int, anneal: int) -> None:
    finals = []
    for epoch in (0, 1, anneal // 3, anneal // 2, anneal - 1, anneal, 2 * anneal):
        w = msl_weights(steps, anneal, epoch)
        assert len(w) == steps
        assert w == pytest.approx(reference_msl(steps, anneal, epoch), abs=1e-12)
        assert sum(w) == pytest.approx(1.0, abs=1e-12)
        assert min(w[:-1]) >= 0.03 / steps - 1e-12
        finals.append(w[-1])
    assert msl_weights(steps, anneal, 0) == pytest.approx([1 / steps] * steps)
    assert all(b >= a for a, b in zip(finals, finals[1:]))
    assert finals[-2] > finals[0]
    # Late in the annealing every earlier step sits exactly on the floor.
    assert msl_weights(steps, anneal, 10 * anneal)[:-1] == pytest.approx(
        [0.03 / steps] * (steps - 1)
    )


def test_msl_switches_off_after_anneal_epochs(make_learner, make_batch) -> None:
    assert use_multi_step_loss(True, 10, 0) and use_multi_step_loss(True, 10, 9)
    assert not use_multi_step_loss(True, 10, 10) and not use_multi_step_loss(True, 10, 11)
    assert not use_multi_step_loss(False, 10, 0)

    learner = make_learner(multi_step_loss=True, msl_epochs=3, inner_steps=3, inner_lr=0.3)
    batch = make_batch(seed=4)
    named = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]

    def expected(weights: list[float] | None) -> dict[str, Tensor]:
        loss, _ = learner.adapt_and_predict(batch, 3, True, True, weights)
        g = torch.autograd.grad(loss.mean(), [p for _, p in named])
        return dict(zip([n for n, _ in named], g))

    with_msl = expected(msl_weights(3, 3, 1))
    final_only = expected(None)
    assert not torch.allclose(flat(with_msl), flat(final_only), rtol=1e-3)
    for epoch, want, on in ((1, with_msl, True), (3, final_only, False)):
        trial = copy.deepcopy(learner)
        res = trial.train_step(batch, epoch=epoch, iteration=0)
        assert res.multi_step_loss is on
        torch.testing.assert_close(flat(stored_grads(trial)), flat(want), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- derivative order


def test_derivative_order_annealing(make_learner, make_batch) -> None:
    learner = make_learner(second_order=True, first_order_epochs=2, inner_lr=0.4)
    batch = make_batch(seed=5)
    fo = grads_of(learner, batch, second_order=False)
    so = grads_of(learner, batch, second_order=True)
    assert (flat(fo) - flat(so)).norm() > 1e-2 * flat(so).norm()
    for epoch, second in ((0, False), (1, False), (2, True), (5, True)):
        trial = copy.deepcopy(learner)
        res = trial.train_step(batch, epoch=epoch, iteration=0)
        assert res.second_order is second
        want = so if second else fo
        torch.testing.assert_close(flat(stored_grads(trial)), flat(want), rtol=1e-5, atol=1e-7)

    # second_order=False means first order at every epoch.
    fomaml = make_learner(second_order=False, first_order_epochs=2, inner_lr=0.4)
    assert fomaml.train_step(batch, epoch=10, iteration=0).second_order is False


# --------------------------------------------------------------------------- LSLR


def test_lslr_initial_rates_equal_inner_lr(make_learner) -> None:
    learner = make_learner(inner_lr=0.37, inner_steps=3, learn_inner_lr=True)
    rates = learner.inner_lrs.as_dict()
    assert set(rates) == {n for n, _ in learner.net.named_parameters() if not n.startswith("norms")}
    for name, r in rates.items():
        assert r.shape == (3,), name
        assert torch.equal(r, torch.full((3,), 0.37)), name
    adapt_bn = make_learner(inner_lr=0.37, inner_adapt_bn=True)
    assert set(adapt_bn.inner_lrs.as_dict()) == {n for n, _ in adapt_bn.net.named_parameters()}


def test_lslr_rates_are_learned_only_when_enabled(make_learner, make_batch) -> None:
    # norm="none": a conv bias in front of batch norm has (mathematically) zero gradient, and so
    # has its inner rate; without batch norm every rate has a real training signal.
    common = dict(inner_lr=0.37, inner_steps=2, meta_lr=0.01, norm="none")
    learned = make_learner(learn_inner_lr=True, **common)
    fixed = make_learner(learn_inner_lr=False, **common)
    batch = make_batch(seed=6)

    in_opt = {id(p) for g in learned.optimizer.param_groups for p in g["params"]}
    learned.train_step(batch, epoch=0, iteration=0)
    for name, p in learned.inner_lrs.rates.items():
        assert p.requires_grad and id(p) in in_opt, name
        assert p.grad is not None and bool((p.grad.abs() > 1e-6).all()), (name, p.grad)

    in_opt = {id(p) for g in fixed.optimizer.param_groups for p in g["params"]}
    fixed.train_step(batch, epoch=0, iteration=0)
    for name, p in fixed.inner_lrs.rates.items():
        assert not p.requires_grad and id(p) not in in_opt, name
        assert p.grad is None, name
        assert torch.equal(p, torch.full((2,), 0.37)), name
    # ...while the network itself did train.
    assert fixed.net.head.weight.grad is not None

    train(learned, make_batch, steps=4)
    for name, r in learned.inner_lrs.as_dict().items():
        assert not torch.allclose(r, torch.full((2,), 0.37)), name
        assert abs(r[0] - r[1]) > 1e-5, (name, r)


# --------------------------------------------------------------------------- per-step BN


def test_per_step_bn_weights(make_learner, make_batch) -> None:
    per_step = make_learner(inner_steps=3, per_step_bn_weights=True, meta_lr=0.01)
    shared = make_learner(inner_steps=3, per_step_bn_weights=False, meta_lr=0.01)
    for bn in per_step.net.norms:
        assert bn.weight.shape == bn.bias.shape == (3, 4)
    for bn in shared.net.norms:
        assert bn.weight.shape == bn.bias.shape == (1, 4)
    train(per_step, make_batch, steps=3)
    train(shared, make_batch, steps=3)
    for bn in per_step.net.norms:
        for table in (bn.weight, bn.bias):
            assert not torch.allclose(table[0], table[1]), table
            assert not torch.allclose(table[1], table[2]), table
    for bn in shared.net.norms:
        assert not torch.equal(bn.weight, torch.ones(1, 4))  # the single row is learned


def test_per_step_bn_stats_rows(make_learner, make_batch) -> None:
    per_step = make_learner(inner_steps=3, per_step_bn_stats=True, inner_lr=0.4)
    shared = make_learner(inner_steps=3, per_step_bn_stats=False, inner_lr=0.4)
    for bn in per_step.net.norms:
        assert bn.running_mean.shape == bn.running_var.shape == (3, 4)
    for bn in shared.net.norms:
        assert bn.running_mean.shape == bn.running_var.shape == (1, 4)
    batch = make_batch(seed=7)
    per_step.train_step(batch, epoch=0, iteration=0)
    for bn in per_step.net.norms:
        for table in (bn.running_mean, bn.running_var):
            for a in range(3):
                for b in range(a + 1, 3):
                    assert not torch.allclose(table[a], table[b]), (a, b)
        assert not torch.allclose(bn.running_mean[0], torch.zeros(4))


def test_running_stats_at_eval(make_learner, make_batch) -> None:
    learner = make_learner(inner_steps=2, per_step_bn_stats=True, use_running_stats_eval=True)
    train(learner, make_batch, steps=2)
    batch = make_batch(seed=8)
    off = copy.deepcopy(learner)
    off.cfg.use_running_stats_eval = False
    assert learner.cfg.use_running_stats_eval  # the copy's config is its own

    with_running = learner.predict(batch)
    with_batch = off.predict(batch)
    assert not torch.allclose(with_running, with_batch, atol=1e-3)

    def perturbed(model: MetaLearner, buffer: str, row: int) -> MetaLearner:
        m = copy.deepcopy(model)
        with torch.no_grad():
            for bn in m.net.norms:
                getattr(bn, buffer)[row] *= 2.0
                getattr(bn, buffer)[row] += 0.5
        return m

    for buffer in ("running_mean", "running_var"):
        for row in (0, 1):
            # Off: predictions do not depend on the running statistics at all.
            assert torch.equal(perturbed(off, buffer, row).predict(batch), with_batch)
            # On: every step's own row of both statistics is read.
            changed = perturbed(learner, buffer, row).predict(batch)
            assert not torch.allclose(changed, with_running), (buffer, row)


def test_apply_batch_stats_is_sequential_ema() -> None:
    """Closed-form update == applying task 0's calls, then task 1's, ... one at a time."""
    torch.manual_seed(0)
    bn = MetaBatchNorm2d(3, weight_steps=1, stat_steps=2, momentum=0.2)
    mean0, var0 = torch.randn(2, 3), torch.rand(2, 3) + 0.5
    with torch.no_grad():
        bn.running_mean.copy_(mean0)
        bn.running_var.copy_(var0)
    # Two forward calls on slot 1 with B=3 tasks, one on slot 0.
    calls = [(1, torch.randn(3, 3), torch.rand(3, 3)) for _ in range(2)]
    calls.append((0, torch.randn(3, 3), torch.rand(3, 3)))
    apply_batch_stats([BatchStats(bn, s, m, v) for s, m, v in calls])

    want_m, want_v = mean0.clone(), var0.clone()
    for task in range(3):
        for slot, m, v in calls:
            want_m[slot] = 0.8 * want_m[slot] + 0.2 * m[task]
            want_v[slot] = 0.8 * want_v[slot] + 0.2 * v[task]
    torch.testing.assert_close(bn.running_mean, want_m)
    torch.testing.assert_close(bn.running_var, want_v)


def test_batch_stats_reported_are_unbiased_batch_moments() -> None:
    bn = MetaBatchNorm2d(2, weight_steps=1, stat_steps=1, momentum=0.1)
    x = torch.randn(2, 3, 2, 4, 4)  # [B, M, C, H, W]
    grouped = x.transpose(0, 1).reshape(3, 4, 4, 4)
    sink: list[BatchStats] = []
    bn(grouped, bn.weight[0], bn.bias[0], 0, False, sink)
    (entry,) = sink
    per_channel = x.permute(0, 2, 1, 3, 4).reshape(2, 2, -1)
    torch.testing.assert_close(entry.mean, per_channel.mean(-1))
    torch.testing.assert_close(entry.var, per_channel.var(-1, unbiased=True), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- cosine meta-LR


def test_cosine_schedule_shape() -> None:
    base, floor, total = 1e-3, 1e-5, 200
    lrs = [meta_lr_at(i, total, base, floor, True) for i in range(total + 1)]
    assert lrs[0] == pytest.approx(base, rel=1e-12)
    assert lrs[-1] == pytest.approx(floor, rel=1e-9)
    assert lrs[total // 2] == pytest.approx((base + floor) / 2, rel=1e-9)
    for i in (13, 77, 150):
        want = floor + (base - floor) * (1 + math.cos(math.pi * i / total)) / 2
        assert lrs[i] == pytest.approx(want, rel=1e-12)
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    assert meta_lr_at(total + 50, total, base, floor, True) == pytest.approx(floor)
    assert all(meta_lr_at(i, total, base, floor, False) == base for i in (0, 100, 200, 300))


def test_train_step_sets_meta_lr(make_learner, make_batch) -> None:
    total = 10
    cosine = make_learner(
        cosine_meta_lr=True, meta_lr=1e-2, min_meta_lr=1e-4, total_iterations=total
    )
    constant = make_learner(
        cosine_meta_lr=False, meta_lr=1e-2, min_meta_lr=1e-4, total_iterations=total
    )
    batch = make_batch(seed=9)
    for it in (0, 3, 5, 10):
        want = 1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * it / total)) / 2
        res = cosine.train_step(batch, epoch=0, iteration=it)
        assert res.meta_lr == pytest.approx(want, rel=1e-9)
        assert all(g["lr"] == pytest.approx(want, rel=1e-9) for g in cosine.optimizer.param_groups)
        res = constant.train_step(batch, epoch=0, iteration=it)
        assert res.meta_lr == 1e-2
        assert all(g["lr"] == 1e-2 for g in constant.optimizer.param_groups)


def test_grad_clip_clamps_each_meta_gradient_element(make_learner, make_batch) -> None:
    """algorithm.grad_clip clamps every element to [-c, c] before Adam; smaller ones are kept."""
    clipped = make_learner(inner_lr=0.3, grad_clip=1e-3)
    free = copy.deepcopy(clipped)
    free.cfg = AlgorithmConfig(**{**vars(clipped.cfg), "grad_clip": None})
    batch = make_batch(seed=4)
    clipped.train_step(batch, epoch=0, iteration=0)
    free.train_step(batch, epoch=0, iteration=0)
    n_clipped = 0
    for (n, p), q in zip(clipped.named_parameters(), free.parameters()):
        if p.grad is None:
            continue
        want = q.grad.clamp(-1e-3, 1e-3)
        torch.testing.assert_close(p.grad, want, rtol=0, atol=0, msg=n)
        n_clipped += int((q.grad.abs() > 1e-3).sum())
    assert n_clipped > 0  # the bound really bit somewhere


def test_cosine_per_epoch_is_the_published_staircase() -> None:
    """Per epoch: cos(pi * epoch / epochs) for every iteration of the epoch (CosineAnnealingLR
    stepped with the integer epoch); per iteration it moves within the epoch."""
    base, floor, epochs, ipe = 1e-3, 1e-5, 4, 10
    total = epochs * ipe
    for it in range(total):
        epoch = it // ipe
        want = floor + (base - floor) * (1 + math.cos(math.pi * epoch / epochs)) / 2
        got = meta_lr_at(it, total, base, floor, True, iters_per_epoch=ipe)
        assert got == pytest.approx(want, rel=1e-12), it
    assert meta_lr_at(15, total, base, floor, True) < meta_lr_at(15, total, base, floor, True, ipe)
    assert meta_lr_at(15, total, base, floor, False, ipe) == base


def test_train_step_follows_the_per_epoch_key(make_learner, make_batch) -> None:
    kwargs = dict(cosine_meta_lr=True, meta_lr=1e-2, min_meta_lr=1e-4, total_iterations=8)
    staircase = make_learner(cosine_per_epoch=True, iters_per_epoch=4, **kwargs)
    smooth = make_learner(**kwargs)
    batch = make_batch(seed=9)
    assert staircase.train_step(batch, epoch=0, iteration=3).meta_lr == 1e-2
    assert smooth.train_step(batch, epoch=0, iteration=3).meta_lr < 1e-2
    mid = 1e-4 + (1e-2 - 1e-4) / 2
    assert staircase.train_step(batch, epoch=1, iteration=7).meta_lr == pytest.approx(mid)


def test_grad_clip_network_only_leaves_the_inner_lrs_free(make_learner, make_batch) -> None:
    """The published code clamps the network's meta-gradients only; LSLR's are left as they are."""
    both = make_learner(inner_lr=0.3, learn_inner_lr=True, grad_clip=1e-4)
    net_only = copy.deepcopy(both)
    net_only.cfg = AlgorithmConfig(**{**vars(both.cfg), "grad_clip_network_only": True})
    batch = make_batch(seed=4)
    both.train_step(batch, epoch=0, iteration=0)
    net_only.train_step(batch, epoch=0, iteration=0)
    for a, b in zip(both.net.parameters(), net_only.net.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    rates = [p.grad for p in net_only.inner_lrs.parameters()]
    assert max(g.abs().max().item() for g in rates) > 1e-4  # not clamped
    assert all(p.grad.abs().max().item() <= 1e-4 for p in both.inner_lrs.parameters())


def test_first_adam_step_uses_the_scheduled_lr(make_learner, make_batch) -> None:
    """Adam's first update is ~lr * sign(grad): the optimizer really runs at the scheduled lr."""
    learner = make_learner(cosine_meta_lr=True, meta_lr=1e-2, min_meta_lr=1e-4, total_iterations=10)
    before = learner.net.head.weight.detach().clone()
    learner.train_step(make_batch(seed=10), epoch=0, iteration=5)
    grad = learner.net.head.weight.grad
    step = (learner.net.head.weight.detach() - before)[grad.abs() > 1e-4]
    assert step.numel() > 0
    torch.testing.assert_close(
        step.abs(), torch.full_like(step, (1e-2 + 1e-4) / 2), rtol=1e-2, atol=0
    )


# --------------------------------------------------------------------------- config validation


def _config(**algorithm: object) -> Config:
    """A Config whose algorithm is the registered one's config (FOMAML's refuses second order);
    an unregistered name is kept on a plain AlgorithmConfig for validate to refuse."""
    name = str(algorithm.pop("name", "mamlpp"))
    if name not in names("algorithm"):
        return Config(algorithm=AlgorithmConfig(name=name, **algorithm))
    return Config(algorithm=algorithm_config(name, **algorithm))


@pytest.mark.parametrize(
    "cfg,key",
    [
        (Config(task=TaskConfig(ways=500)), "task.ways"),
        (
            Config(task=TaskConfig(ways=60), dataset=dataset_config(split_sizes=[100, 50, 100])),
            "task.ways",
        ),
        (Config(task=TaskConfig(shots=15, targets=6)), "task.shots"),
        (_config(inner_lr=-0.1), "algorithm.inner_lr"),
        (_config(inner_lr=0.0), "algorithm.inner_lr"),
        (_config(meta_lr=-1e-3), "algorithm.meta_lr"),
        (_config(name="snail"), "algorithm.name"),
        (_config(name="fomaml", second_order=True), "algorithm.second_order"),
        (_config(cosine_per_epoch=True), "algorithm.cosine_per_epoch"),
        (_config(grad_clip_network_only=True), "algorithm.grad_clip_network_only"),
    ],
)
def test_validate_rejects(cfg: Config, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate(cfg)


@pytest.mark.parametrize(
    "cfg",
    [
        Config(),
        Config(task=TaskConfig(ways=50)),
        Config(task=TaskConfig(shots=15, targets=5)),
        _config(name="fomaml", second_order=False),
        _config(name="maml", second_order=True),
        Config(task=TaskConfig(ways=60), dataset=dataset_config(split_sizes=[100, 60, 100])),
    ],
)
def test_validate_accepts(cfg: Config) -> None:
    assert validate(cfg) is cfg
