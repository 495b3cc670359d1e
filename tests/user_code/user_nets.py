"""A user's own networks: plain torch.nn modules that know nothing of mamlpp (model=module)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Two conv -> BatchNorm2d -> ReLU -> max-pool blocks and a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class NoHead(nn.Module):
    """A module without an nn.Linear (ANIL has no head to adapt)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).mean((2, 3))


class ClassifierFirst(nn.Module):
    """Registers its classifier before a hidden Linear that has `num_classes` outputs too: the
    head is the layer the forward ends with, not the last one registered."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(num_classes, num_classes)
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.hidden = nn.Linear(4 * image_size * image_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.hidden(torch.flatten(torch.relu(self.conv(x)), 1)))
        return self.classifier(h)


class ScaledLogits(ClassifierFirst):
    """Scales its logits after the classifier: two Linears have `num_classes` outputs and none
    returns the logits, so the head must be named (model.head=classifier)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2.0


class WrongWidth(nn.Module):
    """No nn.Linear, and a conv with a fixed 7 outputs whatever num_classes is."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 7, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).mean((2, 3))


class NotLogits(SmallCNN):
    """Returns the logits in a tuple with the features (as some model zoos do)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        features = torch.flatten(self.features(x), 1)
        return self.classifier(features), features


class Dropout(SmallCNN):
    """A SmallCNN with dropout before its classifier (random in training)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__(in_channels, num_classes, width)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.drop(torch.flatten(self.features(x), 1)))


class FunctionalDropout(SmallCNN):
    """Dropout through torch.nn.functional (no module to see before the forward)."""

    def forward(self, x: Tensor) -> Tensor:
        features = torch.flatten(self.features(x), 1)
        return self.classifier(nn.functional.dropout(features, 0.2, self.training))


class MyNorm(nn.Module):
    """A hand-written RMS norm of the user's own, with a learned scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-5) * self.scale


class EveryNorm(nn.Module):
    """One layer of each kind of normalisation, and one of the user's own."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norms = nn.ModuleDict(
            {
                "batch": nn.BatchNorm2d(width),
                "instance": nn.InstanceNorm2d(width, affine=True, track_running_stats=True),
                "group": nn.GroupNorm(2, width),
                "mine": MyNorm(width),
            }
        )
        self.layer = nn.LayerNorm(width)
        self.rms = nn.RMSNorm(width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        for norm in self.norms.values():
            h = torch.relu(norm(h))
        h = self.rms(self.layer(h.mean((2, 3))))
        return self.classifier(h)


class FirstRowsOnly(SmallCNN):
    """Returns the logits of its first `num_classes` images only: right on `num_classes`
    images, wrong on a support set of more."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__(in_channels, num_classes, width)
        self.rows = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[: self.rows]
