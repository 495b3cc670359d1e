"""What may be a run directory, which leftovers mamlpp removes from it, and what a failed
new run leaves behind (nothing).

A run directory is new (absent, empty, or holding only Hydra's record of a command, `.hydra/`,
and a `train.log`) or mamlpp's own (it holds `.lock`, which every run takes first, `checkpoints/` or
`done`). Any other folder is refused: mamlpp writes, replaces and cleans files there. Clean-up
touches only the exact names mamlpp writes; a new run that fails before its first checkpoint
removes what it created, so a typo leaves no folder behind.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from mamlpp.errors import MamlppError
from mamlpp.layout import HYDRA_FILES, HYDRA_RECORD, LOG, MARKERS, RunLayout


class RunDirError(MamlppError):
    """A path that cannot be, or must not become, a run directory."""


def is_new(run_dir: Path) -> bool:
    """True when `run_dir` holds nothing a run wrote: absent, empty, or only Hydra's record.

    Raises RunDirError for a file, a folder that is not a run directory, or a run directory
    whose `checkpoints` is a file."""
    if not run_dir.exists():
        return True
    if not run_dir.is_dir():
        raise RunDirError(
            f"run directory {run_dir} is a file, not a folder: give a new folder as "
            "hydra.run.dir (or move the file)"
        )
    try:
        names = sorted(p.name for p in run_dir.iterdir())
    except OSError as exc:
        raise RunDirError(f"cannot read run directory {run_dir}: {exc.strerror or exc}") from exc
    ckpt = RunLayout(run_dir).checkpoints
    if ckpt.exists() and not ckpt.is_dir():
        raise RunDirError(
            f"{ckpt} is a file, but mamlpp keeps its checkpoints in that folder: move the file"
        )
    if any(name in MARKERS for name in names):
        return False
    foreign = [
        n
        for n in names
        if not (n == LOG and _is_run_log(run_dir / n))
        and not (n == HYDRA_RECORD and _only_hydra(run_dir / n))
    ]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        shown = ", ".join(foreign[:3]) + more
        raise RunDirError(
            f"{run_dir} is not a mamlpp run directory (it holds {shown}, but no "
            f"{', '.join(MARKERS)}); mamlpp writes and cleans files in its run directory: give a "
            "new or empty folder as hydra.run.dir"
        )
    return True


def _is_run_log(path: Path) -> bool:
    """A train.log that mamlpp (or Hydra's logging of older versions: empty) wrote."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(512)
    return not head or b"] run directory: " in head.split(b"\n", 1)[0]


def _only_hydra(path: Path) -> bool:
    return path.is_dir() and {p.name for p in path.iterdir()} <= HYDRA_FILES


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporaries a killed process left (only names mamlpp writes).

    Only call this while holding the run lock: then no live writer can own them."""
    removed = RunLayout(run_dir).temp_files()
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run wrote anything worth keeping: a checkpoint or results."""
    run = RunLayout(run_dir)
    if run.checkpoints.is_dir() and any(run.checkpoints.iterdir()):
        return True
    return run.results.exists() or run.done.exists()


def require_checkpoint(run_dir: Path) -> None:
    """run.resume=must: refuse at once (before any data is loaded) when there is nothing to
    resume; unreadable checkpoints are reported and moved aside by the resume itself."""
    run = RunLayout(run_dir)
    ckpt = run.checkpoints
    if not (run.latest.exists() or run.previous.exists()):
        raise RunDirError(
            f"run.resume=must but {ckpt} holds no checkpoint: there is no run to resume there "
            "(check the overrides, or hydra.run.dir)"
        )


def discard_new_run(run_dir: Path, remove_dir: bool, stop_at: Path | None = None) -> None:
    """Remove what a new run created in `run_dir` before it failed without a checkpoint.

    Everything in it is this command's (it was new), so its contents go; the folder itself
    goes too when `remove_dir` (it did not exist before), and then so do the empty parents
    that were made for it, up to (not including) `stop_at`."""
    if not run_dir.is_dir() or has_checkpoint(run_dir):
        return
    for path in run_dir.iterdir():
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    if not remove_dir:
        return
    stop = stop_at.resolve() if stop_at is not None else None
    folder = run_dir.resolve()
    while folder != stop and folder != folder.parent:
        try:
            folder.rmdir()  # only ever an empty folder
        except OSError:
            return
        if stop is None or stop not in folder.parents:
            return
        folder = folder.parent
