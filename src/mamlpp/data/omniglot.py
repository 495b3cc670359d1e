"""Omniglot: where its two release zips are found or downloaded, its layout, listed as one more
ImageListing, and its protocols' class splits. Its facts (1623 characters of 20 drawings, the
protocols' split sizes, rotations) are in the leaf omniglot_facts.py, re-exported here.

Decoding, the cache and the data identity are the image folders' (mamlpp.data.image_cache):
greyscale, in class order background characters then evaluation characters, each sorted by
(alphabet, character folder), drawings sorted by file name. The listing's parts are the two sets
(zip or extracted folder each); its digest header is the one Omniglot has always had, so the data
identity of the same files is unchanged.

The zips shipped with this project's shared data are deterministic re-zips of the original PNGs,
so their md5 differs from the official release; local files are therefore accepted after a
structure check (1623 character folders x 20 PNGs) and md5 is only enforced for downloads from
the official URLs.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mamlpp.data import capacity, content
from mamlpp.data.files import download, md5_file
from mamlpp.data.image_cache import load_cached
from mamlpp.data.image_folder import ImageListing, Part, open_zip, part_fingerprint
from mamlpp.data.omniglot_facts import (
    IMAGES_PER_CLASS,
    NUM_CLASSES,
    PROTOCOL_SPLITS,
    ROTATIONS,
    split_class_counts,
    split_sizes,
)
from mamlpp.data.splits import RANDOM_ROTATION, SplitClasses, fixed_splits
from mamlpp.errors import ConfigError, DataError, first_line

__all__ = [
    "IMAGES_PER_CLASS",
    "NUM_CLASSES",
    "OMNIGLOT_MD5",
    "OMNIGLOT_URLS",
    "PROTOCOL_SPLITS",
    "ROTATIONS",
    "class_splits",
    "download",
    "load_omniglot",
    "md5_file",
    "split_class_counts",
    "split_sizes",
]

logger = logging.getLogger(__name__)

_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
OMNIGLOT_URLS: dict[str, str] = {
    "images_background": f"{_BASE_URL}/images_background.zip",
    "images_evaluation": f"{_BASE_URL}/images_evaluation.zip",
}
OMNIGLOT_MD5: dict[str, str] = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}

# Class order is background characters first, then evaluation characters.
_SETS: tuple[str, ...] = ("images_background", "images_evaluation")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FIX_HINT = "re-download it or set dataset.source"


# --------------------------------------------------------------------------- protocols


def class_splits(
    num_chars: int,
    sizes: tuple[int, int, int],
    split_seed: int,
    protocol: str,
    train_rotation: bool = True,
) -> dict[str, SplitClasses]:
    """Shuffle characters with `split_seed` and cut them into the protocol's train/val/test
    classes (see PROTOCOL_SPLITS)."""
    perm = np.random.default_rng(split_seed).permutation(num_chars)
    out = {}
    for name, split in fixed_splits(perm, list(sizes)).items():
        chars = split.chars
        if protocol == "maml":
            out[name] = SplitClasses(
                np.repeat(chars, ROTATIONS), np.tile(np.arange(ROTATIONS), len(chars))
            )
        else:
            rot = RANDOM_ROTATION if (name == "train" and train_rotation) else 0
            out[name] = SplitClasses(chars, np.full(len(chars), rot))
    return out


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """One of the two image sets: a zip file or an already-extracted folder."""

    name: str  # "images_background" or "images_evaluation"
    kind: str  # "zip" or "dir"
    path: Path  # resolved


def _find_local(directory: Path, name: str) -> _Source | None:
    """Prefer ``<dir>/<name>.zip``, else an extracted ``<dir>/<name>/`` folder."""
    zip_path = directory / f"{name}.zip"
    if zip_path.is_file():
        return _Source(name, "zip", zip_path.resolve())
    folder = directory / name
    if folder.is_dir():
        return _Source(name, "dir", folder.resolve())
    return None


def _is_url(source: str) -> bool:
    return bool(_URL_RE.match(source))


def _resolve_sources(data_dir: Path, source: str | Path | None) -> tuple[list[_Source], Path]:
    """Locate (downloading if needed) the background and evaluation sets, in class order, and
    the folder that holds them."""
    src = None if source is None or not str(source).strip() else str(source).strip()
    found: list[_Source] = []
    if src is not None and not _is_url(src):
        src_dir = Path(src).expanduser()
        if not src_dir.is_dir():
            raise DataError(
                f"omniglot: dataset.source={src} is not a directory; expected a directory "
                "holding images_background.zip and images_evaluation.zip (or the extracted "
                "folders) or an http(s) URL under which both zips live"
            )
        for name in _SETS:
            hit = _find_local(src_dir, name)
            if hit is None:
                raise DataError(
                    f"omniglot: dataset.source={src_dir} has neither {name}.zip nor an extracted "
                    f"{name}/ folder; both images_background and images_evaluation are required"
                )
            found.append(hit)
        return found, src_dir

    md5: str | None  # checked for the official URLs only
    for name in _SETS:
        hit = _find_local(data_dir, name)
        if hit is None:
            dest = data_dir / f"{name}.zip"
            if src is None:
                url, md5 = OMNIGLOT_URLS[name], OMNIGLOT_MD5[name]
                try:
                    download(url, dest, md5)
                except DataError as e:
                    raise DataError(
                        f"omniglot: {name}.zip not found in {data_dir}; {e}; put "
                        f"images_background.zip and images_evaluation.zip in {data_dir} or set "
                        "dataset.source=DIR_OR_URL"
                    ) from e
            else:
                url = f"{src.rstrip('/')}/{name}.zip"
                md5 = OMNIGLOT_MD5[name] if url == OMNIGLOT_URLS[name] else None
                try:
                    download(url, dest, md5)
                except DataError as e:
                    raise DataError(
                        f"omniglot: dataset.source={src}: {e}; fix dataset.source=DIR_OR_URL "
                        f"or put the zips in {data_dir}"
                    ) from e
            hit = _Source(name, "zip", dest.resolve())
        found.append(hit)
    return found, data_dir


# --------------------------------------------------------------------------- structure scan


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _class_parts(name: str, parts: list[str]) -> list[str]:
    """Drop the optional leading ``<set name>/`` so paths become ``Alphabet/character/...``."""
    return parts[1:] if parts and parts[0] == name else parts


def _scan(
    src: _Source, cache_dir: Path
) -> tuple[dict[tuple[str, str], list[str]], dict[str, tuple[int, int]]]:
    """Map (alphabet, character) -> member names (zip) or relative paths (dir), unsorted, and
    (for a zip) each member's CRC-32 and size from its directory.

    Directory entries only register (possibly empty) character folders; stray non-PNG files and
    hidden/__MACOSX entries are ignored; a PNG at an unexpected depth is a layout error. A zip's
    scan is remembered under its status in `cache_dir`, so a cache hit opens no zip.
    """
    if src.kind == "zip":
        stem = f"omniglot_listing_{content.source_key('omniglot', src.path)}"
        path = content.digest_cache_path(cache_dir, stem)
        found = content.remember_for_zip(
            src.path, path, {"set": src.name}, "listing", lambda: _scan_zip(src)
        )
        listed = {(a, c): members for a, c, members in found["classes"]}
        return listed, {m: (crc, size) for m, crc, size in found["crcs"]}
    classes: dict[tuple[str, str], list[str]] = {}
    for root, _dirs, files in os.walk(src.path):
        rel = Path(root).relative_to(src.path).parts
        _add(src, classes, "", list(rel))
        for fname in files:
            parts = [*rel, fname]
            _add(src, classes, "/".join(parts), parts)
    return classes, {}


def _scan_zip(src: _Source) -> dict[str, list]:
    """`_scan` of a zip, JSON-able: [alphabet, character, members] and [member, CRC, size]."""
    classes: dict[tuple[str, str], list[str]] = {}
    crcs = []
    with open_zip("omniglot", str(src.path)) as zf:
        infos = zf.infolist()
    for info in infos:
        parts = _class_parts(src.name, [p for p in info.filename.split("/") if p])
        if _add(src, classes, "" if info.is_dir() else info.filename, parts):
            crcs.append([info.filename, info.CRC, info.file_size])
    return {"classes": [[*key, members] for key, members in classes.items()], "crcs": crcs}


def _add(src: _Source, classes: dict, member: str, parts: list[str]) -> bool:
    """Register a character folder (`member` "") or a PNG; True when it is one of the images."""
    if not member:
        if len(parts) == 2 and not _is_hidden(parts):
            classes.setdefault((parts[0], parts[1]), [])
        return False
    if _is_hidden(parts) or not parts[-1].lower().endswith(".png"):
        return False
    if len(parts) != 3:
        layout = f"{src.name}/<Alphabet>/<characterNN>/<file>.png"
        raise DataError(
            f"omniglot: unexpected PNG {member!r} in {src.path}; expected layout {layout}"
        )
    classes.setdefault((parts[0], parts[1]), []).append(member)
    return True


# --------------------------------------------------------------------------- listing


@dataclass
class OmniglotListing(ImageListing):
    """Omniglot's characters: greyscale images in two parts (background, evaluation sets)."""

    sets: list[Part] = field(default_factory=list)

    def parts(self) -> list[Part]:
        return self.sets

    def digest_header(self) -> Any:
        return [self.name, [len(p.members) for p in self.sets]]

    def names_identity(self) -> str | None:
        return None  # Omniglot's identity hashed the contents from the start


