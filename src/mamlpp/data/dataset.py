"""What every loader returns: class-contiguous uint8 images, their class index, splits and stats.

Why one shape for all datasets: the episode sampler, the model's input channels and the task
checks only need "image i of class c" and a per-channel normalisation, so Omniglot's fixed
[characters, drawings] array and an image folder's ragged classes (memory-mapped from the cache)
look the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mamlpp.data.splits import SPLITS, SplitClasses, fixed_splits
from mamlpp.errors import DataError

# torchvision's ImageNet statistics, on pixels scaled to [0, 1] (the MAML++ Mini-ImageNet setup).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClassImages:
    """uint8 images [N, C, H, W] stored class by class: class c is rows starts[c]..+counts[c].

    `pixels` is a torch tensor (in memory, on any device) or a NumPy array (possibly a read-only
    memory map of the on-disk cache, gathered on the host).
    """

    pixels: Tensor | np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_class_major(cls, images: Tensor | np.ndarray) -> ClassImages:
        """[classes, per_class, H, W] (grey) or [classes, per_class, C, H, W] -> ClassImages."""
        classes, per_class = images.shape[:2]
        rest = tuple(images.shape[2:])
        if len(rest) == 2:
            rest = (1, *rest)
        flat = images.reshape(classes * per_class, *rest)
        starts = np.arange(classes, dtype=np.int64) * per_class
        return cls(flat, starts, np.full(classes, per_class, dtype=np.int64))

    @classmethod
    def from_counts(cls, pixels: Tensor | np.ndarray, counts: np.ndarray) -> ClassImages:
        """Classes stored back to back with `counts` images each."""
        counts = np.asarray(counts, dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        return cls(pixels, starts, counts)

    def rows(self, classes: np.ndarray) -> np.ndarray:
        """Global rows of every image of `classes`, class by class."""
        return np.concatenate([self.starts[c] + np.arange(self.counts[c]) for c in classes])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.pixels.shape[-1])

    def to(self, device: torch.device, chunk: int = 4096) -> ClassImages:
        """A torch copy on `device`, filled in chunks so a memory map is never copied whole."""
        if isinstance(self.pixels, Tensor):
            return ClassImages(self.pixels.to(device), self.starts, self.counts)
        out = torch.empty(self.pixels.shape, dtype=torch.uint8, device=device)
        for i in range(0, len(out), chunk):
            out[i : i + chunk] = torch.from_numpy(np.array(self.pixels[i : i + chunk]))
        return ClassImages(out, self.starts, self.counts)

    def gather(self, flat_index: np.ndarray, device: torch.device) -> Tensor:
        """Images at global rows `flat_index` (any shape) as uint8 on `device`."""
        if isinstance(self.pixels, Tensor):
            idx = torch.from_numpy(flat_index).to(self.pixels.device)
            return self.pixels[idx].to(device)
        picked = self.pixels[flat_index.reshape(-1)]  # fancy indexing copies out of the map
        x = torch.from_numpy(np.ascontiguousarray(picked))
        return x.view(*flat_index.shape, *x.shape[1:]).to(device)


@dataclass
class FewShotDataset:
    """A dataset ready for episodes: images, class names, train/val/test classes, pixel stats."""

    name: str
    images: ClassImages
    class_names: list[str]
    splits: dict[str, SplitClasses]
    # Per-channel mean/std of pixels in [0, 1]; None: pixels stay in [0, 1] (Omniglot).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Content identity of the images (mamlpp.data.content): a run never resumes on other data.
    identity: str | None = None

    def check_task_fits(self, ways: int, shots: int, targets: int) -> None:
        """One line naming the split or class that cannot supply an N-way K-shot T-target task."""
        need = shots + targets
        for split in SPLITS:
            classes = self.splits[split]
            if ways > len(classes):
                raise DataError(
                    f"{self.name}: task.ways={ways} but the {split} split has only "
                    f"{len(classes)} classes"
                )
            counts = self.images.counts[classes.chars]
            worst = int(np.argmin(counts))
            if counts[worst] < need:
                name = self.class_names[int(classes.chars[worst])]
                raise DataError(
                    f"{self.name}: class '{name}' ({split} split) has {int(counts[worst])} images, "
                    f"fewer than task.shots + task.targets = {need}"
                )


def split_by_ratios(
    num_classes: int, ratios: tuple[float, float, float], seed: int
) -> dict[str, SplitClasses]:
    """Shuffle classes 0..num_classes-1 with `seed` and cut them by train/val/test ratios."""
    total = sum(ratios)
    sizes = [int(round(num_classes * r / total)) for r in ratios[:2]]
    sizes.append(num_classes - sum(sizes))
    if min(sizes) < 1:
        raise DataError(
            f"dataset.split_ratios={list(ratios)} leaves a split of {num_classes} classes empty "
            f"(sizes {sizes}); every split needs at least one class"
        )
    return fixed_splits(np.random.default_rng(seed).permutation(num_classes), sizes)
