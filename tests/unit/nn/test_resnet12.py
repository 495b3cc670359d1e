"""ResNet-12 as a meta-backbone: the batched path equals the per-task loop (meta-gradients,
updated weights and per-step batch-norm statistics), and its float64 second-order
meta-gradient matches finite differences."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import MAMLPP_ALL
from helpers.gradients import central_difference, random_index
from helpers.paths import SHARED
from mamlpp.algorithms.meta_learner import MetaLearner
from mamlpp.config import (
    AlgorithmConfig,
    Config,
    ConfigError,
    dataset_config,
    model_config,
    validate,
)
from mamlpp.nn.resnet12 import ResNet12, drop_block

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE, WAYS = 16, 3  # four blocks halve 16 px to 1


def resnet_learner(
    impl: str = "batched", model_keys: dict | None = None, **algorithm: object
) -> MetaLearner:
    torch.manual_seed(0)
    algorithm.setdefault("inner_steps", 2)
    model = model_config(name="resnet12", channels=[4, 6, 6, 8], **(model_keys or {}))
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


@pytest.mark.parametrize("regularised", [False, True], ids=["plain", "dropblock"])
def test_second_order_meta_gradient_matches_finite_differences(make_batch, regularised) -> None:
    """With dropout and DropBlock on, every evaluation draws the same masks (same seed; no ramp,
    so the same rate), and the gradient flows through the kept activations."""
    keys = dict(drop_rate=0.1, dropblock_size=2, dropblock_ramp=0) if regularised else {}
    learner = resnet_learner(model_keys=keys, inner_lr=0.2, **MAMLPP_ALL).double()
    batch = make_batch(tasks=2, seed=5, image_size=SIZE, dtype=torch.float64)
    weights = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)

    def meta_loss() -> torch.Tensor:
        torch.manual_seed(7)
        loss, _ = learner.adapt_and_predict(batch, 3, True, True, weights)
        return loss.mean()

    named = dict(learner.named_parameters())
    picks = ["net.blocks.0.convs.0.weight", "net.blocks.2.shortcut.weight", "net.head.weight"]
    picks += ["net.blocks.1.norms.2.weight", "inner_lrs.rates.blocks__3__convs__1__weight"]
    grads = torch.autograd.grad(meta_loss(), [named[n] for n in picks])
    g = torch.Generator().manual_seed(0)
    for name, grad in zip(picks, grads):
        p = named[name]
        idx = random_index(p, g)
        numeric = central_difference(meta_loss, p, idx, eps=1e-6)
        assert grad[idx].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), name


class ReferenceBlock(torch.nn.Module):
    """MetaOptNet's / learn2learn's BasicBlock (without DropBlock), from plain torch.nn."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        nn = torch.nn
        self.convs = nn.ModuleList(
            [nn.Conv2d(cin if j == 0 else cout, cout, 3, padding=1, bias=False) for j in range(3)]
        )
        self.norms = nn.ModuleList([nn.BatchNorm2d(cout) for _ in range(3)])
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)
        self.shortcut_norm = nn.BatchNorm2d(cout)
        self.relu = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for j in range(3):
            h = self.norms[j](self.convs[j](h))
            h = self.relu(h) if j < 2 else h
        return torch.nn.functional.max_pool2d(
            self.relu(h + self.shortcut_norm(self.shortcut(x))), 2
        )


