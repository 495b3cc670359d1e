"""The built-in backbones' configs (the `model` section): each one's keys and checks.

They live here, not beside the networks in mamlpp.nn, so that composing and checking a config
never imports torch; mamlpp.nn.backbones attaches the builders to these registrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mamlpp.config.checks import check
from mamlpp.config.registry import ComponentConfig, register

if TYPE_CHECKING:
    from mamlpp.config.schema import Config

# model.norm_layers' kinds of torch.nn normalisation layers (mamlpp.nn.norm_rule).
NORM_LAYER_KINDS = ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm")
# Algorithm switches that need per-step batch norm in the backbone (MAML++'s BNRS/BNWB and
# running statistics at evaluation).
PER_STEP_BN_KEYS = ("per_step_bn_stats", "per_step_bn_weights", "use_running_stats_eval")


def _builtin(cfg: Config) -> None:
    m = cfg.model
    check(
        m._target_ is None,
        "model._target_",
        m._target_,
        f"null with model={m.name} (a class of your own needs model=module)",
    )


def _per_step_bn_needs_batch_norm(cfg: Config) -> None:
    for key in PER_STEP_BN_KEYS:
        check(
            not getattr(cfg.algorithm, key) or cfg.model.norm == "batch_norm",
            f"algorithm.{key}",
            True,
            "false when model.norm=none",
        )


@dataclass
class Conv4Config(ComponentConfig):
    """The MAML/MAML++ four-stage CNN (mamlpp.nn.conv4)."""

    name: str = "conv4"
    filters: int = 64
    stages: int = 4
    norm: str = "batch_norm"
    pooling: str = "max"
    activation: str = "leaky_relu"
    bn_momentum: float = 0.1

    def validate(self, cfg: Config) -> None:
        _builtin(cfg)
        check(self.filters >= 1, "model.filters", self.filters, ">= 1")
        check(1 <= self.stages <= 8, "model.stages", self.stages, "1..8")
        check(
            self.norm in ("batch_norm", "none"), "model.norm", self.norm, "'batch_norm' or 'none'"
        )
        check(self.pooling in ("max", "stride"), "model.pooling", self.pooling, "'max' or 'stride'")
        check(
            self.activation in ("relu", "leaky_relu"),
            "model.activation",
            self.activation,
            "relu|leaky_relu",
        )
        check(0 < self.bn_momentum <= 1, "model.bn_momentum", self.bn_momentum, "in (0, 1]")
        image_size = cfg.dataset.image_size
        check(
            image_size >> self.stages >= 1, "model.stages", self.stages, "at most log2(image_size)"
        )
        _per_step_bn_needs_batch_norm(cfg)


@dataclass
class ResNet12Config(ComponentConfig):
    """ResNet-12 as in MetaOptNet and learn2learn (mamlpp.nn.resnet12)."""

    name: str = "resnet12"
    # Widths of the four residual blocks.
    channels: list[int] = field(default_factory=lambda: [64, 160, 320, 640])
    bn_momentum: float = 0.1
    norm: str = "batch_norm"
    # MetaOptNet's regularisation, off by default: dropout of rate drop_rate after the first two
    # blocks, DropBlock (dropblock_size x dropblock_size) after the last two, its rate ramped
    # linearly from 0 over the first dropblock_ramp training forward passes.
    drop_rate: float = 0.0
    dropblock_size: int = 5
    dropblock_ramp: int = 40000

    def validate(self, cfg: Config) -> None:
        _builtin(cfg)
        image_size = cfg.dataset.image_size
        check(
            len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
            "model.channels",
            self.channels,
            "a list of positive block widths",
        )
        check(
            image_size >> len(self.channels) >= 1,
            "model.channels",
            self.channels,
            f"at most log2(image_size) = {image_size.bit_length() - 1} blocks (each halves it)",
        )
        check(self.norm == "batch_norm", "model.norm", self.norm, "batch_norm with model=resnet12")
        check(0 < self.bn_momentum <= 1, "model.bn_momentum", self.bn_momentum, "in (0, 1]")
        check(0 <= self.drop_rate < 1, "model.drop_rate", self.drop_rate, "in [0, 1)")
        check(self.dropblock_size >= 1, "model.dropblock_size", self.dropblock_size, ">= 1")
        check(self.dropblock_ramp >= 0, "model.dropblock_ramp", self.dropblock_ramp, ">= 0")
        check(
            self.drop_rate == 0 or not cfg.speed.checkpoint_inner_steps,
            "model.drop_rate",
            self.drop_rate,
            "0 with speed.checkpoint_inner_steps=true (its recomputation would draw other masks)",
        )


@dataclass
class ModuleConfig(ComponentConfig):
    """Any torch.nn.Module class as the backbone (mamlpp.nn.module_backbone): `_target_` is the
    class (package.module.Class), `kwargs` the constructor's keyword arguments beyond
    in_channels/image_size/num_classes; tasks run under torch.func.vmap (vectorize=true) or one
    after another (false: for modules vmap cannot batch)."""

    name: str = "module"
    kwargs: dict[str, Any] = field(default_factory=dict)
    vectorize: bool = True
    # The submodule that is the head (ANIL/BOIL); null: found by a forward pass.
    head: str | None = None
    # The normalisation layers whose affine weights are shared by the tasks and not adapted in
    # the inner loop unless algorithm.inner_adapt_bn: kinds of NORM_LAYER_KINDS or class names
    # of one's own norm layers.
    norm_layers: list[str] = field(default_factory=lambda: list(NORM_LAYER_KINDS))

    def validate(self, cfg: Config) -> None:
        """A class of the user's; its batch norm has no per-step or running stats."""
        check(
            self._target_ is not None and "." in self._target_,
            "model._target_",
            self._target_,
            "the torch.nn.Module class as package.module.Class with model=module",
        )
        for kind in self.norm_layers:
            check(
                kind in NORM_LAYER_KINDS or kind.isidentifier(),
                "model.norm_layers",
                list(self.norm_layers),
                f"a list of {', '.join(NORM_LAYER_KINDS)} or class names of your own norm layers",
            )
        for key in PER_STEP_BN_KEYS:
            check(
                not getattr(cfg.algorithm, key),
                f"algorithm.{key}",
                True,
                "false with model=module (a plain module's batch norm uses each task's batch "
                "statistics only; per-step batch norm needs model=conv4 or resnet12)",
            )
        check(not cfg.speed.cuda_graphs, "speed.cuda_graphs", True, "false with model=module")


register("model", "conv4", Conv4Config)
register("model", "resnet12", ResNet12Config)
register("model", "module", ModuleConfig)
