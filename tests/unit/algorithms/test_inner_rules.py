"""Inner rules chosen in config: the built-in ones keep today's keys, and a user's rule with
momentum across inner steps (tests/user_code/user_rules.py) meta-learns with the exact
second-order meta-gradient of an independent torch.func computation."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import REPO_ROOT
from mamlpp.algorithms.inner_lr import (
    FixedLR,
    PerElementLR,
    PerLayerPerStepLR,
    inner_rule_factory,
)
from mamlpp.algorithms.learner import Learner
from mamlpp.algorithms.meta_learner import build_network
from mamlpp.config import AlgorithmConfig, model_config
from mamlpp.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

USER_CODE = REPO_ROOT / "tests" / "user_code"
STEPS, WAYS, SIZE, MOMENTUM = 3, 3, 8, 0.7


@pytest.fixture
def user_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USER_CODE))


@pytest.mark.parametrize(
    ("keys", "rule"),
    [
        ({}, FixedLR),
        ({"learn_inner_lr": True}, PerLayerPerStepLR),
        ({"per_element_lr": True}, PerElementLR),
    ],
)
def test_todays_keys_choose_the_builtin_rules(keys: dict, rule: type) -> None:
    cfg = AlgorithmConfig(inner_steps=2, **keys)
    net = build_network(cfg, model_config(filters=4, stages=2), 1, SIZE, WAYS)
    learner = Learner(cfg, net)
    assert type(learner.inner_lrs) is rule
    learned = {k for k, p in learner.state_dict(keep_vars=True).items() if p.requires_grad}
    rates = {k for k in learned if k.startswith("inner_lrs.")}
    assert all(k.startswith("inner_lrs.rates.") for k in rates)
    assert bool(rates) == (rule is not FixedLR)


def test_a_target_without_a_step_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"inner_rule._target_.*torch.nn.Linear.*step\(") as e:
        inner_rule_factory("torch.nn.Linear", {}, 0.1)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"inner_rule._target_' = 'user_rules.Nope'"):
        inner_rule_factory("user_rules.Nope", {}, 0.1)


def _user_learner() -> Learner:
    torch.manual_seed(3)
    cfg = AlgorithmConfig(inner_steps=STEPS, inner_steps_eval=STEPS, inner_lr=0.3)
    net = build_network(cfg, model_config(filters=3, stages=2, norm="none"), 1, SIZE, WAYS)
    rule = inner_rule_factory("user_rules.MomentumSGD", {"momentum": MOMENTUM}, cfg.inner_lr)
    learner = Learner(cfg, net, inner_rule=rule).double()
    with torch.no_grad():  # distinct rates, so a mix-up of tensors would show
        for i, lr in enumerate(learner.inner_lrs.lrs.values()):
            lr.fill_(0.2 + 0.05 * i)
    return learner


def _batch(tasks: int = 2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(tasks, WAYS * 2, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    xt = torch.randn(tasks, WAYS * 2, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    ys = torch.arange(WAYS).repeat_interleave(2).repeat(tasks, 1)
    return xs, ys, xt, ys.clone()


def _reference_forward(w: dict[str, Tensor], x: Tensor) -> Tensor:
    """One task's Conv4 without normalisation: conv -> leaky_relu -> max-pool, then linear."""
    h = x
    for i in range(2):
        h = F.conv2d(h, w[f"convs.{i}.weight"], w[f"convs.{i}.bias"], padding=1)
        h = F.max_pool2d(F.leaky_relu(h), 2)
    return F.linear(h.flatten(1), w["head.weight"], w["head.bias"])


def _reference_meta_loss(params: dict[str, Tensor], lrs: dict[str, Tensor], batch) -> Tensor:
    """Heavy-ball inner loop written out with torch.func.grad; mean target loss over tasks."""
    xs, ys, xt, yt = batch
    total = 0.0
    for t in range(xs.shape[0]):
        fast, velocity = dict(params), {}

        def support_loss(w: dict[str, Tensor], t: int = t) -> Tensor:
            return F.cross_entropy(_reference_forward(w, xs[t]), ys[t])

        for _ in range(STEPS):
            grads = torch.func.grad(support_loss)(fast)
            velocity = {n: grads[n] + MOMENTUM * velocity.get(n, 0.0) for n in fast}
            fast = {n: fast[n] - lrs[n] * velocity[n] for n in fast}
        total = total + F.cross_entropy(_reference_forward(fast, xt[t]), yt[t])
    return total / xs.shape[0]


def test_user_rule_with_momentum_has_the_reference_meta_gradient(user_rules: None) -> None:
    from mamlpp.tasks import EpisodeBatch

    learner = _user_learner()
    batch = _batch()
    named = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]
    loss, _ = learner.adapt_and_predict(EpisodeBatch(*batch), STEPS, True, True)
    got = dict(zip([n for n, _ in named], torch.autograd.grad(loss.mean(), [p for _, p in named])))

    params = {n: p.detach().clone().requires_grad_() for n, p in learner.net.named_parameters()}
    lrs = {
        n: learner.inner_lrs.lrs[n.replace(".", "__")].detach().clone().requires_grad_()
        for n in params
    }
    want_loss = _reference_meta_loss(params, lrs, batch)
    grads = torch.autograd.grad(want_loss, [*params.values(), *lrs.values()])
    want = {f"net.{n}": g for n, g in zip(params, grads)}
    want |= {f"inner_lrs.lrs.{n.replace('.', '__')}": g for n, g in zip(lrs, grads[len(params) :])}
    torch.testing.assert_close(loss.mean(), want_loss, rtol=1e-10, atol=1e-12)
    assert set(got) == set(want)
    for n in want:
        assert want[n].abs().max() > 0, n
        torch.testing.assert_close(got[n], want[n], rtol=1e-8, atol=1e-10, msg=n)
    # The momentum term really acts: without it the meta-gradient differs.
    learner.inner_lrs.momentum = 0.0
    loss0, _ = learner.adapt_and_predict(EpisodeBatch(*batch), STEPS, True, True)
    assert not torch.allclose(loss0.mean(), loss.mean())


@pytest.mark.parametrize("name", ["maml", "mamlpp", "anil", "boil", "metasgd"])
def test_named_variants_are_what_their_presets_build(name: str) -> None:
    """algorithms.variants and conf/algorithm/<name>.yaml define the same policy and rule."""
    from mamlpp import compose
    from mamlpp.algorithms.factory import build_learner
    from mamlpp.algorithms.variants import VARIANTS, variant_learner

    cfg = compose(f"algorithm={name}", "model.filters=4")
    from_config = build_learner(cfg, 1)
    variant = VARIANTS[name]
    net = build_network(cfg.algorithm, cfg.model, 1, cfg.dataset.image_size, cfg.task.ways)
    from_python = variant_learner(variant, net, cfg.algorithm)
    assert type(from_config.inner_lrs) is type(from_python.inner_lrs) is variant.inner_rule
    assert from_config.adapted_names == from_python.adapted_names
    assert cfg.algorithm.adapt == variant.adapt


def test_the_learner_does_not_know_the_outer_step() -> None:
    """The outer step is the runtime's: no learner module imports it."""
    algorithms = REPO_ROOT / "src" / "mamlpp" / "algorithms"
    for module in ("learner", "inner_lr", "adaptation", "variants", "reptile", "protomaml"):
        text = (algorithms / f"{module}.py").read_text()
        assert not re.search(r"^(from|import) mamlpp\.algorithms\.outer_step", text, re.M), module
