"""One process per run directory: an flock'ed lock file naming its holder."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from mamlpp.errors import MamlppError


class RunLockedError(MamlppError):
    """Another live process is training this run."""


class RunLock:
    """Exclusive lock on `<run_dir>/.lock`, released by the OS if the holder dies.

    A lock file left by a dead process holds no flock, so it is simply taken over; its old
    holder is reported so the user knows a previous run died there.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None
        self.previous_holder = ""

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MamlppError(
                f"cannot lock the run directory: {self.path}: {exc.strerror or exc} "
                "(the run directory must be writable)"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by {holder}; wait for it or stop it"
            ) from None
        self.previous_holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
