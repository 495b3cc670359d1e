"""Any `torch.nn.Module` as a meta-backbone, through `torch.func.functional_call`.

A plain module knows nothing of per-task weights. The wrapper runs it with each task's weights
substituted for its parameters: all tasks at once under `torch.func.vmap` (`vectorize=True`),
or one task after another. Both build ordinary autograd graphs, so second-order MAML works.

Batch norm: the module's `nn.BatchNorm*` layers are switched to batch statistics only
(`track_running_stats=False`, running buffers dropped). Each forward normalises a task's images
with that task's own statistics, in training and at evaluation, as MAML does; nothing is
written into buffers inside a (vmapped) forward, and the module keeps no running statistics.
Per-step batch-norm weights and statistics (MAML++'s BNWB/BNRS) need a meta-backbone.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from mamlpp.errors import ConfigError, first_line, locate
from mamlpp.nn.layers import BatchStats

PREFIX = "module."


class ModuleBackbone(nn.Module):
    """Wraps `module`, which maps images [M, C, H, W] to logits [M, N]; its last `nn.Linear` is
    the head (what ANIL adapts)."""

    supports_per_step_bn = False

    def __init__(self, module: nn.Module, vectorize: bool = True) -> None:
        super().__init__()
        for layer in module.modules():
            if isinstance(layer, _BatchNorm):
                _batch_statistics_only(layer)
        self.module = module
        self.vectorize = vectorize
        linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        head_name, head = linears[-1] if linears else ("", None)
        # The head's output count only: a module attribute would register it a second time.
        self.head_outputs = head.out_features if head is not None else None
        head_params = head.named_parameters() if head is not None else ()
        self.head_names = frozenset(f"{PREFIX}{head_name}.{p}" for p, _ in head_params)
        self.norm_names = frozenset(
            f"{PREFIX}{n}.{p}"
            for n, m in module.named_modules()
            if isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm))
            for p, _ in m.named_parameters(recurse=False)
        )

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        step: int = 0,
        use_running_stats: bool = False,
        sink: list[BatchStats] | None = None,
    ) -> Tensor:
        """x [B, M, C, H, W], params {name: [B, *shape]} -> logits [B, M, N]. `step`,
        `use_running_stats` and `sink` concern per-step batch norm, which a plain module lacks."""
        weights = {n.removeprefix(PREFIX): w for n, w in params.items()}

        def run(task_weights: dict[str, Tensor], images: Tensor) -> Tensor:
            return functional_call(self.module, task_weights, (images,))

        if self.vectorize:
            return vmap(run)(weights, x)
        return torch.stack(
            [run({n: w[i] for n, w in weights.items()}, x[i]) for i in range(x.shape[0])]
        )


def _batch_statistics_only(layer: _BatchNorm) -> None:
    layer.track_running_stats = False
    layer.running_mean = None
    layer.running_var = None
    layer.num_batches_tracked = None


def build_module_backbone(
    target: str,
    kwargs: dict[str, Any],
    in_channels: int,
    image_size: int,
    ways: int,
    vectorize: bool,
) -> ModuleBackbone:
    """Instantiate the class `target` (model._target_) with `kwargs` (model.kwargs) and those of
    in_channels / image_size / num_classes that its constructor names, then wrap it."""
    hint = "; give an importable torch.nn.Module class, e.g. my_package.nets.MyNet"
    cls = locate(target, "model._target_", hint)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"config key 'model._target_' = {target!r} is not a torch.nn.Module subclass"
        )
    runtime = {"in_channels": in_channels, "image_size": image_size, "num_classes": ways}
    sig = inspect.signature(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    given = {k: v for k, v in runtime.items() if takes_any or k in sig.parameters}
    try:
        module = cls(**given, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"config key 'model.kwargs' = {dict(kwargs)!r}: {target}({first_line(exc)}); "
            f"its constructor takes {_signature(sig)}"
        ) from exc
    backbone = ModuleBackbone(module, vectorize)
    outputs = backbone.head_outputs
    if outputs is not None and outputs != ways:
        raise ConfigError(
            f"config key 'model._target_' = {target!r}: its last nn.Linear has "
            f"{outputs} outputs, task.ways={ways} needs {ways} (take num_classes "
            "in the constructor)"
        )
    return backbone


def _signature(sig: inspect.Signature) -> str:
    return "(" + ", ".join(str(p) for p in sig.parameters.values()) + ")"
