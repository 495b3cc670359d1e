"""Sinusoid regression: the task sampler and the MLP meta-gradient on MSE.

The reference meta-gradient is a plain single-task functional MLP (F.linear, F.relu) whose inner
loop uses torch.func.grad and whose MSE is written here; it shares no code with mamlpp.nn.mlp or
mamlpp.tasks beyond the parameter names and values.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import CliRun, result_accuracies
from mamlpp.algorithms.meta_learner import MetaLearner
from mamlpp.config import AlgorithmConfig
from mamlpp.data.sinusoid import SinusoidConfig, SinusoidSampler
from mamlpp.nn.contract import MetaBackbone
from mamlpp.nn.mlp import MLP
from mamlpp.tasks import REGRESSION, EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 2


# --------------------------------------------------------------------------- sampler


def test_tasks_are_a_pure_function_of_seed_split_and_index() -> None:
    sampler = SinusoidSampler(SinusoidConfig(), shots=5, targets=7)
    whole = sampler.batch("train", 3, 10, 6)
    assert whole.xs.shape == (6, 5, 1) and whole.xt.shape == (6, 7, 1)
    assert whole.xs.dtype == torch.float32
    # Any sub-range, drawn on its own, is the same tasks (what exact resume relies on).
    part = sampler.batch("train", 3, 13, 2)
    for a, b in zip(vars(part).values(), vars(whole.select(slice(3, 5))).values()):
        assert torch.equal(a, b)
    again = SinusoidSampler(SinusoidConfig(), shots=5, targets=7).batch("train", 3, 10, 6)
    assert all(torch.equal(a, b) for a, b in zip(vars(again).values(), vars(whole).values()))
    # Another seed, split or index is another task.
    for other in (sampler.batch("train", 4, 10, 6), sampler.batch("test", 3, 10, 6)):
        assert not torch.equal(other.xs, whole.xs)
    assert not torch.equal(sampler.batch("train", 3, 11, 6).xs[0], whole.xs[0])


def test_tasks_cover_the_configured_ranges_and_are_sinusoids() -> None:
    cfg = SinusoidConfig(amplitude=[0.1, 5.0], phase=[0.0, math.pi], input_range=[-5.0, 5.0])
    sampler = SinusoidSampler(cfg, shots=10, targets=10)
    tasks = sampler.tasks("val", 0, 0, 2000)
    assert 0.1 <= tasks.amplitude.min() < 0.3 and 4.8 < tasks.amplitude.max() <= 5.0
    assert 0.0 <= tasks.phase.min() < 0.1 and 3.0 < tasks.phase.max() <= math.pi
    assert -5.0 <= tasks.inputs.min() < -4.9 and 4.9 < tasks.inputs.max() <= 5.0
    batch = sampler.batch("val", 0, 0, 50)
    t = sampler.tasks("val", 0, 0, 50)
    x = torch.cat([batch.xs, batch.xt], 1)[..., 0].double().numpy()
    y = torch.cat([batch.ys, batch.yt], 1)[..., 0].double().numpy()
    np.testing.assert_allclose(x, t.inputs, rtol=1e-6, atol=1e-6)
    want = t.amplitude[:, None] * np.sin(t.inputs - t.phase[:, None])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_a_bad_range_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"dataset\.amplitude.*low <= high"):
        SinusoidSampler(SinusoidConfig(amplitude=[5.0, 0.1]), shots=5, targets=5)


# --------------------------------------------------------------------------- meta-gradient


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
    learner = MetaLearner(algo, net, 1, 1, 1, total_iterations=1, objective=REGRESSION).double()
    with torch.no_grad():  # distinct rates per step/layer/element exercise the mapping
        for i, rates in enumerate(learner.inner_lrs.rates.values()):
            rates.add_(0.01 * i + 0.02 * torch.rand_like(rates))
    batch = SinusoidSampler(SinusoidConfig(), 5, 7).batch("train", 0, 0, 3)
    batch = EpisodeBatch(*(t.double() for t in vars(batch).values()))
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
    learner = MetaLearner(algo, net, 1, 1, 1, total_iterations=1, objective=REGRESSION).double()
    batch = SinusoidSampler(SinusoidConfig(), 5, 7).batch("train", 0, 0, 2)
    batch = EpisodeBatch(*(t.double() for t in vars(batch).values()))
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


# --------------------------------------------------------------------------- through the CLI

# Epochs long enough (a second or more) for a SIGTERM sent after epoch 0 to land in epoch 1.
SMOKE = (
    "experiment=sinusoid_smoke",
    "device=cpu",
    "progress_bar=false",
    "train.iters_per_epoch=200",
)


def _train(run_dir: Path, cwd: Path, *args: str) -> CliRun:
    return CliRun(
        subprocess.Popen(
            [sys.executable, "-m", "mamlpp.train", *SMOKE, f"hydra.run.dir={run_dir}", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )


@pytest.mark.slow
def test_sinusoid_preset_trains_resumes_reports_and_plots(tmp_path: Path) -> None:
    """A sinusoid run stopped by SIGTERM mid-epoch and run again ends with the numbers of an
    uninterrupted one; results.json, the results table and mamlpp-report speak of MSE, and
    mamlpp-sinusoid writes the MSE table and the figure."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ref = _train(tmp_path / "ref", cwd).finish()
    assert ref.returncode == 0, ref.stderr
    assert "| model | val mse | test mse | 95% CI |" in ref.stdout
    results = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert results["metric"] == "mse" and results["config"]["dataset"] == "sinusoid"
    assert 0 < results["test_accuracy_mean"] < 10  # an MSE, not a fraction correct
    # Top-k keeps the lowest validation MSE: the best member is first and none is better.
    vals = [m["val_accuracy"] for m in results["per_model"]]
    assert results["best_val_accuracy"] == min(vals) == vals[0]

    run = _train(tmp_path / "cut", cwd, "run.checkpoint_every_iters=3")
    run.wait_for(r"epoch 0: train loss")
    run.signal(signal.SIGTERM)
    stopped = run.finish()
    assert stopped.returncode == 75, stopped.stderr
    assert not (tmp_path / "cut" / "results.json").exists()
    again = _train(tmp_path / "cut", cwd).finish()
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert result_accuracies(cut) == result_accuracies(results)

    report = subprocess.run(
        [sys.executable, "-m", "mamlpp.reports.report", str(tmp_path / "ref")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    assert "test acc % or MSE" in report.stdout and " MSE " in report.stdout

    plot = subprocess.run(
        [sys.executable, "-m", "mamlpp.reports.sinusoid", str(tmp_path / "ref")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plot.returncode == 0, plot.stderr
    out = tmp_path / "ref" / "eval" / "sinusoid"
    mse = json.loads((out / "mse.json").read_text())["mse"]
    assert set(mse) == {"MAML", "pretrained"}
    assert (out / "adaptation.png").read_bytes()[:4] == b"\x89PNG"
