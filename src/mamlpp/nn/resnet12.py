"""ResNet-12 on the grouped task layout: the standard few-shot backbone since MetaOptNet (Lee et
al. 2019). Four residual blocks, each three 3x3 conv -> batch norm (-> leaky ReLU) with a 1x1
conv + batch norm shortcut, then a leaky ReLU and a 2x2 max-pool; global average pooling feeds
the linear head. Widths 64-160-320-640 by default (`model.channels`). DropBlock, which some
papers add for Mini-ImageNet, is not implemented.

Like Conv4 its forward takes per-task (fast) weights and supports per-step batch-norm weights
and statistics, so MAML, MAML++ and their relatives run on it batched over tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mamlpp.nn.layers import (
    BatchStats,
    GroupedBackbone,
    MetaBatchNorm2d,
    MetaConv2d,
    MetaLinear,
    meta_batch_norm,
    to_grouped,
)


class ResBlock(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, bn_weight_steps: int, bn_stat_steps: int, momentum: float
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [MetaConv2d(in_ch if j == 0 else out_ch, out_ch) for j in range(3)]
        )
        self.norms = nn.ModuleList(
            [MetaBatchNorm2d(out_ch, bn_weight_steps, bn_stat_steps, momentum) for _ in range(3)]
        )
        self.shortcut = MetaConv2d(in_ch, out_ch, kernel_size=1)
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
            h = conv(h, params[f"{prefix}convs.{j}.weight"], params[f"{prefix}convs.{j}.bias"])
            h = meta_batch_norm(
                self.norms[j], f"{prefix}norms.{j}", h, params, step, use_running, sink
            )
            if j < 2:
                h = F.leaky_relu(h)
        s = self.shortcut(x, params[f"{prefix}shortcut.weight"], params[f"{prefix}shortcut.bias"])
        s = meta_batch_norm(
            self.shortcut_norm, f"{prefix}shortcut_norm", s, params, step, use_running, sink
        )
        return F.max_pool2d(F.leaky_relu(h + s), 2)


class ResNet12(GroupedBackbone):
    """ResNet-12 whose forward takes a dict of per-task weights (name -> [B, *shape])."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (64, 160, 320, 640),
        bn_weight_steps: int = 1,
        bn_stat_steps: int = 1,
        bn_momentum: float = 0.1,
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
        for i, block in enumerate(self.blocks):
            h = block(h, f"blocks.{i}.", params, step, use_running_stats, sink)
        features = h.mean((2, 3)).view(m, b, self.feature_dim)  # global average pooling
        return self.head(features, params["head.weight"], params["head.bias"])
