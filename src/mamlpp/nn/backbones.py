"""model.name -> a meta-backbone: a module whose forward(x [B, M, C, H, W], per-task weights,
inner step, running-stats flag, batch-statistics sink) returns logits [B, M, N]."""

from __future__ import annotations

from torch import nn

from mamlpp.config import ModelConfig
from mamlpp.nn.conv4 import Conv4
from mamlpp.nn.layers import MetaBatchNorm2d
from mamlpp.nn.resnet12 import ResNet12


def build_backbone(
    model: ModelConfig,
    in_channels: int,
    image_size: int,
    ways: int,
    bn_weight_steps: int,
    bn_stat_steps: int,
    channels_last: bool = False,
) -> nn.Module:
    if model.name == "resnet12":
        return ResNet12(
            in_channels,
            ways,
            channels=tuple(model.channels),
            bn_weight_steps=bn_weight_steps,
            bn_stat_steps=bn_stat_steps,
            bn_momentum=model.bn_momentum,
        )
    return Conv4(
        in_channels,
        image_size,
        ways,
        filters=model.filters,
        stages=model.stages,
        norm=model.norm,
        pooling=model.pooling,
        activation=model.activation,
        bn_weight_steps=bn_weight_steps,
        bn_stat_steps=bn_stat_steps,
        bn_momentum=model.bn_momentum,
        channels_last=channels_last,
    )


def norm_parameter_names(net: nn.Module) -> set[str]:
    """Names of the batch-norm affine parameters (not adapted unless inner_adapt_bn)."""
    return {
        f"{name}.{p}"
        for name, module in net.named_modules()
        if isinstance(module, MetaBatchNorm2d)
        for p in ("weight", "bias")
    }
