"""Meta-layers: layers whose forward takes external (fast) weights for a whole batch of tasks.

Activations of B tasks travel in a "grouped" layout [M, B*C, H, W] (M images per task), so one
grouped convolution (groups=B) applies B different weight sets at once and plain autograd gives
per-task gradients of a summed loss, second order included. A per-task loop is the same code
with B=1. Weights passed to `forward` carry a leading task dimension B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def to_grouped(x: Tensor) -> Tensor:
    """[B, M, C, H, W] -> [M, B*C, H, W]."""
    b, m, c, h, w = x.shape
    return x.transpose(0, 1).reshape(m, b * c, h, w)


class MetaConv2d(nn.Module):
    """k x k convolution (padding k // 2; 3x3 by default) taking per-task weights
    [B, O, I, k, k] and biases [B, O]."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        b = weight.shape[0]
        w = weight.reshape(b * weight.shape[1], *weight.shape[2:])
        return F.conv2d(x, w, bias.reshape(-1), stride=self.stride, padding=self.padding, groups=b)


class MetaLinear(nn.Module):
    """Linear head: features [M, B, F] with per-task weights [B, N, F] -> logits [B, M, N]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.baddbmm(bias.unsqueeze(1), x.transpose(0, 1), weight.transpose(1, 2))


@dataclass
class BatchStats:
    """Batch statistics of one BN forward, applied to the running stats after the meta-step."""

    layer: MetaBatchNorm2d
    slot: int
    mean: Tensor  # [B, C]
    var: Tensor  # [B, C], unbiased as in torch.nn.BatchNorm2d


class MetaBatchNorm2d(nn.Module):
    """Batch norm with optional per-step affine parameters and per-step running statistics.

    `weight`/`bias` are [weight_steps, C]; `running_mean`/`running_var` are [stat_steps, C].
    In batch mode it normalises each task with its own batch statistics (transductive, as MAML
    does) and reports them through `sink`; the running statistics are never touched inside the
    forward, so the update order can be made identical for the batched and per-task paths.
    """

    def __init__(
        self, channels: int, weight_steps: int, stat_steps: int, momentum: float, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.weight = nn.Parameter(torch.ones(weight_steps, channels))
        self.bias = nn.Parameter(torch.zeros(weight_steps, channels))
        self.register_buffer("running_mean", torch.zeros(stat_steps, channels))
        self.register_buffer("running_var", torch.ones(stat_steps, channels))

    def weight_slot(self, step: int) -> int:
        return min(step, self.weight.shape[0] - 1)

    def stat_slot(self, step: int) -> int:
        return min(step, self.running_mean.shape[0] - 1)

    def forward(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        step: int,
        use_running: bool,
        sink: list[BatchStats] | None,
    ) -> Tensor:
        """`weight`/`bias`: [C] shared by all tasks or [B, C] per task."""
        c = self.channels
        b = x.shape[1] // c
        w = weight.expand(b, c).reshape(-1) if weight.dim() == 1 else weight.reshape(-1)
        bb = bias.expand(b, c).reshape(-1) if bias.dim() == 1 else bias.reshape(-1)
        slot = self.stat_slot(step)
        if use_running:
            mean = self.running_mean[slot].repeat(b)
            var = self.running_var[slot].repeat(b)
            return F.batch_norm(x, mean, var, w, bb, training=False, eps=self.eps)
        out, mean, invstd = torch.native_batch_norm(x, w, bb, None, None, True, 0.0, self.eps)
        if sink is not None:
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                var = (invstd.pow(-2) - self.eps) * (n / max(n - 1, 1))
                sink.append(BatchStats(self, slot, mean.view(b, c), var.view(b, c)))
        return out

    @torch.no_grad()
    def apply_stats(self, slot: int, means: Tensor, vars_: Tensor) -> None:
        """Exponential moving average over updates given in order ([n, C]), in closed form."""
        n = means.shape[0]
        m = self.momentum
        powers = torch.arange(n - 1, -1, -1, device=means.device, dtype=means.dtype)
        coef = (m * (1 - m) ** powers).unsqueeze(1)
        keep = (1 - m) ** n
        self.running_mean[slot] = keep * self.running_mean[slot] + (coef * means).sum(0)
        self.running_var[slot] = keep * self.running_var[slot] + (coef * vars_).sum(0)


def meta_batch_norm(
    bn: MetaBatchNorm2d,
    name: str,
    h: Tensor,
    params: dict[str, Tensor],
    step: int,
    use_running: bool,
    sink: list[BatchStats] | None,
) -> Tensor:
    """`bn` (registered as `name`) on h, with its affine weights from `params` when the inner
    loop adapts them (per task, [B, steps, C]) or else its own (shared, [steps, C])."""
    slot = bn.weight_slot(step)
    w, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
    w = bn.weight[slot] if w is None else w[:, slot]
    bias = bn.bias[slot] if bias is None else bias[:, slot]
    return bn(h, w, bias, step, use_running, sink)


class GroupedBackbone(nn.Module):
    """Base of the built-in meta-backbones (mamlpp.nn.contract.MetaBackbone): the classifier is
    `head`, and batch norm is MetaBatchNorm2d with per-step weights and statistics."""

    supports_per_step_bn = True

    @property
    def head_names(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.named_parameters() if n.startswith("head."))

    @property
    def norm_names(self) -> frozenset[str]:
        return frozenset(
            f"{name}.{p}"
            for name, module in self.named_modules()
            if isinstance(module, MetaBatchNorm2d)
            for p in ("weight", "bias")
        )


def apply_batch_stats(entries: list[BatchStats]) -> None:
    """Update running statistics as if tasks had run one after another (task-major order).

    Entries arrive in forward-call order with a task dimension; the per-task reference order is
    task 0's calls, then task 1's, ... so both implementations update identically.
    """
    groups: dict[tuple[int, int], list[BatchStats]] = {}
    for e in entries:
        groups.setdefault((id(e.layer), e.slot), []).append(e)
    for seq in groups.values():
        layer, slot = seq[0].layer, seq[0].slot
        means = torch.stack([e.mean for e in seq], 1).reshape(-1, layer.channels)
        vars_ = torch.stack([e.var for e in seq], 1).reshape(-1, layer.channels)
        layer.apply_stats(slot, means, vars_)
