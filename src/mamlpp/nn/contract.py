"""The written contract of a meta-backbone: what a network must offer to be meta-learned.

Built-ins (Conv4, ResNet-12) implement it on the grouped task layout; `ModuleBackbone` makes any
plain `torch.nn.Module` implement it through `torch.func.functional_call`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from mamlpp.nn.layers import BatchStats


@runtime_checkable
class MetaBackbone(Protocol):
    """A network whose forward takes per-task (fast) weights.

    - `forward(x, params, step, use_running_stats, sink)`: images x [B, M, C, H, W] of B tasks,
      `params` {parameter name: [B, *shape]} the weights each task uses (a subset of
      `named_parameters()`; the others are the module's own, shared by every task), `step` the
      inner step (selects per-step batch-norm weights and statistics), `use_running_stats` to
      normalise with running statistics instead of the batch's, `sink` a list that receives the
      batch statistics to fold into the running ones after the meta-step (or None). Returns
      logits [B, M, N]. Autograd must reach `params` through the output, second order included.
    - `head_names`: the classifier's parameter names (what ANIL adapts and BOIL keeps fixed).
    - `norm_names`: the affine parameter names of the normalisation layers, which every task
      shares and the inner loop adapts only with algorithm.inner_adapt_bn (one rule for all
      backbones: the built-ins' batch norm; in a user's module the layers `model.norm_layers`
      covers, see mamlpp.nn.norm_rule).
    - `supports_per_step_bn`: whether per-step batch-norm weights/statistics and running
      statistics at evaluation exist (MAML++'s BNWB/BNRS).
    """

    head_names: frozenset[str]
    norm_names: frozenset[str]
    supports_per_step_bn: bool

    def __call__(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        step: int = 0,
        use_running_stats: bool = False,
        sink: list[BatchStats] | None = None,
    ) -> Tensor: ...
