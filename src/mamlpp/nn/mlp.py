"""A fully connected meta-backbone for vector inputs: the MAML paper's sinusoid regressor
(1 -> 40 -> 40 -> 1, ReLU) by default.

It meets the MetaBackbone contract (mamlpp.nn.contract) on [B, M, D] inputs: every layer is one
batched matrix product with per-task weights, so the tasks of a batch adapt together as the
image backbones' do. It has no normalisation layers, hence no per-step batch norm (MAML++'s
BNRS/BNWB do not apply).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlpp.config import MlpConfig
from mamlpp.config.regression import MLP_ACTIVATIONS as ACTIVATIONS
from mamlpp.nn.layers import BatchStats


class MLP(nn.Module):
    """Linear layers `hidden.<i>` and the output layer `head`, taking per-task weights."""

    supports_per_step_bn = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: tuple[int, ...] = (40, 40),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: one of {ACTIVATIONS}")
        self.activation = activation
        widths = [in_features, *hidden]
        # torch.nn.Linear's initialisation, as the MAML reference code and learn2learn use.
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], out_features)

    @property
    def head_names(self) -> frozenset[str]:
        return frozenset(("head.weight", "head.bias"))

    @property
    def norm_names(self) -> frozenset[str]:
        return frozenset()

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        step: int = 0,
        use_running_stats: bool = False,
        sink: list[BatchStats] | None = None,
    ) -> Tensor:
        """x: [B, M, in_features] -> [B, M, out_features]; `step`, `use_running_stats` and
        `sink` are part of the contract and unused (no batch norm)."""
        h = x
        for i in range(len(self.hidden)):
            h = _linear(h, params[f"hidden.{i}.weight"], params[f"hidden.{i}.bias"])
            h = _ACTIVATION[self.activation](h)
        return _linear(h, params["head.weight"], params["head.bias"])


_ACTIVATION: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "tanh": torch.tanh,
}


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x [B, M, I] with per-task weight [B, O, I] and bias [B, O] -> [B, M, O]."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def build_mlp(cfg: MlpConfig, in_features: int, out_features: int) -> MLP:
    return MLP(in_features, out_features, tuple(cfg.hidden), cfg.activation)
