"""The opt-in CPU kernels of `speed.fast_kernels`: the same mathematics as the default kernels
with less work, hence different float32 rounding (so off by default). Second-order MAML spends
most of its step in double backwards; these replace two of ATen's:

- batch norm (training mode): a closed form with about a dozen passes over the activations
  instead of some twenty-five (3x faster on the first stage's [5, 512, 28, 28]);
- the grouped convolution: the weight's second-order term from one grouped weight-gradient
  kernel instead of ATen's loop over the groups with transposed copies.

Conv4 also max-pools before the activation under the switch (mamlpp.nn.conv4).

A process-wide switch, like torch.backends flags: experiment.device.configure_backends sets it
from the config, and `use_fast_kernels` scopes it (tests, benchmarks). The layers read it at
call time (mamlpp.nn.layers, mamlpp.nn.conv4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

_enabled = False


def set_fast_kernels(on: bool) -> None:
    global _enabled
    _enabled = bool(on)


def fast_kernels_enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def use_fast_kernels(on: bool = True) -> Iterator[None]:
    """The switch set to `on` inside the block, restored after it."""
    before = _enabled
    set_fast_kernels(on)
    try:
        yield
    finally:
        set_fast_kernels(before)


def _mean_exclude_dim1(t: Tensor) -> Tensor:
    """Per-channel mean over every dim but 1, shaped to broadcast against t."""
    dims = [0, *range(2, t.dim())]
    return t.mean(dims, keepdim=True)


def batchnorm_double_backward_closed_form(
    x: Tensor,
    gamma: Tensor,
    ggI: Tensor | None,
    ggG: Tensor | None,
    ggB: Tensor | None,
    gO: Tensor,
    mean: Tensor,
    invstd: Tensor,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Training-mode batch norm's double backward (what ATen's batchnorm_double_backward
    returns: grads for x, gamma and gO) in closed form, factored by hand.

    With s = invstd, xh = (x - mean) s, per-channel means A = <gO>, B = <gO xh>, C = <ggI>,
    D = <ggI xh>, E = <ggI gO> over the N elements of a channel, and g = gamma:
      d/dx     = xh k1 + gO k2 + ggI k3 + k4, with k1 = -g s^2 (E - A C - 3 B D) - ggG s B,
                 k2 = -g s^2 D + ggG s, k3 = -g s^2 B, k4 = g s^2 (A D + B C) - ggG s A;
      d/dgamma = N s (E - A C - B D);
      d/dgO    = ggI g s + xh (ggG - g s D) + ggB - g s C.
    About a dozen passes over the activations where ATen's formula makes some twenty-five.
    """
    view = (1, -1) + (1,) * (x.dim() - 2)
    n = x.numel() // x.shape[1]
    s = invstd.view(view)
    g = gamma.view(view)
    xh = (x - mean.view(view)).mul_(s)
    a = _mean_exclude_dim1(gO)
    b = _mean_exclude_dim1(gO * xh)
    gs = g * s
    gI = gG = ggO = None
    if ggI is not None:
        c = _mean_exclude_dim1(ggI)
        d = _mean_exclude_dim1(ggI * xh)
        e = _mean_exclude_dim1(ggI * gO)
        gss = gs * s
        k1 = -gss * (e - a * c - 3 * b * d)
        k2 = -gss * d
        k3 = -gss * b
        k4 = gss * (a * d + b * c)
        if ggG is not None:
            gg = ggG.view(view)
            k1 = k1 - gg * s * b
            k2 = k2 + gg * s
            k4 = k4 - gg * s * a
        gI = (xh * k1).addcmul_(gO, k2).addcmul_(ggI, k3).add_(k4)
        gG = (n * s * (e - a * c - b * d)).reshape(-1)
        ggO = (ggI * gs).addcmul_(xh, -gs * d).add_(-gs * c)
        if ggG is not None:
            ggO.addcmul_(xh, ggG.view(view))
    elif ggG is not None:
        gg = ggG.view(view)
        gI = (gO - a).addcmul_(xh, -b).mul_(gg * s)
        ggO = xh * gg
    if ggB is not None:
        term = ggB.view(view).expand_as(x)
        ggO = term.clone() if ggO is None else ggO.add_(term)
    return gI, gG, ggO


def _conv_backward(
    gO: Tensor, x: Tensor, w: Tensor, geom: tuple, mask: list[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    stride, padding, groups, bias = geom
    return torch.ops.aten.convolution_backward(
        gO,
        x,
        w,
        [w.shape[0]] if bias else None,
        stride,
        padding,
        [1, 1],
        False,
        [0, 0],
        groups,
        mask,
    )


class _ConvBackward(torch.autograd.Function):
    """ATen's convolution backward (the same kernel and numbers as autograd's); its own
    backward gets the weight's second-order term from one grouped weight-gradient kernel where
    ATen loops over the groups with transposed copies."""

    @staticmethod
    def forward(ctx, gO: Tensor, x: Tensor, w: Tensor, geom: tuple, mask: tuple) -> tuple:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(gO, x, w)
        ctx.geom = geom
        return tuple(_conv_backward(gO, x, w, geom, list(mask)))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, ggI: Tensor | None, ggW: Tensor | None, ggB: Tensor | None) -> tuple:
        gO, x, w = ctx.saved_tensors
        stride, padding, groups, _ = geom = ctx.geom
        need_gO, need_x, need_w = ctx.needs_input_grad[:3]
        g_gO = g_x = g_w = None
        if need_gO:
            if ggI is not None:
                g_gO = F.conv2d(ggI, w, None, stride, padding, 1, groups)
            if ggW is not None:
                term = F.conv2d(x, ggW, None, stride, padding, 1, groups)
                g_gO = term if g_gO is None else g_gO.add_(term)
            if ggB is not None:
                term = ggB.view(1, -1, 1, 1).expand_as(gO)
                g_gO = term.clone() if g_gO is None else g_gO.add_(term)
        if need_x and ggW is not None:
            g_x = _conv_backward(gO, x, ggW, geom, [True, False, False])[0]
        if need_w and ggI is not None:
            g_w = _conv_backward(gO, ggI, w, geom, [False, True, False])[1]
        return g_gO, g_x, g_w, None, None


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, geom: tuple) -> Tensor:
        stride, padding, groups, _ = geom
        ctx.save_for_backward(x, w)
        ctx.geom = geom
        return F.conv2d(x, w, b, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, gO: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        gI, gW, gB = _ConvBackward.apply(gO, x, w, ctx.geom, mask)
        return gI, gW, gB, None


def conv2d_grouped(
    x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, groups: int
) -> Tensor:
    """F.conv2d with the same forward and first-order numbers and a cheaper double backward."""
    return _Conv2d.apply(x, w, b, ([stride] * 2, [padding] * 2, groups, b is not None))
