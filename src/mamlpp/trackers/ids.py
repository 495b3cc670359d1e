"""The ids of a run directory's tracker runs (trackers.json), so that a resume finds them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mamlpp.files import atomic_write
from mamlpp.layout import TRACKER_IDS, RunLayout

FILE = TRACKER_IDS


def load_id(run_dir: Path, tracker: str) -> dict[str, Any] | None:
    """What `save_id` stored for `tracker` in `run_dir`, or None."""
    path = RunLayout(run_dir).tracker_ids
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(tracker)


def save_id(run_dir: Path, tracker: str, value: dict[str, Any]) -> None:
    """Store `value` for `tracker`, keeping the other trackers' entries; atomic."""
    path = RunLayout(run_dir).tracker_ids
    ids = json.loads(path.read_text()) if path.exists() else {}
    ids[tracker] = value
    atomic_write(path, json.dumps(ids, indent=1).encode())
