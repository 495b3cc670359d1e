"""ANIL, BOIL and Meta-SGD: which weights adapt, and the per-element update rule.

Each variant's float64 meta-gradient is checked against an independent torch.func computation
(on the functional Conv4 of helpers/reference.py), plus the behaviour that defines it: ANIL
moves only the head in the inner loop, BOIL only the body, Meta-SGD learns a rate per element.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from helpers import reference
from helpers.gradients import assert_grads_close, meta_gradients
from mamlpp.algorithms.meta_learner import EpisodeBatch, MetaLearner
from mamlpp.config import AlgorithmConfig, ConfigError, validate

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 2
VARIANTS = {
    "anil": dict(adapt="head"),
    "boil": dict(adapt="body"),
    "metasgd": dict(per_element_lr=True),
    "anil_msl_lslr": dict(adapt="head", multi_step_loss=True, learn_inner_lr=True),
}


def setup(make_learner, make_batch, options: dict) -> tuple[MetaLearner, EpisodeBatch]:
    learner = make_learner(inner_lr=0.4, inner_steps=STEPS, **options).double()
    if options.get("per_element_lr"):  # distinct rates per element exercise the broadcasting
        with torch.no_grad():
            for rates in learner.inner_lrs.rates.values():
                rates.mul_(1 + 0.5 * torch.rand_like(rates))
    return learner, make_batch(tasks=2, dtype=torch.float64, seed=3)


def reference_grads(
    learner: MetaLearner, batch: EpisodeBatch, step_weights: list[float] | None
) -> dict[str, Tensor]:
    """Second-order meta-gradient of the variant, computed per task with torch.func.grad."""
    params = {n: p.detach().clone().requires_grad_() for n, p in learner.net.named_parameters()}
    cfg = learner.cfg
    body = [n for n in params if not n.startswith("norms.") and not n.startswith("head.")]
    head = ["head.weight", "head.bias"]
    adapted = {"all": body + head, "head": head, "body": body}[cfg.adapt]
    rates = {
        n: learner.inner_lrs.rates[n.replace(".", "__")].detach().clone().requires_grad_()
        for n in adapted
    }

    def rate(n: str, step: int) -> Tensor:
        return rates[n] if cfg.per_element_lr else rates[n][step]

    loss = reference.meta_loss(params, adapted, rate, batch, STEPS, 2, step_weights)
    learned = [n for n in adapted if learner.inner_lrs.rates[n.replace(".", "__")].requires_grad]
    found = torch.autograd.grad(loss, [*params.values(), *(rates[n] for n in learned)])
    out = {f"net.{n}": g for n, g in zip(params, found[: len(params)])}
    for n, g in zip(learned, found[len(params) :]):
        out[f"inner_lrs.rates.{n.replace('.', '__')}"] = g
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_meta_gradient_matches_torch_func(make_learner, make_batch, variant: str) -> None:
    options = VARIANTS[variant]
    learner, batch = setup(make_learner, make_batch, options)
    weights = [0.3, 0.7] if options.get("multi_step_loss") else None
    got = meta_gradients(learner, batch, STEPS, second_order=True, step_weights=weights)
    want = reference_grads(learner, batch, weights)
    assert_grads_close(got, want, rtol=1e-8, atol=1e-10)
    for n, g in want.items():  # the fixed part is still meta-learned: nothing disconnected
        assert g.abs().max() > 0, n


@pytest.mark.parametrize(("adapt", "moved"), [("head", {"head"}), ("body", {"convs"})])
def test_inner_loop_moves_only_the_adapted_weights(make_learner, make_batch, adapt, moved):
    learner = make_learner(adapt=adapt, inner_steps=STEPS)
    batch = make_batch()
    fast = learner.adapt(batch.xs, batch.ys, STEPS)
    params = dict(learner.net.named_parameters())
    changed = set()
    for n, w in fast.items():
        same = torch.equal(w, params[n].detach().unsqueeze(0).expand_as(w))
        if not same:
            changed.add(n.split(".")[0])
    assert changed == moved
    assert set(learner.adapted_names) == {n for n in fast if n.split(".")[0] in moved}


def test_metasgd_rates_have_the_parameter_shapes_and_learn(make_learner, make_batch) -> None:
    learner = make_learner(per_element_lr=True, inner_lr=0.3, inner_steps=STEPS)
    params = dict(learner.net.named_parameters())
    for n in learner.adapted_names:
        rates = learner.inner_lrs.rates[n.replace(".", "__")]
        assert rates.shape == params[n].shape and rates.requires_grad
        assert torch.all(rates == 0.3)
    before = {k: r.detach().clone() for k, r in learner.inner_lrs.rates.items()}
    learner.train_step(make_batch(), epoch=0, iteration=0)
    for k, r in learner.inner_lrs.rates.items():
        assert r.grad is not None and r.grad.abs().max() > 0, k
        if k.endswith("weight"):  # biases before batch norm get only rounding-level gradients
            assert not torch.equal(r.detach(), before[k]), k  # Adam moved them


@pytest.mark.parametrize(
    ("options", "key"),
    [
        (dict(per_element_lr=True, learn_inner_lr=True), "algorithm.per_element_lr"),
        (dict(adapt="head", inner_adapt_bn=True), "algorithm.inner_adapt_bn"),
        (dict(adapt="neck"), "algorithm.adapt"),
    ],
)
def test_combinations_that_cannot_work_are_one_line(options: dict, key: str) -> None:
    from mamlpp.config import Config

    with pytest.raises(ConfigError, match=key):
        validate(Config(algorithm=AlgorithmConfig(**options)))


def test_the_label_names_what_differs_from_the_algorithm_group() -> None:
    """Results name what ran: a group's own keys (from its YAML) are not repeated, an
    override of them is."""
    from mamlpp.config import algorithm_label

    assert algorithm_label(AlgorithmConfig(name="anil", adapt="head")) == "anil"
    assert algorithm_label(AlgorithmConfig(name="anil", adapt="all")) == "anil+adapt=all"
    assert algorithm_label(AlgorithmConfig(name="maml", adapt="head")) == "maml+adapt=head"
    assert algorithm_label(AlgorithmConfig(name="metasgd", per_element_lr=True)) == "metasgd"
    assert algorithm_label(AlgorithmConfig(name="boil", adapt="body")) == "boil"