def list_omniglot(
    sources: Sequence[_Source],
    root: Path,
    cache_dir: Path,
    expected_classes: int = NUM_CLASSES,
    expected_images: int = IMAGES_PER_CLASS,
) -> OmniglotListing:
    """Check the class and image counts of every source and fix the deterministic order."""
    classes: list[str] = []
    files: list[list[str]] = []
    sets: list[Part] = []
    for src in sources:
        found, crcs = _scan(src, cache_dir)
        members: list[str] = []
        for key in sorted(found):
            drawings = found[key]
            if len(drawings) != expected_images:
                raise DataError(
                    f"omniglot: character folder {src.name}/{key[0]}/{key[1]} in {src.path} has "
                    f"{len(drawings)} PNG images, expected exactly {expected_images}; {_FIX_HINT}"
                )
            classes.append(f"{src.name}/{key[0]}/{key[1]}")
            files.append(sorted(drawings, key=lambda m: m.rsplit("/", 1)[-1]))
            members += files[-1]
        sets.append(Part(src.kind, src.path, members, [crcs[m] for m in members] if crcs else None))
    if len(classes) != expected_classes:
        where = ", ".join(str(s.path) for s in sources)
        raise DataError(
            f"omniglot: found {len(classes)} character folders in {where}, expected exactly "
            f"{expected_classes} ({expected_images} PNGs each); {_FIX_HINT}"
        )
    fingerprint = {"root": str(root.resolve()), "sets": [part_fingerprint(p) for p in sets]}
    return OmniglotListing("omniglot", "parts", root, classes, files, None, fingerprint, 1, sets)


