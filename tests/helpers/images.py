"""Image folders made of random pixels, as a user's dataset would be laid out on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def class_folder(
    root: Path, classes: int, per_class: int, size: int, suffix: str = ".png", seed: int = 0
) -> Path:
    """`root/class<c>/img<i><suffix>`: random RGB images of size x size, drawn in order from
    one generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            path = root / f"class{c}" / f"img{i}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return root
