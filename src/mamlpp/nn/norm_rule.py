"""The one rule for normalisation layers in a user's module (model=module).

`model.norm_layers` names the layers it covers: kinds of `torch.nn` layers (NORM_CLASSES) and,
for norm layers of one's own, class names (matched against the class and its bases by name,
nothing is imported). Their affine weights are meta-learned, shared by the tasks and not
adapted in the inner loop unless `algorithm.inner_adapt_bn=true` (the backbone's `norm_names`),
as the built-in backbones' batch norm. Separately, every layer that keeps running statistics
(batch norm, instance norm with `track_running_stats`) uses batch statistics only: running
buffers cannot be written inside a vmapped forward, and MAML normalises each task by itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

# model.norm_layers' kinds (mamlpp.config.NORM_LAYER_KINDS) -> the torch.nn classes they cover.
NORM_CLASSES: dict[str, tuple[type[nn.Module], ...]] = {
    "batch_norm": (_BatchNorm,),  # BatchNorm1d/2d/3d, their lazy forms, SyncBatchNorm
    "instance_norm": (_InstanceNorm,),  # InstanceNorm1d/2d/3d and lazy forms
    "group_norm": (nn.GroupNorm,),
    "layer_norm": (nn.LayerNorm,),
    "rms_norm": (nn.RMSNorm,),
}


def is_norm_layer(layer: nn.Module, norm_layers: Sequence[str]) -> bool:
    """Whether `model.norm_layers` covers `layer` (a kind, or its class's or a base's name)."""
    names = {cls.__name__ for cls in type(layer).__mro__}
    return any(
        isinstance(layer, NORM_CLASSES[k]) if k in NORM_CLASSES else k in names for k in norm_layers
    )


def norm_parameter_names(module: nn.Module, norm_layers: Sequence[str]) -> Iterator[str]:
    """Names of the parameters (relative to `module`) of the layers `norm_layers` covers."""
    for name, layer in module.named_modules():
        if is_norm_layer(layer, norm_layers):
            for p, _ in layer.named_parameters(recurse=False):
                yield f"{name}.{p}" if name else p


def batch_statistics_only(module: nn.Module) -> None:
    """Switch every layer with running statistics to the batch's statistics, dropping the
    buffers, in training and at evaluation alike."""
    for layer in module.modules():
        if isinstance(layer, _NormBase) and layer.track_running_stats:
            layer.track_running_stats = False
            layer.running_mean = None
            layer.running_var = None
            layer.num_batches_tracked = None
