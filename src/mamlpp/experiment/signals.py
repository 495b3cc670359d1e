"""Graceful interruption: SIGTERM/SIGUSR1/SIGUSR2/SIGINT ask the run to checkpoint and exit.

The handler only records the signal; the training loop finishes the current iteration (or the
current validation), writes a checkpoint and raises `StopRequested`, and the CLI exits with
EXIT_RESUMABLE. A second SIGINT interrupts at once (KeyboardInterrupt), losing at most the work
since the last checkpoint.

Our handlers displace the ones installed before them while the run trains. Once the checkpoint
is written, `pass_on` hands the signal to the displaced Python handler. In a submitit job
(hydra-submitit-launcher) that is submitit's SIGUSR2 handler (Slurm sends SIGUSR2
`signal_delay_s` before the time limit): it requeues the job, which then resumes from our
checkpoint. Submitit only logs SIGTERM: a preempted job is requeued by Slurm's
PreemptMode=REQUEUE, if at all.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

# EX_TEMPFAIL: "interrupted, resumable". Generated scripts and launchers re-run on this code.
EXIT_RESUMABLE = 75
HANDLED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class StopRequested(Exception):
    """Raised at a safe point after a stop signal, once the state is checkpointed.

    `iteration` is the number of finished training iterations in the newest checkpoint.
    """

    def __init__(self, signal_name: str | None, iteration: int) -> None:
        self.signal_name = signal_name or "a signal"
        self.iteration = iteration
        super().__init__(f"{self.signal_name} at iteration {iteration}")


class SignalFlag:
    """Records a stop signal; the training loop polls it between iterations.

    `on_first(name)` runs as the first signal arrives, so the user hears at once that the run
    is stopping, not only after the iteration or validation in progress.
    """

    def __init__(self, on_first: Callable[[str], None] | None = None) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        self._on_first = on_first

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            return
        self.signal_name = signal.Signals(signum).name
        if self._on_first is not None:
            self._on_first(self.signal_name)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> SignalFlag:
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def pass_on(signal_name: str) -> None:
    """Call the Python handler of `signal_name` now installed (the one ours displaced), if any.

    For after `SignalFlag.restore()` and the checkpoint. Submitit's SIGUSR2 handler requeues the
    job and exits (SystemExit) instead of returning. SIGINT is never passed on: its default
    handler would raise KeyboardInterrupt over a clean stop.
    """
    signum = getattr(signal, signal_name, None)
    if not isinstance(signum, signal.Signals) or signum == signal.SIGINT:
        return
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)
