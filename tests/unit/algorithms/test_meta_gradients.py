"""Meta-gradients of MetaLearner against an independent torch.func re-implementation.

The reference (helpers/reference.py) is a plain single-task functional Conv4 (F.conv2d,
hand-written batch norm, F.linear) whose inner loop uses torch.func.grad; the outer gradient is
ordinary autograd through it. It shares no code with mamlpp.nn beyond the parameter names and
values.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import MAMLPP_ALL
from helpers import reference
from helpers.gradients import assert_grads_close, central_difference, meta_gradients, rel_diff
from mamlpp.algorithms.meta_learner import EpisodeBatch, MetaLearner
from mamlpp.nn.fast_kernels import use_fast_kernels

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 2


# --------------------------------------------------------------------------- reference
# The functional Conv4 of helpers/reference.py, with the learner's weights and inner rates.


def ref_params(learner: MetaLearner) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Fresh leaf copies of the learner's weights and (per-step) inner rates."""
    params = {n: p.detach().clone().requires_grad_() for n, p in learner.net.named_parameters()}
    # Adapted in the inner loop: everything, or everything but the batch-norm affine parameters.
    adapted = [n for n in params if learner.cfg.inner_adapt_bn or not n.startswith("norms.")]
    lrs = {
        n: learner.inner_lrs.rates[n.replace(".", "__")].detach().clone().requires_grad_()
        for n in adapted
    }
    return params, lrs


def ref_grads(
    learner: MetaLearner, batch: EpisodeBatch, stages: int, step_weights: list[float] | None = None
) -> dict[str, Tensor]:
    """Second-order reference gradient keyed like learner.named_parameters()."""
    params, lrs = ref_params(learner)
    learned = [n for n in lrs if learner.inner_lrs.rates[n.replace(".", "__")].requires_grad]
    loss = reference.meta_loss(
        params, list(lrs), lambda n, s: lrs[n][s], batch, STEPS, stages, step_weights
    )
    gp = torch.autograd.grad(loss, list(params.values()) + [lrs[n] for n in learned])
    out = {f"net.{n}": g for n, g in zip(params, gp[: len(params)])}
    out.update(
        {f"inner_lrs.rates.{n.replace('.', '__')}": g for n, g in zip(learned, gp[len(params) :])}
    )
    return out


def learner_grads(
    learner: MetaLearner,
    batch: EpisodeBatch,
    second_order: bool,
    step_weights: list[float] | None = None,
) -> dict[str, Tensor]:
    """d mean(meta-loss) / d parameter for every trainable parameter (no optimizer step)."""
    return meta_gradients(learner, batch, STEPS, second_order, step_weights)


# --------------------------------------------------------------------------- second order

SO_CASES = {
    "maml_no_norm": dict(norm="none"),
    "maml_batch_norm": dict(norm="batch_norm"),
    "mamlpp_all": dict(
        norm="batch_norm",
        learn_inner_lr=True,
        per_step_bn_weights=True,
        per_step_bn_stats=True,
        inner_adapt_bn=True,
        multi_step_loss=True,
    ),
}


def _double_setup(make_learner, make_batch, case: dict) -> tuple[MetaLearner, EpisodeBatch]:
    learner = make_learner(inner_lr=0.4, inner_steps=STEPS, **case).double()
    batch = make_batch(tasks=2, dtype=torch.float64, seed=1)
    if case.get("per_step_bn_weights"):
        # Break the symmetry between the per-step rows so the step->row mapping is exercised.
        with torch.no_grad():
            for bn in learner.net.norms:
                bn.weight.add_(0.3 * torch.randn_like(bn.weight))
                bn.bias.add_(0.3 * torch.randn_like(bn.bias))
    if case.get("learn_inner_lr"):
        with torch.no_grad():
            for i, rates in enumerate(learner.inner_lrs.rates.values()):
                rates.copy_(torch.tensor([0.4 - 0.05 * i, 0.3 + 0.02 * i], dtype=torch.float64))
    return learner, batch


@pytest.mark.parametrize("fast", [False, True], ids=["default_kernels", "fast_kernels"])
@pytest.mark.parametrize("case", list(SO_CASES))
def test_second_order_matches_torch_func_reference(
    make_learner, make_batch, case: str, fast: bool
) -> None:
    """Also with speed.fast_kernels (closed-form batch-norm double backward, pooling first)."""
    cfg = SO_CASES[case]
    learner, batch = _double_setup(make_learner, make_batch, cfg)
    weights = [0.3, 0.7] if cfg.get("multi_step_loss") else None
    with use_fast_kernels(fast):
        got = learner_grads(learner, batch, second_order=True, step_weights=weights)
    want = ref_grads(learner, batch, stages=2, step_weights=weights)
    if cfg.get("learn_inner_lr"):
        assert any(n.startswith("inner_lrs.") for n in got)
    assert_grads_close(got, want, rtol=1e-8, atol=1e-10)
    # Every parameter tensor gets a gradient signal (nothing silently disconnected).
    for n, g in want.items():
        assert g.abs().max() > 0, n


