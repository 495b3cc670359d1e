"""The layout of a run directory: every file and folder name a run writes, in one place.

    <run>/config.yaml  metrics.csv  results.json  done  .lock  train.log
    <run>/checkpoints/latest.pt  previous.pt  epoch_NNNN.pt   (top-k members, snapshots)
    <run>/eval/<name>/results.json                            (mamlpp-eval)
    <run>/tb/  scalars.csv  trackers.json  wandb/             (trackers; <runs>/mlflow/ beside)

Files are replaced through temporary names beside them: `.NAME.tmpPID.HEX` (mamlpp.files'
atomic write; `.NAME.tmpPID` and `.NAME.new` from older versions), `.latest.pt.new` and
`.previous.pt.link` (the checkpoint rotation); a killed process may leave those, and only those
are cleaned up. Near a leaf (no torch; of mamlpp only the standard-library mamlpp.files):
trackers, the runtime, the front-ends and reports all ask it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mamlpp.files import TEMP_SUFFIX

CONFIG = "config.yaml"
METRICS = "metrics.csv"
RESULTS = "results.json"
DONE = "done"
LOCK = ".lock"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
LATEST = "latest.pt"
PREVIOUS = "previous.pt"
NEW_LATEST = f".{LATEST}.new"
PREVIOUS_LINK = f".{PREVIOUS}.link"
EVAL = "eval"
HYDRA_RECORD = ".hydra"
HYDRA_FILES = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})
# Trackers: the defaults of logger.tensorboard.dir / logger.csv.file, their run ids, and the
# shared MLflow store beside the runs.
TENSORBOARD = "tb"
SCALARS = "scalars.csv"
TRACKER_IDS = "trackers.json"
MLFLOW = "mlflow"
WANDB = "wandb"
# What marks a folder as a run's (every run takes the lock first).
MARKERS = (LOCK, CHECKPOINTS, DONE)
# Files of the run directory written through a temporary name.
RUN_FILES = (CONFIG, RESULTS, DONE, METRICS, TRACKER_IDS, SCALARS)

_MEMBER = re.compile(r"epoch_(\d+)\.pt")
_RUN_TEMP = re.compile(rf"\.({'|'.join(map(re.escape, RUN_FILES))})(?:{TEMP_SUFFIX}|\.new)")
_CKPT_TEMP = re.compile(
    rf"\.({re.escape(LATEST)}|{re.escape(NEW_LATEST)}|epoch_\d{{4,}}\.pt){TEMP_SUFFIX}"
    rf"|{re.escape(NEW_LATEST)}|{re.escape(PREVIOUS_LINK)}"
)


def member_name(epoch: int) -> str:
    """The file name of the top-k member (or snapshot) of `epoch`."""
    return f"epoch_{epoch:04d}.pt"


def member_epoch(name: str) -> int | None:
    """The epoch a member's file name says, None for any other name."""
    match = _MEMBER.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def done(self) -> Path:
        return self.root / DONE

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def log(self) -> Path:
        return self.root / LOG

    @property
    def tracker_ids(self) -> Path:
        return self.root / TRACKER_IDS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST

    @property
    def previous(self) -> Path:
        return self.checkpoints / PREVIOUS

    @property
    def new_latest(self) -> Path:
        return self.checkpoints / NEW_LATEST

    @property
    def previous_link(self) -> Path:
        return self.checkpoints / PREVIOUS_LINK

    def member(self, epoch: int) -> Path:
        return self.checkpoints / member_name(epoch)

    def members(self) -> list[int]:
        """The epochs whose member files exist, ascending."""
        if not self.checkpoints.is_dir():
            return []
        found = (member_epoch(p.name) for p in self.checkpoints.iterdir())
        return sorted(e for e in found if e is not None)

    @property
    def eval_root(self) -> Path:
        return self.root / EVAL

    def eval_dir(self, name: str) -> Path:
        return self.eval_root / name

    def temp_files(self) -> list[Path]:
        """The temporaries a killed process may have left (only names mamlpp writes)."""
        found = []
        for directory, pattern in ((self.root, _RUN_TEMP), (self.checkpoints, _CKPT_TEMP)):
            if directory.is_dir():
                found += [p for p in directory.iterdir() if pattern.fullmatch(p.name)]
        return sorted(p for p in found if p.is_file())

    @staticmethod
    def of_checkpoint(path: Path) -> RunLayout | None:
        """The run a checkpoint file lies in (`<run>/checkpoints/x.pt`), None for a lone file."""
        parent = Path(path).parent
        return RunLayout(parent.parent) if parent.name == CHECKPOINTS else None

    @staticmethod
    def is_eval_results(path: Path) -> bool:
        """Whether a results.json is mamlpp-eval's (`<run>/eval/<name>/results.json`)."""
        return Path(path).parent.parent.name == EVAL
