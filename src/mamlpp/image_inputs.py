"""What `TrainedModel.load_images` accepts, routed to the one image decoder of training.

A path (str or Path), a folder (its images, sorted by name), a PIL image, a numpy array (HxW or
HxWxC, uint8 or float in [0, 1]), or a list of these. Files, PIL images and arrays (as PIL images)
go to the one decoder (mamlpp.data.decode), which reads each once, so that an image gives the
same pixels whatever form it comes in: modes, bit depth, orientation and resizing are decided
in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from mamlpp.data.image_folder import IMAGE_EXTENSIONS, is_image
from mamlpp.errors import DataError, MamlppError

ACCEPTED = (
    "an image path or folder (str or Path), a PIL image, a numpy array (HxW or HxWxC, uint8 "
    "or float in [0, 1]), or a list of these"
)
ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


def image_sources(images: Any) -> list[Path | Image.Image]:
    """Every image of `images`, in order, as a file path or a PIL image to decode."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise DataError(f"load_images got an empty list: it takes {ACCEPTED}")
    sources: list[Path | Image.Image] = []
    for item in items:
        sources += _sources(item)
    return sources


def _sources(item: Any) -> list[Path | Image.Image]:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image(p.name))
            if not found:
                raise DataError(
                    f"load_images: folder {path} holds no images "
                    f"(extensions {' '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            return list(found)
        if not path.is_file():
            raise DataError(f"load_images: image {path} does not exist")
        return [path]
    if isinstance(item, Image.Image):
        return [item]
    if isinstance(item, np.ndarray):
        return [Image.fromarray(_as_uint8(item))]
    if type(item).__name__ == "Tensor":
        raise MamlppError(
            "load_images takes image files, PIL images or arrays; an image tensor "
            "[M, C, S, S] goes to adapt/predict as it is"
        )
    raise MamlppError(f"load_images takes {ACCEPTED} (got {type(item).__name__})")


def _as_uint8(a: np.ndarray) -> np.ndarray:
    """An HxW or HxWxC image array as uint8 pixels (floats in [0, 1] scaled to 0..255)."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise DataError(
            f"load_images: an array of shape {a.shape} is not one image: it takes HxW or HxWxC "
            "(C = 1, 3 or 4) arrays, one per image (a list of them for several)"
        )
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise DataError(
                "load_images: a float image array must hold values in [0, 1] "
                "(uint8 arrays hold 0..255)"
            )
        return np.round(a * 255).astype(np.uint8)
    raise DataError(
        f"load_images: an image array of dtype {a.dtype}: it takes uint8 (0..255) or float "
        "in [0, 1]"
    )
