"""Any `torch.nn.Module` as a meta-backbone, through `torch.func.functional_call`.

A plain module knows nothing of per-task weights. The wrapper runs it with each task's weights
substituted for its parameters: all tasks at once under `torch.func.vmap` (`vectorize=True`),
or one task after another. Both build ordinary autograd graphs, so second-order MAML works.

What the wrapper needs to know of the module it finds by one forward pass on example images
(`mamlpp.nn.module_probe`): the output shape (logits [M, ways]) and the head, the `nn.Linear`
whose output is the module's output (or the one named by `model.head`).

Normalisation layers (`mamlpp.nn.norm_rule`): layers with running statistics (`nn.BatchNorm*`,
`nn.InstanceNorm*` with `track_running_stats`) are switched to batch statistics only, so each
forward normalises a task's images with that task's own statistics, in training and at
evaluation, as MAML does, and nothing is written into buffers inside a (vmapped) forward. The
affine weights of the layers that `model.norm_layers` covers are the backbone's `norm_names`:
meta-learned, and adapted in the inner loop only with `algorithm.inner_adapt_bn`.
Per-step batch-norm weights and statistics (MAML++'s BNWB/BNRS) need a meta-backbone.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mamlpp.config import NORM_LAYER_KINDS
from mamlpp.errors import ConfigError, MamlppError, first_line, locate
from mamlpp.nn.layers import BatchStats
from mamlpp.nn.module_probe import find_head, head_parameter_names, trace
from mamlpp.nn.norm_rule import batch_statistics_only, norm_parameter_names

PREFIX = "module."


class ModuleBackbone(nn.Module):
    """Wraps `module`, which maps images [M, C, H, W] to logits [M, N].

    The head (what ANIL adapts and BOIL keeps fixed) is the submodule named `head`, or else the
    one a forward pass on `example` images [M, C, H, W] shows to produce the logits (see
    `module_probe.find_head`); one of the two must be given. `norm_layers` says which
    normalisation layers' affine weights are `norm_names` (`model.norm_layers`)."""

    supports_per_step_bn = False

    def __init__(
        self,
        module: nn.Module,
        vectorize: bool = True,
        head: str | None = None,
        example: Tensor | None = None,
        norm_layers: Sequence[str] = NORM_LAYER_KINDS,
        label: str | None = None,
    ) -> None:
        super().__init__()
        self.label = label or f"the module {type(module).__qualname__}"
        if vectorize:
            _refuse_dropout(module, self.label)
        batch_statistics_only(module)
        self.module = module
        self.vectorize = vectorize
        if example is None and head is None:
            raise ConfigError(
                f"{self.label}: give the head's name (model.head) or example images "
                "[M, C, H, W] to find the head by a forward pass"
            )
        # The logits' width, which every forward checks (None: unknown, built without example).
        self.head_outputs: int | None = None
        if example is not None:
            logits, linear_outputs = trace(module, example, self.label)
            self.head_outputs = logits.shape[1]
            if head is None:
                head = find_head(logits, linear_outputs, self.label)
        head_params = head_parameter_names(module, head) if head else ()
        self.head_names = frozenset(f"{PREFIX}{p}" for p in head_params)
        self.norm_names = frozenset(
            f"{PREFIX}{p}" for p in norm_parameter_names(module, norm_layers)
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
            try:
                out = vmap(run)(weights, x)
            except RuntimeError as exc:
                if "randomness" not in str(exc):
                    raise
                raise ConfigError(
                    f"config key 'model.vectorize' = True: {self.label} draws random numbers "
                    "in its forward (dropout?), which torch.func.vmap cannot do per task "
                    "(vmap randomness): use model.vectorize=false"
                ) from exc
        else:
            out = torch.stack(
                [run({n: w[i] for n, w in weights.items()}, x[i]) for i in range(x.shape[0])]
            )
        self._check_logits(out, x)
        return out

    def _check_logits(self, out: object, x: Tensor) -> None:
        n = self.head_outputs
        if (
            isinstance(out, Tensor)
            and out.dim() == 3
            and out.shape[:2] == x.shape[:2]
            and (n is None or out.shape[2] == n)
        ):
            return
        got = f"shape {tuple(out.shape[1:])}" if isinstance(out, Tensor) else type(out).__name__
        want = f"({x.shape[1]}, {n if n is not None else 'N'})"
        raise MamlppError(
            f"{self.label}: its forward returned {got} for images {tuple(x.shape[1:])}; "
            f"logits {want} expected"
        )


def _refuse_dropout(module: nn.Module, label: str) -> None:
    """Dropout draws a mask per call, which vmap refuses in its default randomness mode (and
    'different' would give other numbers than the per-task loop)."""
    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd) and layer.p > 0:
            raise ConfigError(
                f"config key 'model.vectorize' = True: {label} has dropout ({name}), whose "
                "random masks torch.func.vmap cannot draw per task (vmap randomness): use "
                "model.vectorize=false"
            )


def build_module_backbone(
    target: str,
    kwargs: dict[str, Any],
    in_channels: int,
    image_size: int,
    ways: int,
    vectorize: bool,
    head: str | None = None,
    norm_layers: Sequence[str] = NORM_LAYER_KINDS,
) -> ModuleBackbone:
    """Instantiate the class `target` (model._target_) with `kwargs` (model.kwargs) and those of
    in_channels / image_size / num_classes that its constructor names, then wrap it, checking
    on `ways` example images that it returns logits [ways, ways]."""
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
    label = f"config key 'model._target_' = {target!r}"
    example = torch.randn(
        ways, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0)
    )
    backbone = ModuleBackbone(module, vectorize, head, example, norm_layers, label)
    if backbone.head_outputs != ways:
        raise ConfigError(
            f"{label}: its forward returns logits of shape ({ways}, {backbone.head_outputs}) "
            f"for images {tuple(example.shape)}; task.ways={ways} needs ({ways}, {ways}) "
            "(take num_classes in the constructor)"
        )
    return backbone


def _signature(sig: inspect.Signature) -> str:
    return "(" + ", ".join(str(p) for p in sig.parameters.values()) + ")"
