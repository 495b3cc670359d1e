"""N-way K-shot episodes as a pure function of (seed, split, task index).

Indices are drawn on the host with one small NumPy generator per task; the images are gathered,
rotated and scaled by torch on whichever device holds the image array, so on a GPU no image
crosses the bus. Because a task depends only on its index, a resumed run draws exactly the
tasks it would have drawn, with no sampler state to save.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mamlpp.algorithms.meta_learner import EpisodeBatch
from mamlpp.data.splits import RANDOM_ROTATION, SPLITS, SplitClasses


@dataclass(frozen=True)
class TaskIndices:
    """Which images make up a batch of tasks: [B, N] classes/rotations and [B, N, K+T] images."""

    chars: np.ndarray
    rotations: np.ndarray
    images: np.ndarray


class EpisodeSampler:
    def __init__(
        self,
        images: Tensor,
        splits: dict[str, SplitClasses],
        ways: int,
        shots: int,
        targets: int,
    ) -> None:
        """`images`: uint8 [classes, images_per_class, H, W] on the device episodes are built on."""
        self.images = images
        self.splits = splits
        self.ways, self.shots, self.targets = ways, shots, targets

    def task_indices(self, split: str, seed: int, start: int, count: int) -> TaskIndices:
        classes = self.splits[split]
        per_class = self.images.shape[1]
        n, m = self.ways, self.shots + self.targets
        chars = np.empty((count, n), dtype=np.int64)
        rots = np.empty((count, n), dtype=np.int64)
        imgs = np.empty((count, n, m), dtype=np.int64)
        split_id = SPLITS.index(split)
        for b in range(count):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, start + b]))
            picked = rng.choice(len(classes), size=n, replace=False)
            chars[b] = classes.chars[picked]
            fixed = classes.rotations[picked]
            rots[b] = np.where(fixed == RANDOM_ROTATION, rng.integers(0, 4, size=n), fixed)
            imgs[b] = rng.permuted(np.tile(np.arange(per_class), (n, 1)), axis=1)[:, :m]
        return TaskIndices(chars, rots, imgs)

    def batch(self, split: str, seed: int, start: int, count: int) -> EpisodeBatch:
        """Tasks start..start+count-1 of `split` under `seed`, as float tensors in [0, 1]."""
        idx = self.task_indices(split, seed, start, count)
        dev = self.images.device
        chars = torch.from_numpy(idx.chars).to(dev)
        rots = torch.from_numpy(idx.rotations).to(dev)
        x = self.images[chars.unsqueeze(-1), torch.from_numpy(idx.images).to(dev)]
        for k in (1, 2, 3):
            mask = rots == k
            if bool(mask.any()):
                x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
        x = x.float().div_(255.0).unsqueeze(3)  # [B, N, K+T, 1, H, W]
        b, n, k = count, self.ways, self.shots
        labels = torch.arange(n, device=dev)
        xs = x[:, :, :k].reshape(b, n * k, *x.shape[3:])
        xt = x[:, :, k:].reshape(b, n * self.targets, *x.shape[3:])
        ys = labels.repeat_interleave(k).expand(b, -1).contiguous()
        yt = labels.repeat_interleave(self.targets).expand(b, -1).contiguous()
        return EpisodeBatch(xs, ys, xt, yt)
