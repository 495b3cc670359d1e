"""Decode an image listing once and memory-map the cached array: the one decode/cache path of
every image dataset (image folders, Mini-ImageNet, Tiny-ImageNet, Omniglot).

The .npy is written atomically (mamlpp.files), then the manifest naming the source files, the
image size and the format: a crash or a bad image never leaves a half-written cache that looks
valid, and later runs memory-map it, so RAM holds one copy at most.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from mamlpp.data import capacity, content
from mamlpp.data.decode import decode_image
from mamlpp.data.files import (
    decode_workers,
    file_stat,
    load_cached_array,
    ordered_map,
    zip_for_chunk,
)
from mamlpp.data.image_folder import ImageListing, open_zip
from mamlpp.errors import DataError, first_line
from mamlpp.files import atomic_write

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 2  # 2: EXIF orientation, 16-bit scaling, content digest
_CHUNK = 500
_PARALLEL_MIN_IMAGES = 4000


def _decode_chunk(
    kind: str, root: str, members: Sequence[str], image_size: int, channels: int, name: str
) -> np.ndarray:
    """Decode `members` of one zip or folder to uint8 [n, C, S, S]; also runs in pool workers."""
    out = np.empty((len(members), channels, image_size, image_size), dtype=np.uint8)
    with contextlib.ExitStack() as stack:
        zf = None
        if kind == "zip":
            zf = stack.enter_context(zip_for_chunk(root, partial(open_zip, name)))
        for i, member in enumerate(members):
            where = f"{root}/{member}" if zf is None else f"{member} in {root}"
            try:
                data = (Path(root) / member).read_bytes() if zf is None else zf.read(member)
                out[i] = decode_image(data, image_size, channels, where)
            except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
                raise DataError(f"{name}: cannot read {where} ({first_line(e)})") from e
            except DataError as e:
                raise DataError(f"{name}: {e}") from e
    return out


def decode_chunks(
    listing: ImageListing, image_size: int, workers: int | None = None
) -> Iterator[np.ndarray]:
    """Decoded images [n, C, S, S] in listing order, a chunk at a time.

    JPEG/PNG decoding holds the GIL, so large listings use a process pool (`workers`, default one
    per core; chunks still yielded in order); small ones stay serial because a pool costs more
    than it saves.
    """
    parts = listing.parts()
    chunk = capacity.chunk_images(listing.channels, image_size, _CHUNK)
    tasks = [
        (p.kind, str(p.root), p.members[i : i + chunk], image_size, listing.channels, listing.name)
        for p in parts
        for i in range(0, len(p.members), chunk)
    ]
    if workers is None:
        workers = 1 if listing.num_images < _PARALLEL_MIN_IMAGES else decode_workers()
    return ordered_map(_decode_chunk, tasks, workers, listing.name)


def _write_npy(f: IO[bytes], shape: list[int], chunks: Iterator[np.ndarray]) -> None:
    """Stream uint8 chunks into a .npy file (header first), so only one chunk is in memory."""
    written = 0
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(f, header)
    for chunk in chunks:
        f.write(np.ascontiguousarray(chunk, dtype=np.uint8).tobytes())
        written += len(chunk)
    if written != shape[0]:  # pragma: no cover - a listing/decoder mismatch is a bug
        raise DataError(f"cache: wrote {written} images, expected {shape[0]}")


# --------------------------------------------------------------------------- cache


@dataclass
class CachedImages:
    """A decoded listing: read-only memory map [N, 3, S, S], per-class counts, and the data
    identity (ImageListing.identity) of the images it was decoded from."""

    pixels: np.ndarray
    counts: np.ndarray
    identity: str


def _cache_paths(data_dir: Path, listing: ImageListing, image_size: int) -> tuple[Path, Path]:
    key = content.source_key(listing.name, listing.fingerprint.get("root", listing.root))
    stem = f"{listing.name}_{image_size}_{key}"
    return data_dir / "cache" / f"{stem}.npy", data_dir / "cache" / f"{stem}.json"


def _expected_manifest(listing: ImageListing, image_size: int, identity: str) -> dict[str, Any]:
    return {
        "format_version": _FORMAT_VERSION,
        "dataset": listing.name,
        "image_size": image_size,
        "source": listing.fingerprint,
        "identity": identity,
        "classes": listing.classes,
        "counts": [len(f) for f in listing.files],
        "split_sizes": listing.split_sizes,
        "shape": [listing.num_images, listing.channels, image_size, image_size],
    }


def _write_cache(
    npy: Path, manifest_path: Path, expected: dict[str, Any], chunks: Iterator[np.ndarray]
) -> None:
    """The .npy, then the manifest naming it, each written atomically. A failure removes what
    this call wrote: a .npy without its manifest would only take up space."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(npy, lambda f: _write_npy(f, expected["shape"], chunks))
    manifest = {**expected, "array": file_stat(npy)}
    text = json.dumps(manifest, indent=1) + "\n"
    try:
        atomic_write(manifest_path, text.encode("utf-8"))
    except BaseException:
        with contextlib.suppress(OSError):
            npy.unlink()
        raise


def _read_cache(npy: Path, manifest_path: Path, expected: dict[str, Any]) -> CachedImages | None:
    pixels = load_cached_array(npy, manifest_path, expected, mmap=True)
    if pixels is None:
        return None
    return CachedImages(
        pixels, np.asarray(expected["counts"], dtype=np.int64), expected["identity"]
    )


def channel_stats(pixels: np.ndarray, rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixels/255 over `rows`, read in chunks (float64 sums)."""
    total = np.zeros(pixels.shape[1])
    total_sq = np.zeros(pixels.shape[1])
    rows = np.sort(rows)
    for i in range(0, len(rows), 2048):
        block = pixels[rows[i : i + 2048]].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.square(block).sum(axis=(0, 2, 3))
    n = len(rows) * pixels.shape[2] * pixels.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def load_cached(
    listing: ImageListing, data_dir: str | Path, image_size: int, workers: int | None = None
) -> CachedImages:
    """The decoded images of `listing` from the cache, decoding (with `workers` processes, see
    decode_chunks) and caching them on a miss."""
    data_dir = Path(data_dir).expanduser()
    npy, manifest_path = _cache_paths(data_dir, listing, image_size)
    expected = _expected_manifest(listing, image_size, listing.identity(npy.parent))
    cached = _read_cache(npy, manifest_path, expected)
    if cached is not None:
        logger.info("%s: loaded cached %s", listing.name, npy)  # where the data came from
        return cached
    capacity.check_disk(listing.name, listing.num_images, listing.channels, image_size, npy.parent)
    start = time.perf_counter()
    try:
        _write_cache(npy, manifest_path, expected, decode_chunks(listing, image_size, workers))
    except OSError as e:  # disk full, read-only, quota: nothing half-written is left behind
        raise DataError(
            f"{listing.name}: cannot write the decoded cache {npy} ({first_line(e)}); free space "
            "there or set dataset.data_dir to a writable folder with room"
        ) from e
    logger.info(
        "%s: decoded %d images in %.1fs into %s",
        listing.name,
        listing.num_images,
        time.perf_counter() - start,
        npy,
    )
    cached = _read_cache(npy, manifest_path, expected)
    if cached is None:  # pragma: no cover - only if the files changed under us
        raise DataError(f"{listing.name}: cache {npy} changed while it was written; run again")
    return cached
