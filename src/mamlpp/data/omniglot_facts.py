"""What Omniglot is: its character count, images per character and the class splits of the two
protocols. A leaf module (no imports of mamlpp) so that the dataset's config can check tasks
against them without loading the dataset code; mamlpp.data.omniglot re-exports them."""

from __future__ import annotations

from collections.abc import Sequence

NUM_CLASSES = 1623
IMAGES_PER_CLASS = 20
# The protocols' [train, val, test] characters. mamlpp (Antoniou et al.): a class is a character,
# training tasks turn each by a random k*90 deg. maml (Finn et al.): a class is a (character,
# rotation) pair, so every split has ROTATIONS times as many classes.
PROTOCOL_SPLITS = {"mamlpp": (1150, 50, 423), "maml": (1100, 100, 423)}
PROTOCOLS = tuple(PROTOCOL_SPLITS)
ROTATIONS = 4


def split_sizes(protocol: str, sizes: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Characters per split: `sizes` when given (dataset.split_sizes), else the protocol's."""
    train, val, test = sizes if sizes is not None else PROTOCOL_SPLITS[protocol]
    return train, val, test


def split_class_counts(protocol: str, sizes: Sequence[int] | None = None) -> tuple[int, ...]:
    """Classes a task can draw from in each split (each rotation its own class under maml)."""
    per = ROTATIONS if protocol == "maml" else 1
    return tuple(n * per for n in split_sizes(protocol, sizes))
