"""ResNet-12 on the grouped task layout: the standard few-shot backbone of MetaOptNet (Lee et al.
2019; learn2learn's `ResNet12`). Four residual blocks, each three bias-free 3x3 conv -> batch
norm (-> leaky ReLU, slope 0.1) with a bias-free 1x1 conv + batch norm shortcut, then a leaky
ReLU and a 2x2 max-pool; global average pooling feeds the linear head. Convolutions start from
Kaiming normal (fan_out, leaky ReLU), batch norm from (1, 0). Widths 64-160-320-640 by default
(`model.channels`).

MetaOptNet's regularisation is an option (`model.drop_rate` > 0; off by default): dropout after
the first two blocks and DropBlock after the last two, whose drop rate ramps linearly from 0 to
`drop_rate` over `dropblock_ramp` training forward passes (counted per task, in a buffer, so a
resumed run continues the ramp).

Like Conv4 its forward takes per-task (fast) weights and supports per-step batch-norm weights
and statistics, so MAML, MAML++ and their relatives run on it batched over tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlpp.nn.layers import (
    BatchStats,
    GroupedBackbone,
    MetaBatchNorm2d,
    MetaLinear,
    meta_batch_norm,
    to_grouped,
)

SLOPE = 0.1  # leaky ReLU, as MetaOptNet and learn2learn


class BiasFreeMetaConv2d(nn.Module):
    """k x k convolution without bias (batch norm follows), per-task weights [B, O, I, k, k]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        b = weight.shape[0]
        w = weight.reshape(b * weight.shape[1], *weight.shape[2:])
        return F.conv2d(x, w, padding=self.padding, groups=b)


class ResBlock(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, bn_weight_steps: int, bn_stat_steps: int, momentum: float
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [BiasFreeMetaConv2d(in_ch if j == 0 else out_ch, out_ch) for j in range(3)]
        )
        self.norms = nn.ModuleList(
            [MetaBatchNorm2d(out_ch, bn_weight_steps, bn_stat_steps, momentum) for _ in range(3)]
        )
        self.shortcut = BiasFreeMetaConv2d(in_ch, out_ch, kernel_size=1)
        self.shortcut_norm = MetaBatchNorm2d(out_ch, bn_weight_steps, bn_stat_steps, momentum)

    def forward(
        self,
        x: Tensor,
        prefix: str,
        params: dict[str, Tensor],
        step: int,
        use_running: bool,
        sink: list[BatchStats] | None,
    ) -> Tensor:
        h = x
        for j, conv in enumerate(self.convs):
            h = conv(h, params[f"{prefix}convs.{j}.weight"])
            bn = cast(MetaBatchNorm2d, self.norms[j])
            h = meta_batch_norm(bn, f"{prefix}norms.{j}", h, params, step, use_running, sink)
            if j < 2:
                h = F.leaky_relu(h, SLOPE)
        s = self.shortcut(x, params[f"{prefix}shortcut.weight"])
        s = meta_batch_norm(
            self.shortcut_norm, f"{prefix}shortcut_norm", s, params, step, use_running, sink
        )
        return F.max_pool2d(F.leaky_relu(h + s, SLOPE), 2)


def drop_block(x: Tensor, tasks: int, gamma: Tensor, block_size: int) -> Tensor:
    """DropBlock (Ghiasi et al. 2018) on grouped activations [M, B*C, H, W]: block centres drawn
    with probability `gamma`, each zeroing a block_size^2 square, and the kept activations
    rescaled per task to the same total (as MetaOptNet rescales per batch)."""
    m, bc, h, w = x.shape
    size = min(block_size, h, w)
    seeds = (torch.rand(m, bc, h - size + 1, w - size + 1, device=x.device) < gamma).to(x.dtype)
    dropped = F.max_pool2d(F.pad(seeds, [size - 1] * 4), size, stride=1)
    keep = (1 - dropped).view(m, tasks, bc // tasks, h, w)
    kept = keep.sum((0, 2, 3, 4), keepdim=True).clamp(min=1)
    return (x.view_as(keep) * keep * (keep[:, :1].numel() / kept)).view(m, bc, h, w)


class ResNet12(GroupedBackbone):
    """ResNet-12 whose forward takes a dict of per-task weights (name -> [B, *shape])."""

    dropblock_forwards: Tensor  # a buffer: forwards counted for DropBlock's ramp

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (64, 160, 320, 640),
        bn_weight_steps: int = 1,
        bn_stat_steps: int = 1,
        bn_momentum: float = 0.1,
        drop_rate: float = 0.0,
        dropblock_size: int = 5,
        dropblock_ramp: int = 40000,
    ) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.blocks = nn.ModuleList(
            [
                ResBlock(widths[i], widths[i + 1], bn_weight_steps, bn_stat_steps, bn_momentum)
                for i in range(len(channels))
            ]
        )
        self.feature_dim = widths[-1]
        self.head = MetaLinear(self.feature_dim, num_classes)
        self.drop_rate, self.dropblock_size, self.dropblock_ramp = (
            drop_rate,
            dropblock_size,
            dropblock_ramp,
        )
        if drop_rate > 0:  # registered only then: the default state dict stays as it was
            self.register_buffer("dropblock_forwards", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        step: int = 0,
        use_running_stats: bool = False,
        sink: list[BatchStats] | None = None,
    ) -> Tensor:
        """x: [B, M, C, H, W] -> logits [B, M, num_classes]."""
        b, m = x.shape[:2]
        h = to_grouped(x)
        regularise = self.drop_rate > 0 and self.training
        gamma = self._dropblock_rate(b) if regularise else None
        for i, block in enumerate(self.blocks):
            h = block(h, f"blocks.{i}.", params, step, use_running_stats, sink)
            if gamma is None:
                continue
            if i < len(self.blocks) - 2:
                h = F.dropout(h, self.drop_rate)
            else:
                size = min(self.dropblock_size, h.shape[2])
                area = h.shape[2] ** 2 / (h.shape[2] - size + 1) ** 2
                h = drop_block(h, b, gamma * area / size**2, size)
        features = h.mean((2, 3)).view(m, b, self.feature_dim)  # global average pooling
        return self.head(features, params["head.weight"], params["head.bias"])

    def _dropblock_rate(self, tasks: int) -> Tensor:
        """The drop rate of this forward (MetaOptNet's linear ramp), counting `tasks` forwards."""
        self.dropblock_forwards += tasks
        done = self.dropblock_forwards.double()
        ramp = self.drop_rate * done / self.dropblock_ramp if self.dropblock_ramp else 1.0
        return torch.clamp(torch.as_tensor(ramp), max=self.drop_rate)
