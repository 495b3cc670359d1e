"""Code that a downloaded checkpoint or run directory might name. Importing this module, or
calling anything in it, appends a line to the file $MAMLPP_TEST_MARKER, so a test can tell that
mamlpp ran none of it (tests/integration/run_dir/test_untrusted_files.py)."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn


def _mark(what: str) -> None:
    path = os.environ.get("MAMLPP_TEST_MARKER")
    if path:
        with open(path, "a") as f:
            f.write(f"{what}\n")


_mark("imported planted")


class Net(nn.Module):
    """A backbone (model._target_) that leaves the marker when built."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        _mark("planted.Net")
        super().__init__()
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.mean((2, 3)))


class Optimizer(torch.optim.Adam):
    """A meta-optimizer (optimizer._target_) that leaves the marker when built."""

    def __init__(self, params, lr: float = 1e-3) -> None:  # noqa: ANN001
        _mark("planted.Optimizer")
        super().__init__(params, lr=lr)


def lister(**kwargs: object) -> None:
    """A dataset lister (dataset._target_) that leaves the marker when called."""
    _mark("planted.lister")


class Rule(nn.Module):
    """An inner rule (algorithm.inner_rule._target_) that leaves the marker when built."""

    def __init__(self, shapes: object, num_steps: int, init_lr: float) -> None:
        _mark("planted.Rule")
        super().__init__()


def register_algorithm() -> None:
    """What an algorithm's `_target_` would name: importing this module is already too much."""
    _mark("planted.register_algorithm")