def test_it_is_the_standard_resnet12(make_batch) -> None:
    """Same logits as the standard block built from torch.nn (bias-free convs, leaky ReLU 0.1,
    1x1 shortcut with batch norm, max-pool; global average pooling, linear head), given the
    same weights; convs start from Kaiming normal (fan_out)."""
    learner = resnet_learner().double()
    net = learner.net
    assert not [n for n, _ in net.named_parameters() if "conv" in n and n.endswith("bias")]
    widths = [1, 4, 6, 6, 8]
    blocks = torch.nn.Sequential(*[ReferenceBlock(widths[i], widths[i + 1]) for i in range(4)])
    head = torch.nn.Linear(8, WAYS)
    reference = torch.nn.ModuleDict({"blocks": blocks, "head": head}).double()
    for name, p in reference.named_parameters():
        with torch.no_grad():
            mine = dict(net.named_parameters())[name]
            p.copy_(mine[0] if "norm" in name else mine)
    x = make_batch(tasks=1, seed=3, image_size=SIZE, dtype=torch.float64).xs
    params = {n: p.unsqueeze(0) for n, p in net.named_parameters() if "norm" not in n}
    expected = head(blocks(x[0]).mean((2, 3)))
    torch.testing.assert_close(net(x, params)[0], expected, rtol=1e-12, atol=1e-12)
    wide = ResNet12(3, 5, channels=(64, 64, 64, 64)).blocks[1].convs[0].weight
    assert wide.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def test_drop_block_zeroes_squares_around_drawn_seeds() -> None:
    """The max-pool mask equals learn2learn's square-by-square construction, and the kept
    activations are rescaled per task to the same total."""
    x = torch.ones(2, 2 * 3, 7, 7, dtype=torch.float64)  # M=2 images, B=2 tasks of 3 channels
    torch.manual_seed(1)
    out = drop_block(x, 2, torch.tensor(0.1), 3)
    torch.manual_seed(1)
    seeds = torch.rand(2, 6, 5, 5) < 0.1
    keep = torch.ones(2, 6, 7, 7, dtype=torch.float64)
    for m, c, i, j in seeds.nonzero().tolist():
        keep[m, c, i : i + 3, j : j + 3] = 0  # a seed at i covers i..i+2 (padding 1, 1)
    assert seeds.sum() > 0 and (keep == 0).any()
    torch.testing.assert_close(out == 0, keep == 0)
    for task in range(2):
        share = out[:, 3 * task : 3 * task + 3]
        assert share.sum().item() == pytest.approx(share.numel())


def test_dropblock_is_off_by_default_and_ramps_when_on(make_batch) -> None:
    batch = make_batch(tasks=2, seed=1, image_size=SIZE)
    plain = resnet_learner()
    assert "net.dropblock_forwards" not in plain.state_dict()  # old state dicts still fit
    learner = resnet_learner(model_keys=dict(drop_rate=0.1, dropblock_ramp=40))
    learner.train_step(batch, 0, 0)
    # Two tasks x (2 support forwards + 1 target forward) so far: 6 of the 40 of the ramp.
    assert learner.state_dict()["net.dropblock_forwards"].item() == 6
    assert learner.net._dropblock_rate(0).item() == pytest.approx(0.1 * 6 / 40)
    learner.net.dropblock_forwards.fill_(1000)
    assert learner.net._dropblock_rate(0).item() == pytest.approx(0.1)
    # Evaluation draws nothing: the same logits as the same weights without DropBlock.
    plain.load_state_dict({k: v for k, v in learner.state_dict().items() if "dropblock" not in k})
    torch.testing.assert_close(learner.predict(batch, 2), plain.predict(batch, 2))


def test_resnet12_config_checks() -> None:
    ok = Config(model=model_config(name="resnet12"), dataset=dataset_config(image_size=32))
    validate(ok)
    with pytest.raises(ConfigError, match="model.channels"):
        validate(Config(model=model_config(name="resnet12"), dataset=dataset_config(image_size=8)))
    with pytest.raises(ConfigError, match="model.name"):
        validate(Config(model=model_config(name="resnet18")))
    with pytest.raises(ConfigError, match=r"model.drop_rate.*\[0, 1\)"):
        validate(Config(model=model_config(name="resnet12", drop_rate=1.0)))
    dropblock = Config(model=model_config(name="resnet12", drop_rate=0.1))
    dropblock.speed.checkpoint_inner_steps = True
    with pytest.raises(ConfigError, match="model.drop_rate.*checkpoint_inner_steps"):
        validate(dropblock)


@pytest.mark.slow
def test_smoke_sized_tiny_imagenet_run(cli, tmp_path) -> None:
    """The whole pipeline with ResNet-12 on real Tiny-ImageNet JPEGs (narrow blocks, a few
    iterations: a CI-sized check, not a result)."""
    import json

    source = SHARED / "datasets" / "tiny-imagenet-subset"
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
