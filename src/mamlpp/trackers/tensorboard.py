"""TensorBoard event files: the default tracker."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class TensorboardLogger:
    """One scalar per tag and step; a resumed run purges the events a killed process wrote at
    or after the resume step (TensorBoard's purge_step), so its curves have no duplicates."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer: SummaryWriter | None = None

    def resume(self, step: int) -> None:
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step, flush_secs=30)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing: the run's config.yaml holds them, and hparams would add a second run."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        assert self.writer is not None, "resume() first"
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