@pytest.mark.parametrize("fast", [False, True], ids=["default_kernels", "fast_kernels"])
@pytest.mark.parametrize("case", ["maml_no_norm", "mamlpp_all"])
def test_second_order_matches_finite_differences(
    make_learner, make_batch, case: str, fast: bool
) -> None:
    cfg = SO_CASES[case]
    learner, batch = _double_setup(make_learner, make_batch, cfg)
    weights = [0.3, 0.7] if cfg.get("multi_step_loss") else None
    with use_fast_kernels(fast):
        got = learner_grads(learner, batch, second_order=True, step_weights=weights)

    def meta_loss() -> float:
        loss, _ = learner.adapt_and_predict(batch, STEPS, True, True, weights)
        return loss.mean().item()

    params = dict(learner.named_parameters())
    entries = [
        ("net.convs.0.weight", (1, 0, 1, 2)),
        ("net.convs.1.bias", (2,)),
        ("net.head.weight", (1, 3)),
        ("net.head.bias", (0,)),
    ]
    if cfg.get("norm") == "batch_norm":
        entries += [("net.norms.0.weight", (0, 1)), ("net.norms.1.bias", (STEPS - 1, 3))]
    if cfg.get("learn_inner_lr"):
        entries += [
            ("inner_lrs.rates.convs__0__weight", (0,)),
            ("inner_lrs.rates.head__weight", (1,)),
        ]
    for name, idx in entries:
        fd = central_difference(meta_loss, params[name], idx, eps=1e-5)
        an = got[name][idx].item()
        assert abs(fd - an) <= 1e-6 * abs(an) + 1e-9, (name, idx, fd, an)


# --------------------------------------------------------------------------- first order


@pytest.mark.parametrize("norm", ["none", "batch_norm"])
def test_first_order_is_target_gradient_at_adapted_weights(make_learner, make_batch, norm) -> None:
    learner, batch = _double_setup(make_learner, make_batch, dict(norm=norm))
    stages = 2
    fo = learner_grads(learner, batch, second_order=False)
    so = learner_grads(learner, batch, second_order=True)
    assert rel_diff(fo, so) > 1e-2

    # Expected: mean over tasks of dL_target/dW evaluated at the adapted weights fast_S
    # (for adapted W), and of the partial derivative for the shared, non-adapted BN affine.
    params, lrs = ref_params(learner)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    b = batch.xs.shape[0]
    for t in range(b):
        with torch.no_grad():
            base = {n: p.detach() for n, p in params.items()}
        fast = {n: base[n] for n in lrs}
        for s in range(STEPS):
            fast = reference.inner_step(
                base, fast, lambda n, s: lrs[n][s], batch.xs[t], batch.ys[t], s, stages
            )
        fast = {n: w.detach().requires_grad_() for n, w in fast.items()}
        shared = {n: p for n, p in params.items() if n not in fast}
        full = {**shared, **fast}
        logits = reference.conv4_forward(full, batch.xt[t], STEPS - 1, stages)
        loss = F.cross_entropy(logits, batch.yt[t])
        names = list(full)
        for n, g in zip(names, torch.autograd.grad(loss, [full[n] for n in names]), strict=True):
            expected[n] += g / b
    assert set(lrs) == {n for n in params if not n.startswith("norms.")}
    assert_grads_close(fo, {f"net.{n}": g for n, g in expected.items()}, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- batched vs loop

IMPL_CASES = {
    "maml": dict(second_order=True),
    "fomaml": dict(name="fomaml", second_order=False),
    "mamlpp_all": MAMLPP_ALL,
}


@pytest.mark.parametrize("case", list(IMPL_CASES))
def test_batched_and_loop_agree(make_learner, make_batch, case: str) -> None:
    batched = make_learner(inner_lr=0.3, **IMPL_CASES[case])
    loop = copy.deepcopy(batched)
    loop.impl = "loop"
    # The copied optimizer must drive the copied parameters, not the original ones.
    opt_params = {id(p) for g in loop.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in loop.parameters() if p.requires_grad}
    batch = make_batch(tasks=3, seed=2)
    stats_before = {n: b.clone() for n, b in batched.named_buffers()}

    ra = batched.train_step(batch, epoch=1, iteration=3)
    rb = loop.train_step(batch, epoch=1, iteration=3)
    assert ra.second_order == rb.second_order == (case != "fomaml")
    assert ra.multi_step_loss == rb.multi_step_loss == (case == "mamlpp_all")
    assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
    assert ra.accuracy == pytest.approx(rb.accuracy, abs=1e-6)

    pa, pb = dict(batched.named_parameters()), dict(loop.named_parameters())
    for n, p in pa.items():
        if not p.requires_grad:
            torch.testing.assert_close(pb[n], p, rtol=0, atol=0, msg=n)
            continue
        assert p.grad is not None and p.grad.abs().max() > 0, n
        torch.testing.assert_close(pb[n].grad, p.grad, rtol=1e-4, atol=1e-6, msg=n)
        # Adam's first step is about lr * sign(grad): compare the updated weights where the
        # gradient is clearly non-zero (conv biases in front of batch norm get ~0 gradients).
        clear = p.grad.abs() > 1e-5
        torch.testing.assert_close(pb[n][clear], p[clear], rtol=1e-4, atol=1e-6, msg=n)

    ba, bb = dict(batched.named_buffers()), dict(loop.named_buffers())
    assert ba and set(ba) == set(bb)
    for n, buf in ba.items():
        assert not torch.equal(buf, stats_before[n]), f"{n} was not updated"
        torch.testing.assert_close(bb[n], buf, rtol=1e-5, atol=1e-6, msg=n)
    if case == "mamlpp_all":
        # Per-step statistics: one row per inner step, each updated.
        for bn in batched.net.norms:
            assert bn.running_mean.shape[0] == 3
            assert not torch.allclose(bn.running_mean[0], bn.running_mean[1])
