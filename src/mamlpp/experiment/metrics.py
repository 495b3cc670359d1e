"""Per-epoch metrics of one run: metrics.csv, written whichever trackers are chosen."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mamlpp.experiment.checkpoints import atomic_write_text

CSV_COLUMNS = (
    "epoch",
    "iteration",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "meta_lr",
    "second_order",
    "multi_step_loss",
    "epoch_seconds",
    "s_per_iter",
)


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole CSV from the history kept in the checkpoint.

    The checkpoint is the source of truth, so a kill between checkpoint and CSV write can neither
    lose a row nor write one twice: the next run rewrites the file from the restored history.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: _short(v) for k, v in row.items()} for row in rows)
    atomic_write_text(path, buf.getvalue())


def _short(value: object) -> object:
    """Floats with 7 significant digits (float32's precision), not repr's 17."""
    return f"{value:.7g}" if isinstance(value, float) else value
