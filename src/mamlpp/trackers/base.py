"""The interface every experiment tracker implements, and a fan-out over several of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MetricLogger(Protocol):
    """Where a run's scalars go. Steps are training iterations (1-based); a run killed after its
    last checkpoint restarts from it, so `resume` must keep one point per (name, step)."""

    def resume(self, step: int) -> None:
        """Called once before anything is logged: the run continues at `step` (1: from
        scratch). Points an earlier process wrote at steps >= `step` are either dropped, or
        kept and not written again, so no step appears twice."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's flattened config, logged once (again on resume only where missing)."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Scalars of one step, in the order given."""

    def flush(self) -> None:
        """Put what was logged on disk (or the server) before a checkpoint is written."""

    def close(self) -> None:
        """Flush and release files, connections or background processes."""


class FanOut:
    """Several trackers behind one `MetricLogger`, called in the order they were given."""

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def resume(self, step: int) -> None:
        for logger in self.loggers:
            logger.resume(step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_scalars(scalars, step)

    def flush(self) -> None:
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        """Close every tracker, even when one of them fails; then raise the first failure."""
        errors: list[BaseException] = []
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:  # the others must still release their files
                errors.append(exc)
        if errors:
            raise errors[0]


def new_points(
    scalars: Mapping[str, float], step: int, written: Mapping[str, int]
) -> dict[str, float]:
    """The scalars not yet in a store that cannot delete points: `written` is the last step
    stored per name by an earlier process."""
    return {k: v for k, v in scalars.items() if step > written.get(k, 0)}
