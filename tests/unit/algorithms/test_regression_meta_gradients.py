"""MAML and its variants on the MLP with MSE: float64 meta-gradients against an independent
torch.func computation.

The reference is a plain single-task functional MLP (F.linear, F.relu) whose inner loop uses
torch.func.grad and whose MSE is written here; it shares no code with mamlpp.nn.mlp or
mamlpp.tasks beyond the parameter names and values.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mamlpp.algorithms.learner import Learner
from mamlpp.config import AlgorithmConfig
from mamlpp.data.sinusoid import SinusoidConfig, SinusoidSampler
from mamlpp.nn.contract import MetaBackbone
from mamlpp.nn.mlp import MLP
from mamlpp.tasks import EpisodeBatch, task_mse

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 2


def ref_forward(params: dict[str, Tensor], x: Tensor) -> Tensor:
    h = F.relu(F.linear(x, params["hidden.0.weight"], params["hidden.0.bias"]))
    h = F.relu(F.linear(h, params["hidden.1.weight"], params["hidden.1.bias"]))
    return F.linear(h, params["head.weight"], params["head.bias"])


def ref_meta_loss(
    params: dict[str, Tensor],
    lrs: dict[str, Tensor],
    per_element: bool,
    batch: EpisodeBatch,
    step_weights: list[float] | None,
) -> Tensor:
    """Second-order MAML on one task at a time: mean over tasks of the target MSE. `lrs` holds
    a rate per step (MAML, LSLR) or per element shared by the steps (Meta-SGD)."""

    def mse(fw: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return ((ref_forward({**params, **fw}, x) - y) ** 2).mean()

    total = 0.0
    for t in range(len(batch)):
        fast = {n: params[n] for n in lrs}
        for s in range(STEPS):
            grads = torch.func.grad(mse)(fast, batch.xs[t], batch.ys[t])
            fast = {n: fast[n] - (lrs[n] if per_element else lrs[n][s]) * grads[n] for n in fast}
            if s == STEPS - 1 or step_weights is not None:
                loss = mse(fast, batch.xt[t], batch.yt[t])
                total = total + (loss if step_weights is None else step_weights[s] * loss)
    return total / len(batch)


CASES = {
    "maml": dict(),
    "lslr_msl": dict(learn_inner_lr=True, multi_step_loss=True),
    "metasgd": dict(per_element_lr=True),
    "anil": dict(adapt="head"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mlp_mse_meta_gradient_matches_torch_func(case: str) -> None:
    torch.manual_seed(0)
    algo = AlgorithmConfig(name="maml", inner_steps=STEPS, inner_lr=0.05, **CASES[case])
    net = MLP(1, 1, hidden=(8, 6))
    assert isinstance(net, MetaBackbone)
    learner = Learner(algo, net, loss_fn=task_mse, score_fn=task_mse).double()
    with torch.no_grad():  # distinct rates per step/layer/element exercise the mapping
        for i, rates in enumerate(learner.inner_lrs.rates.values()):
            rates.add_(0.01 * i + 0.02 * torch.rand_like(rates))
    batch = SinusoidSampler(SinusoidConfig(), 5, 7).batch("train", 0, 0, 3)
    batch = EpisodeBatch(batch.xs.double(), batch.ys.double(), batch.xt.double(), batch.yt.double())
    weights = [0.3, 0.7] if algo.multi_step_loss else None

    named = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]
    loss, _ = learner.adapt_and_predict(batch, STEPS, True, True, weights)
    got = torch.autograd.grad(loss.mean(), [p for _, p in named], allow_unused=True)
    got = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, got)}

    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    adapted = ["head.weight", "head.bias"] if algo.adapt == "head" else list(params)
    rates = {n: learner.inner_lrs.rates[n.replace(".", "__")].detach() for n in adapted}
    learnable = algo.learn_inner_lr or algo.per_element_lr
    lrs = {n: r.clone().requires_grad_(learnable) for n, r in rates.items()}
    loss = ref_meta_loss(params, lrs, algo.per_element_lr, batch, weights)
    learned = [n for n in lrs if lrs[n].requires_grad]
    want_list = torch.autograd.grad(loss, [*params.values(), *(lrs[n] for n in learned)])
    want = {f"net.{n}": g for n, g in zip(params, want_list)}
    want |= {
        f"inner_lrs.rates.{n.replace('.', '__')}": g
        for n, g in zip(learned, want_list[len(params) :])
    }
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-8, atol=1e-10, msg=lambda m, n=n: n + m)
        assert want[n].abs().max() > 0, n


def test_first_order_drops_the_second_order_terms() -> None:
    """FOMAML's gradient differs from MAML's on the MLP (ReLU has curvature through the head)
    and equals the gradient of the target loss at the adapted weights, taken as constants."""
    torch.manual_seed(1)
    net = MLP(1, 1, hidden=(8, 6)).double()
    algo = AlgorithmConfig(name="fomaml", inner_steps=1, inner_lr=0.05, second_order=False)
    learner = Learner(algo, net, loss_fn=task_mse, score_fn=task_mse).double()
    batch = SinusoidSampler(SinusoidConfig(), 5, 7).batch("train", 0, 0, 2)
    batch = EpisodeBatch(batch.xs.double(), batch.ys.double(), batch.xt.double(), batch.yt.double())
    loss, _ = learner.adapt_and_predict(batch, 1, True, False)
    got = torch.autograd.grad(loss.mean(), list(net.parameters()))
    params = dict(net.named_parameters())
    want = [torch.zeros_like(p) for p in params.values()]
    for t in range(len(batch)):
        p0 = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
        support = ((ref_forward(p0, batch.xs[t]) - batch.ys[t]) ** 2).mean()
        g = torch.autograd.grad(support, list(p0.values()))
        adapted = {n: (p0[n] - 0.05 * gi).detach().requires_grad_() for n, gi in zip(p0, g)}
        target = ((ref_forward(adapted, batch.xt[t]) - batch.yt[t]) ** 2).mean()
        for i, gi in enumerate(torch.autograd.grad(target, list(adapted.values()))):
            want[i] += gi / len(batch)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
