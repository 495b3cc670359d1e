"""Train/val/test class splits: Omniglot's MAML++ and original-MAML protocols, fixed runs."""

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


def omniglot_splits(
    num_chars: int,
    sizes: tuple[int, int, int],
    split_seed: int,
    protocol: str,
    train_rotation: bool = True,
) -> dict[str, SplitClasses]:
    """Shuffle characters with `split_seed` and cut them into train/val/test.

    mamlpp: a class is a character; training tasks rotate each class by a random k*90 deg.
    maml (Finn et al.): a class is a (character, rotation) pair, so every split has 4x classes.
    """
    perm = np.random.default_rng(split_seed).permutation(num_chars)
    out = {}
    for name, split in fixed_splits(perm, list(sizes)).items():
        chars = split.chars
        if protocol == "maml":
            out[name] = SplitClasses(np.repeat(chars, 4), np.tile(np.arange(4), len(chars)))
        else:
            rot = RANDOM_ROTATION if (name == "train" and train_rotation) else 0
            out[name] = SplitClasses(chars, np.full(len(chars), rot))
    return out


def fixed_splits(order: np.ndarray, sizes: list[int]) -> dict[str, SplitClasses]:
    """Consecutive runs of `order` of the given sizes become train, val and test (no rotation)."""
    bounds = np.cumsum((0, *sizes))
    out = {}
    for i, name in enumerate(SPLITS):
        chars = np.asarray(order[bounds[i] : bounds[i + 1]], dtype=np.int64)
        out[name] = SplitClasses(chars, np.zeros(len(chars), dtype=np.int64))
    return out