# --------------------------------------------------------------------------- public entry


def _load_omniglot(
    data_dir: str | Path,
    source: str | Path | None = None,
    image_size: int = 28,
    *,
    expected_classes: int = NUM_CLASSES,
    expected_images: int = IMAGES_PER_CLASS,
    workers: int | None = None,
) -> np.ndarray:
    """:func:`load_omniglot` with the structure counts and worker count exposed for tests."""
    return _load(data_dir, source, image_size, expected_classes, expected_images, workers)[0]


def _load(
    data_dir: str | Path,
    source: str | Path | None,
    image_size: int,
    expected_classes: int = NUM_CLASSES,
    expected_images: int = IMAGES_PER_CLASS,
    workers: int | None = None,
) -> tuple[np.ndarray, str]:
    """The images [classes, drawings, S, S] (in memory) and their data identity."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ConfigError(f"omniglot: image_size must be a positive int, got {image_size!r}")
    data_dir = Path(data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"omniglot: cannot create data_dir {data_dir} ({first_line(e)})") from e
    sources, root = _resolve_sources(data_dir, source)
    count = expected_classes * expected_images
    capacity.check_memory("omniglot", count, 1, image_size)  # held in memory, refused up front
    listing = list_omniglot(sources, root, data_dir / "cache", expected_classes, expected_images)
    cached = load_cached(listing, data_dir, image_size, workers)
    images = np.array(cached.pixels).reshape(
        expected_classes, expected_images, image_size, image_size
    )
    return images, cached.identity


def load_omniglot(
    data_dir: str | Path, source: str | Path | None = None, image_size: int = 28
) -> np.ndarray:
    """Return uint8 array [1623, 20, image_size, image_size], background=255 strokes=0.

    Why: every consumer (samplers, splits) indexes characters by a fixed global order, so the
    order is deterministic: background characters then evaluation characters, each sorted by
    (alphabet, character folder), images sorted by file name within a character. The PNGs' True
    (background) pixels become 255.

    ``source`` is a local directory with both zips (or the extracted ``images_background/`` and
    ``images_evaluation/`` folders; it is only read, never written) or a URL prefix under which
    both zips live (downloaded into ``data_dir``; zips already there are reused). With
    ``source=None`` the zips are looked for in ``data_dir`` and downloaded there from
    :data:`OMNIGLOT_URLS` (md5-checked) if missing. The decoded array is cached in
    ``<data_dir>/cache`` as the image folders' are.
    """
    return _load(data_dir, source, image_size)[0]


def load_omniglot_identified(
    data_dir: str | Path, source: str | Path | None = None, image_size: int = 28
) -> tuple[np.ndarray, str]:
    """:func:`load_omniglot` and the data identity of its images (mamlpp.data.content): a run
    never resumes on a modified copy of Omniglot."""
    return _load(data_dir, source, image_size)


if __name__ == "__main__":  # pragma: no cover - manual timing helper
    logging.basicConfig(level=logging.INFO)
    t0 = time.perf_counter()
    result = load_omniglot(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    print(result.shape, result.dtype, f"{time.perf_counter() - t0:.2f}s")
