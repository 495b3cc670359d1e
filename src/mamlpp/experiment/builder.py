"""ExperimentBuilder: meta-training with validation, checkpoints and resume, then the test phase.

Run directory: config.yaml, metrics.csv, checkpoints/ (latest.pt, previous.pt, the top-k
members epoch_NNNN.pt, optional keep_every_epochs snapshots), results.json, done, .lock, and
what the chosen trackers write (tb/ by default; mamlpp.trackers).

Resume guarantees (CPU): a run killed at any moment and started again with the same command
ends with the same numbers as an uninterrupted one. The checkpoint is the single source of truth:
metrics.csv is rewritten from its history, trackers resume at its step without duplicates,
and training needs no global RNG after model init (tasks are a pure function of seed and index).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from mamlpp.algorithms.factory import build_learner
from mamlpp.algorithms.meta_learner import MetaLearner
from mamlpp.config import Config, SpeedConfig, algorithm_label, experiment_keys
from mamlpp.data.dataset import FewShotDataset
from mamlpp.data.episodes import EpisodeSampler
from mamlpp.data.preprocessing import Preprocessing
from mamlpp.data.registry import augmentation, load_dataset
from mamlpp.errors import ConfigError, MamlppError
from mamlpp.experiment import checksum
from mamlpp.experiment.checkpoints import (
    CheckpointError,
    WriteError,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mamlpp.experiment.console import log, log_file_only, run_log, speak_for_the_job
from mamlpp.experiment.distributed import Distributed
from mamlpp.experiment.evaluation import evaluate_ensemble, predict_tasks
from mamlpp.experiment.gpu_claim import GpuClaim, claim_free_gpu, cuda_ids
from mamlpp.experiment.lock import RunLock
from mamlpp.experiment.members import load_learner_state, member_state
from mamlpp.experiment.metrics import write_metrics_csv
from mamlpp.experiment.nonfinite import check_eval as check_nonfinite
from mamlpp.experiment.nonfinite import check_step, refuse_running_stats_training
from mamlpp.experiment.results import (
    RunResults,
    config_summary,
    finished_identity,
    read_results,
)
from mamlpp.experiment.results_table import format_results
from mamlpp.experiment.run_dir import (
    RunDirError,
    discard_new_run,
    is_new,
    remove_temp_files,
    require_checkpoint,
)
from mamlpp.experiment.run_state import (
    ConfigDriftError,
    TrainingProgress,
    check_drift,
    config_diffs,
    load_latest_valid,
    move_aside,
    run_identity,
    save_state,
)
from mamlpp.experiment.signals import EXIT_RESUMABLE, SignalFlag, StopRequested
from mamlpp.experiment.topk import member_file, update_top_k
from mamlpp.nn.cpu_allocator import keep_freed_memory
from mamlpp.trackers import open_trackers
from mamlpp.trackers.base import FanOut

DONE_MARKER = "done"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device' = '{name}' but no CUDA device is available: use auto|cpu"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"config key 'device' = '{name}' but only {torch.cuda.device_count()} GPUs are visible"
        )
    return device


def place_on_free_gpu(device: torch.device) -> tuple[torch.device, GpuClaim | None]:
    """With several visible GPUs, the first one no other mamlpp run holds (else cuda:0)."""
    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() < 2:
        return device, None
    claim = claim_free_gpu(cuda_ids())
    if claim is None:
        log("every visible GPU is held by another mamlpp run; sharing cuda:0")
        return torch.device("cuda", 0), None
    log(f"using cuda:{claim.index}, the first visible GPU no other mamlpp run holds")
    return torch.device("cuda", claim.index), claim


def configure_backends(speed: SpeedConfig, device: torch.device) -> None:
    """Apply the CUDA backend switches of `speed`; on CPU say that they have no effect."""
    if device.type != "cuda":
        if speed.cuda_graphs:
            raise ConfigError(
                f"config key 'speed.cuda_graphs' = True needs a CUDA device, but the run is on "
                f"{device}: set speed.cuda_graphs=false or device=cuda"
            )
        on = [k for k in ("tf32", "cudnn_benchmark") if getattr(speed, k)]
        if on:
            log(f"speed.{', speed.'.join(on)}: CUDA-only, no effect on {device}")
        return
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    torch.backends.cudnn.allow_tf32 = speed.tf32
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark


def configure_device(device: torch.device, speed: SpeedConfig) -> None:
    """Make `device` current and set the numerics every run on it uses (training and eval)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal gradients slow CPU kernels by 10x+
        keep_freed_memory()  # no page faults for each new temporary (same numbers)
    configure_backends(speed, device)


