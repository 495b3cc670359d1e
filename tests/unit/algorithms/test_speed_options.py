"""The `speed` switches and train.precision: each computes the same meta-step as the default.

CPU tests cover inner-step checkpointing, channels-last and bf16 autocast; the CUDA-only paths
(CUDA graphs, TF32, cuDNN autotuning) are tested at the bottom when a GPU is present.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import IMAGE_SIZE, MAMLPP_ALL, WAYS
from mamlpp.algorithms.meta_learner import EpisodeBatch, MetaLearner
from mamlpp.config import (
    Config,
    SpeedConfig,
    TrainConfig,
    experiment_keys,
    model_config,
    validate,
)
from mamlpp.errors import ConfigError
from mamlpp.experiment.device import configure_backends

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = {
    "mamlpp_all": MAMLPP_ALL,
    "maml": dict(second_order=True),
    "fomaml": dict(name="fomaml", second_order=False),
}


def _variant(learner: MetaLearner, **speed: object) -> MetaLearner:
    """A copy of a conftest learner (same weights) built with other speed settings/precision."""
    precision = str(speed.pop("precision", "fp32"))
    other = MetaLearner(
        learner.cfg,
        model_config(filters=4, stages=2),  # conftest's _make_learner defaults
        1,
        IMAGE_SIZE,
        WAYS,
        learner.total_iterations,
        impl=learner.impl,
        precision=precision,
        speed=SpeedConfig(**speed),
    )
    other.load_state_dict(learner.state_dict())
    other.optimizer.load_state_dict(learner.optimizer.state_dict())
    return other


def _step(learner: MetaLearner, batch: EpisodeBatch) -> tuple[float, dict, dict, dict]:
    """One train_step at epoch 1; returns loss, gradients, updated parameters and buffers."""
    result = learner.train_step(batch, epoch=1, iteration=3)
    grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.requires_grad}
    params = {n: p.detach().clone() for n, p in learner.named_parameters()}
    buffers = {n: b.clone() for n, b in learner.named_buffers()}
    return result.loss, grads, params, buffers


@pytest.mark.parametrize("case", list(CASES))
def test_checkpointed_inner_steps_give_identical_meta_steps(make_learner, make_batch, case):
    base = make_learner(inner_lr=0.3, **CASES[case])
    ckpt = _variant(base, checkpoint_inner_steps=True)
    assert ckpt.checkpoint_inner_steps and not base.checkpoint_inner_steps
    batch = make_batch(tasks=3, seed=2)
    before = {n: b.clone() for n, b in base.named_buffers()}
    loss_a, grads_a, params_a, bufs_a = _step(base, batch)
    loss_b, grads_b, params_b, bufs_b = _step(ckpt, batch)
    assert loss_a == loss_b
    for n in grads_a:
        assert grads_a[n].abs().max() > 0 or n.endswith("bias"), n
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-6, atol=1e-9, msg=n)
        torch.testing.assert_close(params_b[n], params_a[n], rtol=1e-6, atol=1e-9, msg=n)
    # The recomputation in the backward must not report batch statistics a second time.
    for n in bufs_a:
        assert not torch.equal(bufs_a[n], before[n]), n
        torch.testing.assert_close(bufs_b[n], bufs_a[n], rtol=0, atol=0, msg=n)


def test_checkpointing_recomputes_inside_the_meta_backward(make_learner, make_batch) -> None:
    """The saving is real: the checkpointed forward keeps fewer tensors for the backward."""
    base = make_learner(inner_lr=0.3, **MAMLPP_ALL)
    ckpt = _variant(base, checkpoint_inner_steps=True)
    batch = make_batch(tasks=3, seed=2)

    def saved_bytes(learner: MetaLearner) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = learner.adapt_and_predict(batch, 3, True, True, [0.2, 0.3, 0.5])
        loss.mean().backward()
        return total

    plain, checkpointed = saved_bytes(base), saved_bytes(ckpt)
    assert checkpointed < plain / 2, (checkpointed, plain)


@pytest.mark.parametrize("case", ["mamlpp_all", "fomaml"])
def test_channels_last_matches_contiguous(make_learner, make_batch, case: str) -> None:
    base = make_learner(inner_lr=0.3, **CASES[case])
    nhwc = _variant(base, channels_last=True)
    assert nhwc.net.channels_last
    batch = make_batch(tasks=3, seed=2)
    loss_a, grads_a, _, bufs_a = _step(base, batch)
    loss_b, grads_b, _, bufs_b = _step(nhwc, batch)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)
    for n in bufs_a:
        torch.testing.assert_close(bufs_b[n], bufs_a[n], rtol=1e-5, atol=1e-6, msg=n)


def test_bf16_autocast_is_close_to_fp32(make_learner, make_batch) -> None:
    """bf16 keeps 8 mantissa bits: the meta-gradient direction survives, the digits do not."""
    base = make_learner(inner_lr=0.05, **MAMLPP_ALL)
    bf16 = _variant(base, precision="bf16")
    batch = make_batch(tasks=3, seed=2)
    seen: list[torch.dtype] = []
    hook = bf16.net.convs[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss_a, grads_a, _, _ = _step(base, batch)
    loss_b, grads_b, params_b, bufs_b = _step(bf16, batch)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the autocast really ran in bf16
    assert loss_b == pytest.approx(loss_a, rel=0.05)
    assert loss_b != loss_a
    flat_a = torch.cat([g.flatten() for g in grads_a.values()])
    flat_b = torch.cat([g.flatten() for g in grads_b.values()])
    assert torch.isfinite(flat_b).all()
    assert torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0) > 0.95
    # Parameters, their gradients and the running statistics stay fp32.
    assert all(p.dtype == torch.float32 for p in params_b.values())
    assert all(g.dtype == torch.float32 for g in grads_b.values())
    assert all(b.dtype == torch.float32 for b in bufs_b.values())


def test_bf16_evaluation_predicts_fp32_logits(make_learner, make_batch) -> None:
    base = make_learner(inner_lr=0.05, **MAMLPP_ALL)
    bf16 = _variant(base, precision="bf16")
    batch = make_batch(tasks=3, seed=2)
    want, got = base.predict(batch), bf16.predict(batch)
    assert got.dtype == torch.float32
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8
    torch.testing.assert_close(got, want, rtol=0.1, atol=0.1)


# --------------------------------------------------------------------------- config


def _cfg(**train: object) -> Config:
    return Config(train=dataclasses.replace(TrainConfig(), **train))


def test_fp16_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"train.precision.*fp16.*NaN"):
        validate(_cfg(precision="fp16"))
    validate(_cfg(precision="bf16"))


def test_cuda_graphs_refuse_the_loop_impl() -> None:
    cfg = _cfg(impl="loop")
    cfg.speed.cuda_graphs = True
    with pytest.raises(ConfigError, match="speed.cuda_graphs"):
        validate(cfg)


def test_cuda_only_switches_on_cpu(capsys) -> None:
    with pytest.raises(ConfigError, match=r"speed.cuda_graphs.*CUDA device.*cpu"):
        configure_backends(SpeedConfig(cuda_graphs=True), torch.device("cpu"))
    configure_backends(SpeedConfig(tf32=True, cudnn_benchmark=True), torch.device("cpu"))
    err = capsys.readouterr().err
    assert "speed.tf32, speed.cudnn_benchmark: CUDA-only, no effect on cpu" in err
    configure_backends(SpeedConfig(), torch.device("cpu"))
    assert "CUDA-only" not in capsys.readouterr().err


def test_speed_keys_do_not_define_the_experiment_but_precision_does() -> None:
    keys = experiment_keys(Config())
    assert not [k for k in keys if k.startswith("speed.")]
    assert keys["train.precision"] == "fp32"


def test_loop_impl_rejects_cuda_graphs(make_learner) -> None:
    learner = make_learner(impl="loop")
    with pytest.raises(ValueError, match="loop"):
        learner.use_cuda_graphs()


# --------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_graph_replay_matches_eager_steps(make_learner, make_batch) -> None:
    """Three iterations across a phase change (MSL on -> off, new capture) equal eager ones."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = dict(MAMLPP_ALL, msl_epochs=2)
    eager = make_learner(inner_lr=0.3, **cfg).cuda()
    graphed = copy.deepcopy(eager)
    graphed.use_cuda_graphs()
    before = [b.clone() for b in graphed.buffers()]
    for it, epoch in enumerate((1, 1, 2)):
        batch = make_batch(tasks=3, seed=10 + it)
        batch = EpisodeBatch(*(t.cuda() for t in vars(batch).values()))
        ra = eager.train_step(batch, epoch, it)
        rb = graphed.train_step(batch, epoch, it)
        assert (ra.multi_step_loss, rb.multi_step_loss) == (epoch < 2, epoch < 2)
        assert rb.loss == pytest.approx(ra.loss, rel=1e-4)
        assert rb.accuracy == pytest.approx(ra.accuracy, abs=1e-6)
        for (n, pa), pb in zip(eager.named_parameters(), graphed.parameters()):
            torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-5, msg=n)
        for (n, ba), bb in zip(eager.named_buffers(), graphed.buffers()):
            torch.testing.assert_close(bb, ba, rtol=1e-4, atol=1e-5, msg=n)
    assert any(not torch.equal(b, a) for a, b in zip(before, graphed.buffers()))
    assert graphed.graphed_step.key[1] is False  # the last capture is the MSL-off phase


