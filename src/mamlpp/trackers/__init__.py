"""Experiment trackers (the `logger` config group): TensorBoard, CSV, MLflow, Weights & Biases.

`open_trackers` builds the chosen ones behind one `MetricLogger`; `check_installed` refuses a
tracker whose optional package is missing before any training starts.
"""

from mamlpp.trackers.base import MetricLogger
from mamlpp.trackers.factory import check_installed, open_trackers

__all__ = ["MetricLogger", "check_installed", "open_trackers"]