def make_sampler(cfg: Config, data: FewShotDataset, device: torch.device) -> EpisodeSampler:
    """Episodes of `cfg.task` from `data`, built on `device` (training and evaluation alike)."""
    images = data.images
    if device.type != "cpu" or not isinstance(images.pixels, np.memmap):
        images = images.to(device)  # in memory: episodes are built where they are used
    t = cfg.task
    return EpisodeSampler(
        images,
        data.splits,
        t.ways,
        t.shots,
        t.targets,
        mean=data.mean,
        std=data.std,
        augmentation=augmentation(cfg.dataset),
        device=device,
    )


def show_results(results: dict[str, Any]) -> None:
    """The results table on stdout and in train.log."""
    table = format_results(results)
    print(table, flush=True)
    log_file_only(table)


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
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = resolve_device(cfg.device)
        self._gpu_claim: GpuClaim | None = None
        self.data_identity: str | None = None
        self.signals = SignalFlag(on_first=_acknowledge)
        # One experiment over the processes of a torchrun job (world size 1 without one).
        self.dist = Distributed.from_env()

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
        # Rank 0 first: it may write the decoded cache the other ranks then read.
        if not self.dist.is_main:
            self.dist.barrier()
        data = load_dataset(cfg.dataset)
        if self.dist.is_main:
            self.dist.barrier()
        self.local_batch = self.dist.local_share(cfg.train.meta_batch_size)
        t = cfg.task
        data.check_task_fits(t.ways, t.shots, t.targets)
        self.in_channels = data.images.channels
        self.preprocessing = Preprocessing.of(data)
        self.data_identity = data.identity
        self.sampler = make_sampler(cfg, data, self.device)
        self.total_iterations = cfg.train.epochs * cfg.train.iters_per_epoch
        self.learner = self._new_learner()
        if self.dist.enabled:
            self.learner.sync = self.dist

    def _new_learner(self) -> MetaLearner:
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
            if main and self.cfg.run.resume == "must" and not (self.run_dir / DONE_MARKER).exists():
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
            log(
                f"experiment {c.experiment_name}: {c.dataset.name} {c.task.ways}-way "
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
        results_path = self.run_dir / "results.json"
        main = self.dist.is_main
        with RunLock(self.run_dir) if main else contextlib.nullcontext() as lock:
            if lock is not None and lock.previous_holder:
                log(f"taking over the lock left by {lock.previous_holder} (no longer running)")
            finished = self._finished_results(results_path) if main else None
            finished = self.dist.broadcast(finished)
            if finished is not None:
                return finished
            self.signals.install()
            try:
                if main:
                    remove_temp_files(self.run_dir)
                self._build()
                progress = self._restore_or_start() if main else TrainingProgress()
                progress = self._share_state(progress)
                if main:
                    # Written only now: a refused resume must not overwrite its config.yaml.
                    atomic_write_text(
                        self.run_dir / "config.yaml",
                        OmegaConf.to_yaml(OmegaConf.structured(self.cfg)),
                    )
                # Points after the checkpoint were written by a killed process: each tracker
                # drops them or skips their steps (all of them go on a fresh start). Rank 0
                # alone writes them.
                self.trackers = open_trackers(self.cfg, self.run_dir) if main else FanOut([])
                try:
                    self.trackers.resume(progress.next_iteration + 1)
                    self.trackers.log_params(experiment_keys(self.cfg))
                    # A signal that arrived while loading: nothing new to save.
                    if self.dist.any(self.signals.requested):
                        raise StopRequested(self._stop_name(), progress.next_iteration)
                    self._train(progress)
                    results = self._test(progress)
                finally:
                    self.trackers.close()
            finally:
                self.signals.restore()
                if self._gpu_claim is not None:
                    self._gpu_claim.release()
            if not main:
                return results
            try:
                atomic_write_text(results_path, json.dumps(results, indent=2))
            except WriteError:
                show_results(results)  # the numbers are not lost; the test phase can be re-run
                raise
            done: dict[str, Any] = {
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                # Checked when the run is re-run.
                "experiment": run_identity(self.cfg, self.data_identity),
            }
            atomic_write_text(self.run_dir / DONE_MARKER, json.dumps(done, indent=1))
            show_results(results)
            return results

    def _finished_results(self, results_path: Path) -> dict[str, Any] | None:
        """The results of a finished run that is not to be re-tested or restarted, else None."""
        done = self.run_dir / DONE_MARKER
        if not (done.exists() and results_path.exists()):
            return None
        if self.cfg.run.resume == "never":
            aside = move_aside(done, "old")
            log(f"run.resume=never: starting again; moved the done marker to {aside.name}")
            return None
        saved = finished_identity(done, results_path)
        if self.cfg.run.retest:
            # A re-test rewrites results.json and done: only with the run's own settings, so
            # that the command that made the run keeps finding it.
            diffs = config_diffs(saved, self.cfg) if saved is not None else ""
            if diffs:
                raise ConfigDriftError(
                    f"run.retest=true re-tests a finished run with its own settings only, but "
                    f"the config differs in {diffs}; to evaluate with other settings, run "
                    f"mamlpp-eval {self.run_dir} <key=value ...> (writes eval/, keeps results.json)"
                )
            log("run.retest=true: testing the finished run again")
            return None
        # Its results are those of its own config: run.allow_config_change does not apply here.
        diffs = config_diffs(saved, self.cfg) if saved is not None else ""
        if diffs:
            raise ConfigDriftError(
                f"run {self.run_dir} has finished with another config, which differs in {diffs} "
                "(also with run.allow_config_change=true: its results are not this config's); "
                f"use a new run directory, or evaluate it: mamlpp-eval {self.run_dir} <key=value>"
            )
        results = read_results(results_path)
        log(f"run already finished: {results_path} (run.retest=true tests again)")
        show_results(results)
        return results

    # ------------------------------------------------------------------ resume
    def _share_state(self, progress: TrainingProgress) -> TrainingProgress:
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
            epochs = {e["epoch"] for e in progress.top_k}
            self._kept_epochs = (epochs, epochs)
        return progress

    def _restore_or_start(self) -> TrainingProgress:
        """Progress restored from the newest valid checkpoint, or a fresh one (run.resume)."""
        mode = self.cfg.run.resume
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        progress = TrainingProgress()
        # Top-k epochs listed by (previous.pt, latest.pt): their member files must stay.
        self._kept_epochs: tuple[set[int], set[int]] = (set(), set())
        if mode == "never":
            if any(self.ckpt_dir.iterdir()):
                aside = move_aside(self.ckpt_dir, "old")
                log(f"run.resume=never: moved the existing checkpoints to {aside.name}")
                self.ckpt_dir.mkdir()
        else:
            found = load_latest_valid(self.ckpt_dir, log)
            if found is None and mode == "must":
                raise MamlppError(f"run.resume=must but {self.ckpt_dir} holds no valid checkpoint")
            if found is not None:
                state, path = found
                check_drift(state["experiment"], self.cfg, self.data_identity)
                load_learner_state(self.learner, state["learner"], path)
                self.learner.optimizer.load_state_dict(state["optimizer"])
                set_rng_state(state["rng"])
                progress = TrainingProgress(**state["progress"])
                epochs = {e["epoch"] for e in progress.top_k}
                self._kept_epochs = (epochs, epochs)
                unsealed = "" if checksum.KEY in state else " (an older checkpoint: no checksum)"
                log(f"resumed from {path} at iteration {progress.next_iteration}{unsealed}")
            elif any(self.ckpt_dir.glob("*.corrupt-*")):
                log("no valid checkpoint left: starting from scratch (run.resume=auto)")
        # The checkpoint is the source of truth: rows of a killed process are dropped here.
        write_metrics_csv(self.run_dir / "metrics.csv", progress.history)
        return progress

    def _checkpoint(self, progress: TrainingProgress) -> None:
        """Save latest.pt; then delete top-k member files neither latest nor previous lists.

        Trackers are flushed first, so every point up to this iteration is stored before the
        checkpoint that a resumed run keeps them for. Rank 0 only.
        """
        if not self.dist.is_main:
            return
        self.trackers.flush()
        save_state(
            self.ckpt_dir,
            self.learner.state_dict(),
            self.learner.optimizer.state_dict(),
            progress,
            rng_state(),
            self.cfg,
            self.data_identity,
        )
        old_previous, old_latest = self._kept_epochs
        current = {e["epoch"] for e in progress.top_k}
        self._kept_epochs = (old_latest, current)  # what previous.pt and latest.pt now list
        keep_every = self.cfg.run.keep_every_epochs
        for old in old_previous - old_latest - current:
            if not (keep_every > 0 and (old + 1) % keep_every == 0):
                (self.ckpt_dir / member_file(old)).unlink(missing_ok=True)

    # ------------------------------------------------------------------ training
    def _train(self, progress: TrainingProgress) -> None:
        cfg, tr = self.cfg, self.cfg.train
        ipe = tr.iters_per_epoch
        images_per_task = cfg.task.ways * (cfg.task.shots + cfg.task.targets)
        last_ckpt_time = time.monotonic()
        bar = tqdm(
            total=self.total_iterations,
            initial=progress.next_iteration,
            disable=not cfg.progress_bar or not sys.stderr.isatty(),  # a file gets log lines
            dynamic_ncols=True,
            file=sys.stderr,
        )
        while progress.next_iteration < self.total_iterations:
            it = progress.next_iteration
            epoch = it // ipe
            t0 = time.perf_counter()
            mbs, local = tr.meta_batch_size, self.local_batch
            # This rank's share: consecutive tasks of the batch one process would draw.
            first = it * mbs + self.dist.rank * local
            batch = self.sampler.batch("train", cfg.seed, first, local)
            step = self.learner.train_step(batch, epoch, it)
            check_step(step.finite, step.loss, it + 1, cfg)  # nothing of it is saved
            dt = time.perf_counter() - t0
            progress.next_iteration = it + 1
            progress.epoch_loss_sum += step.loss
            progress.epoch_acc_sum += step.accuracy
            progress.epoch_iters += 1
            progress.epoch_seconds += dt
            progress.train_seconds += dt
            self._log_iteration(it + 1, step, dt, images_per_task * tr.meta_batch_size)
            bar.update(1)
            bar.set_postfix(
                epoch=epoch,
                loss=f"{step.loss:.3f}",
                acc=f"{step.accuracy:.3f}",
                s_it=f"{dt:.3f}",
                img_s=f"{images_per_task * mbs / dt:.0f}",
            )
            stop = self.dist.any(self.signals.requested)  # every rank stops at the same step
            if (it + 1) % ipe == 0:
                self._end_epoch(progress, epoch, step)
                last_ckpt_time = time.monotonic()
            elif self._cadence_due(it + 1, last_ckpt_time) or stop:
                self._checkpoint(progress)
                last_ckpt_time = time.monotonic()
            if stop:
                bar.close()
                raise StopRequested(self._stop_name(), progress.next_iteration)
        bar.close()

    def _stop_if_requested(self, progress: TrainingProgress) -> None:
        """In the test phase: a stop signal ends the run now (nothing of the test is kept:
        the same command resumes into the test phase, which starts again)."""
        if self.dist.any(self.signals.requested):
            raise StopRequested(self._stop_name(), progress.next_iteration)

    def _stop_name(self) -> str:
        return self.signals.signal_name or "a stop signal to another process of the job"

    def _cadence_due(self, done_iters: int, last_time: float) -> bool:
        r = self.cfg.run
        by_iters = r.checkpoint_every_iters > 0 and done_iters % r.checkpoint_every_iters == 0
        by_time = (
            r.checkpoint_every_seconds > 0
            and time.monotonic() - last_time >= r.checkpoint_every_seconds
        )
        return by_iters or by_time

    def _log_iteration(self, step_no: int, step: Any, dt: float, images: int) -> None:
        scalars = {
            "train/loss": step.loss,
            "train/acc": step.accuracy,
            "train/lr": step.meta_lr,
            "train/s_per_iter": dt,
            "train/images_per_s": images / dt,
        }
        self.trackers.log_scalars(scalars, step_no)

    def _end_epoch(self, progress: TrainingProgress, epoch: int, step: Any) -> None:
        cfg = self.cfg
        log(f"epoch {epoch}: validating on {cfg.eval.val_tasks} tasks")
        t_val = time.perf_counter()
        val = predict_tasks(
            self.learner,
            self.sampler,
            "val",
            cfg.eval.task_seed,
            cfg.eval.val_tasks,
            cfg.eval.batch_size,
            self.dist,
        )
        where = f"in the validation after epoch {epoch} (iteration {progress.next_iteration})"
        check_nonfinite(val.losses(), "validation", where, cfg)
        val_acc = val.accuracies().mean().item()
        val_loss = val.losses().mean().item()
        progress.eval_seconds += time.perf_counter() - t_val
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
        if cfg.algorithm.learn_inner_lr:  # fixed rates would only draw flat lines
            for name, rates in self.learner.inner_lrs.as_dict().items():
                for i, r in enumerate(rates.tolist()):
                    scalars[f"lslr/{name}/step{i}"] = r
        self.trackers.log_scalars(scalars, progress.next_iteration)
        self.trackers.flush()
        progress.top_k, kept, _ = update_top_k(progress.top_k, epoch, val_acc, cfg.eval.top_k)
        keep_every = cfg.run.keep_every_epochs
        snapshot = keep_every > 0 and (epoch + 1) % keep_every == 0
        if (kept or snapshot) and self.dist.is_main:
            member = member_state(
                self.learner.state_dict(), cfg, self.preprocessing, epoch, val_acc
            )
            save_checkpoint(self.ckpt_dir / member_file(epoch), member)
        progress.history.append(row)
        progress.epoch_loss_sum = progress.epoch_acc_sum = progress.epoch_seconds = 0.0
        progress.epoch_iters = 0
        self._checkpoint(progress)  # evicted members go once previous.pt no longer lists them
        if self.dist.is_main:
            write_metrics_csv(self.run_dir / "metrics.csv", progress.history)
        log(
            f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}"
        )

    # ------------------------------------------------------------------ test phase
    def _test(self, progress: TrainingProgress) -> dict[str, Any]:
        cfg = self.cfg
        log(
            f"testing the top-{len(progress.top_k)} models and their ensemble on "
            f"{cfg.eval.test_tasks} tasks"
        )
        t_test = time.perf_counter()
        self.dist.barrier()  # rank 0 has written every member file
        tested = evaluate_ensemble(
            self._top_k_members(progress),
            self.sampler,
            "test",
            cfg.eval.task_seed,
            cfg.eval.test_tasks,
            cfg.eval.batch_size,
            self.dist,
            between=partial(self._stop_if_requested, progress),
            check=lambda info, preds: check_nonfinite(
                preds.losses(), "test", f"for the member of epoch {info['epoch']}", cfg
            ),
        )
        t_test = time.perf_counter() - t_test
        mean, ci = tested["test_accuracy_mean"], tested["test_accuracy_ci95"]
        # One step past training: a re-test or a resume in the test phase (resume step =
        # iterations + 1) replaces or skips these instead of duplicating them.
        self.trackers.log_scalars({"test/acc": mean, "test/ci95": ci}, self.total_iterations + 1)
        return RunResults(
            test_accuracy_mean=mean,
            test_accuracy_ci95=ci,
            num_test_tasks=cfg.eval.test_tasks,
            ensemble_size=tested["ensemble_size"],
            per_model=tested["per_model"],
            best_val_accuracy=max(e["val_acc"] for e in progress.top_k),
            train_seconds=round(progress.train_seconds, 2),
            test_seconds=round(t_test, 2),
            wall_time_s=round(progress.train_seconds + progress.eval_seconds + t_test, 2),
            epochs=cfg.train.epochs,
            iterations=self.total_iterations,
            device=str(self.device),
            config=config_summary(cfg),
            identity=run_identity(cfg, self.data_identity),
        ).to_dict()

    def _top_k_members(self, progress: TrainingProgress) -> Iterator[tuple[dict, MetaLearner]]:
        """The top-k members, loaded one at a time (a stop signal stops between them)."""
        for entry in progress.top_k:
            self._stop_if_requested(progress)
            learner = self._new_learner()
            path = self.ckpt_dir / member_file(entry["epoch"])
            try:
                state = load_checkpoint(path)
            except (OSError, CheckpointError) as exc:
                why = exc if isinstance(exc, CheckpointError) else f"{path}: {exc.strerror}"
                raise MamlppError(
                    f"top-k member of epoch {entry['epoch']}: {why}; its numbers cannot be "
                    "trusted: re-train with run.resume=never"
                ) from exc
            load_learner_state(learner, state["learner"], path)
            yield {"epoch": entry["epoch"], "val_accuracy": entry["val_acc"]}, learner
