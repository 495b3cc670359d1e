"""What the training loop does around its meta-steps, one callback per concern.

The order of a run's list matters and is the order the hooks run in: the non-finite guard
first (nothing of a diverged step is logged or saved), then trackers, progress bar, the
epoch-end validation, the checkpoint cadence and stop signals.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mamlpp.config import Config
from mamlpp.experiment.checkpoint_store import CheckpointStore
from mamlpp.experiment.distributed import SINGLE, Distributed
from mamlpp.experiment.loop import Callback
from mamlpp.experiment.metrics import write_metrics_csv
from mamlpp.experiment.nonfinite import check_step
from mamlpp.experiment.run_state import TrainingProgress
from mamlpp.experiment.signals import SignalFlag
from mamlpp.experiment.topk import update_top_k
from mamlpp.tasks import CLASSIFICATION, Objective
from mamlpp.trackers.base import MetricLogger


class NonFiniteGuard(Callback):
    """Stop (NonFiniteError) after a step whose loss or meta-gradient was nan/inf."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def on_step_end(self, progress: TrainingProgress, step: Any, seconds: float) -> None:
        check_step(step.finite, step.loss, progress.next_iteration, self.cfg)


class TrackerLog(Callback):
    """Each step's scalars to the trackers; everything flushed before a checkpoint, so every
    point up to it is stored before the checkpoint a resume keeps them for."""

    def __init__(self, trackers: MetricLogger, images_per_batch: int) -> None:
        self.trackers, self.images = trackers, images_per_batch

    def on_step_end(self, progress: TrainingProgress, step: Any, seconds: float) -> None:
        scalars = {
            "train/loss": step.loss,
            "train/acc": step.accuracy,
            "train/lr": step.meta_lr,
            "train/s_per_iter": seconds,
            "train/images_per_s": self.images / seconds,
        }
        self.trackers.log_scalars(scalars, progress.next_iteration)

    def on_save(self, progress: TrainingProgress) -> None:
        self.trackers.flush()


class ProgressBar(Callback):
    """A tqdm bar on a terminal (a file gets the log lines only)."""

    def __init__(
        self, total: int, iters_per_epoch: int, images_per_batch: int, enabled: bool
    ) -> None:
        self.total, self.iters_per_epoch, self.images = total, iters_per_epoch, images_per_batch
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: tqdm | None = None

    def on_train_start(self, progress: TrainingProgress) -> None:
        self.bar = tqdm(
            total=self.total,
            initial=progress.next_iteration,
            disable=not self.enabled,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_step_end(self, progress: TrainingProgress, step: Any, seconds: float) -> None:
        assert self.bar is not None
        self.bar.update(1)
        self.bar.set_postfix(
            epoch=(progress.next_iteration - 1) // self.iters_per_epoch,
            loss=f"{step.loss:.3f}",
            acc=f"{step.accuracy:.3f}",
            s_it=f"{seconds:.3f}",
            img_s=f"{self.images / seconds:.0f}",
        )

    def on_train_end(self, progress: TrainingProgress) -> None:
        if self.bar is not None:
            self.bar.close()


class Validation(Callback):
    """At each epoch's end: validate, log, rank the epoch into the top-k table and save its
    member file if kept (or a keep_every_epochs snapshot), close the epoch's metrics.csv row;
    once the checkpoint holds them, rewrite metrics.csv and say the epoch's numbers.

    `validate(epoch, progress)` returns the (loss, score) means over the validation tasks (the
    score of `objective`: accuracy, or MSE for regression, where the top-k are the lowest);
    `member(epoch, val_acc)` the member file's content."""

    def __init__(
        self,
        validate: Callable[[int, TrainingProgress], tuple[float, float]],
        store: CheckpointStore,
        member: Callable[[int, float], dict[str, Any]],
        trackers: MetricLogger,
        top_k: int,
        metrics: Path,
        say: Callable[[str], None],
        inner_lrs: Callable[[], dict[str, Any]] | None = None,
        dist: Distributed = SINGLE,
        objective: Objective = CLASSIFICATION,
    ) -> None:
        self.objective = objective
        self.validate, self.store, self.member = validate, store, member
        self.trackers, self.top_k, self.metrics, self.say = trackers, top_k, metrics, say
        self.inner_lrs, self.dist = inner_lrs, dist

    def on_epoch_end(self, progress: TrainingProgress, epoch: int, step: Any) -> None:
        started = time.perf_counter()
        val_loss, val_acc = self.validate(epoch, progress)
        progress.eval_seconds += time.perf_counter() - started
        n = max(progress.epoch_iters, 1)
        row = {
            "epoch": epoch,
            "iteration": progress.next_iteration,
            "train_loss": progress.epoch_loss_sum / n,
            "train_acc": progress.epoch_acc_sum / n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "meta_lr": step.meta_lr,
            "second_order": int(step.second_order),
            "multi_step_loss": int(step.multi_step_loss),
            "epoch_seconds": round(progress.epoch_seconds, 3),
            "s_per_iter": round(progress.epoch_seconds / n, 4),
        }
        scalars = {"val/acc": val_acc, "val/loss": val_loss}
        if self.inner_lrs is not None:  # fixed rates would only draw flat lines
            for name, rates in self.inner_lrs().items():
                for i, r in enumerate(rates.tolist()):
                    scalars[f"lslr/{name}/step{i}"] = r
        self.trackers.log_scalars(scalars, progress.next_iteration)
        self.trackers.flush()
        higher = self.objective.higher_is_better
        progress.top_k, kept, _ = update_top_k(progress.top_k, epoch, val_acc, self.top_k, higher)
        if (kept or self.store.is_snapshot(epoch)) and self.dist.is_main:
            self.store.save_member(epoch, self.member(epoch, val_acc))
        progress.close_epoch(row)

    def on_saved(self, progress: TrainingProgress, epoch_end: bool) -> None:
        if not epoch_end:
            return
        if self.dist.is_main:
            write_metrics_csv(self.metrics, progress.history)
        row = progress.history[-1]
        score = "acc" if self.objective.higher_is_better else self.objective.metric
        self.say(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} {score} "
            f"{row['train_acc']:.4f} | val loss {row['val_loss']:.4f} {score} {row['val_acc']:.4f}"
        )


class CheckpointCadence(Callback):
    """A checkpoint every `every_iters` iterations and/or `every_seconds` seconds (0: never)
    between the epoch-end ones."""

    def __init__(self, every_iters: int, every_seconds: float) -> None:
        self.every_iters, self.every_seconds = every_iters, every_seconds
        self.last = time.monotonic()

    def on_train_start(self, progress: TrainingProgress) -> None:
        self.last = time.monotonic()

    def wants_checkpoint(self, progress: TrainingProgress) -> bool:
        done = progress.next_iteration
        by_iters = self.every_iters > 0 and done % self.every_iters == 0
        by_time = self.every_seconds > 0 and time.monotonic() - self.last >= self.every_seconds
        return by_iters or by_time

    def on_saved(self, progress: TrainingProgress, epoch_end: bool) -> None:
        self.last = time.monotonic()


class StopOnSignal(Callback):
    """Stop after the iteration in which a stop signal reached any process of the job (every
    rank polls once per iteration, so all stop at the same one)."""

    def __init__(self, signals: SignalFlag, dist: Distributed = SINGLE) -> None:
        self.signals, self.dist = signals, dist

    def stop_name(self) -> str | None:
        return self.name() if self.dist.any(self.signals.requested) else None

    def name(self) -> str:
        return self.signals.signal_name or "a stop signal to another process of the job"
