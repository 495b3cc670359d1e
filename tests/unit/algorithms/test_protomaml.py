"""ProtoMAML: the head starts each task at W = 2c, b = -|c|^2 from the support prototypes c
(checked against the embeddings the head receives, for Conv4, ResNet-12 and model=module), the
second-order meta-gradient through that initialisation matches finite differences in float64,
and a backbone without a linear head is a one-line error."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO_ROOT, one_line
from mamlpp.algorithms.factory import build_network
from mamlpp.algorithms.protomaml import ProtoMAML
from mamlpp.config import AlgorithmConfig, ComponentConfig, model_config
from mamlpp.errors import ConfigError
from mamlpp.tasks import EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")

WAYS, SHOTS, SIZE = 3, 2, 16
USER_CODE = REPO_ROOT / "tests" / "user_code"


def _batch(dtype: torch.dtype = torch.float32) -> EpisodeBatch:
    g = torch.Generator().manual_seed(11)
    xs = torch.randn(2, WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=dtype)
    xt = torch.randn(2, WAYS * 2, 1, SIZE, SIZE, generator=g, dtype=dtype)
    ys = torch.stack([torch.randperm(WAYS, generator=g).repeat(SHOTS) for _ in range(2)])
    yt = torch.stack([torch.randperm(WAYS, generator=g).repeat(2) for _ in range(2)])
    return EpisodeBatch(xs, ys, xt, yt)


def _protomaml(model: ComponentConfig, **algorithm) -> ProtoMAML:
    torch.manual_seed(0)
    cfg = AlgorithmConfig(name="protomaml", inner_steps=2, inner_steps_eval=2, **algorithm)
    return ProtoMAML(cfg, build_network(cfg, model, 1, SIZE, WAYS))


MODELS = {
    "conv4": model_config(filters=4, stages=2),
    "resnet12": model_config(name="resnet12", channels=[4, 4, 4, 4]),
    "module": model_config(name="module", _target_="user_nets.SmallCNN", kwargs={"width": 6}),
}


@pytest.mark.parametrize("model", list(MODELS))
def test_head_starts_at_the_prototype_formula(model: str, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(USER_CODE))
    learner = _protomaml(MODELS[model])
    batch = _batch()
    # The embeddings the head receives, read by a hook on the head's module (one task at a time
    # for model=module: vectorize off, so the hook sees plain tensors).
    if model == "module":
        learner.net.vectorize = False
    head_module = learner.net.get_submodule(learner.head_weight.rsplit(".", 1)[0])
    seen = []
    hook = head_module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    fast = learner.initial_fast_weights(batch, track_graph=False)
    learner.net(batch.xs, fast, 0, False, None)
    hook.remove()
    # model=module: one [M, F] call per task; the others: grouped layout [M, B, F].
    grouped = model != "module"
    feats = seen[-1].transpose(0, 1) if grouped else torch.stack(seen[-len(batch) :])
    for t in range(len(batch)):
        c = torch.stack([feats[t][batch.ys[t] == n].mean(0) for n in range(WAYS)])
        torch.testing.assert_close(fast[learner.head_weight][t], 2 * c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            fast[learner.head_bias][t], -(c * c).sum(1), rtol=1e-5, atol=1e-6
        )
    # It trains in both orders: a meta-gradient reaches the body, predictions come per task.
    body = [p for n, p in learner.net.named_parameters() if n not in learner.net.head_names]
    for second_order in (True, False):
        learner.zero_grad()
        loss, logits = learner.adapt_and_predict(batch, 2, True, second_order)
        loss.mean().backward()
        assert logits.shape == (2, WAYS * 2, WAYS)
        assert all(p.grad is not None for p in body) and any(p.grad.abs().max() > 0 for p in body)


def test_second_order_gradient_through_the_prototypes_matches_finite_differences() -> None:
    learner = _protomaml(model_config(filters=3, stages=2, norm="none"), inner_lr=0.25).double()
    batch = _batch(torch.float64)

    def meta_loss() -> torch.Tensor:
        loss, _ = learner.adapt_and_predict(batch, 2, True, True)
        return loss.mean()

    params = dict(learner.net.named_parameters())
    names = ["convs.0.weight", "convs.1.bias"]
    grads = dict(zip(names, torch.autograd.grad(meta_loss(), [params[n] for n in names])))
    eps = 1e-6
    for name, idx in [("convs.0.weight", (1, 0, 1, 2)), ("convs.1.bias", (2,))]:
        p = params[name]
        orig = p[idx].item()
        values = []
        for delta in (eps, -eps):
            with torch.no_grad():
                p[idx] = orig + delta
            values.append(meta_loss().item())
        with torch.no_grad():
            p[idx] = orig
        fd = (values[0] - values[1]) / (2 * eps)
        assert abs(fd - grads[name][idx].item()) <= 1e-6 * abs(fd) + 1e-9, (name, fd)
    # The path through the initialisation counts: cutting it changes the gradient.
    proto = learner.prototypes

    def detached(batch, fast, create_graph):
        return proto(batch, fast, create_graph).detach().requires_grad_()

    learner.prototypes = detached
    cut = torch.autograd.grad(meta_loss(), params["convs.0.weight"])[0]
    assert not torch.allclose(cut, grads["convs.0.weight"], rtol=1e-3)


def test_head_init_replaces_the_meta_learned_head() -> None:
    learner = _protomaml(MODELS["conv4"])
    batch = _batch()
    first = learner.predict(batch)
    with torch.no_grad():
        learner.net.head.weight.add_(1.0)
        learner.net.head.bias.add_(1.0)
    torch.testing.assert_close(learner.predict(batch), first)


def test_a_backbone_without_a_linear_head_is_one_line(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(USER_CODE))
    cfg = AlgorithmConfig(name="protomaml")
    net = build_network(
        cfg, model_config(name="module", _target_="user_nets.SmallCNN"), 1, SIZE, WAYS
    )
    net.head_names = frozenset(n for n in net.head_names if n.endswith("weight"))
    with pytest.raises(
        ConfigError, match=r"algorithm.name' = 'protomaml' needs a linear head"
    ) as e:
        ProtoMAML(cfg, net)
    one_line(e)
