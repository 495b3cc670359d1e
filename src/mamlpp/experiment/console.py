"""What a run says, on the console and in its `train.log`.

Every message goes through the `mamlpp` logger (the data loaders' loggers are its children):
the console shows `[mamlpp] message` (with a job prefix in a multirun, so parallel jobs can be
told apart) above the progress bar, and while a run is open its `train.log` receives the same
lines with a time stamp, plus what only the file needs (the results table printed on stdout).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from mamlpp.errors import MamlppError
from mamlpp.layout import RunLayout

LOGGER = logging.getLogger("mamlpp")
_FILE_ONLY = "mamlpp_file_only"


class _ConsoleHandler(logging.Handler):
    """stderr through tqdm.write, so a log line never shares a line with the progress bar."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, _FILE_ONLY, False):
            return
        try:
            tqdm.write(f"[mamlpp{self.prefix}] {record.getMessage()}", file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # a closed stream must not end a run
            self.handleError(record)


def setup_console(prefix: str = "") -> None:
    """Install (or re-label) the console handler; `prefix` tells multirun jobs apart."""
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # Hydra's root handlers would print every line twice
    for handler in LOGGER.handlers:
        if isinstance(handler, _ConsoleHandler):
            handler.prefix = f" {prefix}" if prefix else ""
            return
    LOGGER.addHandler(_ConsoleHandler(f" {prefix}" if prefix else ""))


def speak_for_the_job(main: bool) -> None:
    """In a distributed run only rank 0 writes the console and train.log; the others keep
    warnings and errors."""
    for f in [f for f in LOGGER.filters if getattr(f, "_mamlpp_rank_filter", False)]:
        LOGGER.removeFilter(f)
    if not main:
        quiet = logging.Filter()
        quiet.filter = lambda record: record.levelno >= logging.WARNING  # type: ignore[method-assign]
        quiet._mamlpp_rank_filter = True  # type: ignore[attr-defined]
        LOGGER.addFilter(quiet)


def log(msg: str) -> None:
    if not LOGGER.handlers:
        setup_console()
    LOGGER.info(msg)


def log_file_only(text: str) -> None:
    """Into train.log only (e.g. the results table, which the console gets on stdout)."""
    LOGGER.info(text, extra={_FILE_ONLY: True})


class _RunLogHandler(logging.FileHandler):
    """train.log; a write that fails (disk full) is said once on the console, not as a
    traceback per line: the console keeps everything, and the run goes on."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if self.failed:
            return
        self.failed = True
        exc = sys.exc_info()[1]
        why = getattr(exc, "strerror", None) or exc
        LOGGER.warning(f"cannot write {self.baseFilename} ({why}): the console keeps the log")

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush of a full disk: said already, or said now
            self.handleError(logging.makeLogRecord({}))


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Append everything the run says to `<run_dir>/train.log` while the block runs; a
    train.log that cannot be opened stops the run in one line."""
    if not LOGGER.handlers:
        setup_console()
    path = RunLayout(run_dir).log
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = _RunLogHandler(path, encoding="utf-8")
    except OSError as exc:
        raise MamlppError(f"cannot write {path}: {exc.strerror or exc}") from exc
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    LOGGER.addHandler(handler)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        handler.close()
