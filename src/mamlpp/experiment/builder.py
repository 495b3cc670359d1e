"""ExperimentBuilder: one run directory from start to results.json.

It puts the parts together: the run layout (mamlpp.layout), the device (experiment.device),
the tasks (experiment.task_data), the learner behind its port (experiment.learner_port), the
checkpoint store (experiment.checkpoint_store), the training loop and its callbacks
(experiment.loop, experiment.callbacks), the test phase (experiment.test_phase) and the
finished-run policy (experiment.finished).

Resume guarantees (CPU): a run killed at any moment and started again with the same command
ends with the same numbers as an uninterrupted one. The checkpoint is the single source of truth:
metrics.csv is rewritten from its history, trackers resume at its step without duplicates,
and training needs no global RNG after model init (tasks are a pure function of seed and index).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from mamlpp.algorithms.factory import REGRESSION_DATASETS, build_learner, objective_of
from mamlpp.algorithms.learner import Learner
from mamlpp.algorithms.outer_step import build_outer_step
from mamlpp.config import Config, algorithm_label, experiment_keys
from mamlpp.errors import ConfigError
from mamlpp.experiment.callbacks import (
    CheckpointCadence,
    NonFiniteGuard,
    ProgressBar,
    StopOnSignal,
    TrackerLog,
    Validation,
)
from mamlpp.experiment.checkpoint_store import CheckpointStore
from mamlpp.experiment.checkpoints import atomic_write_text
from mamlpp.experiment.console import log, run_log, speak_for_the_job
from mamlpp.experiment.device import configure_device, place_on_free_gpu, resolve_device
from mamlpp.experiment.distributed import Distributed
from mamlpp.experiment.evaluation import predict_tasks
from mamlpp.experiment.finished import finished_results, write_finished
from mamlpp.experiment.gpu_claim import GpuClaim
from mamlpp.experiment.learner_port import LearnerPort
from mamlpp.experiment.lock import RunLock
from mamlpp.experiment.loop import TrainLoop
from mamlpp.experiment.members import member_state
from mamlpp.experiment.metrics import write_metrics_csv
from mamlpp.experiment.nonfinite import check_eval as check_nonfinite
from mamlpp.experiment.nonfinite import refuse_running_stats_training
from mamlpp.experiment.run_dir import (
    RunDirError,
    discard_new_run,
    is_new,
    remove_temp_files,
    require_checkpoint,
)
from mamlpp.experiment.run_state import TrainingProgress
from mamlpp.experiment.signals import EXIT_RESUMABLE, SignalFlag, StopRequested
from mamlpp.experiment.task_data import build_task_data
from mamlpp.experiment.test_phase import TestPhase
from mamlpp.layout import RunLayout
from mamlpp.trackers import open_trackers
from mamlpp.trackers.base import FanOut


def _acknowledge(signal_name: str) -> None:
    log(
        f"{signal_name} received: finishing this iteration, then checkpointing and exiting "
        f"({EXIT_RESUMABLE}); Ctrl-C again aborts at once, keeping the last checkpoint"
    )


class ExperimentBuilder:
    """Owns one run directory: trains, validates, checkpoints, resumes and tests."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        refuse_running_stats_training(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        self.device = resolve_device(cfg.device)
        self._gpu_claim: GpuClaim | None = None
        self.data_identity: str | None = None
        self.signals = SignalFlag(on_first=_acknowledge)
        # One experiment over the processes of a torchrun job (world size 1 without one).
        self.dist = Distributed.from_env()
        self.stop = StopOnSignal(self.signals, self.dist)

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.cfg
        if self.dist.enabled:
            if cfg.speed.cuda_graphs:
                raise ConfigError(
                    "config key 'speed.cuda_graphs' = True: not with a distributed run "
                    "(the gradient all-reduce sits between the captured step and the update)"
                )
        else:
            self.device, self._gpu_claim = place_on_free_gpu(self.device)
        configure_device(self.device, cfg.speed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.local_batch = self.dist.local_share(cfg.train.meta_batch_size)
        data = build_task_data(cfg, self.device, self.dist)
        self.sampler, self.in_channels = data.sampler, data.in_channels
        self.preprocessing, self.data_identity = data.preprocessing, data.identity
        self.total_iterations = cfg.train.epochs * cfg.train.iters_per_epoch
        learner = self._new_learner()  # the outer step: meta-optimizer, schedule, sync
        self.learner = LearnerPort(learner, build_outer_step(cfg, learner))
        if self.dist.enabled:
            self.learner.set_sync(self.dist)
        self.store = CheckpointStore(
            self.layout, self.learner, cfg, self.data_identity, self.dist, log
        )

    def _new_learner(self) -> Learner:
        return build_learner(self.cfg, self.in_channels, self.device)

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict[str, Any]:
        """Train (or resume), test the top-k ensemble, write results.json; return the results.

        Under the run lock: a finished run (done marker + results.json) only prints its results
        unless run.retest=true or run.resume=never; otherwise training continues from the newest
        valid checkpoint (run.resume), then the test phase runs and results.json, then the done
        marker, are written. A stop signal raises StopRequested once the state is checkpointed.
        """
        self.device = self.dist.start(self.device, self.cfg.run.collective_timeout_s)
        speak_for_the_job(self.dist.is_main)
        try:
            results = self._run_logged()
        except StopRequested:
            self.dist.close()  # every rank stopped at the same iteration
            raise
        self.dist.close()  # other errors: the job ends without waiting for the other ranks
        return results

    def _run_logged(self) -> dict[str, Any]:
        if isinstance(self.cfg.run.dir, str) and not self.cfg.run.dir.strip():
            raise RunDirError("run directory '' is empty: give a folder (run.dir or run_dir)")
        main, existed = self.dist.is_main, self.run_dir.exists()
        new = main and is_new(self.run_dir)  # refuses a file or a folder that is not a run's
        try:
            if main and self.cfg.run.resume == "must" and not self.layout.done.exists():
                require_checkpoint(self.run_dir)
            return self._run_logged_in(self.run_dir.resolve())
        except StopRequested:
            raise
        except Exception:  # a new run that failed before its first checkpoint leaves nothing
            if new:
                discard_new_run(self.run_dir, remove_dir=not existed)
            raise

    def _run_logged_in(self, where: Path) -> dict[str, Any]:
        with run_log(self.run_dir):
            log(f"run directory: {where}")
            c = self.cfg
            ways = "" if c.dataset.name in REGRESSION_DATASETS else f"{c.task.ways}-way "
            log(
                f"experiment {c.experiment_name}: {c.dataset.name} {ways}"
                f"{c.task.shots}-shot, algorithm {algorithm_label(c.algorithm)}, seed {c.seed}"
            )
            if self.dist.enabled:
                log(
                    f"distributed: {self.dist.world_size} processes on {self.device.type}, "
                    f"{self.dist.local_share(c.train.meta_batch_size)} tasks of each "
                    "meta-batch per process"
                )
            try:
                results = self._run_locked()
            except StopRequested as stop:
                log(
                    f"interrupted by {stop}; checkpoint written, run the same command to resume "
                    f"(exit code {EXIT_RESUMABLE})"
                )
                raise
            except KeyboardInterrupt:
                log(
                    "aborted by a second Ctrl-C: checkpoints written before it are kept; run the "
                    "same command to resume from the last one"
                )
                raise
            log(f"outputs are in {where}")
        return results

    def _run_locked(self) -> dict[str, Any]:
        main = self.dist.is_main
        with RunLock(self.run_dir) if main else contextlib.nullcontext() as lock:
            if lock is not None and lock.previous_holder:
                log(f"taking over the lock left by {lock.previous_holder} (no longer running)")
            finished = finished_results(self.cfg, self.layout) if main else None
            finished = self.dist.broadcast(finished)
            if finished is not None:
                return finished
            self.signals.install()
            try:
                results = self._train_and_test()
            finally:
                self.signals.restore()
                if self._gpu_claim is not None:
                    self._gpu_claim.release()
            if main:
                write_finished(self.layout, results, self.cfg, self.data_identity)
            return results

    def _train_and_test(self) -> dict[str, Any]:
        main = self.dist.is_main
        if main:
            remove_temp_files(self.run_dir)
        self._build()
        progress = TrainingProgress()
        if main:
            progress = self.store.restore()
            # The checkpoint is the source of truth: rows of a killed process are dropped here.
            write_metrics_csv(self.layout.metrics, progress.history)
        progress = self.store.share(progress)
        if main:  # written only now: a refused resume must not overwrite its config.yaml
            yaml = OmegaConf.to_yaml(OmegaConf.structured(self.cfg))
            atomic_write_text(self.layout.config, yaml)
        # Points after the checkpoint were written by a killed process: each tracker drops
        # them or skips their steps (all of them go on a fresh start). Rank 0 alone writes.
        self.trackers = open_trackers(self.cfg, self.run_dir) if main else FanOut([])
        try:
            self.trackers.resume(progress.next_iteration + 1)
            self.trackers.log_params(experiment_keys(self.cfg))
            self._stop_if_requested(progress)  # a signal while loading: nothing new to save
            self._loop().run(progress)
            test = TestPhase(
                self.cfg,
                self.sampler,
                self.store,
                self.dist,
                self._new_learner,
                self._stop_if_requested,
            )
            return test.run(progress, self.trackers, self.device, self.data_identity)
        finally:
            self.trackers.close()

    # ------------------------------------------------------------------ training
    def _loop(self) -> TrainLoop:
        cfg, tr = self.cfg, self.cfg.train
        images = cfg.task.ways * (cfg.task.shots + cfg.task.targets) * tr.meta_batch_size
        callbacks = [
            NonFiniteGuard(cfg),
            TrackerLog(self.trackers, images),
            ProgressBar(self.total_iterations, tr.iters_per_epoch, images, cfg.progress_bar),
            Validation(
                self._validate,
                self.store,
                self._member,
                self.trackers,
                cfg.eval.top_k,
                self.layout.metrics,
                log,
                self.learner.inner_lrs if cfg.algorithm.learn_inner_lr else None,
                self.dist,
                objective_of(cfg),
            ),
            CheckpointCadence(cfg.run.checkpoint_every_iters, cfg.run.checkpoint_every_seconds),
            self.stop,
        ]
        return TrainLoop(
            self.learner,
            self._batch,
            self.total_iterations,
            tr.iters_per_epoch,
            self.store.save,
            callbacks,
        )

    def _batch(self, iteration: int) -> Any:
        """This rank's share of meta-batch `iteration`: the consecutive tasks of the batch one
        process would draw."""
        first = iteration * self.cfg.train.meta_batch_size + self.dist.rank * self.local_batch
        return self.sampler.batch("train", self.cfg.seed, first, self.local_batch)

    def _member(self, epoch: int, val_acc: float) -> dict[str, Any]:
        return member_state(self.learner.state_dict(), self.cfg, self.preprocessing, epoch, val_acc)

    def _validate(self, epoch: int, progress: TrainingProgress) -> tuple[float, float]:
        e = self.cfg.eval
        log(f"epoch {epoch}: validating on {e.val_tasks} tasks")
        val = predict_tasks(
            self.learner.model,
            self.sampler,
            "val",
            e.task_seed,
            e.val_tasks,
            e.batch_size,
            self.dist,
        )
        where = f"in the validation after epoch {epoch} (iteration {progress.next_iteration})"
        check_nonfinite(val.losses(), "validation", where, self.cfg)
        return val.losses().mean().item(), val.accuracies().mean().item()

    def _stop_if_requested(self, progress: TrainingProgress) -> None:
        """Outside the loop (after loading, in the test phase): a stop signal ends the run now
        (nothing of the test is kept: the same command resumes into it, which starts again)."""
        name = self.stop.stop_name()
        if name is not None:
            raise StopRequested(name, progress.next_iteration)
