"""ResNet-12 as a meta-backbone: the batched path equals the per-task loop (meta-gradients,
updated weights and per-step batch-norm statistics), and its float64 second-order
meta-gradient matches finite differences."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import MAMLPP_ALL
from mamlpp.algorithms.meta_learner import MetaLearner
from mamlpp.config import AlgorithmConfig, Config, ConfigError, DatasetConfig, ModelConfig, validate

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE, WAYS = 16, 3  # four blocks halve 16 px to 1


def resnet_learner(impl: str = "batched", **algorithm: object) -> MetaLearner:
    torch.manual_seed(0)
    algorithm.setdefault("inner_steps", 2)
    model = ModelConfig(name="resnet12", channels=[4, 6, 6, 8])
    return MetaLearner(AlgorithmConfig(**algorithm), model, 1, SIZE, WAYS, 100, impl=impl)


@pytest.mark.parametrize("case", ["maml", "mamlpp_all"])
def test_batched_and_loop_agree(make_batch, case: str) -> None:
    options = dict(second_order=True) if case == "maml" else MAMLPP_ALL
    # float64: twelve layers of float32 rounding differ between the layouts by ~1e-5 of the
    # gradients' size, which would hide a real mismatch.
    batched = resnet_learner(inner_lr=0.3, **options).double()
    loop = copy.deepcopy(batched)
    loop.impl = "loop"
    batch = make_batch(tasks=3, seed=4, image_size=SIZE, dtype=torch.float64)
    before = {n: b.clone() for n, b in batched.named_buffers()}
    ra = batched.train_step(batch, epoch=1, iteration=3)
    rb = loop.train_step(batch, epoch=1, iteration=3)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-10)
    pa, pb = dict(batched.named_parameters()), dict(loop.named_parameters())
    for n, p in pa.items():
        if p.requires_grad:
            assert p.grad is not None, n
            torch.testing.assert_close(pb[n].grad, p.grad, rtol=1e-7, atol=1e-10, msg=n)
    buffers_a, buffers_b = dict(batched.named_buffers()), dict(loop.named_buffers())
    assert any("shortcut_norm" in n for n in buffers_a)
    for n, buf in buffers_a.items():
        assert not torch.equal(buf, before[n]), f"{n} was not updated"
        torch.testing.assert_close(buffers_b[n], buf, rtol=1e-7, atol=1e-10, msg=n)
    if case == "mamlpp_all":  # per-step statistics: one row per inner step
        bn = batched.net.blocks[0].norms[0]
        assert bn.running_mean.shape[0] == 3
        assert not torch.allclose(bn.running_mean[0], bn.running_mean[1])


def test_batch_norm_is_not_adapted_unless_asked() -> None:
    learner = resnet_learner()
    assert not any("norm" in n for n in learner.fast_names)
    assert "blocks.0.shortcut.weight" in learner.adapted_names
    adapt_bn = resnet_learner(inner_adapt_bn=True)
    assert "blocks.3.shortcut_norm.weight" in adapt_bn.adapted_names


def test_second_order_meta_gradient_matches_finite_differences(make_batch) -> None:
    learner = resnet_learner(inner_lr=0.2, **MAMLPP_ALL).double()
    batch = make_batch(tasks=2, seed=5, image_size=SIZE, dtype=torch.float64)
    weights = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)

    def meta_loss() -> torch.Tensor:
        loss, _ = learner.adapt_and_predict(batch, 3, True, True, weights)
        return loss.mean()

    named = dict(learner.named_parameters())
    picks = ["net.blocks.0.convs.0.weight", "net.blocks.2.shortcut.weight", "net.head.weight"]
    picks += ["net.blocks.1.norms.2.weight", "inner_lrs.rates.blocks__3__convs__1__weight"]
    grads = torch.autograd.grad(meta_loss(), [named[n] for n in picks])
    g = torch.Generator().manual_seed(0)
    for name, grad in zip(picks, grads):
        p = named[name]
        idx = tuple(int(torch.randint(0, s, (1,), generator=g)) for s in p.shape)
        eps = 1e-6
        with torch.no_grad():
            p[idx] += eps
        up = meta_loss().item()
        with torch.no_grad():
            p[idx] -= 2 * eps
        down = meta_loss().item()
        with torch.no_grad():
            p[idx] += eps
        numeric = (up - down) / (2 * eps)
        assert grad[idx].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), name


def test_resnet12_config_checks() -> None:
    ok = Config(model=ModelConfig(name="resnet12"), dataset=DatasetConfig(image_size=32))
    validate(ok)
    with pytest.raises(ConfigError, match="model.channels"):
        validate(Config(model=ModelConfig(name="resnet12"), dataset=DatasetConfig(image_size=8)))
    with pytest.raises(ConfigError, match="model.name"):
        validate(Config(model=ModelConfig(name="resnet18")))


@pytest.mark.slow
def test_smoke_sized_tiny_imagenet_run(cli, tmp_path) -> None:
    """The whole pipeline with ResNet-12 on real Tiny-ImageNet JPEGs (narrow blocks, a few
    iterations: a CI-sized check, not a result)."""
    import json
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tiny-imagenet-subset"
    args = (
        "experiment=tiny_imagenet_5w1s_maml",
        "model=resnet12",
        "model.channels=[8,16,16,32]",
        f"dataset.source={source}",
        f"dataset.data_dir={tmp_path / 'data'}",
        "task.targets=3",
        "train.epochs=2",
        "train.iters_per_epoch=3",
        "eval.val_tasks=4",
        "eval.test_tasks=8",
        "eval.top_k=1",
        "progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    done = cli.run(*args, cwd=tmp_path, tiny=False)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_test_tasks"] == 8 and 0 <= results["test_accuracy_mean"] <= 1
    state = torch.load(
        tmp_path / "run" / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True
    )
    assert "net.blocks.3.shortcut.weight" in state["learner"]
