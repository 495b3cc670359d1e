"""Omniglot loader: find or download the two release zips, decode every PNG, cache the result.

Why this shape: the decoded array for a given ``image_size`` is small (about 25 MB at 28x28) and
costs several seconds of PNG decoding to build, so it is built once, straight from the zips (no
extraction clutter), and cached as ``<data_dir>/cache/omniglot_<size>.npy`` next to a JSON
manifest that records which source files it came from. A later load whose sources are unchanged
is a plain ``np.load``.

The zips shipped with this project's shared data are deterministic re-zips of the original PNGs,
so their md5 differs from the official release; local files are therefore accepted after a
structure check (1623 character folders x 20 PNGs) and md5 is only enforced for downloads from
the official URLs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mamlpp.data import capacity, content
from mamlpp.data.decode import decode_image
from mamlpp.data.files import atomic_write as _atomic_write
from mamlpp.data.files import (
    decode_workers,
    download,
    load_cached_array,
    md5_file,
    ordered_map,
    zip_for_chunk,
)
from mamlpp.data.files import file_stat as _file_stat
from mamlpp.data.files import one_line as _one_line
from mamlpp.data.omniglot_facts import IMAGES_PER_CLASS, NUM_CLASSES
from mamlpp.errors import ConfigError, DataError

__all__ = [
    "IMAGES_PER_CLASS",
    "NUM_CLASSES",
    "OMNIGLOT_MD5",
    "OMNIGLOT_URLS",
    "download",
    "load_omniglot",
    "md5_file",
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
_FORMAT_VERSION = 2  # 2: the manifest records the content digest
_CHUNK = 1000  # images per pool task: small enough to balance load, big enough to amortise IPC
_PARALLEL_MIN_IMAGES = 4000  # below this a process pool costs more than it saves
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FIX_HINT = "re-download it or set dataset.source"


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


def _resolve_sources(data_dir: Path, source: str | Path | None) -> list[_Source]:
    """Locate (downloading if needed) the background and evaluation sets, in class order."""
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
        return found

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
    return found


def _fingerprint(src: _Source) -> dict[str, Any]:
    """Cheap identity of a source for the cache manifest (path, size, mtime, ctime).

    The ctime: writing a file's bytes always sets it, and no copy tool restores it (cp -p and
    rsync -t restore the mtime), so rewritten pixels never pass for the cached ones.
    """
    if src.kind == "zip":
        st = src.path.stat()
        return {
            "name": src.name,
            "kind": "zip",
            "path": str(src.path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
        }
    # A folder's own times miss edits deeper down: sum sizes and take the newest times.
    st = src.path.stat()
    size, newest, changed, count = 0, st.st_mtime_ns, st.st_ctime_ns, 0
    for root, _dirs, files in os.walk(src.path):
        st = os.stat(root)
        newest, changed = max(newest, st.st_mtime_ns), max(changed, st.st_ctime_ns)
        for fname in files:
            st = os.stat(os.path.join(root, fname))
            size += st.st_size
            newest, changed = max(newest, st.st_mtime_ns), max(changed, st.st_ctime_ns)
            count += 1
    return {
        "name": src.name,
        "kind": "dir",
        "path": str(src.path),
        "size": size,
        "mtime_ns": newest,
        "ctime_ns": changed,
        "files": count,
    }


def _content(plans: Sequence[_Plan]) -> str:
    """Content digest of the planned images in order (CRC-32 and size of each PNG's bytes),
    the same for the zips and their extracted folders (see mamlpp.data.content)."""
    entries: list[tuple[int, int]] = []
    for plan in plans:
        src = plan.source
        if src.kind == "zip":
            with _open_zip(str(src.path)) as zf:
                infos = {i.filename: i for i in zf.infolist()}
            entries += content.member_crcs(infos, plan.members)
        else:
            cache = content.DigestCache(src.path, None)
            try:
                entries += [cache.crc(m) for m in plan.members]
            except DataError as e:
                raise DataError(f"omniglot: {e}; {_FIX_HINT}") from e
    return content.digest(["omniglot", [len(p.members) for p in plans]], entries)


# --------------------------------------------------------------------------- structure scan


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _class_parts(name: str, parts: list[str]) -> list[str]:
    """Drop the optional leading ``<set name>/`` so paths become ``Alphabet/character/...``."""
    return parts[1:] if parts and parts[0] == name else parts


def _scan(src: _Source) -> dict[tuple[str, str], list[str]]:
    """Map (alphabet, character) -> member names (zip) or relative paths (dir), unsorted.

    Directory entries only register (possibly empty) character folders; stray non-PNG files and
    hidden/__MACOSX entries are ignored; a PNG at an unexpected depth is a layout error.
    """
    classes: dict[tuple[str, str], list[str]] = {}
    layout = f"{src.name}/<Alphabet>/<characterNN>/<file>.png"

    def add_dir(parts: list[str]) -> None:
        if len(parts) == 2 and not _is_hidden(parts):
            classes.setdefault((parts[0], parts[1]), [])

    def add_file(member: str, parts: list[str]) -> None:
        if _is_hidden(parts) or not parts[-1].lower().endswith(".png"):
            return
        if len(parts) != 3:
            raise DataError(
                f"omniglot: unexpected PNG {member!r} in {src.path}; expected layout {layout}"
            )
        classes.setdefault((parts[0], parts[1]), []).append(member)

    if src.kind == "zip":
        with _open_zip(str(src.path)) as zf:
            infos = zf.infolist()
        for info in infos:
            parts = _class_parts(src.name, [p for p in info.filename.split("/") if p])
            if info.is_dir():
                add_dir(parts)
            else:
                add_file(info.filename, parts)
    else:
        for root, _dirs, files in os.walk(src.path):
            rel = Path(root).relative_to(src.path).parts
            add_dir(list(rel))
            for fname in files:
                parts = [*rel, fname]
                add_file("/".join(parts), parts)
    return classes


@dataclass(frozen=True)
class _Plan:
    """Decode plan: per source, its members in final (class, image) order."""

    source: _Source
    members: list[str]


def _check_structure(
    sources: Sequence[_Source], expected_classes: int, expected_images: int
) -> list[_Plan]:
    """Verify class/image counts across all sources and fix the deterministic order."""
    plans: list[_Plan] = []
    total = 0
    for src in sources:
        classes = _scan(src)
        members: list[str] = []
        for key in sorted(classes):
            files = classes[key]
            if len(files) != expected_images:
                raise DataError(
                    f"omniglot: character folder {src.name}/{key[0]}/{key[1]} in {src.path} has "
                    f"{len(files)} PNG images, expected exactly {expected_images}; {_FIX_HINT}"
                )
            members.extend(sorted(files, key=lambda m: m.rsplit("/", 1)[-1]))
        total += len(classes)
        plans.append(_Plan(src, members))
    if total != expected_classes:
        where = ", ".join(str(s.path) for s in sources)
        raise DataError(
            f"omniglot: found {total} character folders in {where}, expected exactly "
            f"{expected_classes} ({expected_images} PNGs each); {_FIX_HINT}"
        )
    return plans


# --------------------------------------------------------------------------- decoding


def _decode_png(data: bytes, image_size: int, where: str) -> np.ndarray:
    try:
        return decode_image(data, image_size, 1, where)[0]
    except DataError as e:
        raise DataError(f"omniglot: {e}; {_FIX_HINT}") from e


def _open_zip(root: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DataError(
            f"omniglot: {root} is not a readable zip file ({_one_line(e)}); {_FIX_HINT}"
        ) from e


def _decode_chunk(kind: str, root: str, members: Sequence[str], image_size: int) -> np.ndarray:
    """Decode ``members`` of one source to uint8 [n, size, size]; also runs in pool workers."""
    out = np.empty((len(members), image_size, image_size), dtype=np.uint8)
    if kind == "dir":
        for i, member in enumerate(members):
            path = os.path.join(root, *member.split("/"))
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise DataError(f"omniglot: cannot read {path} ({_one_line(e)})") from e
            out[i] = _decode_png(data, image_size, path)
        return out
    with zip_for_chunk(root, _open_zip) as zf:
        for i, member in enumerate(members):
            try:
                data = zf.read(member)
            except Exception as e:  # bad CRC, truncated data, zlib errors
                raise DataError(
                    f"omniglot: cannot read member {member!r} of {root} ({_one_line(e)}); "
                    f"{_FIX_HINT}"
                ) from e
            out[i] = _decode_png(data, image_size, f"member {member!r} of {root}")
    return out


def _decode_all(plans: Sequence[_Plan], image_size: int, workers: int | None) -> np.ndarray:
    """Decode every planned image in order, serially or with a process pool.

    PNG decoding holds the GIL, so threads do not help (measured: no gain). Measured on the
    2-core dev machine, all 32,460 images: serial 11.5-12.2 s, 2-process pool 5.8-6.1 s, so a pool
    with one worker per usable core (capped) is used; small jobs stay serial (pool start-up costs
    more than it saves). Falls back to serial decoding if a pool cannot be started.
    """
    total = sum(len(p.members) for p in plans)
    n_workers = decode_workers() if workers is None else max(1, workers)
    if n_workers <= 1 or total < _PARALLEL_MIN_IMAGES:
        n_workers, chunk = 1, total  # serial: one task per source, so each zip opens once
    else:
        chunk = _CHUNK
    tasks = [
        (p.source.kind, str(p.source.path), p.members[i : i + chunk], image_size)
        for p in plans
        for i in range(0, len(p.members), max(chunk, 1))
    ]
    out = np.empty((total, image_size, image_size), dtype=np.uint8)
    pos = 0
    for decoded in ordered_map(_decode_chunk, tasks, n_workers, "omniglot"):
        out[pos : pos + len(decoded)] = decoded
        pos += len(decoded)
    return out


# --------------------------------------------------------------------------- cache


def _cache_paths(data_dir: Path, image_size: int) -> tuple[Path, Path]:
    cache_dir = data_dir / "cache"
    return cache_dir / f"omniglot_{image_size}.npy", cache_dir / f"omniglot_{image_size}.json"


def _write_cache(npy: Path, manifest_path: Path, arr: np.ndarray, meta: dict[str, Any]) -> None:
    """Write the .npy first, then the manifest naming it, so the pair is never half-written."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(npy, lambda f: np.save(f, arr, allow_pickle=False))
    manifest = {**meta, "array": _file_stat(npy)}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    try:
        _atomic_write(manifest_path, lambda f: f.write(text.encode("utf-8")))
    except BaseException:  # a .npy without its manifest would only take up space
        npy.unlink(missing_ok=True)
        raise


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
    """The images and their content digest (recorded in the cache manifest)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ConfigError(f"omniglot: image_size must be a positive int, got {image_size!r}")
    data_dir = Path(data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"omniglot: cannot create data_dir {data_dir} ({_one_line(e)})") from e

    sources = _resolve_sources(data_dir, source)
    meta: dict[str, Any] = {
        "format_version": _FORMAT_VERSION,
        "image_size": image_size,
        "shape": [expected_classes, expected_images, image_size, image_size],
        "sources": [_fingerprint(s) for s in sources],
    }
    npy, manifest_path = _cache_paths(data_dir, image_size)
    cached = load_cached_array(npy, manifest_path, meta)
    digest = _manifest_content(manifest_path) if cached is not None else None
    if cached is not None and digest is not None:
        logger.info("omniglot: loaded cached %s", npy)
        return cached, digest

    capacity.check_memory("omniglot", expected_classes * expected_images, 1, image_size)
    start = time.perf_counter()
    plans = _check_structure(sources, expected_classes, expected_images)
    digest = _content(plans)
    flat = _decode_all(plans, image_size, workers)
    arr = flat.reshape(expected_classes, expected_images, image_size, image_size)
    logger.info("omniglot: decoded %d images in %.1fs", len(flat), time.perf_counter() - start)
    if [_fingerprint(s) for s in sources] != meta["sources"]:
        # A source changed while we decoded it: return what we read, but do not cache it under
        # a manifest that might describe different bytes.
        logger.warning("omniglot: sources changed during decoding; not writing the cache")
        return arr, digest
    try:
        _write_cache(npy, manifest_path, arr, {**meta, "content": digest})
    except OSError as e:  # still usable without a cache; just slower next time
        logger.warning("omniglot: could not write cache %s (%s)", npy, _one_line(e))
    return arr, digest


def _manifest_content(manifest_path: Path) -> str | None:
    try:
        digest = json.loads(manifest_path.read_text(encoding="utf-8")).get("content")
    except (OSError, ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) else None


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
    ``<data_dir>/cache``; see the module docstring.
    """
    return _load(data_dir, source, image_size)[0]


def load_omniglot_identified(
    data_dir: str | Path, source: str | Path | None = None, image_size: int = 28
) -> tuple[np.ndarray, str]:
    """:func:`load_omniglot` and the data identity of its images (mamlpp.data.content): a run
    never resumes on a modified copy of Omniglot."""
    images, digest = _load(data_dir, source, image_size)
    return images, content.identity(digest)


if __name__ == "__main__":  # pragma: no cover - manual timing helper
    logging.basicConfig(level=logging.INFO)
    t0 = time.perf_counter()
    result = load_omniglot(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    print(result.shape, result.dtype, f"{time.perf_counter() - t0:.2f}s")
