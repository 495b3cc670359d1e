"""model.name -> a meta-backbone (the contract: mamlpp.nn.contract.MetaBackbone).

The built-in backbones attach their builders to their registered configs here; a backbone of
one's own registers itself the same way (mamlpp.config.registry.register_backbone).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mamlpp.config import (
    Conv4Config,
    MlpConfig,
    ModuleConfig,
    ResNet12Config,
    builder,
    register_backbone,
)
from mamlpp.nn.contract import MetaBackbone
from mamlpp.nn.conv4 import Conv4
from mamlpp.nn.mlp import build_mlp
from mamlpp.nn.module_backbone import build_module_backbone
from mamlpp.nn.resnet12 import ResNet12


def build_backbone(
    model: Any,
    in_channels: int,
    image_size: int,
    ways: int,
    bn_weight_steps: int,
    bn_stat_steps: int,
    channels_last: bool = False,
) -> MetaBackbone:
    """The backbone `model` (a registered backbone's config) describes."""
    return builder("model", model.name)(
        model,
        in_channels=in_channels,
        image_size=image_size,
        ways=ways,
        bn_weight_steps=bn_weight_steps,
        bn_stat_steps=bn_stat_steps,
        channels_last=channels_last,
    )


@register_backbone("module", config=ModuleConfig)
def _module(model: ModuleConfig, *, in_channels: int, image_size: int, ways: int, **_: Any):
    assert model._target_ is not None  # validate() requires it for model=module
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


@register_backbone("resnet12", config=ResNet12Config)
def _resnet12(
    model: ResNet12Config,
    *,
    in_channels: int,
    ways: int,
    bn_weight_steps: int,
    bn_stat_steps: int,
    **_: Any,
) -> nn.Module:
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


@register_backbone("conv4", config=Conv4Config)
def _conv4(
    model: Conv4Config,
    *,
    in_channels: int,
    image_size: int,
    ways: int,
    bn_weight_steps: int,
    bn_stat_steps: int,
    channels_last: bool,
) -> nn.Module:
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


@register_backbone("mlp", config=MlpConfig)
def _mlp(model: MlpConfig, *, in_channels: int, **_: Any) -> nn.Module:
    """Vector inputs: in_channels features in, one regression output."""
    return build_mlp(model, in_channels, 1)
