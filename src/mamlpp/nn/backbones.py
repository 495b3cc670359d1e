"""model.name -> a meta-backbone (the contract: mamlpp.nn.contract.MetaBackbone)."""

from __future__ import annotations

from torch import nn

from mamlpp.config import ModelConfig
from mamlpp.nn.conv4 import Conv4
from mamlpp.nn.mlp import MlpConfig, build_mlp
from mamlpp.nn.module_backbone import build_module_backbone
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
    if model.name == "mlp":  # vector inputs: in_channels features in, one regression output
        return build_mlp(MlpConfig(list(model.hidden), model.activation), in_channels, 1)
    if model.name == "module":
        return build_module_backbone(
            model._target_,
            dict(model.kwargs),
            in_channels,
            image_size,
            ways,
            model.vectorize,
            head=model.head,
            norm_layers=tuple(model.norm_layers),
        )
    if model.name == "resnet12":
        return ResNet12(
            in_channels,
            ways,
            channels=tuple(model.channels),
            bn_weight_steps=bn_weight_steps,
            bn_stat_steps=bn_stat_steps,
            bn_momentum=model.bn_momentum,
            drop_rate=model.drop_rate,
            dropblock_size=model.dropblock_size,
            dropblock_ramp=model.dropblock_ramp,
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
