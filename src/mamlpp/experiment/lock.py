"""Lock files that name their holder: one process per run directory (RunLock), one search per
Optuna study (optuna_sweeper.StudyLock)."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from mamlpp.errors import MamlppError
from mamlpp.layout import RunLayout


class RunLockedError(MamlppError):
    """Another live process is training this run."""


class HolderLock:
    """Exclusive, non-blocking flock on `path`, released by the OS if the holder dies.

    The file names its holder (pid and host), so a refusal can say who holds it; a file left by
    a dead process holds no flock and is simply taken over (`previous_holder` names who left
    it). Subclasses say how a busy lock or an unopenable file is reported.
    """

    open_flags = os.O_RDWR | os.O_CREAT

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.previous_holder = ""

    def busy_error(self, holder: str) -> MamlppError:
        """The one-line error when a live process holds the lock (`holder` may be empty)."""
        raise NotImplementedError

    def open_error(self, exc: OSError) -> MamlppError | None:
        """The one-line error when the lock file cannot be made; None re-raises `exc`."""
        return None

    def acquire(self) -> HolderLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, self.open_flags, 0o644)
        except OSError as exc:
            error = self.open_error(exc)
            if error is None:
                raise
            raise error from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            raise self.busy_error(holder) from None
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

    def __enter__(self) -> HolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLock(HolderLock):
    """`<run_dir>/.lock`: one process trains a run directory at a time."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(RunLayout(run_dir).lock)

    def busy_error(self, holder: str) -> MamlppError:
        return RunLockedError(
            f"run directory {self.path.parent} is in use by {holder or 'unknown process'}; "
            "wait for it or stop it"
        )

    def open_error(self, exc: OSError) -> MamlppError:
        return MamlppError(
            f"cannot lock the run directory: {self.path}: {exc.strerror or exc} "
            "(the run directory must be writable)"
        )
