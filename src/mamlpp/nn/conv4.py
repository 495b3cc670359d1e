"""The VGG-style backbone of MAML/MAML++: stages of conv3x3 -> batch norm -> activation -> pool."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlpp.nn.fast_kernels import fast_kernels_enabled
from mamlpp.nn.layers import (
    BatchStats,
    GroupedBackbone,
    MetaBatchNorm2d,
    MetaConv2d,
    MetaLinear,
    leaky_relu_max_pool_2x2,
    max_pool_2x2,
    meta_batch_norm,
    to_grouped,
)


class Conv4(GroupedBackbone):
    """Conv4 whose forward takes a dict of per-task weights (name -> [B, *shape]).

    Parameters not in the dict (e.g. batch-norm affine when it is not adapted in the inner loop)
    come from the module itself and are shared by every task.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        filters: int = 64,
        stages: int = 4,
        norm: str = "batch_norm",
        pooling: str = "max",
        activation: str = "leaky_relu",
        bn_weight_steps: int = 1,
        bn_stat_steps: int = 1,
        bn_momentum: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.pooling, self.activation = pooling, activation
        self.channels_last = channels_last
        stride = 2 if pooling == "stride" else 1
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels, size = in_channels, image_size
        for _ in range(stages):
            self.convs.append(MetaConv2d(channels, filters, stride=stride))
            if norm == "batch_norm":
                self.norms.append(
                    MetaBatchNorm2d(filters, bn_weight_steps, bn_stat_steps, bn_momentum)
                )
            channels = filters
            size = (size + 1) // 2 if pooling == "stride" else size // 2
        self.feature_dim = filters * size * size
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
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for i, conv in enumerate(self.convs):
            h = conv(h, params[f"convs.{i}.weight"], params[f"convs.{i}.bias"])
            if self.norms:
                bn = cast(MetaBatchNorm2d, self.norms[i])
                h = meta_batch_norm(bn, f"norms.{i}", h, params, step, use_running_stats, sink)
            if self.activation == "leaky_relu" and self.pooling == "max":
                # Max pooling commutes with a monotone activation up to ties the activation
                # rounds together; pooling first runs the activation on a quarter of the values.
                fast = fast_kernels_enabled() and h.device.type == "cpu"
                h = F.leaky_relu(max_pool_2x2(h)) if fast else leaky_relu_max_pool_2x2(h)
                continue
            h = F.leaky_relu(h) if self.activation == "leaky_relu" else F.relu(h)
            if self.pooling == "max":
                h = max_pool_2x2(h)
        features = h.reshape(m, b, self.feature_dim)
        return self.head(features, params["head.weight"], params["head.bias"])
