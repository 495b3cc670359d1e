"""Chen et al.'s fine-tuning baselines: pre-training gradient, fine-tuned head and global labels
against independent computations written here (float64), and the config's one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mamlpp
from mamlpp.algorithms.factory import build_network
from mamlpp.algorithms.finetune_baseline import MOMENTUM, WEIGHT_DECAY, FineTuneBaseline
from mamlpp.config import Conv4Config, FineTuneConfig
from mamlpp.data.episodes import EpisodeSampler
from mamlpp.data.splits import SplitClasses
from mamlpp.errors import ConfigError
from mamlpp.tasks import EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = 7  # training classes of the classifier
WAYS, SHOTS, TARGETS, SIZE = 3, 2, 2, 8


def make_baseline(cosine: bool, seed: int = 0) -> FineTuneBaseline:
    torch.manual_seed(seed)
    algo = FineTuneConfig(
        name="baseline_pp" if cosine else "baseline",
        second_order=False,
        finetune_steps=6,
        finetune_lr=0.05,
    )
    net = build_network(algo, Conv4Config(filters=4, stages=2), 1, SIZE, CLASSES)
    return FineTuneBaseline(algo, net).double()


def make_batch(tasks: int = 2, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    xt = torch.randn(tasks, WAYS * TARGETS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    ys = torch.arange(WAYS).repeat_interleave(SHOTS).expand(tasks, -1)
    yt = torch.arange(WAYS).repeat_interleave(TARGETS).expand(tasks, -1)
    classes = torch.stack([torch.randperm(CLASSES, generator=g)[:WAYS] for _ in range(tasks)])
    return EpisodeBatch(xs, ys, xt, yt, classes)


def scaled_cosine(f: Tensor, w: Tensor) -> Tensor:
    scale = 2.0 if w.shape[0] <= 200 else 10.0
    return scale * (f / f.norm(dim=-1, keepdim=True)) @ (w / w.norm(dim=-1, keepdim=True)).T


@pytest.mark.parametrize("cosine", [False, True])
def test_pretraining_gradient_is_plain_classification_of_every_image(cosine: bool) -> None:
    """The gradient equals that of the mean cross-entropy of each task's images among all
    training classes, computed task by task through the network's own head (linear) or a
    cosine classifier written here."""
    learner = make_baseline(cosine)
    batch = make_batch()
    learner.train()
    params = [p for p in learner.net.parameters()]
    learner.zero_grad()
    learner.forward_backward(batch, False, None, [])
    # Baseline++ has no bias: its head.bias gets no gradient.
    got = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]

    total = 0.0
    named = dict(learner.net.named_parameters())
    for t in range(len(batch)):
        x = torch.cat([batch.xs[t], batch.xt[t]])[None]
        labels = batch.classes[t][torch.cat([batch.ys[t], batch.yt[t]])]
        fast = {n: p[None] for n, p in named.items() if n in learner.fast_names}
        if cosine:
            dim = named["head.weight"].shape[1]
            fast["head.weight"] = torch.eye(dim, dtype=torch.float64)[None]
            fast["head.bias"] = torch.zeros(1, dim, dtype=torch.float64)
            logits = scaled_cosine(learner.net(x, fast)[0], named["head.weight"])
        else:
            logits = learner.net(x, fast)[0]
        total = total + F.cross_entropy(logits, labels)
    want = torch.autograd.grad(total / len(batch), params, allow_unused=True)
    want = [torch.zeros_like(p) if g is None else g for p, g in zip(params, want)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(g.abs().max() > 0 for g in want) >= len(params) - int(cosine)


@pytest.mark.parametrize("cosine", [False, True])
def test_fine_tuned_head_matches_torch_sgd_per_task(cosine: bool) -> None:
    """predict() equals torch.optim.SGD(momentum, weight_decay) training a fresh head on each
    task's support features alone (the same initial head for every task)."""
    learner = make_baseline(cosine)
    batch = make_batch(tasks=3, seed=1)
    got = learner.predict(batch)
    learner.eval()
    with torch.no_grad():
        feats = learner.features(torch.cat([batch.xs, batch.xt], 1))
    k = batch.xs.shape[1]
    w0, b0 = learner.initial_head(1, WAYS, feats.shape[-1], feats)
    for t in range(len(batch)):
        head = nn.Linear(feats.shape[-1], WAYS).double()
        with torch.no_grad():
            head.weight.copy_(w0[0])
            head.bias.copy_(b0[0])
        opt = torch.optim.SGD(
            head.parameters(), lr=0.05, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )

        def logits_of(f: Tensor, head: nn.Linear = head) -> Tensor:
            return scaled_cosine(f, head.weight) if cosine else head(f)

        for _ in range(6):
            opt.zero_grad()
            F.cross_entropy(logits_of(feats[t, :k]), batch.ys[t]).backward()
            opt.step()
        with torch.no_grad():
            torch.testing.assert_close(got[t], logits_of(feats[t, k:]), rtol=1e-9, atol=1e-12)
    # Fine-tuning learns the support set: better than the fresh head on it.
    assert not torch.allclose(got, learner.predict(batch, 1))


def test_episode_labels_name_the_split_classes() -> None:
    """EpisodeBatch.classes[b, j] is the split class whose images carry label j in task b."""
    n_classes, per_class = 9, 6
    pixels = (
        torch.arange(n_classes, dtype=torch.uint8)[:, None, None, None]
        .expand(n_classes, per_class, 4, 4)
        .contiguous()
    )
    train = SplitClasses(np.arange(2, 9), np.zeros(7, dtype=np.int64))
    splits = {"train": train, "val": train, "test": train}
    sampler = EpisodeSampler(pixels, splits, WAYS, SHOTS, TARGETS)
    batch = sampler.batch("train", 5, 0, 4)
    for b in range(4):
        for x, y in ((batch.xs[b], batch.ys[b]), (batch.xt[b], batch.yt[b])):
            char = train.chars[batch.classes[b][y].numpy()]  # the split's class -> its images
            np.testing.assert_array_equal(x[:, 0, 0, 0].numpy() * 255, char)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("algorithm=baseline", "experiment=sinusoid_maml"), "dataset.name"),
        (("algorithm=baseline_pp", "algorithm.learn_inner_lr=true"), "algorithm.learn_inner_lr"),
        (("algorithm=baseline", "algorithm.finetune_steps=0"), "algorithm.finetune_steps"),
    ],
)
def test_bad_baseline_settings_are_one_line_errors(overrides: tuple, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        mamlpp.compose(*overrides)
    assert f"'{key}'" in str(exc.value) and "\n" not in str(exc.value)


def test_baseline_pp_is_baseline_with_a_cosine_head() -> None:
    a = mamlpp.compose("algorithm=baseline_pp").algorithm
    assert (a.name, a.finetune_steps, a.finetune_lr) == ("baseline_pp", 100, 0.01)
    assert not (a.learn_inner_lr or a.multi_step_loss or a.per_step_bn_stats)
