"""The checkpoints of one run, in one place: the training state (latest.pt, with previous.pt as
the fallback for a corrupt file), the top-k member files and which of them are kept, the
restore of a resumed run, and rank 0's state shared with the other processes of a job.

A kill at any instant leaves a complete latest.pt: the new state is written under a temporary
name first and the old one hard-linked to previous.pt before the rename. A member file goes
only once neither latest.pt nor previous.pt lists it, so whichever of the two a resume loads
finds its top-k members.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from mamlpp.config import Config
from mamlpp.errors import MamlppError
from mamlpp.experiment import checksum
from mamlpp.experiment.checkpoints import (
    CheckpointError,
    WriteError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mamlpp.experiment.distributed import SINGLE, Distributed
from mamlpp.experiment.learner_port import LearnerPort
from mamlpp.experiment.members import load_learner_state
from mamlpp.experiment.run_state import TrainingProgress, check_drift, move_aside, run_identity
from mamlpp.files import fsync_dir
from mamlpp.layout import LATEST, PREVIOUS, RunLayout

FORMAT_VERSION = 1


class CheckpointStore:
    """Saves, restores and shares the training state of `run`; keeps the top-k member files.

    Only rank 0 reads and writes files; `share` hands its state to the other ranks."""

    def __init__(
        self,
        run: RunLayout,
        learner: LearnerPort,
        cfg: Config,
        data_identity: str | None = None,
        dist: Distributed = SINGLE,
        say: Callable[[str], None] = print,
    ) -> None:
        self.run, self.learner, self.cfg = run, learner, cfg
        self.data_identity, self.dist, self.say = data_identity, dist, say
        # The top-k epochs listed by (previous.pt, latest.pt): their member files must stay.
        self.listed: tuple[set[int], set[int]] = (set(), set())

    # ------------------------------------------------------------------ restore
    def restore(self) -> TrainingProgress:
        """The progress of the newest valid checkpoint (learner, optimizer and RNG restored),
        or a fresh one; run.resume=never moves old checkpoints aside first."""
        mode, ckpt = self.cfg.run.resume, self.run.checkpoints
        ckpt.mkdir(parents=True, exist_ok=True)
        if mode == "never":
            if any(ckpt.iterdir()):
                aside = move_aside(ckpt, "old")
                self.say(f"run.resume=never: moved the existing checkpoints to {aside.name}")
                ckpt.mkdir()
            return TrainingProgress()
        found = self._load_latest_valid()
        if found is None:
            if mode == "must":
                raise MamlppError(f"run.resume=must but {ckpt} holds no valid checkpoint")
            if any(ckpt.glob("*.corrupt-*")):
                self.say("no valid checkpoint left: starting from scratch (run.resume=auto)")
            return TrainingProgress()
        state, path = found
        check_drift(state["experiment"], self.cfg, self.data_identity)
        load_learner_state(self.learner.model, state["learner"], path)
        self.learner.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        progress = TrainingProgress(**state["progress"])
        self.listed = (progress.kept_epochs(), progress.kept_epochs())
        unsealed = "" if checksum.KEY in state else " (an older checkpoint: no checksum)"
        self.say(f"resumed from {path} at iteration {progress.next_iteration}{unsealed}")
        return progress

    def share(self, progress: TrainingProgress) -> TrainingProgress:
        """Rank 0's model, optimizer and progress on every rank (it alone reads checkpoints)."""
        if not self.dist.enabled:
            return progress
        learner, optimizer, shared = self.dist.broadcast(
            (self.learner.state_dict(), self.learner.optimizer.state_dict(), progress.to_dict())
        )
        if not self.dist.is_main:
            self.learner.load_state_dict(learner)
            self.learner.optimizer.load_state_dict(optimizer)
            progress = TrainingProgress(**shared)
            self.listed = (progress.kept_epochs(), progress.kept_epochs())
        return progress

    def _load_latest_valid(self) -> tuple[dict, Any] | None:
        """Newest checkpoint that loads, with its path; None if there is none.

        An unusable one (truncated, garbage, unknown format, or content that does not match
        its checksum) is reported in one line and moved aside as `<name>.corrupt-<time>`
        (never deleted), and the previous one is tried. One that cannot be read at all
        (permissions) stops the run in one line: it may be fine."""
        for name, path in ((LATEST, self.run.latest), (PREVIOUS, self.run.previous)):
            if not path.exists():
                continue
            try:
                return _training_state(path), path
            except OSError as exc:
                raise MamlppError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
            except CheckpointError as exc:
                aside = move_aside(path, "corrupt")
                then = "trying previous.pt" if name == LATEST else "no older checkpoint to try"
                self.say(f"{exc}; moved it to {aside.name}, {then}")
        return None

    # ------------------------------------------------------------------ save
    def save(self, progress: TrainingProgress) -> None:
        """Write latest.pt (the old one becomes previous.pt); then delete the member files
        neither of them lists, except keep_every_epochs snapshots. Rank 0 only."""
        if not self.dist.is_main:
            return
        self._write_latest(
            {
                "format": FORMAT_VERSION,
                "learner": self.learner.state_dict(),
                "optimizer": self.learner.optimizer.state_dict(),
                "progress": progress.to_dict(),
                "rng": rng_state(),
                "experiment": run_identity(self.cfg, self.data_identity),
                "config": OmegaConf.to_container(OmegaConf.structured(self.cfg), resolve=True),
                "saved_at": time.time(),
            }
        )
        old_previous, old_latest = self.listed
        current = progress.kept_epochs()
        self.listed = (old_latest, current)  # what previous.pt and latest.pt now list
        for old in old_previous - old_latest - current:
            if not self.is_snapshot(old):
                self.run.member(old).unlink(missing_ok=True)

    def _write_latest(self, state: dict[str, Any]) -> None:
        """latest.pt atomically, the one before kept as previous.pt (hard link, then rename):
        at every instant latest.pt is a complete checkpoint."""
        latest, tmp = self.run.latest, self.run.new_latest
        save_checkpoint(tmp, state)  # a full disk stops here, before latest.pt is touched
        try:
            if latest.exists():
                link = self.run.previous_link
                link.unlink(missing_ok=True)
                try:
                    os.link(latest, link)
                    link.replace(self.run.previous)
                except OSError:  # no hard links here: a short window without latest.pt
                    latest.replace(self.run.previous)
            tmp.replace(latest)
            fsync_dir(self.run.checkpoints)
        except OSError as exc:
            raise WriteError(f"cannot write {latest}: {exc.strerror or exc}") from exc

    def is_snapshot(self, epoch: int) -> bool:
        """Whether run.keep_every_epochs keeps `epoch`'s member file for good."""
        every = self.cfg.run.keep_every_epochs
        return every > 0 and (epoch + 1) % every == 0

    # ------------------------------------------------------------------ members
    def save_member(self, epoch: int, state: dict[str, Any]) -> None:
        """The member file of `epoch` (mamlpp.experiment.members.member_state). Rank 0 only."""
        if self.dist.is_main:
            save_checkpoint(self.run.member(epoch), state)

    def load_member(self, epoch: int, model: Any) -> None:
        """Load the member of `epoch` into `model`; one line when the file is unusable."""
        path = self.run.member(epoch)
        try:
            state = load_checkpoint(path)
        except (OSError, CheckpointError) as exc:
            why = exc if isinstance(exc, CheckpointError) else f"{path}: {exc.strerror}"
            raise MamlppError(
                f"top-k member of epoch {epoch}: {why}; its numbers cannot be "
                "trusted: re-train with run.resume=never"
            ) from exc
        load_learner_state(model, state["learner"], path)


def _training_state(path: Any) -> dict[str, Any]:
    """A training-state file's content; CheckpointError when it is not one."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} is unreadable (unknown checkpoint format {fmt!r})"
        )
    if "progress" not in state or "learner" not in state:
        raise CheckpointError(f"checkpoint {path} is unreadable (no training state in it)")
    return state