@cuda
def test_a_failed_capture_is_a_one_line_config_error(make_learner, make_batch, monkeypatch):
    learner = make_learner(inner_lr=0.3).cuda()
    learner.use_cuda_graphs()
    forward_backward = learner.forward_backward

    def syncing(*args, **kwargs):
        loss_sum, acc_sum = forward_backward(*args, **kwargs)
        loss_sum.item()  # a host sync: not allowed while capturing
        return loss_sum, acc_sum

    monkeypatch.setattr(learner, "forward_backward", syncing)
    batch = make_batch(tasks=2, seed=1)
    batch = EpisodeBatch(*(t.cuda() for t in vars(batch).values()))
    with pytest.raises(ConfigError, match=r"speed.cuda_graphs.*capturing the meta-step failed"):
        learner.train_step(batch, 0, 0)


@cuda
def test_cuda_backend_switches_are_applied() -> None:
    configure_backends(SpeedConfig(tf32=True, cudnn_benchmark=True), torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.benchmark
    configure_backends(SpeedConfig(), torch.device("cuda"))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cudnn.benchmark


@cuda
@pytest.mark.parametrize("speed", [dict(precision="bf16"), dict(channels_last=True)])
def test_cuda_variants_match_eager_fp32(make_learner, make_batch, speed: dict) -> None:
    base = make_learner(inner_lr=0.05, **MAMLPP_ALL)
    other = _variant(base, **speed).cuda()
    base = base.cuda()
    batch = make_batch(tasks=3, seed=2)
    batch = EpisodeBatch(*(t.cuda() for t in vars(batch).values()))
    loss_a, grads_a, _, _ = _step(base, batch)
    loss_b, grads_b, _, _ = _step(other, batch)
    flat_a = torch.cat([g.flatten() for g in grads_a.values()])
    flat_b = torch.cat([g.flatten() for g in grads_b.values()])
    assert torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0) > 0.95
    assert loss_b == pytest.approx(loss_a, rel=0.05)


