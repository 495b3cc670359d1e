"""The one atomic file write: every file mamlpp replaces (caches, checkpoints, run files, tracker
ids, report manifests) is written here.

Why one: a reader (a resumed run, a second process sharing a cache, a report) must never see a
half-written file, also when the writer is killed or the disk fills up. So the bytes go to a
hidden temp file beside the target (same filesystem, so the rename is atomic), are fsynced, and
the temp file is renamed over the target; the folder is fsynced so that the rename survives a
crash. Standard library only, so that every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

# `.NAME.tmpPID.HEX`: the pid says who wrote it, the random part keeps two hosts that share a
# folder (and so may share a pid) apart. `.NAME.tmpPID` is the name older versions wrote.
TEMP_SUFFIX = r"\.tmp\d+(?:\.[0-9a-f]{8})?"


def create_temp(final: Path) -> tuple[int, Path]:
    """Create (O_EXCL) a hidden temp file beside `final`; return its descriptor and path.

    Unlike tempfile.mkstemp (mode 0600) the file gets the usual umask-based permissions, so a
    shared cache stays readable by other users.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = final.parent / f".{final.name}.tmp{os.getpid()}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temp file next to {final}")


def atomic_write(path: Path, content: bytes | Callable[[IO[bytes]], object]) -> None:
    """Replace `path` by `content` (bytes, or a function that writes to the open file) so that
    readers see the old file or the whole new one, never a part.

    Any failure (disk full, read-only, a folder in the way, an error in `content`) removes the
    temp file and re-raises; `path` keeps its old content.
    """
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform can fsync a folder
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make renames inside the folder `path` durable."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
