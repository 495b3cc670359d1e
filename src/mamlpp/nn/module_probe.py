"""What one forward pass on example images tells about a user's module (model=module): the
shape of its output and which `nn.Linear` is its classifier (the head).

Registration order says nothing about the data flow: a module may register its classifier
before a hidden layer that happens to have `ways` outputs. The forward pass does: the head is
the Linear whose output is the module's output (the same tensor or a view of it). When the
logits are computed further (scaled, normalised), it is the one Linear with as many outputs as
the logits; when several have, the module is ambiguous and `model.head` must name its head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mamlpp.errors import ConfigError, first_line


def trace(module: nn.Module, example: Tensor, label: str) -> tuple[Tensor, dict[str, Tensor]]:
    """The module's logits on `example` [M, C, H, W] (evaluation mode, no gradient) and the
    output of each `nn.Linear` it called, by name. Output other than logits [M, N], or a
    forward that fails, is one line naming `label`."""
    outputs: dict[str, Tensor] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_layer: nn.Module, _inputs: object, output: Tensor) -> None:
            outputs[name] = output

        return hook

    hooks = [
        layer.register_forward_hook(record(name))
        for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear)
    ]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(example)
    except Exception as exc:  # the user's forward: any failure is a problem of the config
        raise ConfigError(
            f"{label}: its forward fails on images of shape {tuple(example.shape)}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    m = example.shape[0]
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == m:
        return out, outputs
    got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
    raise ConfigError(
        f"{label}: its forward returns {got} for images {tuple(example.shape)}; "
        f"logits ({m}, N) expected (a tensor, one row of N class scores per image)"
    )


def find_head(logits: Tensor, outputs: dict[str, Tensor], label: str) -> str | None:
    """The name of the `nn.Linear` among `outputs` (see `trace`) that produces `logits`; None
    when no Linear does (the module has no head to adapt)."""
    direct = [n for n, t in outputs.items() if _same_tensor(t, logits)]
    if len(direct) == 1:
        return direct[0]
    sized = [n for n, t in outputs.items() if t.shape[-1] == logits.shape[-1]]
    if len(sized) <= 1:
        return sized[0] if sized else None
    raise ConfigError(
        f"{label}: cannot tell its head: the nn.Linear layers {', '.join(sized)} each have "
        f"{logits.shape[-1]} outputs and none returns the logits unchanged; name the head "
        f"with model.head=<{'|'.join(sized)}>"
    )


def head_parameter_names(module: nn.Module, head: str) -> list[str]:
    """Parameter names (relative to `module`) of its submodule `head` (model.head)."""
    layers = dict(module.named_modules())
    layer = layers.get(head)
    if layer is None or not any(True for _ in layer.parameters()):
        linears = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
        raise ConfigError(
            f"config key 'model.head' = {head!r}: {type(module).__qualname__} has no "
            f"submodule of that name with parameters; its nn.Linear layers: "
            f"{', '.join(linears) or 'none'}"
        )
    return [f"{head}.{p}" for p, _ in layer.named_parameters()]


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """`a` is `b` or a view of the same memory with as many elements (squeeze, reshape)."""
    return a is b or (
        a.numel() == b.numel()
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
    )
