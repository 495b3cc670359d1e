"""Refuse up-front a decoded dataset that cannot fit, naming the size it would need.

Why: the decoded images take `images x channels x S x S` bytes; with a large
`dataset.image_size` that is more than the machine has, and finding out after minutes of
decoding (or as a MemoryError traceback, or a disk filled to the last byte) loses time and
leaves the machine in a worse state. Omniglot holds its images in memory; image folders write
them to the cache on disk and memory-map them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mamlpp.errors import DataError

# Memory one decoding chunk may take (image folders): keeps workers' buffers small at any size.
CHUNK_BYTES = 64 << 20


def physical_memory() -> int | None:
    """Bytes of RAM, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def human(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _need(name: str, count: int, channels: int, image_size: int) -> tuple[int, str]:
    need = count * channels * image_size * image_size
    what = (
        f"{name}: dataset.image_size={image_size} needs {human(need)} for the decoded images "
        f"({count} x {channels} x {image_size} x {image_size} bytes)"
    )
    return need, what


def check_memory(name: str, count: int, channels: int, image_size: int) -> None:
    """One line when `count` decoded images do not fit in this machine's memory."""
    need, what = _need(name, count, channels, image_size)
    ram = physical_memory()
    if ram is not None and need > ram:
        raise DataError(
            f"{what}, more than this machine's memory ({human(ram)}); "
            "choose a smaller dataset.image_size"
        )


def check_disk(name: str, count: int, channels: int, image_size: int, folder: Path) -> None:
    """One line when `count` decoded images do not fit in `folder`'s free space, or one of them
    not in memory (decoding holds a few at a time)."""
    check_memory(name, 4, channels, image_size)  # PIL's resize keeps about 4 copies
    need, what = _need(name, count, channels, image_size)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if need > free:
        raise DataError(
            f"{what}, more than the free space in {folder} ({human(free)}); free space there, "
            "set dataset.data_dir to another disk, or choose a smaller dataset.image_size"
        )


def chunk_images(channels: int, image_size: int, most: int) -> int:
    """Images per decoding chunk: `most`, fewer where their pixels exceed CHUNK_BYTES."""
    return max(1, min(most, CHUNK_BYTES // (channels * image_size * image_size)))
