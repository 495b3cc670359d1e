"""What the images *are*: CRC-32 and size of every image's bytes, cached by file status.

Why: a run's data identity (a run never resumes or reports on other data) and the decoded
cache's validity must change when pixels change, also when a file keeps its name and size (two
same-size images swapped between classes). Reading every byte on every run would cost seconds,
so each file's CRC is cached in `<data_dir>/cache/digests/` under its (size, mtime_ns, ctime_ns):
writing a file's bytes always sets its ctime, which no tool restores (cp -p and rsync -t restore
mtime only), so a rewritten file is read again. A zip member's CRC-32 is in the zip's directory,
and every read of the member checks it, so zips are not read at all (and their directory only
once per (size, mtime, ctime) of the zip).

Identities look like `v2-<content>-<names>`: <names> is the identity written before contents
were hashed (class names, file names and sizes), kept so that run directories and checkpoints of
that time still resume after the same check as then (see `comparable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mamlpp.errors import DataError, first_line
from mamlpp.files import atomic_write

logger = logging.getLogger(__name__)

VERSION = "v2"
_CACHE_FORMAT = 1


def file_crc(path: Path, chunk_size: int = 1 << 20) -> int:
    """CRC-32 of a file's bytes (as zip stores it), read in chunks."""
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            crc = zlib.crc32(block, crc)
    return crc


class DigestCache:
    """(CRC-32, size) of the files under `root`, remembered in `path` by (size, mtime, ctime).

    `path` None: nothing is remembered (every file is read). A cache that cannot be read is
    ignored, one that cannot be written is skipped with a warning: it only saves time.
    """

    def __init__(self, root: Path, path: Path | None) -> None:
        self.root = root
        self.path = path
        self._entries: dict[str, list[int]] = {}
        self._changed = False
        if path is not None:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                if doc.get("format") == _CACHE_FORMAT and doc.get("root") == str(root.resolve()):
                    self._entries = dict(doc["files"])
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                pass

    def crc(self, rel: str) -> tuple[int, int]:
        """(CRC-32, size) of `root/rel`: from the cache while its status is unchanged."""
        path = self.root / rel
        try:
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            entry = self._entries.get(rel)
            if not (isinstance(entry, list) and entry[:3] == stamp and len(entry) == 4):
                entry = [*stamp, file_crc(path)]
                self._entries[rel] = entry
                self._changed = True
        except OSError as e:
            raise DataError(f"cannot read {path} ({first_line(e)})") from e
        return entry[3], entry[0]

    def save(self) -> None:
        if self.path is None or not self._changed:
            return
        doc = {"format": _CACHE_FORMAT, "root": str(self.root.resolve()), "files": self._entries}
        text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda f: f.write(text))
            self._changed = False
        except OSError as e:
            logger.warning(
                "could not write the file digest cache %s (%s)", self.path, first_line(e)
            )


def cached_zip_digest(
    zip_path: Path, cache_path: Path | None, header: Any, compute: Callable[[], str]
) -> str:
    """`compute()` (the digest of `header`'s members of the zip), remembered in `cache_path` under
    the zip's (size, mtime, ctime) and `header`, so a re-run does not re-read its directory."""
    return remember_for_zip(zip_path, cache_path, {"header": digest(header, [])}, "digest", compute)


def remember_for_zip(
    zip_path: Path, cache_path: Path | None, key: dict[str, Any], field: str, compute: Callable
) -> Any:
    """`compute()` (JSON-able, derived from the zip), remembered as `field` in `cache_path` under
    the zip's (size, mtime, ctime) and `key`: a later call with the zip unchanged reads no zip."""
    st = zip_path.stat()
    key = {
        "format": _CACHE_FORMAT,
        "zip": str(zip_path.resolve()),
        "stamp": [st.st_size, st.st_mtime_ns, st.st_ctime_ns],
        **key,
    }
    if cache_path is not None:
        try:
            doc = json.loads(cache_path.read_text(encoding="utf-8"))
            fresh = isinstance(doc, dict) and all(doc.get(k) == v for k, v in key.items())
            if fresh and field in doc:
                return doc[field]
        except (OSError, ValueError):
            pass
    result = compute()
    if cache_path is not None:
        text = json.dumps({**key, field: result}).encode("utf-8")
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_path, text)
        except OSError as e:
            logger.warning("could not write the zip cache %s (%s)", cache_path, first_line(e))
    return result


def member_crcs(zip_infos: dict[str, Any], members: Sequence[str]) -> list[tuple[int, int]]:
    """(CRC-32, size) of zip `members` from their ZipInfo (name -> info)."""
    return [(zip_infos[m].CRC, zip_infos[m].file_size) for m in members]


def digest(header: Any, entries: Iterable[tuple[int, int]]) -> str:
    """16 hex digits of a JSON-able `header` and the (CRC, size) of every image, in order."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(json.dumps(header).encode())
    h.update("".join(f"{crc:08x}:{size}\n" for crc, size in entries).encode())
    return h.hexdigest()[:16]


def identity(content: str, names: str | None = None) -> str:
    """The data identity: `v2-<content>` plus `-<names>` where an older identity existed."""
    return f"{VERSION}-{content}" + (f"-{names}" if names else "")


def comparable(saved: Any, current: Any) -> Any:
    """`current` in the form of `saved`, so that the two can be compared for equality.

    A run directory or checkpoint written before contents were hashed holds the old identity (16
    hex digits of names and sizes): it is compared with that part of the current identity, as
    that version did, instead of refusing every resume.
    """
    if not (isinstance(saved, str) and isinstance(current, str)):
        return current
    if saved.startswith(f"{VERSION}-") or not current.startswith(f"{VERSION}-"):
        return current
    parts = current.split("-")
    return parts[2] if len(parts) == 3 else current


def digest_cache_path(cache_dir: Path, stem: str) -> Path:
    return cache_dir / "digests" / f"{stem}.json"


def source_key(name: str, root: Path | str) -> str:
    """10 hex digits naming a dataset source in cache file names."""
    text = f"{name}\0{os.fspath(root)}"
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:10]
