"""Inner-loop step sizes: one scalar per parameter tensor per step (LSLR) or a fixed alpha."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InnerLearningRates(nn.Module):
    """Per-layer per-step inner learning rates, all initialised to `init_lr`.

    With `learnable=False` they stay at `init_lr` (plain MAML's alpha); with `learnable=True`
    the outer optimizer trains them (MAML++ LSLR). Steps past the table reuse its last entry.
    """

    def __init__(self, names: list[str], num_steps: int, init_lr: float, learnable: bool) -> None:
        super().__init__()
        self.names = list(names)
        self.rates = nn.ParameterDict(
            {
                self._key(n): nn.Parameter(torch.full((num_steps,), float(init_lr)), learnable)
                for n in self.names
            }
        )

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def rate(self, name: str, step: int) -> Tensor:
        table = self.rates[self._key(name)]
        return table[min(step, table.shape[0] - 1)]

    def as_dict(self) -> dict[str, Tensor]:
        """name -> [steps] rates (detached copies, for logging)."""
        return {n: self.rates[self._key(n)].detach().clone() for n in self.names}
