"""MAML++ schedules as pure functions of (epoch, iteration), so a resumed run recomputes them."""

from __future__ import annotations

import math


def msl_weights(num_steps: int, anneal_epochs: int, epoch: int) -> list[float]:
    """Multi-step loss importance of the target loss after each inner step (MAML++ paper).

    Non-final steps decay from 1/S to a floor of 0.03/S; the final step grows to take the rest.
    """
    s = num_steps
    if s == 1:
        return [1.0]
    decay = epoch / (s * max(anneal_epochs, 1))
    floor = 0.03 / s
    weights = [max(1.0 / s - decay, floor) for _ in range(s - 1)]
    weights.append(
        min(1.0 / s + epoch * (s - 1) / (s * max(anneal_epochs, 1)), 1.0 - (s - 1) * floor)
    )
    return weights


def use_multi_step_loss(enabled: bool, anneal_epochs: int, epoch: int) -> bool:
    """MSL applies while epoch < anneal_epochs; afterwards only the final-step loss counts."""
    return enabled and epoch < anneal_epochs


def use_second_order(second_order: bool, first_order_epochs: int, epoch: int) -> bool:
    """Derivative-order annealing: first order for the first `first_order_epochs` epochs."""
    return second_order and epoch >= first_order_epochs


def meta_lr_at(
    iteration: int,
    total_iterations: int,
    base_lr: float,
    min_lr: float,
    cosine: bool,
    iters_per_epoch: int = 0,
    linear: bool = False,
) -> float:
    """Cosine annealing from base_lr to min_lr over the whole training run (or, with `linear`,
    a straight line from base_lr to min_lr: Reptile's outer step size).

    Per iteration by default. With iters_per_epoch > 0 a staircase: every iteration of an epoch
    gets the rate of the epoch's start, cos(pi * epoch / epochs), as the published MAML++ code's
    CosineAnnealingLR stepped with the integer epoch gives.
    """
    if linear:
        t = min(max(iteration, 0), total_iterations) / max(total_iterations, 1)
        return base_lr + (min_lr - base_lr) * t
    if not cosine:
        return base_lr
    if iters_per_epoch > 0:
        iteration -= iteration % iters_per_epoch
    t = min(max(iteration, 0), total_iterations) / max(total_iterations, 1)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))
