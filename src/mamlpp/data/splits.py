"""Train/val/test class splits: the classes (and fixed rotations) of each split, cut in runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
RANDOM_ROTATION = -1


@dataclass(frozen=True)
class SplitClasses:
    """One split's classes: character index and rotation (k*90 deg; -1: random per task)."""

    chars: np.ndarray
    rotations: np.ndarray

    def __len__(self) -> int:
        return len(self.chars)


def fixed_splits(order: np.ndarray, sizes: list[int]) -> dict[str, SplitClasses]:
    """Consecutive runs of `order` of the given sizes become train, val and test (no rotation)."""
    bounds = np.cumsum((0, *sizes))
    out = {}
    for i, name in enumerate(SPLITS):
        chars = np.asarray(order[bounds[i] : bounds[i + 1]], dtype=np.int64)
        out[name] = SplitClasses(chars, np.zeros(len(chars), dtype=np.int64))
    return out
