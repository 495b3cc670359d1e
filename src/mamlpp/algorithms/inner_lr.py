"""Inner update rules: how one inner step turns a weight and its support-loss gradient into the
next weight.

The contract (`InnerRule`) is small on purpose, so a researcher's rule is one class:
- constructed as `cls(shapes, num_steps, init_lr, **kwargs)`: `shapes` maps each adapted
  parameter's name to its shape, `num_steps` is the inner steps of training;
- an `nn.Module`: its parameters are meta-learned together with the network's (state-dict prefix
  `inner_lrs.`), e.g. learned step sizes;
- `step(name, weight, grad, step, state) -> (new_weight, new_state)`: `weight` and `grad` carry
  a leading task dimension [B, *shape]; `state` is what this rule returned for `name` at the
  previous inner step (None at the first), so a rule may keep momentum across inner steps. The
  update must be differentiable: the meta-gradient flows through it (second order).

Three built-in rules, chosen by today's keys (`algorithm.learn_inner_lr`, `per_element_lr`):
- FixedLR: one alpha for every tensor and step (MAML);
- PerLayerPerStepLR, learned (MAML++ LSLR): a [steps] table per tensor;
- PerElementLR, learned (Meta-SGD, Li et al. 2017): a tensor of the parameter's shape, shared
  by every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mamlpp.errors import ConfigError, locate


@runtime_checkable
class InnerRule(Protocol):
    """One inner step for one adapted tensor (see the module docstring)."""

    def step(
        self, name: str, weight: Tensor, grad: Tensor, step: int, state: Any
    ) -> tuple[Tensor, Any]: ...


# (shapes, num_steps) -> the rule, with init_lr and kwargs already bound.
InnerRuleFactory = Callable[[Mapping[str, torch.Size], int], nn.Module]


class InnerLearningRates(nn.Module):
    """Plain SGD with step sizes for the tensors in `shapes` (name -> parameter shape), all
    starting at `init_lr`. `learnable` makes the outer optimizer train them; `per_element` gives
    each element its own rate (Meta-SGD) instead of one per tensor and step. Steps past a
    per-step table reuse its last entry."""

    def __init__(
        self,
        shapes: Mapping[str, torch.Size],
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

    def step(
        self, name: str, weight: Tensor, grad: Tensor, step: int, state: Any
    ) -> tuple[Tensor, Any]:
        return weight - self.rate(name, step) * grad, None

    def as_dict(self) -> dict[str, Tensor]:
        """name -> [steps] rates (detached copies, for logging); per-element rates are summed
        up by their mean, one value."""
        out = {}
        for n in self.names:
            table = self.rates[self._key(n)].detach()
            out[n] = table.mean().reshape(1) if self.per_element else table.clone()
        return out


class FixedLR(InnerLearningRates):
    """MAML: one step size for every tensor and step, not learned."""

    def __init__(self, shapes: Mapping[str, torch.Size], num_steps: int, init_lr: float) -> None:
        super().__init__(shapes, num_steps, init_lr, learnable=False)


class PerLayerPerStepLR(InnerLearningRates):
    """MAML++ LSLR (Antoniou et al. 2019): a learned step size per tensor and inner step."""

    def __init__(self, shapes: Mapping[str, torch.Size], num_steps: int, init_lr: float) -> None:
        super().__init__(shapes, num_steps, init_lr, learnable=True)


class PerElementLR(InnerLearningRates):
    """Meta-SGD (Li et al. 2017): a learned step size per parameter element, shared by steps."""

    def __init__(self, shapes: Mapping[str, torch.Size], num_steps: int, init_lr: float) -> None:
        super().__init__(shapes, num_steps, init_lr, learnable=True, per_element=True)


def builtin_rule(learn_inner_lr: bool, per_element_lr: bool) -> type[InnerLearningRates]:
    """The rule today's keys name: per_element_lr -> Meta-SGD, learn_inner_lr -> LSLR."""
    if per_element_lr:
        return PerElementLR
    return PerLayerPerStepLR if learn_inner_lr else FixedLR


def inner_rule_factory(
    target: str | None,
    kwargs: Mapping[str, Any],
    init_lr: float,
    learn_inner_lr: bool = False,
    per_element_lr: bool = False,
) -> InnerRuleFactory:
    """`algorithm.inner_rule._target_` (+ kwargs) as a factory; empty: the built-in rule of
    learn_inner_lr / per_element_lr. A target that is not an nn.Module class with a `step`
    method is a one-line error."""
    if not target:
        return partial(builtin_rule(learn_inner_lr, per_element_lr), init_lr=init_lr)
    cls = locate(target, "algorithm.inner_rule._target_")
    if not (
        isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and callable(getattr(cls, "step", None))
    ):
        raise ConfigError(
            f"config key 'algorithm.inner_rule._target_' = {target!r} is not an nn.Module class "
            "with step(name, weight, grad, step, state) (mamlpp.algorithms.inner_lr.InnerRule)"
        )

    def build(shapes: Mapping[str, torch.Size], num_steps: int) -> nn.Module:
        try:
            return cls(shapes, num_steps, init_lr=init_lr, **dict(kwargs))
        except TypeError as exc:
            raise ConfigError(
                f"config key 'algorithm.inner_rule.kwargs' = {dict(kwargs)!r}: {target}: {exc}"
            ) from exc

    return build


class InnerAdam(nn.Module):
    """Adam inside the inner loop, its moments carried across the inner steps of a task (the
    state), as Reptile's inner optimizer in Nichol et al. 2018 (beta1 = 0 there). Its step
    size is fixed, not learned."""

    def __init__(
        self,
        shapes: Mapping[str, torch.Size],
        num_steps: int,
        init_lr: float,
        betas: tuple[float, float] = (0.0, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.lr, self.betas, self.eps = float(init_lr), tuple(betas), float(eps)

    def step(
        self, name: str, weight: Tensor, grad: Tensor, step: int, state: Any
    ) -> tuple[Tensor, Any]:
        b1, b2 = self.betas
        m, v, t = (
            state if state is not None else (torch.zeros_like(grad), torch.zeros_like(grad), 0)
        )
        t += 1
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        return weight - self.lr * m_hat / (v_hat.sqrt() + self.eps), (m, v, t)
