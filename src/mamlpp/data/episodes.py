"""N-way K-shot episodes as a pure function of (seed, split, task index).

Indices (and augmentation draws) come from one small NumPy generator per task; the images are
gathered, rotated, cropped, flipped and normalised by torch on the device that holds them (or
gathered from the host memory map and moved once), so on a GPU no image crosses the bus. Because
a task depends only on its index, a resumed run draws exactly the tasks it would have drawn,
with no sampler state to save.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mamlpp.data.dataset import ClassImages
from mamlpp.data.preprocessing import channel_tensors, normalise
from mamlpp.data.splits import RANDOM_ROTATION, SPLITS, SplitClasses
from mamlpp.tasks import EpisodeBatch


@dataclass(frozen=True)
class Augmentation:
    """Per-image random crop after zero padding and horizontal flip, on training tasks only."""

    crop_padding: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip


@dataclass(frozen=True)
class TaskIndices:
    """A batch of tasks: [B, N] classes/rotations, [B, N, K+T] image indices within each class,
    and [B, N, K+T] crop offsets (y, x) and flips (None without augmentation); `picked` [B, N]
    the classes as indices into the split's class list."""

    chars: np.ndarray
    rotations: np.ndarray
    images: np.ndarray
    crop_y: np.ndarray | None = None
    crop_x: np.ndarray | None = None
    flips: np.ndarray | None = None
    picked: np.ndarray | None = None


class EpisodeSampler:
    def __init__(
        self,
        images: ClassImages | Tensor,
        splits: dict[str, SplitClasses],
        ways: int,
        shots: int,
        targets: int,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augmentation: Augmentation | None = None,
        device: torch.device | None = None,
    ) -> None:
        """`images`: ClassImages, or uint8 [classes, per_class, H, W] in a tensor.

        Episodes are built on `device` (default: where the image tensor lives, CPU for a map).
        """
        if not isinstance(images, ClassImages):
            images = ClassImages.from_class_major(images)
        self.images = images
        self.splits = splits
        self.ways, self.shots, self.targets = ways, shots, targets
        pixels = images.pixels
        default = pixels.device if isinstance(pixels, Tensor) else torch.device("cpu")
        self.device = device or default
        self.augmentation = augmentation or Augmentation()
        self.mean, self.std = channel_tensors(mean, std, self.device)

    def task_indices(self, split: str, seed: int, start: int, count: int) -> TaskIndices:
        classes = self.splits[split]
        n, m = self.ways, self.shots + self.targets
        chars = np.empty((count, n), dtype=np.int64)
        rots = np.empty((count, n), dtype=np.int64)
        imgs = np.empty((count, n, m), dtype=np.int64)
        picks = np.empty((count, n), dtype=np.int64)
        aug = self.augmentation if split == "train" else Augmentation()
        pad = aug.crop_padding
        crop_y: np.ndarray | None = None
        crop_x: np.ndarray | None = None
        flips: np.ndarray | None = None
        if aug.active:  # crop padding or flips
            crop_y = np.full((count, n, m), pad, dtype=np.int64)
            crop_x = np.full((count, n, m), pad, dtype=np.int64)
            flips = np.zeros((count, n, m), dtype=bool)
        split_id = SPLITS.index(split)
        for b in range(count):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, start + b]))
            picked = rng.choice(len(classes), size=n, replace=False)
            picks[b] = picked
            chars[b] = classes.chars[picked]
            fixed = classes.rotations[picked]
            rots[b] = np.where(fixed == RANDOM_ROTATION, rng.integers(0, 4, size=n), fixed)
            counts = self.images.counts[chars[b]]
            if np.all(counts == counts[0]):
                imgs[b] = rng.permuted(np.tile(np.arange(counts[0]), (n, 1)), axis=1)[:, :m]
            else:
                imgs[b] = [rng.permutation(c)[:m] for c in counts]
            # Augmentation draws come last, so tasks without augmentation are unchanged.
            if pad > 0:
                assert crop_y is not None and crop_x is not None  # made above: aug.active
                crop_y[b] = rng.integers(0, 2 * pad + 1, size=(n, m))
                crop_x[b] = rng.integers(0, 2 * pad + 1, size=(n, m))
            if aug.flip:
                assert flips is not None
                flips[b] = rng.random((n, m)) < 0.5
        return TaskIndices(chars, rots, imgs, crop_y, crop_x, flips, picks)

    def batch(self, split: str, seed: int, start: int, count: int) -> EpisodeBatch:
        """Tasks start..start+count-1 of `split` under `seed`, as normalised float tensors."""
        idx = self.task_indices(split, seed, start, count)
        dev = self.device
        flat = self.images.starts[idx.chars][..., None] + idx.images  # [B, N, K+T]
        x = self.images.gather(flat, dev)  # uint8 [B, N, K+T, C, H, W]
        rots = torch.from_numpy(idx.rotations).to(dev)
        for k in (1, 2, 3):
            mask = rots == k
            if bool(mask.any()):
                x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
        if idx.flips is not None:
            x = self._crop_and_flip(x, idx)  # on uint8: zero padding is 0 after scaling too
        x = normalise(x, self.mean, self.std)
        b, n, k = count, self.ways, self.shots
        labels = torch.arange(n, device=dev)
        xs = x[:, :, :k].reshape(b, n * k, *x.shape[3:])
        xt = x[:, :, k:].reshape(b, n * self.targets, *x.shape[3:])
        ys = labels.repeat_interleave(k).expand(b, -1).contiguous()
        yt = labels.repeat_interleave(self.targets).expand(b, -1).contiguous()
        classes = torch.from_numpy(idx.picked).to(dev)
        return EpisodeBatch(xs, ys, xt, yt, classes)

    def _crop_and_flip(self, x: Tensor, idx: TaskIndices) -> Tensor:
        """One gather: each image is zero-padded, cropped at its offset and maybe mirrored."""
        assert idx.crop_y is not None and idx.crop_x is not None and idx.flips is not None
        shape = x.shape
        c, h, w = shape[-3:]
        pad = self.augmentation.crop_padding
        flat = x.reshape(-1, c, h, w)
        if pad > 0:
            flat = torch.nn.functional.pad(flat, (pad, pad, pad, pad))
        dev = x.device
        oy = torch.from_numpy(idx.crop_y.reshape(-1)).to(dev)
        ox = torch.from_numpy(idx.crop_x.reshape(-1)).to(dev)
        flip = torch.from_numpy(idx.flips.reshape(-1)).to(dev)
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = oy[:, None] + ar_h  # [P, H]
        cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # [P, W]
        p = torch.arange(len(flat), device=dev)
        ch = torch.arange(c, device=dev)
        out = flat[
            p[:, None, None, None],
            ch[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return out.view(shape)
