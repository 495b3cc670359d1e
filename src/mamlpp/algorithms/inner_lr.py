"""Inner-loop step sizes: the update rule's learning rates.

Three rules, one table per adapted parameter tensor:
- fixed: one alpha for every tensor and step (MAML);
- per layer per step, learned (MAML++ LSLR): a [steps] table per tensor;
- per element, learned (Meta-SGD, Li et al. 2017): a tensor of the parameter's shape, shared
  by every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InnerLearningRates(nn.Module):
    """Step sizes for the tensors in `shapes` (name -> parameter shape), all starting at
    `init_lr`. `learnable` makes the outer optimizer train them; `per_element` gives each
    element its own rate (Meta-SGD) instead of one per tensor and step. Steps past a per-step
    table reuse its last entry."""

    def __init__(
        self,
        shapes: dict[str, torch.Size],
        num_steps: int,
        init_lr: float,
        learnable: bool,
        per_element: bool = False,
    ) -> None:
        super().__init__()
        self.names = list(shapes)
        self.per_element = per_element
        self.rates = nn.ParameterDict(
            {
                self._key(n): nn.Parameter(
                    torch.full(shape if per_element else (num_steps,), float(init_lr)), learnable
                )
                for n, shape in shapes.items()
            }
        )

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def rate(self, name: str, step: int) -> Tensor:
        table = self.rates[self._key(name)]
        if self.per_element:
            return table
        return table[min(step, table.shape[0] - 1)]

    def as_dict(self) -> dict[str, Tensor]:
        """name -> [steps] rates (detached copies, for logging); per-element rates are summed
        up by their mean, one value."""
        out = {}
        for n in self.names:
            table = self.rates[self._key(n)].detach()
            out[n] = table.mean().reshape(1) if self.per_element else table.clone()
        return out
