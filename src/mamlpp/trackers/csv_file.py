"""Every scalar as a (step, name, value) row of one CSV file: a tracker with no dependency."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from mamlpp.files import atomic_write

COLUMNS = ("step", "name", "value")


class CsvLogger:
    """Appends rows; a resumed run first rewrites the file without the rows at or after the
    resume step (those of a killed process), as TensorBoard's purge_step does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[str] | None = None
        self.writer: Any = None

    def resume(self, step: int) -> None:
        kept: list[dict[str, str]] = []
        if step > 1 and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) < step]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, buf.getvalue().encode())  # a kill leaves the old file whole
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 (closed by close())
        self.writer = csv.writer(self.file)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing: config.yaml beside the file holds them."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        assert self.writer is not None, "resume() first"
        self.writer.writerows((step, name, value) for name, value in scalars.items())

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
