"""The training loop: meta-steps until the last iteration, and the callbacks around them.

Everything else a step needs said, saved or checked is a callback (mamlpp.experiment.callbacks):
trackers, the progress bar, validation at each epoch's end, the checkpoint cadence, stop
signals. The loop only decides *when*: a checkpoint at each epoch's end, when a callback asks
for one, and before it stops for a signal. `progress` is the whole state beside the learner's,
so a loop started on a restored progress goes on exactly where the saved one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from mamlpp.experiment.learner_port import LearnerPort, Step
from mamlpp.experiment.run_state import TrainingProgress
from mamlpp.experiment.signals import StopRequested


class Callback:
    """Hooks of the loop; each does nothing unless overridden."""

    def on_train_start(self, progress: TrainingProgress) -> None: ...

    def on_step_end(self, progress: TrainingProgress, step: Step, seconds: float) -> None: ...

    def stop_name(self) -> str | None:
        """A reason to stop after this iteration (polled once per iteration), else None."""
        return None

    def wants_checkpoint(self, progress: TrainingProgress) -> bool:
        return False

    def on_epoch_end(self, progress: TrainingProgress, epoch: int, step: Step) -> None:
        """The epoch's last step is done; its checkpoint follows."""

    def on_save(self, progress: TrainingProgress) -> None:
        """Just before a checkpoint is written."""

    def on_saved(self, progress: TrainingProgress, epoch_end: bool) -> None:
        """Just after a checkpoint is written."""

    def on_train_end(self, progress: TrainingProgress) -> None:
        """The loop is left: done, stopped, or failed."""


class TrainLoop:
    """Meta-steps `progress.next_iteration .. total - 1` of `learner` on `batch(iteration)`."""

    def __init__(
        self,
        learner: LearnerPort,
        batch: Callable[[int], Any],
        total: int,
        iters_per_epoch: int,
        save: Callable[[TrainingProgress], None],
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.learner, self.batch, self.save = learner, batch, save
        self.total, self.iters_per_epoch = total, iters_per_epoch
        self.callbacks = list(callbacks)

    def run(self, progress: TrainingProgress) -> None:
        """Train to the end; a stop raises StopRequested once the state is checkpointed."""
        self._each("on_train_start", progress)
        try:
            while progress.next_iteration < self.total:
                it = progress.next_iteration
                epoch = it // self.iters_per_epoch
                started = time.perf_counter()
                step = self.learner.train_step(self.batch(it), epoch, it)
                seconds = time.perf_counter() - started
                progress.record_step(step.loss, step.accuracy, seconds)
                self._each("on_step_end", progress, step, seconds)
                stop = [n for n in (cb.stop_name() for cb in self.callbacks) if n is not None]
                epoch_end = progress.next_iteration % self.iters_per_epoch == 0
                if epoch_end:
                    self._each("on_epoch_end", progress, epoch, step)
                if epoch_end or stop or any(c.wants_checkpoint(progress) for c in self.callbacks):
                    self._each("on_save", progress)
                    self.save(progress)
                    self._each("on_saved", progress, epoch_end)
                if stop:
                    raise StopRequested(stop[0], progress.next_iteration)
        finally:
            self._each("on_train_end", progress)

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)