def test_forward_backward_never_waits_for_the_host(make_learner, make_batch) -> None:
    """What a CUDA graph captures must not read tensor values on the host (.item(), nonzero,
    data-dependent shapes): checked on CPU by watching every ATen call, backward included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from mamlpp.nn.layers import apply_batch_stats

    syncing = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}

    class Watch(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func.overloadpacket))
            assert func not in syncing, f"{func} reads a tensor value on the host"
            return func(*args, **(kwargs or {}))

    learner = make_learner(inner_lr=0.3, **MAMLPP_ALL)
    batch = make_batch(tasks=3, seed=2)
    weights = torch.tensor([0.2, 0.3, 0.5])
    sink: list = []
    with Watch() as watch:
        learner.forward_backward(batch, True, weights, sink)
        apply_batch_stats(sink)
    assert "aten.convolution_backward" in watch.seen  # the backward ran under the watch
    assert "aten.native_batch_norm_backward" in watch.seen
    assert all(p.grad is not None for p in learner.parameters() if p.requires_grad)
    # The watch itself catches a sync.
    with pytest.raises(AssertionError, match="host"), Watch():
        weights.sum().item()


def test_channels_last_is_the_same_arithmetic_in_float64_on_omniglot(
    omniglot_source_dir, omniglot_data_dir
) -> None:
    """The float32 gap of channels_last on CPU (README: ~7% of smoke's first meta-gradient) is
    rounding: in float64 the two layouts give the same meta-gradient to 1e-12."""
    from mamlpp.algorithms.factory import build_learner
    from mamlpp.data.registry import load_dataset
    from mamlpp.experiment.sampling import make_sampler

    cfg = Config()
    cfg.dataset.source, cfg.dataset.data_dir = str(omniglot_source_dir), str(omniglot_data_dir)
    cfg.algorithm.inner_steps = 2
    data = load_dataset(cfg.dataset)
    b = make_sampler(cfg, data, torch.device("cpu")).batch("train", 0, 0, 4)
    batch = EpisodeBatch(b.xs.double(), b.ys, b.xt.double(), b.yt)
    grads = []
    for channels_last in (False, True):
        cfg.speed.channels_last = channels_last
        torch.manual_seed(0)
        learner = build_learner(cfg, data.images.channels).double()
        learner.forward_backward(batch, True, None, [])
        grads.append(
            torch.cat([p.grad.reshape(-1) for p in learner.parameters() if p.grad is not None])
        )
    assert learner.net.channels_last
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 1e-12


# --------------------------------------------------------------------------- CPU kernels


def _second_order_grads(fn, x0: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor):
    """Output, inner gradients (create_graph) and the meta-gradients through them."""
    x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
    tgt = torch.linspace(-1, 1, x0.numel(), dtype=x0.dtype).view_as(x0)
    y = fn(x * 1.0, w * 1.0, b * 1.0)
    gx, gw = torch.autograd.grad((y * tgt).sin().sum(), [x, w], create_graph=True)
    ((gx * tgt).pow(2).sum() + gw.pow(2).sum()).backward()
    return [y, gx, gw, x.grad, w.grad, b.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_norm_kernel_is_atens_bit_for_bit(dtype: torch.dtype) -> None:
    """The CPU batch norm (ATen forward/backward, double backward with shared sub-expressions)
    gives exactly ATen's numbers to second order, so the default path's results do not move."""
    from mamlpp.nn.layers import batch_norm_train

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 24, 9, 9, generator=g, dtype=dtype) * 2 + 0.5
    w0 = torch.rand(24, generator=g, dtype=dtype) + 0.5
    b0 = torch.randn(24, generator=g, dtype=dtype)
    ours = _second_order_grads(lambda x, w, b: batch_norm_train(x, w, b, 1e-5)[0], x0, w0, b0)
    aten = _second_order_grads(
        lambda x, w, b: torch.native_batch_norm(x, w, b, None, None, True, 0.0, 1e-5)[0],
        x0,
        w0,
        b0,
    )
    for a, b in zip(ours, aten, strict=True):
        assert torch.equal(a, b)


def test_batch_norm_kernel_passes_gradgradcheck() -> None:
    from mamlpp.nn.layers import batch_norm_train

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: batch_norm_train(x, w, b, 1e-5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_max_pool_kernel_is_atens_bit_for_bit() -> None:
    """Ties (flat background after batch norm) go to the same element as F.max_pool2d."""
    from mamlpp.nn.layers import max_pool_2x2

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 16, 12, 12, generator=g)
    x0 = torch.where(torch.rand(x0.shape, generator=g) > 0.5, x0, torch.full_like(x0, -0.3))
    results = []
    for pool in (max_pool_2x2, lambda h: F.max_pool2d(h, 2)):
        x = x0.clone().requires_grad_()
        y = pool(x * 1.0)
        (gx,) = torch.autograd.grad((y * y).sum(), [x], create_graph=True)
        (gx * x0).sum().backward()
        results.append([y, gx, x.grad])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_fused_activation_pool_is_atens_bit_for_bit() -> None:
    """leaky_relu_max_pool_2x2 (one node, no zero gradients in its double backward) gives the
    numbers of F.leaky_relu then F.max_pool2d to second order, ties included."""
    from mamlpp.nn.layers import leaky_relu_max_pool_2x2

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x0 = torch.randn(5, 16, 12, 12, generator=g, dtype=dtype)
        x0 = torch.where(torch.rand(x0.shape, generator=g) > 0.5, x0, torch.full_like(x0, -0.3))
        results = []
        for fn in (leaky_relu_max_pool_2x2, lambda h: F.max_pool2d(F.leaky_relu(h), 2)):
            x = x0.clone().requires_grad_()
            y = fn(x * 1.0)
            (gx,) = torch.autograd.grad((y * y).sum(), [x], create_graph=True)
            (gx * x0).sum().backward()
            results.append([y, gx, x.grad])
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(leaky_relu_max_pool_2x2, (x,))


@pytest.mark.parametrize("wanted", ["x", "x_w", "w_only"])
def test_fast_batch_norm_double_backward_matches_atens_in_float64(wanted: str) -> None:
    """speed.fast_kernels' closed-form batch-norm double backward is ATen's mathematics: in
    float64 the second-order gradients agree to rounding, whichever first-order gradients the
    inner loop asks for (x alone, x and the affine weights, the weights alone)."""
    from mamlpp.nn.fast_kernels import use_fast_kernels
    from mamlpp.nn.layers import batch_norm_train

    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 24, 9, 9, generator=g, dtype=torch.float64) * 2 + 0.5
    w0 = torch.rand(24, generator=g, dtype=torch.float64) + 0.5
    b0 = torch.randn(24, generator=g, dtype=torch.float64)
    tgt = torch.linspace(-1, 1, x0.numel(), dtype=x0.dtype).view_as(x0)

    def grads(fast: bool) -> list[torch.Tensor]:
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        with use_fast_kernels(fast):
            y = batch_norm_train(x * 1.0, w * 1.0, b * 1.0, 1e-5)[0]
            inputs = {"x": [x], "x_w": [x, w, b], "w_only": [w, b]}[wanted]
            gs = torch.autograd.grad((y * tgt).sin().sum(), inputs, create_graph=True)
            sum(gi.pow(2).sum() * (i + 1) for i, gi in enumerate(gs)).backward()
        return [*gs, x.grad, w.grad, b.grad]

    for a, b in zip(grads(True), grads(False), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_fast_batch_norm_passes_gradgradcheck() -> None:
    from mamlpp.nn.fast_kernels import use_fast_kernels
    from mamlpp.nn.layers import batch_norm_train

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: batch_norm_train(x, w, b, 1e-5)[0]  # noqa: E731
    with use_fast_kernels():
        assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_fast_kernels_switch_is_set_from_the_config_and_off_by_default() -> None:
    from mamlpp.experiment.device import configure_backends
    from mamlpp.nn.fast_kernels import fast_kernels_enabled, use_fast_kernels

    assert not SpeedConfig().fast_kernels
    with use_fast_kernels(False):
        configure_backends(SpeedConfig(fast_kernels=True), torch.device("cpu"))
        assert fast_kernels_enabled()
        configure_backends(SpeedConfig(), torch.device("cpu"))
        assert not fast_kernels_enabled()
