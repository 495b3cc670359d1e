"""What a model's input pixels went through, and how to give new images the same treatment.

A trained model only makes sense on images decoded, resized and normalised as in training, so
member checkpoints carry a `Preprocessing` and every path that feeds a trained model (cross-domain
evaluation, the `--support/--query` folders, the Python API) goes through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mamlpp.data.dataset import ClassImages, FewShotDataset
from mamlpp.data.decode import decode_image
from mamlpp.errors import DataError

# ITU-R 601-2 luma in PIL's fixed point (convert("L") computes (19595 R + 38470 G + 7471 B +
# 2**15) >> 16), so an RGB dataset turned grey here equals the same images decoded as greyscale.
_LUMA = np.array([19595, 38470, 7471], dtype=np.int64)


@dataclass(frozen=True)
class Preprocessing:
    """Square images of `image_size` pixels with `channels` channels (1: grey, 3: RGB), scaled
    to [0, 1] and then normalised per channel with `mean`/`std` (None: left in [0, 1])."""

    image_size: int
    channels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, data: FewShotDataset) -> Preprocessing:
        images = data.images
        return cls(images.image_size, images.channels, data.mean, data.std)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (loadable with torch.load(weights_only=True))."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        mean, std = d.get("mean"), d.get("std")
        return cls(
            int(d["image_size"]),
            int(d["channels"]),
            None if mean is None else tuple(float(v) for v in mean),
            None if std is None else tuple(float(v) for v in std),
        )

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def decode_file(self, image: Path | Image.Image) -> np.ndarray:
        """An image file or PIL image -> uint8 [C, S, S] as the model saw it: the decoder of
        Omniglot and the image folders (mamlpp.data.decode), greyscale or RGB, LANCZOS-resized."""
        where = str(image) if isinstance(image, Path) else f"(a {image.mode} PIL image)"
        return decode_image(image, self.image_size, self.channels, where)

    def normalise(self, pixels: Tensor) -> Tensor:
        """uint8 [..., C, S, S] -> float32 as the episode sampler builds it (see `normalise`)."""
        return normalise(pixels, *channel_tensors(self.mean, self.std, pixels.device))


def channel_tensors(
    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """Per-channel `mean` and `std` as float32 [C, 1, 1] on `device` (None: no normalisation)."""
    if mean is None or std is None:
        return None, None
    shape = (len(mean), 1, 1)
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
        torch.tensor(std, dtype=torch.float32, device=device).view(shape),
    )


def normalise(pixels: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """The one normalisation of model inputs: uint8 [..., C, S, S] -> float32 pixels/255, then
    (x - mean) / std per channel when `mean` and `std` (from `channel_tensors`) are given."""
    x = pixels.float().div_(255.0)
    if mean is None or std is None:
        return x
    return (x - mean) / std


def convert_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [N, C, H, W] with C in {1, 3} -> `channels` channels: grey is repeated into RGB,
    RGB becomes grey exactly as PIL's convert('L') makes it."""
    have = pixels.shape[1]
    if have == channels:
        return pixels
    if have == 1 and channels == 3:
        return np.repeat(np.asarray(pixels), 3, axis=1)
    if have == 3 and channels == 1:
        rgb = np.asarray(pixels, dtype=np.int64)
        grey = (np.tensordot(_LUMA, rgb, axes=([0], [1])) + (1 << 15)) >> 16
        return grey.astype(np.uint8)[:, None]
    raise DataError(f"cannot convert {have}-channel images to {channels} channels")


def with_channels(images: ClassImages, channels: int) -> ClassImages:
    """`images` with `channels` channels (a converted in-memory copy when they differ)."""
    if images.channels == channels:
        return images
    pixels = images.pixels
    if isinstance(pixels, Tensor):
        pixels = pixels.cpu().numpy()
    return ClassImages(convert_channels(pixels, channels), images.starts, images.counts)
