"""The test phase of a run: its top-k members, loaded one at a time from the checkpoint store,
evaluated alone and as an ensemble on the fixed test tasks, and the run's results.

A stop signal stops between members; nothing of the test is kept then, and the same command
resumes into the test phase, which starts again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from mamlpp.algorithms.factory import objective_of
from mamlpp.algorithms.learner import Learner
from mamlpp.config import Config
from mamlpp.experiment.checkpoint_store import CheckpointStore
from mamlpp.experiment.console import log
from mamlpp.experiment.distributed import Distributed
from mamlpp.experiment.evaluation import evaluate_ensemble
from mamlpp.experiment.nonfinite import check_eval as check_nonfinite
from mamlpp.experiment.results import RunResults, config_summary
from mamlpp.experiment.run_state import TrainingProgress, run_identity
from mamlpp.tasks import TaskSource
from mamlpp.trackers.base import MetricLogger


@dataclass
class TestPhase:
    cfg: Config
    sampler: TaskSource
    store: CheckpointStore
    dist: Distributed
    # A freshly built learner to load a member into.
    new_learner: Callable[[], Learner]
    # Raises StopRequested when a stop signal arrived.
    stop_if_requested: Callable[[TrainingProgress], None]

    __test__ = False  # not a pytest class

    def run(
        self,
        progress: TrainingProgress,
        trackers: MetricLogger,
        device: torch.device,
        data_identity: str | None,
    ) -> dict[str, Any]:
        """Test the top-k members and their ensemble; the run's results as results.json has
        them. Test scalars are logged one step past training, so a re-test or a resume in the
        test phase replaces or skips them instead of duplicating them."""
        cfg = self.cfg
        log(
            f"testing the top-{len(progress.top_k)} models and their ensemble on "
            f"{cfg.eval.test_tasks} tasks"
        )
        t_test = time.perf_counter()
        self.dist.barrier()  # rank 0 has written every member file
        tested = evaluate_ensemble(
            self._members(progress),
            self.sampler,
            "test",
            cfg.eval.task_seed,
            cfg.eval.test_tasks,
            cfg.eval.batch_size,
            self.dist,
            between=partial(self.stop_if_requested, progress),
            check=lambda info, preds: check_nonfinite(
                preds.losses(), "test", f"for the member of epoch {info['epoch']}", cfg
            ),
        )
        t_test = time.perf_counter() - t_test
        mean, ci = tested["test_accuracy_mean"], tested["test_accuracy_ci95"]
        iterations = cfg.train.epochs * cfg.train.iters_per_epoch
        trackers.log_scalars({"test/acc": mean, "test/ci95": ci}, iterations + 1)
        objective = objective_of(cfg)
        return RunResults(
            test_accuracy_mean=mean,
            test_accuracy_ci95=ci,
            num_test_tasks=cfg.eval.test_tasks,
            ensemble_size=tested["ensemble_size"],
            per_model=tested["per_model"],
            best_val_accuracy=progress.top_k[0]["val_acc"],  # ranked best first
            train_seconds=round(progress.train_seconds, 2),
            test_seconds=round(t_test, 2),
            wall_time_s=round(progress.train_seconds + progress.eval_seconds + t_test, 2),
            epochs=cfg.train.epochs,
            iterations=iterations,
            device=str(device),
            config=config_summary(cfg),
            identity=run_identity(cfg, data_identity),
            metric=None if objective.higher_is_better else objective.metric,
        ).to_dict()

    def _members(self, progress: TrainingProgress) -> Iterator[tuple[dict, Learner]]:
        """The top-k members, loaded one at a time (a stop signal stops between them)."""
        for entry in progress.top_k:
            self.stop_if_requested(progress)
            learner = self.new_learner()
            self.store.load_member(entry["epoch"], learner)
            yield {"epoch": entry["epoch"], "val_accuracy": entry["val_acc"]}, learner
