"""A user's own dataset layout (dataset=custom): one flat folder of <class>__<n>.png files,
which the built-in image_folder loader does not read."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mamlpp.data.image_folder import ImageListing


def list_flat(source: str, separator: str = "__") -> ImageListing:
    files: dict[str, list[str]] = defaultdict(list)
    for path in sorted(Path(source).glob("*.png")):
        files[path.stem.split(separator)[0]].append(path.name)
    classes = sorted(files)
    return ImageListing("flat", "dir", Path(source), classes, [files[c] for c in classes])


def not_a_listing(source: str) -> list[str]:
    return [source]
