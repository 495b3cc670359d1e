"""Meta-gradients as the learner computes them, and two independent ways to check them:
central finite differences here, the torch.func reference in helpers/reference.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def meta_gradients(
    learner: torch.nn.Module,
    batch: Any,
    steps: int,
    second_order: bool = True,
    step_weights: Sequence[float] | Tensor | None = None,
) -> dict[str, Tensor]:
    """d mean(meta-loss) / d parameter for every trainable parameter of `learner` (no optimizer
    step); a parameter the loss does not reach gets zeros."""
    named = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]
    loss, _ = learner.adapt_and_predict(batch, steps, True, second_order, step_weights)
    grads = torch.autograd.grad(loss.mean(), [p for _, p in named], allow_unused=True)
    return {
        n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads, strict=True)
    }


def central_difference(
    loss: Callable[[], float | Tensor], tensor: Tensor, index: tuple[int, ...], eps: float
) -> float:
    """(loss(x + eps) - loss(x - eps)) / 2 eps for one entry of `tensor`, changed in place and
    restored exactly afterwards. Use float64: float32 rounding swamps the difference."""
    original = tensor[index].item()
    values = []
    for value in (original + eps, original - eps):
        with torch.no_grad():
            tensor[index] = value
        out = loss()
        values.append(out.item() if isinstance(out, Tensor) else float(out))
    with torch.no_grad():
        tensor[index] = original
    up, down = values
    return (up - down) / (2 * eps)


def random_index(tensor: Tensor, generator: torch.Generator) -> tuple[int, ...]:
    """One entry of `tensor`, drawn from `generator`."""
    return tuple(int(torch.randint(0, s, (1,), generator=generator)) for s in tensor.shape)


def assert_grads_close(
    got: dict[str, Tensor], want: dict[str, Tensor], rtol: float, atol: float
) -> None:
    """The same parameter names, and every gradient close (the failing name is in the message)."""
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=rtol, atol=atol, msg=lambda m, n=n: n + m)


def rel_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """|a - b| / |b| over all the tensors of two gradient dicts, flattened in name order."""
    va = torch.cat([a[n].flatten() for n in sorted(a)])
    vb = torch.cat([b[n].flatten() for n in sorted(a)])
    return ((va - vb).norm() / vb.norm()).item()
