"""Plumbing shared by the dataset loaders: downloads with md5, the cache reader, and the
decoders' resampling filter, worker count and ordered process pool.

Why: a cache or download that is interrupted must never leave a plausible-looking file behind, so
every write goes through mamlpp.files.atomic_write (a temp file renamed into place when complete).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from mamlpp.errors import DataError, first_line
from mamlpp.files import atomic_write

logger = logging.getLogger(__name__)

# Image.Resampling exists since Pillow 9.1; older versions only have the module-level alias.
LANCZOS = Image.Resampling.LANCZOS if hasattr(Image, "Resampling") else Image.LANCZOS  # type: ignore[attr-defined]
MAX_DECODE_WORKERS = 8


def decode_workers() -> int:
    """Processes for image decoding: one per usable core, capped (decoding holds the GIL)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DECODE_WORKERS, cores))


# Zips opened by the current pool worker, keyed by path. Opening parses the whole central
# directory (about 0.2 s for Omniglot's 20k-entry zip on a slow core), so a worker opens each zip
# once instead of once per chunk. None outside pool workers (set by _init_worker after fork/spawn),
# so no file handle is shared between processes or left open in the main one.
_worker_zips: dict[str, zipfile.ZipFile] | None = None


# The stop signals the training run handles (mamlpp.experiment.signals.HANDLED but SIGINT).
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)
_PR_SET_PDEATHSIG = 1


def _init_worker(parent: int) -> None:
    """A decode worker: dies with its parent and leaves stop signals to it.

    A forked worker inherits every file descriptor of the run, the run lock's among them, and
    the run's stop handler (which only records a signal). A worker that outlived a killed run
    would keep the run locked, so: stop signals get their default action (they end the
    worker), Ctrl-C is left to the parent (which stops the run cleanly), and the kernel kills
    the worker when its parent dies (PR_SET_PDEATHSIG on Linux; elsewhere a thread watches the
    parent).
    """
    global _worker_zips
    _worker_zips = {}
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


@contextlib.contextmanager
def zip_for_chunk(
    root: str, open_zip: Callable[[str], zipfile.ZipFile]
) -> Iterator[zipfile.ZipFile]:
    """The zip at `root` for one chunk: a pool worker's cached handle, else opened and closed."""
    if _worker_zips is None:
        with open_zip(root) as opened:
            yield opened
        return
    zf = _worker_zips.get(root)
    if zf is None:
        zf = _worker_zips[root] = open_zip(root)
    yield zf


def ordered_map(
    fn: Callable[..., Any], tasks: Sequence[tuple], workers: int, what: str
) -> Iterator[Any]:
    """`fn(*task)` for every task, yielded in task order.

    With `workers` > 1 the tasks run on a process pool (fork where available, which avoids
    re-importing the user's __main__). A pool that cannot start or breaks is logged, and the
    tasks not yet yielded run serially. An error (or the caller stopping early) cancels the
    tasks not yet started instead of waiting for them.
    """
    done = 0
    if workers > 1 and len(tasks) > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        try:
            ex = ProcessPoolExecutor(
                max_workers=min(workers, len(tasks)),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
            try:
                futures = [ex.submit(fn, *task) for task in tasks]
                for fut in futures:
                    yield fut.result()
                    done += 1
            except BaseException:
                ex.shutdown(wait=True, cancel_futures=True)
                raise
            ex.shutdown()
            return
        except (BrokenProcessPool, OSError) as e:
            logger.warning("%s: process pool unavailable (%s); continuing serially", what, e)
    for task in tasks[done:]:
        yield fn(*task)


def md5_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex md5 of a file, read in chunks so large zips do not sit in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically and optionally verify its md5.

    Streams into a hidden temp file next to ``dest`` and renames it only once complete (and
    verified), so an interrupted or corrupt download never leaves a plausible-looking file.
    Any failure raises a one-line :class:`DataError`.
    """
    dest = Path(dest).expanduser()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"download: cannot create directory {dest.parent} for {url} ({first_line(e)})"
        ) from e
    digest = hashlib.md5(usedforsecurity=False)

    def fetch(out: IO[bytes]) -> None:
        logger.info("downloading %s -> %s", url, dest)
        with urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        actual = digest.hexdigest()
        if md5 is not None and actual.lower() != md5.lower():
            raise DataError(
                f"download: md5 mismatch for {dest} from {url}: expected {md5}, got {actual}; "
                "the file was deleted"
            )

    try:
        atomic_write(dest, fetch)
    except DataError:
        raise
    except Exception as e:  # urllib raises URLError/HTTPError/OSError/ValueError/timeouts
        raise DataError(f"download: could not fetch {url} to {dest} ({first_line(e)})") from e
    return dest


def file_stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_cached_array(
    npy: Path, manifest_path: Path, expected: dict[str, Any], mmap: bool = False
) -> np.ndarray | None:
    """The cached uint8 array if its manifest matches `expected` key by key, else None.

    The manifest also records the .npy's size and mtime, so a .npy replaced by a racing writer
    (or by hand) never passes for the one the manifest describes. `mmap`: a read-only map.
    """
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    stale = [k for k, v in expected.items() if manifest.get(k) != v]
    if stale:
        logger.info("cache %s is stale (%s changed); rebuilding", manifest_path, stale[0])
        return None
    try:
        if manifest.get("array") != file_stat(npy):
            return None
        arr = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.dtype != np.uint8 or list(arr.shape) != expected["shape"]:
        return None
    return arr
